"""`GoldfishSFTConfig`: TRL's `SFTConfig` plus the goldfish settings (needs the `trl` extra)."""

from __future__ import annotations

from dataclasses import dataclass

from .._utils import require_extra


require_extra("trl", "GoldfishSFTConfig")

from trl import SFTConfig  # noqa: E402

from .training_args import GoldfishArguments  # noqa: E402


@dataclass
class GoldfishSFTConfig(GoldfishArguments, SFTConfig):
    """TRL's `SFTConfig` plus the goldfish settings of `GoldfishArguments`; every other field keeps its TRL default.

    Args:
        goldfish_k: Drop about 1 in k training labels (k >= 2); see `GoldfishConfig.k`.
        goldfish_h: How many tokens, ending at the target, decide its drop; see `GoldfishConfig.h`.
        goldfish_strategy: "hash", "hash-table" or "static"; see `GoldfishConfig.strategy`.
        goldfish_start: Offset of the first dropped label ("static" only); see `GoldfishConfig.start`.
        goldfish_exempt_special_tokens: Never drop the tokenizer's special tokens (end of turn, EOS, ...).

    Raises:
        ValueError: If a goldfish setting is out of range (the message names the `goldfish_*` field).
    """
