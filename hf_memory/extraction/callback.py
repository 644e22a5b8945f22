"""Extraction of a fixed sample of the training data, measured and logged while `Trainer.train()` runs.

The sample is cut and drawn once, at construction, with the callback's own seeded generator. Each measurement is
`measure_extraction` on that sample (eval mode, no gradient, the global random states given back), and its means
go through the Trainer's own `log`, so `state.log_history` and every `report_to` integration get them.

A `TrainerCallback` is not handed the Trainer; `log` is reached through the Trainer that is calling the callback
(`_utils.log_through_trainer`, which says why the base class's `log` is the one called).
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from .._utils import (
    check_choice,
    check_integer,
    check_vocabulary,
    log_through_trainer,
    model_device,
)
from .harness import EXTRACTION_METHODS, check_model, measure_extraction
from .windows import sample_windows


if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments


MEMORIZATION_LOG_PREFIX = "memorization/"


class MemorizationCallback(TrainerCallback):
    """Measure extraction of a fixed sample of the training data during `Trainer.train()` and log it.

    At construction the windows (`prefix_len + suffix_len` tokens; one per sequence, at its start, or one every
    `stride` tokens) are cut from `windows_or_dataset`, and at most `max_windows` of them are drawn with the
    callback's own generator seeded by `seed`: every measurement scores the same windows. A measurement is
    `measure_extraction` on them with the model being trained (unwrapped from DDP; eval mode and no gradient for
    the call, its modes given back). Its means are logged through the Trainer's `log` as
    `memorization/exact_match`, `memorization/memorization_score`, `memorization/longest_common_prefix` and
    `memorization/rouge_l` (with `method="prefix"` only the first and third), in an entry of their own with `epoch`
    and `step`: they reach `trainer.state.log_history` and every `report_to` integration.

    With `every=N` the model is measured after every N-th optimizer step (`state.global_step`, so gradient
    accumulation counts one step per optimizer update); with `every="eval"`, after each evaluation the Trainer
    runs (at most once per step). Under DDP / `accelerate launch` every process takes part: each scores its share
    of the batches and the rows are gathered, so all processes log the same numbers, and the integrations write
    them from the main process only, as they do the loss. Training is bit-identical with and without the callback:
    it draws no number from the global random generators (torch CPU and CUDA, `random`, numpy) and gives their
    states back after each measurement.

    Args:
        windows_or_dataset: The training data: token id sequences (lists, 1-D tensors, a 2-D tensor), a
            `datasets.Dataset` with `input_ids` (e.g. the tokenized `trainer.train_dataset`; padding is dropped
            where an `attention_mask` says so), or any finite iterable of them; read once, here.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        max_windows: At most this many windows are measured, drawn uniformly (seeded) from all windows and kept in
            input order; None measures every window.
        every: "eval" to measure after each evaluation the Trainer runs (needs `eval_strategy` other than "no"),
            or N to measure after every N-th optimizer step.
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
            integer in range, `every` is neither "eval" nor a positive integer, `method` is unknown, the data is
            empty, not token ids, or has no sequence of `prefix_len + suffix_len` tokens. When training starts, if
            `every="eval"` but the Trainer never evaluates, a window holds an id outside the model's vocabulary, the
            model is a PEFT prompt-learning model (prompt or prefix tuning: `measure_extraction` cannot decode it),
            or its learned position embeddings are shorter than a window.

    Example:
        >>> callback = MemorizationCallback([list(range(40)), list(range(5, 45)), [1, 2]], 16, 16, every=10)
        >>> # Trainer(model, args, train_dataset=..., callbacks=[callback]).train()
        >>> callback.windows.shape, callback.num_skipped, callback.history
        (torch.Size([2, 32]), 1, [])
    """

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
        self.prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
        self.suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
        self.max_windows = check_integer(max_windows, "max_windows", minimum=1, allow_none=True)
        self.every = _check_every(every)
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
        self.history: list[dict] = []
        self.seconds = 0.0
        self._measured_step: int | None = None
        self._warned_no_trainer = False

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        """Refuse a schedule that never measures, and a model or windows `measure_extraction` would refuse, before the
        first step.

        Args:
            args: The Trainer's training arguments: `eval_strategy` is checked for `every="eval"`.
            state: The Trainer's state (unused).
            control: The Trainer's control object (unused).
            model: The model about to be trained.
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            ValueError: If `every="eval"` and `args.eval_strategy` is "no", a window holds a token id outside the
                model's vocabulary, the model is a PEFT prompt-learning model, or its learned position embeddings
                are shorter than a window.
        """
        if self.every == "eval" and getattr(args.eval_strategy, "value", args.eval_strategy) == "no":
            raise ValueError(
                "MemorizationCallback(every='eval') measures after each evaluation, but this Trainer never evaluates "
                "(`eval_strategy='no'`): set `eval_strategy` ('steps' or 'epoch') and an `eval_dataset`, or pass "
                "`every=N` to measure every N optimizer steps."
            )
        if model is not None:
            check_model(_unwrapped(model), self.prefix_len, self.suffix_len)
            check_vocabulary(self.windows, _unwrapped(model), "windows_or_dataset")
        self._measured_step = None

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        """With `every=N`, measure and log after every N-th optimizer step.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state: `global_step` (optimizer steps) decides; `epoch` and `step` label the log.
            control: The Trainer's control object (unused).
            model: The model being trained.
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        if self.every != "eval" and state.global_step % self.every == 0:
            self._measure(state, control, model)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        """With `every="eval"`, measure and log after the Trainer's evaluation (once per step).

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state: `epoch` and `step` label the log.
            control: The Trainer's control object (unused).
            model: The model being trained.
            **kwargs: The other objects the Trainer passes to callbacks (`metrics`, unused).
        """
        if self.every == "eval":
            self._measure(state, control, model)

    def _measure(self, state: TrainerState, control: TrainerControl, model) -> None:
        if model is None or state.global_step == self._measured_step:
            return  # several evaluations at one step (several eval datasets) measure once
        model = _unwrapped(model)
        started = time.perf_counter()
        with _global_random_states_kept(model_device(model)):
            result = measure_extraction(
                model,
                self.windows,
                self.prefix_len,
                self.suffix_len,
                batch_size=self.batch_size,
                method=self.method,
                show_progress=False,
            )
        self.seconds += time.perf_counter() - started
        self._measured_step = state.global_step
        self.history.append({"step": state.global_step, "epoch": state.epoch, **result.metrics})
        logs = {f"{MEMORIZATION_LOG_PREFIX}{name}": value for name, value in result.metrics.items()}
        if log_through_trainer(self, control, logs):
            return
        if not self._warned_no_trainer:
            warnings.warn(
                "MemorizationCallback is not being called by a transformers Trainer: its numbers go to "
                "`state.log_history` only, not to the `report_to` integrations.",
                stacklevel=2,
            )
            self._warned_no_trainer = True
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})


def _check_every(every) -> str | int:
    if isinstance(every, str) and every == "eval":
        return every
    try:
        return check_integer(every, "every", minimum=1)
    except ValueError:
        raise ValueError(
            f"`every` must be 'eval' (after each evaluation) or an integer >= 1 (every that many optimizer steps), "
            f"got {every!r}."
        ) from None


def _unwrapped(model):
    """The model inside DDP / `torch.compile` / accelerate wrappers."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


@contextlib.contextmanager
def _global_random_states_kept(device: torch.device) -> Iterator[None]:
    """Give torch's CPU (and, on a GPU, that device's), Python's and numpy's global random states back on exit."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
