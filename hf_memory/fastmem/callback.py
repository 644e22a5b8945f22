"""FastMem inside Trainer / Seq2SeqTrainer evaluation and prediction with `predict_with_generate=True`.

Mechanism: Seq2SeqTrainer generates by calling `model.generate(**inputs, **gen_kwargs)` once per batch. When the
Trainer is built, the callback wraps that model's `generate` (an attribute of the instance; the class is untouched):
while the model is in eval mode, each call memorizes the batch's prompts (one set of FFN weights per prompt, the
batch at once), generates, and restores the weights before returning. Training never calls `generate` and runs in
train mode, so it is untouched; calls made while a `FastMem.memorize` is already active, or while a measuring
callback (`MemorizationCallback`, `FactCapacityCallback`) measures the model, pass straight through.

The wrapper is a `FastMemGenerate` object (not a closure), so it follows the model it sits on through
`copy.deepcopy` and pickling, and it lives as long as the callback: training's end leaves it in place (a
`trainer.evaluate()` / `predict()` after `train()` still memorizes), and once the callback is gone (the Trainer
deleted and collected) the model gets its own `generate` back. `detach` unwraps at once.
"""

from __future__ import annotations

import copy
import inspect
import weakref
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .._utils import is_measuring
from .config import FastMemConfig
from .fastmem import FastMem, fastmem_generate, is_memorizing


if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments


class FastMemGenerate:
    """The `generate` that `FastMemCallback.attach` puts on a model instance: memorize the prompts, then generate.

    It is an object, not a closure, so that it follows the model it sits on: `copy.deepcopy(model)` gives the copy a
    `FastMemGenerate` of the copy (same callback), and `torch.save(model)` / pickling works, the loaded model's
    `generate` being the plain one (a callback does not outlive its process). It holds the callback weakly: once
    the callback is gone (the Trainer that held it deleted), it passes every call through, and the callback's
    finalizer takes it off the model.

    It memorizes only in eval mode, outside a `FastMem.memorize` block, and while no measuring callback of
    hf-memory (`MemorizationCallback`, `FactCapacityCallback`) is measuring the model (they measure the model as
    trained); otherwise it calls the model's own `generate`.

    Args:
        callback: The `FastMemCallback` whose `config` is used.
        model: The model it sits on.
        replaced: What `model.__dict__["generate"]` held before (the user's own override), or None.
    """

    def __init__(self, callback: FastMemCallback | None, model: PreTrainedModel, replaced: Any = None):
        self._callback = None if callback is None else weakref.ref(callback)
        self.model = model
        self.replaced = replaced

    @property
    def callback(self) -> FastMemCallback | None:
        """The callback that attached it, or None once that callback is gone."""
        return None if self._callback is None else self._callback()

    def original(self, *args, **kwargs):
        """The model's own `generate`: the user's override that `attach` replaced, else the class method."""
        if self.replaced is None:
            return type(self.model).generate(self.model, *args, **kwargs)
        return self.replaced(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        model, callback = self.model, self.callback
        if callback is None or model.training or is_memorizing(model) or is_measuring(model):
            return self.original(*args, **kwargs)
        signature = inspect.signature(type(model).generate if self.replaced is None else self.replaced)
        if self.replaced is None:  # the unbound class method: bind `self` first
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        # Every argument by name, as `generate` reads them: `inputs` (its first parameter) or `input_ids`.
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        for name, parameter in signature.parameters.items():
            if parameter.kind is parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        inputs, input_ids = arguments.pop("inputs", None), arguments.pop("input_ids", None)
        if (inputs is None) == (input_ids is None):
            raise ValueError("FastMemCallback: pass the prompt to `generate` once, as `inputs` or `input_ids`.")
        return fastmem_generate(model, input_ids if inputs is None else inputs, callback.config, **arguments)

    def __deepcopy__(self, memo: dict) -> FastMemGenerate:
        # the model's copy (already in `memo`: a module is registered before its `__dict__` is copied), same callback
        copied = FastMemGenerate(self.callback, copy.deepcopy(self.model, memo), copy.deepcopy(self.replaced, memo))
        callback = self.callback
        if callback is not None:
            callback._watch(copied.model)
        return copied

    def __reduce__(self):
        # Pickled (torch.save) without the callback: the loaded model's `generate` passes every call through.
        return FastMemGenerate, (None, self.model, self.replaced)


class FastMemCallback(TrainerCallback):
    """Memorize every evaluation / prediction prompt before generating it, inside Trainer or Seq2SeqTrainer.

    When the Trainer is built the model's `generate` is replaced (on the instance) by a `FastMemGenerate`. It stays
    for as long as the callback lives, training's end included, so that `trainer.evaluate()` and
    `trainer.predict()` after `trainer.train()` memorize too; when the callback is garbage-collected (the Trainer
    deleted) the model gets its own `generate` back, and `detach` gives it back at once. A deep copy of the model
    generates with the copy; a pickled model (`torch.save`) loads with a `generate` that memorizes nothing. The
    callback works under `torch.inference_mode()` and `torch.no_grad()` (the memorization itself runs with
    gradients). Hold the callback yourself (`callback = FastMemCallback(...)`) and it outlives the Trainer: then
    call `callback.detach(model)` when done.

    Args:
        config: How to memorize each batch of prompts; None uses the `FastMemConfig` defaults.

    Attributes:
        config: The settings in use.

    Raises:
        TypeError: If `config` is not a `FastMemConfig`.

    Examples:
        >>> callback = FastMemCallback(FastMemConfig(steps=10, lr=1e-4))
        >>> # Seq2SeqTrainer(model, Seq2SeqTrainingArguments(..., predict_with_generate=True), callbacks=[callback])
        >>> callback.config.steps
        10
    """

    def __init__(self, config: FastMemConfig | None = None):
        self.config = config if config is not None else FastMemConfig()
        if not isinstance(self.config, FastMemConfig):
            raise TypeError(f"`config` must be a FastMemConfig, got {type(self.config).__name__}.")

    def on_init_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        """Attach to the Trainer's model once the Trainer is built (see `attach`).

        Args:
            args: The Trainer's training arguments (unused).
            state: The Trainer's state (unused).
            control: The Trainer's control object (unused).
            model: The Trainer's model; nothing is attached when it is None.
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            NotImplementedError: If FastMem does not support the model (see `FastMem`).
            ValueError: If the config's `layer`, `layers` or `lora` does not fit the model.
            RuntimeError: If another `FastMemCallback` already wraps the model's `generate`.
        """
        if model is not None:
            self.attach(model)

    def attach(self, model: PreTrainedModel) -> None:
        """Wrap `model.generate` (also done by the Trainer at construction). Errors early on an unsupported model.

        Attaching twice to the same model is a no-op. The wrapper memorizes only in eval mode, outside a
        `FastMem.memorize` block and outside a measuring callback's measurement; otherwise it calls the original
        `generate`. A wrapper left by a callback that is gone (or by a pickled model) is replaced.

        Args:
            model: The model whose `generate` is wrapped (as an instance attribute; the class is untouched).

        Raises:
            NotImplementedError: If FastMem does not support the model (see `FastMem`).
            ValueError: If the config's `layer`, `layers` or `lora` does not fit the model.
            RuntimeError: If another `FastMemCallback` already wraps the model's `generate`.
        """
        FastMem(model, self.config)  # validates the architecture, layer and contrastive setting now, not mid-eval
        current = model.__dict__.get("generate")
        if isinstance(current, FastMemGenerate) and current.callback is not None:
            if current.callback is self:
                return
            raise RuntimeError("this model's generate is already wrapped by another FastMemCallback: detach it first.")
        if isinstance(current, FastMemGenerate):  # left by a callback that is gone (or a loaded pickle)
            current = current.replaced
        model.generate = FastMemGenerate(self, model, current)
        self._watch(model)

    def _watch(self, model: PreTrainedModel) -> None:
        """Take the wrapper off `model` when this callback is garbage-collected (the Trainer deleted)."""
        weakref.finalize(self, _unwrap, weakref.ref(model))

    def detach(self, model: PreTrainedModel) -> None:
        """Give the model its own `generate` back.

        Does nothing when `generate` is not wrapped by this callback.

        Args:
            model: The model given to `attach`.
        """
        current = model.__dict__.get("generate")
        if isinstance(current, FastMemGenerate) and current.callback is self:
            _restore(model, current)


def _restore(model, wrapper: FastMemGenerate) -> None:
    if wrapper.replaced is None:
        del model.generate
    else:  # the user's own override, exactly as it was
        model.generate = wrapper.replaced


def _unwrap(model_ref: weakref.ref) -> None:
    """The finalizer of a callback: take its (now pass-through) wrapper off the model, if both are still there."""
    model = model_ref()
    current = None if model is None else model.__dict__.get("generate")
    if isinstance(current, FastMemGenerate) and current.callback is None:
        _restore(model, current)
