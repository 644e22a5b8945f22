"""Training plumbing the capabilities share: one optimizer-step loop with the house's model guards, and logging from a
`TrainerCallback` through the Trainer that calls it.

`train_steps` is the loop of every hand-written training run (fact scaling's `train_on_facts`, MemControl's inner
loops): AdamW on the trainable parameters, an optional schedule and gradient clip, batches drawn from a seeded
generator, the model held with `exclusive` and given back its modes.

A callback is not handed the Trainer, and numbers it adds in `on_log` reach only the integrations that run after
it (`report_to` integrations are registered before user callbacks, so TensorBoard and W&B would never see them).
`log_through_trainer` finds the calling Trainer on the call stack and calls the base class's `log`, so the numbers
get their own entry in `state.log_history` and reach every integration. The base `log` is called, not a subclass
override: TRL's `SFTTrainer.log` folds its running training metrics into whatever is logged and resets them, which
would move them from the next loss entry into the callback's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from .modeling import exclusive, restored


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


def train_steps(
    model: torch.nn.Module,
    batches: Callable[[torch.Generator], Iterable[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    lr: float,
    seed: int = 0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    max_grad_norm: float | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    on_step: Callable[[float], None] | None = None,
    what: str = "training",
) -> list[float]:
    """Train `model` in place: one AdamW step per batch on its trainable parameters; return every step's loss.

    The model is held with `exclusive(model, what)` (no other in-place call and no reader of another thread can
    overlap it), put in train mode, and on every exit path (an exception or Ctrl-C included) every module gets its
    own `training` flag back (`restored`, which restores no weight) and every trained parameter's `.grad` is None.
    A step is: loss, zero the gradients, backward, clip (with `max_grad_norm`), optimizer step, scheduler step. The
    callers check their own arguments; this function checks none.

    Args:
        model: The model; the parameters with `requires_grad` are trained.
        batches: `batches(generator)` -> an iterable of batches (any objects `loss_fn` takes), drawing its randomness
            from `generator` (a CPU `torch.Generator` seeded with `seed`). It is consumed lazily, one batch per
            step, so work it does between two batches (a measurement at the end of an epoch) runs with the model
            held and in train mode.
        loss_fn: `loss_fn(batch)` -> the scalar loss tensor of a batch.
        lr: AdamW's learning rate (the peak of `scheduler`'s schedule).
        seed: The seed of the generator handed to `batches` (the global torch RNG, which dropout draws from, is
            left to the caller).
        weight_decay: AdamW's weight decay.
        betas: AdamW's betas.
        max_grad_norm: Clip the gradients' total norm to this; None does not clip.
        scheduler: `scheduler(optimizer)` -> a learning-rate scheduler stepped after every optimizer step; None keeps
            `lr` constant.
        on_step: Called with each step's loss (a float) after the step.
        what: The caller's name, shown by `exclusive` to whoever is refused.

    Returns:
        The loss of every step, in order.

    Raises:
        ValueError: If the model has no trainable parameter.
        RuntimeError: If another call is changing `model` in place, or another thread is reading it.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{what}: the model has no trainable parameter (every `requires_grad` is False).")
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=betas)
    schedule = scheduler(optimizer) if scheduler is not None else None
    generator = torch.Generator().manual_seed(seed)
    losses = []
    # trains under a caller's `torch.inference_mode()` / `no_grad()` too: gradients are what this loop is for
    with exclusive(model, what), restored(model, names=()), torch.inference_mode(False), torch.enable_grad():
        model.train()
        try:
            for batch in batches(generator):
                loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                losses.append(loss.item())
                if on_step is not None:
                    on_step(losses[-1])
        finally:
            optimizer.zero_grad(set_to_none=True)
    return losses
