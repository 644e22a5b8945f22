"""Extraction of a fixed sample of the training data, measured and logged while `Trainer.train()` runs.

The sample is cut and drawn once, at construction, with the callback's own seeded generator. Each measurement is
`measure_extraction` on that sample; the schedule, the model's unwrapping and modes, the global random states and
the logging through the Trainer come from `_utils.MeasuringCallback`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._utils import MeasuringCallback, check_choice, check_integer, check_vocabulary
from .harness import EXTRACTION_METHODS, check_model, measure_extraction
from .windows import sample_windows


if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments


MEMORIZATION_LOG_PREFIX = "memorization/"


class MemorizationCallback(MeasuringCallback):
    """Measure extraction of a fixed sample of the training data during `Trainer.train()` and log it.

    At construction the windows (`prefix_len + suffix_len` tokens; one per sequence, at its start, or one every
    `stride` tokens) are cut from `windows_or_dataset`, and at most `max_windows` of them are drawn with the
    callback's own generator seeded by `seed`: every measurement scores the same windows. A measurement is
    `measure_extraction` on them with the model being trained. Its means are logged through the Trainer's `log` as
    `memorization/exact_match`, `memorization/memorization_score`, `memorization/longest_common_prefix` and
    `memorization/rouge_l` (with `method="prefix"` only the first and third), in an entry of their own with `epoch`
    and `step`: they reach `trainer.state.log_history` and every `report_to` integration. They can select the best
    checkpoint: `metric_for_best_model="memorization/exact_match"` (with `greater_is_better=False` to keep the
    checkpoint that memorized least).

    The schedule, the model measured (unwrapped from accelerate / DDP / `torch.compile`; a PEFT model as the
    `PeftModel`; eval mode and no gradient, its modes given back), the global random states kept (training is
    bit-identical with and without the callback), the behaviour without a Trainer and best-model selection are
    those of `hf_memory._utils.MeasuringCallback`. Under DDP / `accelerate launch` every process takes part: each
    scores its share of the batches and the rows are gathered, so all processes log the same numbers, and the
    integrations write them from the main process only, as they do the loss.

    Args:
        windows_or_dataset: The training data: token id sequences (lists, 1-D tensors, a 2-D tensor), a
            `datasets.Dataset` with `input_ids` (e.g. the tokenized `trainer.train_dataset`; padding is dropped
            where an `attention_mask` says so), or any finite iterable of them; read once, here.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        max_windows: At most this many windows are measured, drawn uniformly (seeded) from all windows and kept in
            input order; None measures every window.
        every: "eval" to measure after each evaluation the Trainer runs (at most once per step; needs
            `eval_strategy` other than "no"), "epoch" at the end of each epoch, or N to measure after every N-th
            optimizer step (`state.global_step`: gradient accumulation counts one step per update) and the last.
        method: `measure_extraction`'s method: "auto", "prefix" (exact match and longest common prefix only,
            cheapest) or "generate".
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window per sequence, at its
            start.
        batch_size: Windows per forward pass of a measurement.
        seed: Seed of the callback's own generator that draws the sample.

    Attributes:
        windows: The measured windows, a 2-D int64 tensor (one row of `prefix_len + suffix_len` tokens each).
        window_index: Per window, `(sequence index, start token)`: where in the data it was cut.
        num_skipped: Sequences shorter than one window (they give none).
        history: One dict per measurement: `step`, `epoch` and the unprefixed means (`exact_match`, ...).
        seconds: Wall-clock seconds spent measuring so far, all measurements together.

    Raises:
        ValueError: At construction, if a length, `max_windows`, `stride`, `batch_size` or `seed` is not an
            integer in range, `every` is not "eval", "epoch" or a positive integer, `method` is unknown, the data is
            empty, not token ids, or has no sequence of `prefix_len + suffix_len` tokens. When training starts, if
            `every="eval"` but the Trainer never evaluates, `metric_for_best_model` names a number this method
            does not report, a window holds an id outside the model's vocabulary, the model is a PEFT
            prompt-learning model (prompt or prefix tuning: `measure_extraction` cannot decode it), or its learned
            position embeddings are shorter than a window.

    Examples:
        >>> callback = MemorizationCallback([list(range(40)), list(range(5, 45)), [1, 2]], 16, 16, every=10)
        >>> # Trainer(model, args, train_dataset=..., callbacks=[callback]).train()
        >>> callback.windows.shape, callback.num_skipped, callback.history
        (torch.Size([2, 32]), 1, [])
    """

    log_prefix = MEMORIZATION_LOG_PREFIX

    def __init__(
        self,
        windows_or_dataset,
        prefix_len: int = 32,
        suffix_len: int = 32,
        max_windows: int | None = 256,
        every: str | int = "eval",
        method: str = "auto",
        stride: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(every)
        self.prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
        self.suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
        self.max_windows = check_integer(max_windows, "max_windows", minimum=1, allow_none=True)
        self.method = check_choice(method, "method", EXTRACTION_METHODS)
        self.stride = check_integer(stride, "stride", minimum=1, allow_none=True)
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.seed = check_integer(seed, "seed", minimum=0)
        sample = sample_windows(
            windows_or_dataset,
            self.prefix_len,
            self.suffix_len,
            self.stride,
            self.max_windows,
            self.seed,
            name="windows_or_dataset",
        )
        self.windows, self.window_index, self.num_skipped = sample.windows, sample.index, sample.num_skipped

    def metric_names(self) -> list[str]:
        """The means each measurement reports (without the `memorization/` prefix)."""
        if self.method == "prefix":
            return ["exact_match", "longest_common_prefix"]
        return ["exact_match", "memorization_score", "longest_common_prefix", "rouge_l"]

    def check(self, model, args: TrainingArguments, **kwargs: Any) -> None:
        """Refuse a model or windows `measure_extraction` would refuse, before the first step.

        Args:
            model: The model about to be trained (unwrapped).
            args: The Trainer's training arguments (unused).
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            ValueError: If a window holds a token id outside the model's vocabulary, the model is a PEFT
                prompt-learning model, or its learned position embeddings are shorter than a window.
        """
        check_model(model, self.prefix_len, self.suffix_len)
        check_vocabulary(self.windows, model, "windows_or_dataset")

    def measure(self, model, state: TrainerState) -> dict[str, float]:
        """`measure_extraction`'s means on the windows.

        Args:
            model: The model being trained (unwrapped, eval mode, no gradient).
            state: The Trainer's state (unused).
        """
        result = measure_extraction(
            model,
            self.windows,
            self.prefix_len,
            self.suffix_len,
            batch_size=self.batch_size,
            method=self.method,
            show_progress=False,
        )
        return result.metrics
