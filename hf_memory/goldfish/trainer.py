"""`GoldfishTrainer`: a `Trainer` whose training loss skips the goldfish-dropped tokens.

The drop happens in the training collator, before transformers counts `num_items_in_batch`, so the loss is the
exact mean over kept tokens across gradient accumulation and data-parallel ranks. Evaluation and prediction use
the untouched collator: their losses count every token.
"""

from __future__ import annotations

import inspect
import os
from importlib import resources
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import Trainer

from .._utils import check_bool
from .collator import GoldfishDataCollator
from .config import GoldfishConfig
from .training_args import GoldfishArguments, GoldfishTrainingArguments


DROPPED_KEY = "goldfish_dropped_tokens"
DROPPED_FRACTION_LOG = "goldfish/dropped_fraction"
MODEL_CARD_TEMPLATE = "goldfish_model_card.md"


class GoldfishTrainerMixin:
    """Adds goldfish to a `Trainer` subclass: masked training batches, a logged drop fraction, a model-card section."""

    _goldfish_args_class: type = GoldfishTrainingArguments

    def __init__(
        self, model: torch.nn.Module | str | None = None, args: GoldfishArguments | None = None, *more, **kwargs
    ) -> None:
        """Check that `args` holds goldfish settings, build the trainer, then derive its `GoldfishConfig`.

        Args:
            model: The model to train, passed on to the trainer class.
            args: Training arguments of `_goldfish_args_class` (e.g. `GoldfishTrainingArguments`); None uses its
                defaults with `output_dir="tmp_trainer"`, as `Trainer` does.
            *more: Further positional arguments of the trainer class, passed on unchanged.
            **kwargs: Keyword arguments of the trainer class (`train_dataset`, `data_collator`, ...), passed on
                unchanged.

        Raises:
            TypeError: If `args` is not a `GoldfishArguments` (e.g. a plain `TrainingArguments`).
        """
        if args is None:
            args = self._goldfish_args_class(output_dir="tmp_trainer")
        if not isinstance(args, self._goldfish_args_class):
            raise TypeError(
                f"`args` of {type(self).__name__} must be a {self._goldfish_args_class.__name__} (it holds the "
                f"goldfish settings), got {type(args).__name__}."
            )
        super().__init__(model, args, *more, **kwargs)
        self.goldfish_config  # noqa: B018  (checks the tokenizer's special ids now)
        self._goldfish_counts = torch.zeros(2, dtype=torch.long)  # dropped, kept since the last log

    @property
    def goldfish_config(self) -> GoldfishConfig:
        """The goldfish settings, read from `self.args` (and the tokenizer's special ids) on every access.

        A `goldfish_*` field of `trainer.args` changed after the trainer was built is honoured by the next
        `train()`, as the other `TrainingArguments` fields are; a bad value is refused then, before any step,
        naming the field.
        """
        special_ids = getattr(self.processing_class, "all_special_ids", None) or ()
        exempt = (
            special_ids
            if check_bool(self.args.goldfish_exempt_special_tokens, "goldfish_exempt_special_tokens")
            else ()
        )
        return self.args.to_goldfish_config(exempt_token_ids=exempt)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """The training dataloader, its collator wrapped in a `GoldfishDataCollator` (evaluation keeps the original).

        Returns:
            The `DataLoader` the parent class builds, whose batches carry goldfish-masked labels and the dropped
            token counts.
        """
        base_collator = self.data_collator
        self.data_collator = GoldfishDataCollator(base_collator, self.goldfish_config, return_dropped_counts=True)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = base_collator

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict, *args, **kwargs
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Pop the dropped-token counts from a training batch for the logs, then compute the parent's loss.

        Args:
            model: The model being trained.
            inputs: The batch; its `goldfish_dropped_tokens` entry (if any) is removed before the forward pass.
            *args: Passed on to the parent's `compute_loss`.
            **kwargs: Passed on to the parent's `compute_loss` (e.g. `return_outputs`, `num_items_in_batch`).

        Returns:
            What the parent's `compute_loss` returns: the loss, or `(loss, outputs)`.
        """
        dropped = inputs.pop(DROPPED_KEY, None)
        if dropped is not None and model.training:
            labels = inputs["labels"]
            # a causal LM's first label is no target; every label of an encoder-decoder model is one
            seq2seq = getattr(getattr(self.model, "config", None), "is_encoder_decoder", False)
            kept = (labels != -100).sum() if seq2seq else (labels[..., 1:] != -100).sum()
            counts = torch.stack([dropped.sum(), kept]).detach()
            self._goldfish_counts = self._goldfish_counts.to(counts.device) + counts
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add `goldfish/dropped_fraction` (dropped / (dropped + kept) labels since the last log) to training logs.

        Args:
            logs: The values to log; training logs (those with `loss`) get the drop fraction, summed over ranks.
            *args: Passed on to the parent's `log`.
            **kwargs: Passed on to the parent's `log`.
        """
        if "loss" in logs:  # training logs, reached by every rank at the same step
            counts = self.accelerator.reduce(self._goldfish_counts.to(self.accelerator.device), reduction="sum")
            dropped, kept = counts.tolist()
            if dropped + kept:
                logs[DROPPED_FRACTION_LOG] = round(dropped / (dropped + kept), 4)
            self._goldfish_counts = torch.zeros_like(self._goldfish_counts)
        return super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """Write the parent's model card, then add a goldfish section, tags and the settings to its metadata.

        Only the main process writes `README.md` in `args.output_dir`.

        Args:
            *args: Passed on to the parent's `create_model_card`.
            **kwargs: Passed on to the parent's `create_model_card` (e.g. `model_name`, `dataset_name`).
        """
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path) if os.path.exists(path) else ModelCard("")
        template = resources.files("hf_memory.templates").joinpath(MODEL_CARD_TEMPLATE)
        with resources.as_file(template) as template_path:
            section = ModelCard.from_template(
                ModelCardData(), template_path=str(template_path), **self.goldfish_config.to_dict()
            )
        tags = list(card.data.tags or [])
        card.data.tags = tags + [t for t in ("goldfish-loss", "hf-memory") if t not in tags]
        card.data.goldfish = self.goldfish_config.to_dict()
        card.text = card.text.rstrip() + "\n\n" + section.text.strip() + "\n"
        card.save(path)


class GoldfishTrainer(GoldfishTrainerMixin, Trainer):
    """`Trainer` whose training loss leaves out the goldfish-dropped labels. Same constructor as `Trainer`;
    the settings come from `args`, a `GoldfishTrainingArguments`. Every other argument keeps its `Trainer` meaning.

    Args:
        model: The model to train, as for `Trainer`.
        args: A `GoldfishTrainingArguments` (it holds the goldfish settings); None uses its defaults with
            `output_dir="tmp_trainer"`.

    Raises:
        TypeError: If `args` holds no goldfish settings (e.g. a plain `TrainingArguments`).
    """


# The mixin's `__init__` only checks `args`: show users the constructors they already know.
GoldfishTrainer.__signature__ = inspect.signature(Trainer)
