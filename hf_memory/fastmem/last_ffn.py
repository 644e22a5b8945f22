"""Names and LoRA configs for one transformer layer's feed-forward network (FFN), by default the last one.

FastMem (Zhu et al. 2024) fine-tunes only the last layer's FFN on the prompt's context before answering, leaving the
rest frozen: few parameters, fast, and enough to raise the context's likelihood. `last_ffn_modules` names that FFN's
weights in full (to unfreeze them, as FastMem does, or to target them); `last_ffn_lora_config` is the LoRA variant
through peft. Full names matter: peft's `layers_to_transform` takes no negative index, and short names such as
GPT-2's `c_proj` also match attention modules.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig
from torch import nn
from transformers import PreTrainedConfig
from transformers.pytorch_utils import Conv1D

from .._utils import FFN_LAYOUTS, LayerStack, check_integer, find_layers


_CHOSEN_HERE = ("target_modules", "target_parameters", "layers_to_transform", "layers_pattern")


def last_ffn_modules(
    model_or_config: nn.Module | PreTrainedConfig, layer: int = -1, stack: str = "decoder"
) -> list[str]:
    """Full names (as in `model.named_modules()`) of the linear modules in the FFN of transformer layer `layer`.

    From a config the names are those of its *ForCausalLM / *ForConditionalGeneration model; from a model they
    are checked against its module tree. For fused mixture-of-experts models (Mixtral) the FFN has no linear modules:
    the names are those of its expert weight parameters, which LoRA adapts through `target_parameters`.

    Args:
        model_or_config: A transformers model, or its config.
        layer: Index of the transformer layer; negative counts from the end (-1 is the last layer).
        stack: "decoder", or "encoder" for the encoder of encoder-decoder models (T5).

    Returns:
        The full module (or, for fused experts, parameter) names of that layer's FFN.

    Raises:
        TypeError: If `model_or_config` is neither a transformers model nor a config.
        NotImplementedError: If the architecture is not supported.
        ValueError: If `layer` is out of range, `stack` does not exist for the model, or the model's modules do not
            have the expected names.

    Examples:
        >>> from transformers import LlamaConfig
        >>> last_ffn_modules(LlamaConfig(num_hidden_layers=4))
        ['model.layers.3.mlp.gate_proj', 'model.layers.3.mlp.up_proj', 'model.layers.3.mlp.down_proj']
    """
    return _resolve(model_or_config, layer, stack)[1]


def last_ffn_lora_config(
    model_or_config: nn.Module | PreTrainedConfig, layer: int = -1, stack: str = "decoder", **lora_kwargs: Any
) -> LoraConfig:
    """A `peft.LoraConfig` adapting exactly the FFN of `last_ffn_modules(model_or_config, layer, stack)`.

    `task_type` defaults to "CAUSAL_LM", or "SEQ_2_SEQ_LM" for encoder-decoder models; GPT-2-style `Conv1D` layouts
    get `fan_in_fan_out=True`. For fused mixture-of-experts models the names go to `target_parameters`.

    Args:
        model_or_config: A transformers model, or its config.
        layer: Index of the transformer layer; negative counts from the end (-1 is the last layer).
        stack: "decoder", or "encoder" for the encoder of encoder-decoder models (T5).
        **lora_kwargs: Passed to `LoraConfig` (rank, alpha, dropout, ...); they override the defaults above, but not
            the target modules.

    Returns:
        The LoRA config.

    Raises:
        TypeError: If `lora_kwargs` sets `target_modules`, `target_parameters`, `layers_to_transform` or
            `layers_pattern`, or `model_or_config` is neither a transformers model nor a config.
        NotImplementedError: If the architecture is not supported.
        ValueError: If `layer` is out of range, `stack` does not exist for the model, or the model's modules do not
            have the expected names.

    Examples:
        >>> from transformers import LlamaConfig
        >>> config = last_ffn_lora_config(LlamaConfig(num_hidden_layers=4), layer=0, r=4)
        >>> sorted(config.target_modules)
        ['model.layers.0.mlp.down_proj', 'model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj']
        >>> config.r, config.task_type
        (4, 'CAUSAL_LM')
    """
    chosen = [key for key in _CHOSEN_HERE if key in lora_kwargs]
    if chosen:
        raise TypeError(
            f"last_ffn_lora_config() chooses {', '.join(chosen)} itself from `layer` and `stack`; to adapt other "
            "modules, build peft.LoraConfig(target_modules=[...]) yourself, e.g. from last_ffn_modules(model, layer)."
        )
    spec, names, config = _resolve(model_or_config, layer, stack)
    targets = {"target_modules": [], "target_parameters": names} if spec.fused_experts else {"target_modules": names}
    defaults = {"task_type": "SEQ_2_SEQ_LM" if config.is_encoder_decoder else "CAUSAL_LM"}
    if spec.fan_in_fan_out:
        defaults["fan_in_fan_out"] = True
    return LoraConfig(**{**defaults, **lora_kwargs, **targets})


def _resolve(model_or_config, layer: int, stack: str) -> tuple[LayerStack, list[str], PreTrainedConfig]:
    layer = check_integer(layer, "layer", hint="a layer index, negative from the end")
    if hasattr(model_or_config, "peft_config") and hasattr(model_or_config, "get_base_model"):
        raise TypeError(
            "expected a transformers model or config, got a peft PeftModel: pass model.get_base_model() (its names "
            "carry no adapter prefix), or merge the adapter first with model.merge_and_unload()."
        )
    model = model_or_config if isinstance(model_or_config, nn.Module) else None
    config = getattr(model, "config", None) if model is not None else model_or_config
    if not isinstance(config, PreTrainedConfig):
        raise TypeError(f"expected a transformers model or config, got {type(model_or_config).__name__}")

    model_type = config.model_type
    if model_type not in FFN_LAYOUTS:
        raise NotImplementedError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(FFN_LAYOUTS))}. For another "
            "architecture, name its FFN linear modules in full (see model.named_modules()) and pass them to peft "
            "yourself, e.g. peft.LoraConfig(target_modules=['model.layers.31.mlp.gate_proj', "
            "'model.layers.31.mlp.up_proj', 'model.layers.31.mlp.down_proj'])."
        )
    layout = FFN_LAYOUTS[model_type]
    if stack not in layout:
        if len(layout) == 1:
            raise ValueError(
                f"stack={stack!r}: {model_type!r} is decoder-only; `stack` only chooses between the encoder and the "
                "decoder of encoder-decoder models (t5)"
            )
        raise ValueError(f"stack must be one of {', '.join(map(repr, layout))}, got {stack!r}")
    spec = layout[stack]
    ffn = spec.gated_ffn if spec.gated_ffn and getattr(config, "is_gated_act", False) else spec.ffn

    if model is None:
        prefix, num_layers = spec.layers, getattr(config, spec.num_layers)
    else:
        prefix, num_layers = find_layers(model, spec.layers)
    if not -num_layers <= layer < num_layers:
        raise ValueError(
            f"layer={layer} is out of range for the {num_layers} {stack} layers of this {model_type} model: "
            f"valid values are {-num_layers} to {num_layers - 1}"
        )
    names = [f"{prefix}.{layer % num_layers}.{suffix}" for suffix in ffn]
    if model is not None:
        _check_exist(model, names, spec.fused_experts)
    return spec, names, config


def _check_exist(model: nn.Module, names: list[str], fused_experts: bool) -> None:
    if fused_experts:
        parameters = dict(model.named_parameters())
        missing = [name for name in names if name not in parameters]
    else:
        modules = dict(model.named_modules())
        missing = [name for name in names if not isinstance(modules.get(name), (nn.Linear, Conv1D))]
    adapted = [name for name in missing if hasattr(modules.get(name) if not fused_experts else None, "base_layer")]
    if adapted:  # a peft tuner layer (LoRA, ...) wraps the FFN module: the base model of a PeftModel
        raise ValueError(
            f"{type(model).__name__}'s FFN modules {adapted} carry a PEFT adapter (LoRA or another tuner layer): "
            "merge it into the weights first with peft_model.merge_and_unload(), then use the merged model (or "
            "choose a layer whose FFN the adapter does not touch)."
        )
    if missing:
        kind = "parameters" if fused_experts else "nn.Linear / Conv1D modules"
        raise ValueError(
            f"{type(model).__name__} has no {kind} {missing}: its layout differs from the usual "
            f"{model.config.model_type!r} one; pass target_modules to peft.LoraConfig yourself"
        )
