"""`GoldfishTrainer`: a `Trainer` whose training loss skips the goldfish-dropped tokens.

The drop happens in the training collator, before transformers counts `num_items_in_batch`, so the loss is the
exact mean over kept tokens across gradient accumulation and data-parallel ranks. Evaluation and prediction use
the untouched collator: their losses count every token.
"""

from __future__ import annotations

import inspect
import os
from importlib import resources

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import Trainer

from .collator import GoldfishDataCollator
from .training_args import GoldfishArguments, GoldfishTrainingArguments


DROPPED_KEY = "goldfish_dropped_tokens"
DROPPED_FRACTION_LOG = "goldfish/dropped_fraction"
MODEL_CARD_TEMPLATE = "goldfish_model_card.md"


class GoldfishTrainerMixin:
    """Adds goldfish to a `Trainer` subclass: masked training batches, a logged drop fraction, a model-card section."""

    _goldfish_args_class: type = GoldfishTrainingArguments

    def __init__(self, model=None, args=None, *more, **kwargs):
        if args is None:
            args = self._goldfish_args_class(output_dir="tmp_trainer")
        if not isinstance(args, GoldfishArguments):
            raise TypeError(
                f"`args` of {type(self).__name__} must be a {self._goldfish_args_class.__name__} (it holds the "
                f"goldfish settings), got {type(args).__name__}."
            )
        super().__init__(model, args, *more, **kwargs)
        special_ids = getattr(self.processing_class, "all_special_ids", None) or ()
        exempt = special_ids if self.args.goldfish_exempt_special_tokens else ()
        self.goldfish_config = self.args.to_goldfish_config(exempt_token_ids=exempt)
        self._goldfish_counts = torch.zeros(2, dtype=torch.long)  # dropped, kept since the last log

    def get_train_dataloader(self):
        base_collator = self.data_collator
        self.data_collator = GoldfishDataCollator(base_collator, self.goldfish_config, return_dropped_counts=True)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = base_collator

    def compute_loss(self, model, inputs, *args, **kwargs):
        dropped = inputs.pop(DROPPED_KEY, None)
        if dropped is not None and model.training:
            labels = inputs["labels"]
            kept = (labels[..., 1:] != -100).sum()
            counts = torch.stack([dropped.sum(), kept]).detach()
            self._goldfish_counts = self._goldfish_counts.to(counts.device) + counts
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # training logs, reached by every rank at the same step
            counts = self.accelerator.reduce(self._goldfish_counts.to(self.accelerator.device), reduction="sum")
            dropped, kept = counts.tolist()
            if dropped + kept:
                logs[DROPPED_FRACTION_LOG] = round(dropped / (dropped + kept), 4)
            self._goldfish_counts = torch.zeros_like(self._goldfish_counts)
        return super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, **kwargs):
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
    the settings come from `args`, a `GoldfishTrainingArguments`."""


# The mixin's `__init__` only checks `args`: show users the constructors they already know.
GoldfishTrainer.__signature__ = inspect.signature(Trainer)
