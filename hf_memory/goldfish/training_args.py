"""`GoldfishTrainingArguments`: `TrainingArguments` plus the goldfish settings (`--goldfish_k`, `--goldfish_h`, ...)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .._utils import check_bool
from .config import GoldfishConfig, check_goldfish_settings


_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(GoldfishConfig)}


def _from_config(name: str):
    """A `goldfish_<name>` field with the default, help and choices of `GoldfishConfig.<name>`."""
    source = _CONFIG_FIELDS[name]
    return field(default=source.default, metadata=dict(source.metadata))


@dataclass
class GoldfishArguments:
    """The goldfish fields shared by `GoldfishTrainingArguments` and `GoldfishSFTConfig`.

    Defaults, help texts and choices come from `GoldfishConfig`, so the two never disagree.

    Args:
        goldfish_k: `GoldfishConfig.k`: drop about 1 in k training labels (k >= 2).
        goldfish_h: `GoldfishConfig.h`: how many tokens, ending at the target, decide its drop.
        goldfish_strategy: `GoldfishConfig.strategy`: "hash", "hash-table", "hash-avalanche" or "static".
        goldfish_start: `GoldfishConfig.start`: offset of the first dropped label ("static" only).
        goldfish_exempt_special_tokens: Never drop the tokenizer's special tokens (end of turn, EOS, ...).
    """

    goldfish_k: int = _from_config("k")
    goldfish_h: int = _from_config("h")
    goldfish_strategy: str = _from_config("strategy")
    goldfish_start: int = _from_config("start")
    goldfish_exempt_special_tokens: bool = field(
        default=True, metadata={"help": "Never drop the tokenizer's special tokens (end of turn, EOS, ...)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.goldfish_k, self.goldfish_h, self.goldfish_strategy, self.goldfish_start = check_goldfish_settings(
            self.goldfish_k,
            self.goldfish_h,
            self.goldfish_strategy,
            self.goldfish_start,
            names=("goldfish_k", "goldfish_h", "goldfish_strategy", "goldfish_start"),
        )
        self.goldfish_exempt_special_tokens = check_bool(
            self.goldfish_exempt_special_tokens, "goldfish_exempt_special_tokens"
        )

    def to_goldfish_config(self, exempt_token_ids: Iterable[int] = ()) -> GoldfishConfig:
        """The `GoldfishConfig` these arguments describe.

        Args:
            exempt_token_ids: Token ids never dropped (the trainers pass the tokenizer's special tokens here).

        Returns:
            A new `GoldfishConfig` with `k`, `h`, `strategy` and `start` from the `goldfish_*` fields.

        Raises:
            ValueError: If a `goldfish_*` field (checked again: it may have been changed since the arguments were
                built) is out of range, naming it, or an id in `exempt_token_ids` is not a token id.
        """
        k, h, strategy, start = check_goldfish_settings(
            self.goldfish_k,
            self.goldfish_h,
            self.goldfish_strategy,
            self.goldfish_start,
            names=("goldfish_k", "goldfish_h", "goldfish_strategy", "goldfish_start"),
        )
        return GoldfishConfig(k=k, h=h, strategy=strategy, start=start, exempt_token_ids=tuple(exempt_token_ids))


@dataclass
class GoldfishTrainingArguments(GoldfishArguments, TrainingArguments):
    """`TrainingArguments` plus the goldfish settings of `GoldfishArguments`; every other field keeps its
    transformers default. `HfArgumentParser(GoldfishTrainingArguments)` gives `--goldfish_k 4` and so on.

    The goldfish fields (`goldfish_k`, `goldfish_h`, `goldfish_strategy`, `goldfish_start`,
    `goldfish_exempt_special_tokens`) are documented on `GoldfishArguments`.
    """
