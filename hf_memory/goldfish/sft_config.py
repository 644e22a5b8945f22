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

    The goldfish fields (`goldfish_k`, `goldfish_h`, `goldfish_strategy`, `goldfish_start`,
    `goldfish_exempt_special_tokens`) are documented on `GoldfishArguments`.
    """
