"""Fact capacity measured and logged while `Trainer.train()` runs (at the end of every epoch by default)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .._utils import MeasuringCallback, check_keywords
from .capacity import _capacity_rows, _reusable, fact_capacity


if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments


FACT_CAPACITY_LOG_PREFIX = "fact_capacity/"


class FactCapacityCallback(MeasuringCallback):
    """Measure `fact_capacity` during `Trainer.train()` (every epoch by default) and log it through the Trainer.

    Each measurement is `fact_capacity` on the facts; it logs `fact_capacity/count` (facts known),
    `fact_capacity/fraction` and, per attribute, `fact_capacity/known/<attribute>` through the Trainer's own `log`,
    in an entry of their own with `epoch` and `step`: they land in `trainer.state.log_history` and reach every
    `report_to` integration (TensorBoard, W&B, ...), and `metric_for_best_model="fact_capacity/count"` selects the
    checkpoint that knows most facts. The schedule, the model measured (unwrapped, eval mode, modes given back),
    the global random states kept, the behaviour without a Trainer and best-model selection are those of
    `hf_memory._utils.MeasuringCallback`.

    Args:
        facts: What `fact_capacity` takes: a `SyntheticFactSet` or rows with `prompt` and `target`.
        tokenizer: The tokenizer the facts are encoded with; None uses the Trainer's `processing_class`.
        every: An integer N to measure every N epochs (and at the last one), "epoch" (every epoch), or "eval"
            (after each evaluation the Trainer runs).
        **capacity_kwargs: Passed to `fact_capacity` (`split`, `direction`, `template`, `batch_size`,
            `padding_side`).

    Attributes:
        history: One dict per measurement: `step`, `epoch`, `count`, `fraction` and `known/<attribute>`.
        results: The `FactCapacityResult` of every measurement, in order (with the per-fact verdicts).
        seconds: Wall-clock seconds spent measuring so far.

    Raises:
        ValueError: On unusable facts, an unknown `fact_capacity` argument or a bad value of one, or a bad `every`,
            at construction; when training starts, if neither the callback nor the Trainer has a tokenizer, or as
            `MeasuringCallback`.

    Examples:
        >>> from hf_memory.fact_scaling import SyntheticFactSet
        >>> facts = SyntheticFactSet(num_entities=4, attributes={"pet": 4}, seed=0)
        >>> callback = FactCapacityCallback(facts, tokenizer=facts.build_tokenizer())
        >>> # Trainer(model, args, train_dataset=facts.to_dataset(tokenizer=...), callbacks=[callback]).train()
        >>> callback.history, callback.metric_names()
        ([], ['count', 'fraction', 'known/pet'])
    """

    log_prefix = FACT_CAPACITY_LOG_PREFIX
    every_unit = "epochs"

    def __init__(self, facts, tokenizer=None, every: str | int = 1, **capacity_kwargs: Any):
        super().__init__(every)
        self.facts = _reusable(facts)  # a generator would be empty at the second epoch
        self.tokenizer = tokenizer
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
        rows, _, _ = _capacity_rows(*(call.arguments[name] for name in names))
        self._attributes = sorted({str(row["attribute"]) for row in rows if row.get("attribute") is not None})
        self.results: list = []
        self._trainer_tokenizer = None

    def metric_names(self) -> list[str]:
        """The numbers each measurement reports (without the `fact_capacity/` prefix)."""
        return ["count", "fraction", *(f"known/{name}" for name in self._attributes)]

    def check(self, model, args: TrainingArguments, processing_class: Any = None, **kwargs: Any) -> None:
        """Take the Trainer's tokenizer when the callback was given none; refuse training without one.

        Args:
            model: The model about to be trained (unused).
            args: The Trainer's training arguments (unused).
            processing_class: The Trainer's tokenizer.
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            ValueError: If neither the callback nor the Trainer has a tokenizer.
        """
        self._trainer_tokenizer = processing_class
        self._tokenizer()

    def _tokenizer(self):
        tokenizer = self.tokenizer if self.tokenizer is not None else self._trainer_tokenizer
        if tokenizer is None or not callable(tokenizer):
            raise ValueError("FactCapacityCallback needs a tokenizer: pass `tokenizer=` or the Trainer's one.")
        return tokenizer

    def measure(self, model, state: TrainerState) -> dict[str, float]:
        """`fact_capacity` on the facts: the count, the fraction and the known facts per attribute.

        Args:
            model: The model being trained (unwrapped, eval mode, no gradient).
            state: The Trainer's state (unused).

        Raises:
            ValueError: If there is no tokenizer, or as `fact_capacity`.
        """
        result = fact_capacity(model, self._tokenizer(), self.facts, **self.capacity_kwargs)
        self.results.append(result)
        numbers = {"count": result.count, "fraction": result.fraction}
        numbers.update({f"known/{name}": entry["known"] for name, entry in result.by_attribute.items()})
        return numbers
