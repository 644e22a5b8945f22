"""FastMem inside Trainer / Seq2SeqTrainer evaluation and prediction with `predict_with_generate=True`.

Mechanism: Seq2SeqTrainer generates by calling `model.generate(**inputs, **gen_kwargs)` once per batch. When the
Trainer is built, the callback wraps that model's `generate` (an attribute of the instance; the class is untouched):
while the model is in eval mode, each call memorizes the batch's prompts (one set of FFN weights per prompt, the
batch at once), generates, and restores the weights before returning. Training never calls `generate` and runs in
train mode, so it is untouched; calls made while a `FastMem.memorize` is already active pass straight through.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .config import FastMemConfig
from .fastmem import FastMem, fastmem_generate, is_memorizing


if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerControl, TrainerState, TrainingArguments


_WRAPPED = "_hf_memory_fastmem_generate"
_NOTHING = object()  # the model had no `generate` of its own before `attach` (only the class method)


class FastMemCallback(TrainerCallback):
    """Memorize every evaluation / prediction prompt before generating it, inside Trainer or Seq2SeqTrainer.

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
        self._replaced: dict[int, Any] = {}  # id(model) -> the instance `generate` that `attach` replaced

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

        Attaching twice to the same model is a no-op. The wrapper memorizes only in eval mode and outside a
        `FastMem.memorize` block; otherwise it calls the original `generate`.

        Args:
            model: The model whose `generate` is wrapped (as an instance attribute; the class is untouched).

        Raises:
            NotImplementedError: If FastMem does not support the model (see `FastMem`).
            ValueError: If the config's `layer`, `layers` or `lora` does not fit the model.
            RuntimeError: If another `FastMemCallback` already wraps the model's `generate`.
        """
        FastMem(model, self.config)  # validates the architecture, layer and contrastive setting now, not mid-eval
        if getattr(model.generate, _WRAPPED, None) is not None:
            if getattr(model.generate, _WRAPPED) is self:
                return
            raise RuntimeError("this model's generate is already wrapped by another FastMemCallback: detach it first.")
        original = model.generate
        signature = inspect.signature(original)

        def generate(*args, **kwargs):
            if model.training or is_memorizing(model):
                return original(*args, **kwargs)
            # Every argument by name, as `generate` reads them: `inputs` (its first parameter) or `input_ids`.
            arguments = dict(signature.bind(*args, **kwargs).arguments)
            for name, parameter in signature.parameters.items():
                if parameter.kind is parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
            inputs, input_ids = arguments.pop("inputs", None), arguments.pop("input_ids", None)
            if (inputs is None) == (input_ids is None):
                raise ValueError("FastMemCallback: pass the prompt to `generate` once, as `inputs` or `input_ids`.")
            return fastmem_generate(model, input_ids if inputs is None else inputs, self.config, **arguments)

        setattr(generate, _WRAPPED, self)
        self._replaced[id(model)] = model.__dict__.get("generate", _NOTHING)
        model.generate = generate

    def detach(self, model: PreTrainedModel) -> None:
        """Give the model its own `generate` back.

        Does nothing when `generate` is not wrapped by this callback.

        Args:
            model: The model given to `attach`.
        """
        if getattr(model.generate, _WRAPPED, None) is self:
            replaced = self._replaced.pop(id(model), _NOTHING)
            if replaced is _NOTHING:
                del model.generate
            else:  # the user's own override, exactly as it was
                model.generate = replaced
