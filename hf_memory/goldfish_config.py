"""Training arguments for the goldfish trainers: `TrainingArguments` / TRL's `SFTConfig` plus the goldfish settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments
from trl import SFTConfig

from .goldfish import GoldfishConfig, check_goldfish_settings


@dataclass
class GoldfishArguments:
    """The goldfish fields shared by `GoldfishTrainingArguments` and `GoldfishSFTConfig`."""

    goldfish_k: int = field(default=4, metadata={"help": "Drop about 1 in k training labels from the loss (k >= 2)."})
    goldfish_h: int = field(
        default=13, metadata={"help": "Context width: how many tokens, ending at the target, decide its drop."}
    )
    goldfish_strategy: str = field(
        default="hash",
        metadata={
            "help": "'hash' (order-sensitive, portable), 'hash-table' (bit-compatible with the official code) or "
            "'static' (every k-th label).",
            "choices": ["hash", "hash-table", "static"],
        },
    )
    goldfish_start: int = field(default=0, metadata={"help": "Offset of the first dropped label ('static' only)."})
    goldfish_exempt_special_tokens: bool = field(
        default=True, metadata={"help": "Never drop the tokenizer's special tokens (end of turn, EOS, ...)."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_goldfish_settings(
            self.goldfish_k,
            self.goldfish_h,
            self.goldfish_strategy,
            self.goldfish_start,
            names=("goldfish_k", "goldfish_h", "goldfish_strategy", "goldfish_start"),
        )

    def to_goldfish_config(self, exempt_token_ids=()) -> GoldfishConfig:
        """The `GoldfishConfig` these arguments describe."""
        return GoldfishConfig(
            k=self.goldfish_k,
            h=self.goldfish_h,
            strategy=self.goldfish_strategy,
            start=self.goldfish_start,
            exempt_token_ids=tuple(exempt_token_ids),
        )


@dataclass
class GoldfishTrainingArguments(GoldfishArguments, TrainingArguments):
    """`TrainingArguments` plus the goldfish settings; every other field keeps its transformers default."""


@dataclass
class GoldfishSFTConfig(GoldfishArguments, SFTConfig):
    """TRL's `SFTConfig` plus the goldfish settings; every other field keeps its TRL default."""
