"""Logging from a `TrainerCallback` through the Trainer that calls it.

A callback is not handed the Trainer, and numbers it adds in `on_log` reach only the integrations that run after
it (`report_to` integrations are registered before user callbacks, so TensorBoard and W&B would never see them).
`log_through_trainer` finds the calling Trainer on the call stack and calls the base class's `log`, so the numbers
get their own entry in `state.log_history` and reach every integration. The base `log` is called, not a subclass
override: TRL's `SFTTrainer.log` folds its running training metrics into whatever is logged and resets them, which
would move them from the next loss entry into the callback's.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback, TrainerControl


def calling_trainer(callback: TrainerCallback) -> Trainer | None:
    """The `transformers.Trainer` up the call stack whose callbacks include `callback`, or None.

    Args:
        callback: The callback instance asking.
    """
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
                return candidate
            frame = frame.f_back
    finally:
        del frame  # a frame held in a local keeps the whole stack alive
    return None


def log_through_trainer(callback: TrainerCallback, control: TrainerControl, logs: dict) -> bool:
    """Log `logs` through the calling Trainer's (base) `log`; False when no Trainer is calling.

    `on_log` clears `control.should_log`; it is given back, so that the Trainer's own log at this step still
    happens.

    Args:
        callback: The callback instance logging.
        control: The control object the callback was handed.
        logs: The numbers to log (the Trainer adds `epoch` and `step`).
    """
    trainer = calling_trainer(callback)
    if trainer is None:
        return False
    from transformers import Trainer

    should_log = control.should_log
    Trainer.log(trainer, dict(logs))
    control.should_log = trainer.control.should_log = should_log
    return True
