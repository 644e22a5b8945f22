"""Fact capacity logged by `Trainer.train()` at the end of every epoch."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .._utils import check_integer, check_keywords, log_through_trainer
from .capacity import _capacity_rows, _reusable, fact_capacity


if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments


class FactCapacityCallback(TrainerCallback):
    """Measure `fact_capacity` at the end of every epoch and log it through the Trainer's logging.

    At each epoch end the callback measures the facts (model in eval mode, its mode given back) and logs
    `fact_capacity` (the count), `fact_capacity_fraction` and, per attribute, `fact_capacity/<attribute>` through
    the Trainer's own `log`, in an entry of their own with `epoch` and `step`: they land in
    `trainer.state.log_history` and reach every `report_to` integration (TensorBoard, W&B, ...). Called by
    something other than a `transformers.Trainer`, it asks for a log instead and adds the numbers to that entry
    (or to an entry of their own) in `state.log_history`.

    Args:
        facts: What `fact_capacity` takes: a `SyntheticFactSet` or rows with `prompt` and `target`.
        tokenizer: The tokenizer the facts are encoded with; None uses the Trainer's `processing_class`.
        every: Measure every `every` epochs (the last epoch is measured too).
        **capacity_kwargs: Passed to `fact_capacity` (`split`, `direction`, `template`, `batch_size`,
            `padding_side`).

    Attributes:
        history: `(epoch, FactCapacityResult)` for every measurement, in order.

    Raises:
        ValueError: On unusable facts, an unknown `fact_capacity` argument or a bad value of one, at construction.

    Examples:
        >>> from hf_memory.fact_scaling import SyntheticFactSet
        >>> facts = SyntheticFactSet(num_entities=4, attributes={"pet": 4}, seed=0)
        >>> callback = FactCapacityCallback(facts, tokenizer=facts.build_tokenizer())
        >>> # Trainer(model, args, train_dataset=facts.to_dataset(tokenizer=...), callbacks=[callback]).train()
        >>> callback.history
        []
    """

    def __init__(self, facts, tokenizer=None, every: int = 1, **capacity_kwargs: Any):
        self.facts = _reusable(facts)  # a generator would be empty at the second epoch
        self.tokenizer = tokenizer
        self.every = check_integer(every, "every", minimum=1)
        check_keywords(
            capacity_kwargs,
            ("split", "direction", "template", "batch_size", "padding_side"),
            "FactCapacityCallback (keyword arguments of `fact_capacity`)",
        )
        self.capacity_kwargs = capacity_kwargs
        # refuse unusable facts and settings now rather than at the end of the first epoch
        call = inspect.signature(fact_capacity).bind(None, None, self.facts, **capacity_kwargs)
        call.apply_defaults()
        names = ("facts", "split", "direction", "template", "batch_size", "padding_side")
        _capacity_rows(*(call.arguments[name] for name in names))
        self.history: list = []
        self._pending: dict | None = None

    def _flush(self, state: TrainerState) -> None:
        """Give pending numbers their own log entry when no Trainer log carried them."""
        if self._pending is not None:
            state.log_history.append(dict(self._pending))
            self._pending = None

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> TrainerControl:
        """Measure the facts and ask the Trainer to log.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state (epoch and step of the measurement).
            control: The Trainer's control object (`should_log` is set when no Trainer is calling).
            model: The model being trained.
            processing_class: The Trainer's tokenizer, used when the callback was given none.
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            ValueError: If there is no tokenizer, or as `fact_capacity`.
        """
        self._flush(state)
        epoch = round(state.epoch) if state.epoch is not None else len(self.history) + 1
        last = state.num_train_epochs is not None and epoch >= state.num_train_epochs
        if model is None or (epoch % self.every and not last):
            return control
        tokenizer = self.tokenizer if self.tokenizer is not None else processing_class
        if tokenizer is None or not callable(tokenizer):
            raise ValueError("FactCapacityCallback needs a tokenizer: pass `tokenizer=` or the Trainer's one.")
        result = fact_capacity(model, tokenizer, self.facts, **self.capacity_kwargs)
        self.history.append((state.epoch, result))
        logs = {"fact_capacity": result.count, "fact_capacity_fraction": result.fraction}
        logs.update({f"fact_capacity/{name}": entry["known"] for name, entry in result.by_attribute.items()})
        if log_through_trainer(self, control, logs):
            return control
        self._pending = {**logs, "epoch": state.epoch, "step": state.global_step}
        control.should_log = True
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the pending numbers to the Trainer's log entry (in `state.log_history` and in `logs`).

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state, whose last `log_history` entry is this log.
            control: The Trainer's control object (unused).
            logs: The values being logged.
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        if self._pending is None:
            return
        numbers = {k: v for k, v in self._pending.items() if k not in ("epoch", "step")}
        if logs is not None:
            logs.update(numbers)
        if state.log_history and state.log_history[-1].get("step") == self._pending["step"]:
            state.log_history[-1].update(numbers)
            self._pending = None
        else:
            self._flush(state)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        """Give numbers no Trainer log carried their own entry before training goes on.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state.
            control: The Trainer's control object (unused).
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        self._flush(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        """Give numbers no Trainer log carried their own entry at the end of training.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state.
            control: The Trainer's control object (unused).
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        self._flush(state)
