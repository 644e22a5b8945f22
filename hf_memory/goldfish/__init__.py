"""Goldfish loss (Hans et al. 2024): leave a deterministic ~1/k of the tokens out of the training loss.

The mask, its config and the collator load at once; the trainers (transformers' `Trainer`, TRL's `SFTTrainer`)
load on first use. The TRL classes need the `trl` extra.
"""

from typing import TYPE_CHECKING

from .._utils import lazy_getattr
from .collator import GoldfishDataCollator
from .config import GOLDFISH_STRATEGIES, GoldfishConfig, check_goldfish_settings
from .mask import IGNORE_INDEX, apply_goldfish, avalanche_hash, document_offsets, goldfish_hash_table, goldfish_mask


_LAZY = {
    "training_args": ["GoldfishArguments", "GoldfishTrainingArguments"],
    "trainer": ["GoldfishTrainer", "GoldfishTrainerMixin"],
    "sft_config": ["GoldfishSFTConfig"],
    "sft_trainer": ["GoldfishSFTTrainer"],
}

if TYPE_CHECKING:
    from .sft_config import GoldfishSFTConfig
    from .sft_trainer import GoldfishSFTTrainer
    from .trainer import GoldfishTrainer, GoldfishTrainerMixin
    from .training_args import GoldfishArguments, GoldfishTrainingArguments

__getattr__, __dir__ = lazy_getattr(__name__, globals(), _LAZY)

__all__ = [
    "GOLDFISH_STRATEGIES",
    "IGNORE_INDEX",
    "GoldfishArguments",
    "GoldfishConfig",
    "GoldfishDataCollator",
    "GoldfishSFTConfig",
    "GoldfishSFTTrainer",
    "GoldfishTrainer",
    "GoldfishTrainerMixin",
    "GoldfishTrainingArguments",
    "apply_goldfish",
    "avalanche_hash",
    "check_goldfish_settings",
    "document_offsets",
    "goldfish_hash_table",
    "goldfish_mask",
]
