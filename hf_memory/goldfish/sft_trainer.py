"""`GoldfishSFTTrainer`: TRL's `SFTTrainer` with the goldfish loss (needs the `trl` extra)."""

from __future__ import annotations

import inspect

from .._utils import require_extra


require_extra("trl", "GoldfishSFTTrainer")

from trl import SFTTrainer  # noqa: E402

from .sft_config import GoldfishSFTConfig  # noqa: E402
from .trainer import GoldfishTrainerMixin  # noqa: E402


class GoldfishSFTTrainer(GoldfishTrainerMixin, SFTTrainer):
    """TRL `SFTTrainer` with the goldfish loss; completion-only loss, assistant masks and packing keep working
    (packed documents are hashed one by one). Same constructor as `SFTTrainer`; the settings come from `args`, a
    `GoldfishSFTConfig`. Every other argument keeps its `SFTTrainer` meaning.

    Args:
        model: The model (or model id) to train, as for `SFTTrainer`.
        args: A `GoldfishSFTConfig` (it holds the goldfish settings); None uses its defaults with
            `output_dir="tmp_trainer"`.

    Raises:
        TypeError: If `args` holds no goldfish settings (e.g. a plain `TrainingArguments`).
    """

    _goldfish_args_class = GoldfishSFTConfig


# The mixin's `__init__` only checks `args`: show users the constructor they already know.
GoldfishSFTTrainer.__signature__ = inspect.signature(SFTTrainer)
