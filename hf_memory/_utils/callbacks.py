"""One base for the callbacks that measure a model while `Trainer.train()` runs (transformers' `TrainerCallback`).

Every measuring callback needs the same plumbing: when to measure, the model out of its training wrappers, eval mode
and no gradient for the measurement, the global random states given back (so training is bit-identical with and
without the callback), logging through the Trainer so the `report_to` integrations see the numbers, and the
numbers usable as `metric_for_best_model`. `MeasuringCallback` holds all of it; a subclass says what it measures.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from transformers import TrainerCallback

from .checks import check_integer
from .modeling import eval_mode, model_device
from .training import log_through_trainer


if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments


EVERY_UNITS = ("steps", "epochs")

_MEASURING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> measurements under way
_MEASURING_LOCK = threading.Lock()


def is_measuring(model: torch.nn.Module) -> bool:
    """Whether a `MeasuringCallback` is measuring `model` right now (from any thread).

    What a measurement reads is the model as trained: an inference-time change of the model (a `FastMemCallback`
    wrapped `generate`) passes through while this is True.

    Args:
        model: A `torch.nn.Module`.
    """
    return _MEASURING.get(model, 0) > 0


@contextlib.contextmanager
def measuring(model: torch.nn.Module) -> Iterator[None]:
    """Mark `model` as being measured inside the block (see `is_measuring`); blocks may nest and overlap.

    Args:
        model: A `torch.nn.Module`.
    """
    with _MEASURING_LOCK:
        _MEASURING[model] = _MEASURING.get(model, 0) + 1
    try:
        yield
    finally:
        with _MEASURING_LOCK:
            _MEASURING[model] -= 1
            if not _MEASURING[model]:
                del _MEASURING[model]


class MeasuringCallback(TrainerCallback):
    """Base of the callbacks that measure the model being trained and log the numbers through the Trainer.

    A subclass sets `log_prefix` and implements `measure(model, state)`, returning its numbers by name without the
    prefix; it may implement `check(model, args, **kwargs)` (refuse a model or setting when training starts, before
    the first step) and `metric_names()` (the names `measure` returns, when known in advance). The base does the
    rest:

    - **Schedule** (`every`): "eval" measures after each evaluation the Trainer runs (at most once per step, however
      many eval datasets); "epoch" at the end of each epoch; an integer N every N optimizer steps (`state.
      global_step`, so gradient accumulation counts one step per update), or every N epochs where the subclass sets
      `every_unit = "epochs"`. An integer schedule also measures at the end of training (the last step, or the last
      epoch). A schedule that would never measure (`every="eval"` on a Trainer that never evaluates) is refused at
      `on_train_begin`.
    - **The model measured** is the one being trained, out of its accelerate / DDP / `torch.compile` wrappers; a
      PEFT model is measured as the `PeftModel` (adapters active). It is in eval mode with no gradient for the
      measurement, and every module gets its own mode back. It is measured as trained: a `FastMemCallback` in the
      same Trainer does not memorize the prompts of a measurement (`is_measuring`).
    - **Training is bit-identical** with and without the callback: the global random states (torch CPU and the
      model's CUDA device, `random`, numpy) are given back after each measurement.
    - **Results**: `history` gets one dict per measurement (`step`, `epoch` and the numbers without the prefix),
      `seconds` the wall-clock time spent measuring. The numbers are logged with the prefix through the Trainer's
      own `log` (`_utils.log_through_trainer`), in an entry of their own with `epoch` and `step`: they reach
      `state.log_history` and every `report_to` integration.
    - **Best-model selection**: when an evaluation happens at a step the callback measured, the numbers also go
      into that evaluation's metrics as `eval_<prefix><name>`, which is the key the Trainer reads for
      `metric_for_best_model="<prefix><name>"`. When `metric_for_best_model` names one of the callback's numbers,
      the callback measures at every evaluation, whatever its schedule, and a name it never reports is refused at
      `on_train_begin`. Place the callback before an `EarlyStoppingCallback` that watches its numbers (callbacks
      see an evaluation in list order).
    - **Without a Trainer** (a hand-written loop calling the hooks), the numbers go into `history` and, as an entry
      of their own, into `state.log_history`, with one warning that the `report_to` integrations do not see them.

    Args:
        every: The schedule: "eval", "epoch" or an integer >= 1 (optimizer steps, or epochs where `every_unit` is
            "epochs").

    Attributes:
        log_prefix: (class attribute) Prefix of the logged names, e.g. "memorization/".
        every_unit: (class attribute) What an integer `every` counts: "steps" (the default) or "epochs".
        history: One dict per measurement: `step`, `epoch` and the numbers without the prefix.
        seconds: Wall-clock seconds spent measuring so far, all measurements together.

    Raises:
        ValueError: At construction, if `every` is not a schedule; when training starts, as described above.

    Examples:
        >>> import torch
        >>> from transformers import TrainerState
        >>> class WeightNorm(MeasuringCallback):
        ...     log_prefix = "weights/"
        ...
        ...     def measure(self, model, state):
        ...         return {"norm": torch.linalg.vector_norm(model.weight).item()}
        ...
        ...     def metric_names(self):
        ...         return ["norm"]
        >>> callback = WeightNorm(every=2)
        >>> # Trainer(model, args, train_dataset=..., callbacks=[callback]).train(); here a loop calls the hooks:
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        >>> state = TrainerState(max_steps=3)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):  # no Trainer is calling: one warning says so
        ...     for step in (1, 2, 3):
        ...         state.global_step, state.epoch = step, step / 3
        ...         callback.on_step_end(None, state, None, model=model)
        >>> [(h["step"], h["norm"]) for h in callback.history]  # every 2 steps, and the last one
        [(2, 5.0), (3, 5.0)]
        >>> state.log_history[0]
        {'weights/norm': 5.0, 'epoch': 0.6666666666666666, 'step': 2}
    """

    log_prefix: ClassVar[str] = ""
    every_unit: ClassVar[str] = "steps"

    def __init__(self, every: str | int = "eval") -> None:
        self.every = check_every(every, self.every_unit)
        self.history: list[dict] = []
        self.seconds = 0.0
        self._measured_step: int | None = None
        self._for_best_model = False
        self._warned_no_trainer = False

    # ---------------------------------------------------------------- what a subclass implements

    def measure(self, model: torch.nn.Module, state: TrainerState) -> dict[str, float]:
        """Measure `model` (unwrapped, in eval mode, no gradient) and return the numbers by name, without the prefix.

        Args:
            model: The model being trained.
            state: The Trainer's state (`global_step`, `epoch`).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `measure(model, state)`.")

    def check(self, model: torch.nn.Module, args: TrainingArguments, **kwargs: Any) -> None:
        """Refuse a model or setting when training starts, before the first step (nothing by default).

        Args:
            model: The model about to be trained (unwrapped).
            args: The Trainer's training arguments.
            **kwargs: The other objects the Trainer passes to callbacks (`processing_class`, ...).
        """

    def metric_names(self) -> list[str] | None:
        """The names `measure` returns (without the prefix), or None when they are not known in advance."""
        return None

    # ---------------------------------------------------------------- the Trainer's events

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs: Any
    ) -> None:
        """Refuse a schedule that never measures, a `metric_for_best_model` the callback never reports, and what the
        subclass's `check` refuses, before the first step.

        Args:
            args: The Trainer's training arguments.
            state: The Trainer's state (`max_steps`, `num_train_epochs`).
            control: The Trainer's control object (unused).
            model: The model about to be trained.
            **kwargs: The other objects the Trainer passes to callbacks, handed to `check`.

        Raises:
            ValueError: If `every="eval"` and the Trainer never evaluates, `metric_for_best_model` names a number of
                this callback that it does not report, or as the subclass's `check`.
        """
        if self.every == "eval" and not _evaluates(args, state):
            raise ValueError(
                f"{type(self).__name__}(every='eval') measures after each evaluation, but this Trainer never "
                f"evaluates ({_evaluation_settings(args)}): set `eval_strategy` ('steps' or 'epoch') and an "
                f"`eval_dataset`, or pass `every=N` to measure every N optimizer {self.every_unit}."
            )
        self._for_best_model = self._names_best_metric(args)
        if model is not None:
            self.check(unwrap_model(model), args, **kwargs)
        self._measured_step = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs: Any
    ) -> None:
        """With `every=N` optimizer steps, measure after every N-th step and the last one.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state: `global_step` decides; `epoch` and `step` label the numbers.
            control: The Trainer's control object.
            model: The model being trained.
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        if isinstance(self.every, int) and self.every_unit == "steps":
            last = bool(state.max_steps) and state.global_step >= state.max_steps
            if state.global_step % self.every == 0 or last:
                self._measure(state, control, model)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs: Any
    ) -> None:
        """With `every="epoch"` or every N epochs, measure at the end of an epoch (and of the last one).

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state: `epoch` decides; `epoch` and `step` label the numbers.
            control: The Trainer's control object.
            model: The model being trained.
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        if self.every == "epoch":
            self._measure(state, control, model)
        elif isinstance(self.every, int) and self.every_unit == "epochs":
            epoch = round(state.epoch) if state.epoch is not None else len(self.history) + 1
            last = (bool(state.max_steps) and state.global_step >= state.max_steps) or (
                bool(state.num_train_epochs) and epoch >= state.num_train_epochs
            )
            if epoch % self.every == 0 or last:
                self._measure(state, control, model)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model=None,
        metrics: dict | None = None,
        **kwargs: Any,
    ) -> None:
        """With `every="eval"` (or a `metric_for_best_model` naming this callback's numbers), measure after the
        evaluation; numbers measured at this step go into the evaluation's `metrics` as `eval_<prefix><name>`.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state: `epoch` and `step` label the numbers.
            control: The Trainer's control object.
            model: The model being trained.
            metrics: The evaluation's metrics, which the Trainer then uses for best-model selection.
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        if self.every == "eval" or self._for_best_model:
            self._measure(state, control, model)
        if metrics is not None and self.history and self._measured_step == state.global_step:
            numbers = {k: v for k, v in self.history[-1].items() if k not in ("step", "epoch")}
            metrics.update({f"eval_{self.log_prefix}{name}": value for name, value in numbers.items()})

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Forget the step last measured: a `trainer.evaluate()` after training (after the best model was loaded,
        say) measures the model as it is then.

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state (unused).
            control: The Trainer's control object (unused).
            **kwargs: The other objects the Trainer passes to callbacks (unused).
        """
        self._measured_step = None

    # ---------------------------------------------------------------- the plumbing

    def _names_best_metric(self, args: TrainingArguments) -> bool:
        """Whether `metric_for_best_model` names one of this callback's numbers (refused if it names one that the
        callback never reports)."""
        name = getattr(args, "metric_for_best_model", None)
        if not name or not self.log_prefix:
            return False
        bare = name[len("eval_") :] if name.startswith("eval_") else name
        if not bare.startswith(self.log_prefix):
            return False
        names = self.metric_names()
        if names is not None and bare[len(self.log_prefix) :] not in names:
            raise ValueError(
                f"`metric_for_best_model` is {name!r}, but {type(self).__name__} reports "
                f"{', '.join(repr(self.log_prefix + n) for n in names)} only."
            )
        return True

    def _measure(self, state: TrainerState, control: TrainerControl | None, model) -> None:
        if model is None or state.global_step == self._measured_step:
            return  # at most one measurement per step (several eval datasets, an epoch end at an N-th step)
        model = unwrap_model(model)
        started = time.perf_counter()
        with (
            global_random_states_kept(model_device(model)),
            eval_mode(model, type(self).__name__),
            measuring(model),
            torch.no_grad(),
        ):
            numbers = dict(self.measure(model, state))
        self.seconds += time.perf_counter() - started
        self._measured_step = state.global_step
        self.history.append({"step": state.global_step, "epoch": state.epoch, **numbers})
        logs = {f"{self.log_prefix}{name}": value for name, value in numbers.items()}
        if control is not None and log_through_trainer(self, control, logs):
            return
        if not self._warned_no_trainer:
            warnings.warn(
                f"{type(self).__name__} is not being called by a transformers Trainer: its numbers go to "
                "`history` and `state.log_history` only, not to the `report_to` integrations.",
                stacklevel=3,
            )
            self._warned_no_trainer = True
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})


def check_every(every, unit: str = "steps") -> str | int:
    """Return a measuring schedule: "eval", "epoch" or an integer >= 1 (`unit`: optimizer "steps" or "epochs").

    Args:
        every: The schedule to check; numpy integers are accepted.
        unit: What an integer counts, for the message.

    Raises:
        ValueError: If `every` is none of these.
    """
    if isinstance(every, str) and every in ("eval", "epoch"):
        return every
    try:
        return check_integer(every, "every", minimum=1)
    except ValueError:
        counted = "optimizer steps" if unit == "steps" else "epochs"
        raise ValueError(
            f"`every` must be 'eval' (after each evaluation), 'epoch' (at the end of each epoch) or an integer >= 1 "
            f"(every that many {counted}), got {every!r}."
        ) from None


def unwrap_model(model):
    """The model inside accelerate / DDP / DeepSpeed / `torch.compile` wrappers (a `PeftModel` stays one).

    Args:
        model: The model a Trainer hands its callbacks.
    """
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_torch_compile=False)


@contextlib.contextmanager
def global_random_states_kept(device: torch.device | None = None) -> Iterator[None]:
    """Give torch's CPU (and, on a GPU, that device's), Python's and numpy's global random states back on exit.

    Args:
        device: The device whose CUDA generator is kept too (None or a CPU device: the CPU one only).
    """
    python, numpy = random.getstate(), np.random.get_state()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def _evaluation_settings(args) -> str:
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    return f"`eval_strategy={strategy!r}`" + (f", `eval_delay={args.eval_delay}`" if strategy != "no" else "")


def _evaluates(args, state) -> bool:
    """Whether the Trainer will evaluate at least once during training (DefaultFlowCallback's rules)."""
    if args is None:
        return True  # no Trainer: whoever calls `on_evaluate` decides
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    if strategy == "no":
        return False
    delay = getattr(args, "eval_delay", 0) or 0
    if strategy == "steps" and state.max_steps:
        return delay <= state.max_steps  # steps strategy evaluates at the last step too
    if strategy == "epoch" and state.num_train_epochs:
        return delay <= state.num_train_epochs
    return True
