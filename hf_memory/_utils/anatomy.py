"""Model anatomy, the facts about a model's structure that several capabilities read (diffusers' `hooks/_common.py`
role): where each architecture keeps its layers, FFN modules and final norm; which module names are attention and
FFN blocks; GPT-2's `Conv1D`; how far back each kind of local or chunked attention reaches; and how a diffusion
denoiser (a UNet or a DiT) is found in a pipeline and called."""

from __future__ import annotations

import inspect
import numbers
import re
import weakref
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


# ---------------------------------------------------------------------------------------------------------------
# Layers, FFN modules, blocks


class LayerStack(NamedTuple):
    """One stack of transformer layers (the decoder, or a T5 encoder) and the FFN modules inside one layer.

    Attributes:
        layers: Dotted path of the layers' `nn.ModuleList` in the *ForCausalLM / *ForConditionalGeneration model.
        ffn: Names of the FFN's linear modules inside one layer.
        gated_ffn: Replaces `ffn` when the config says `is_gated_act` (T5 v1.1).
        num_layers: The config attribute holding the number of layers.
        fused_experts: `ffn` names 3-D expert parameters (LoRA `target_parameters`), not modules.
        fan_in_fan_out: The modules store (in, out) weights (GPT-2's `Conv1D`).
    """

    layers: str
    ffn: tuple[str, ...]
    gated_ffn: tuple[str, ...] = ()
    num_layers: str = "num_hidden_layers"
    fused_experts: bool = False
    fan_in_fan_out: bool = False


_GATED_MLP = LayerStack("model.layers", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
_H_TO_4H = ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def _t5_ffn(sublayer: int, *weights: str) -> tuple[str, ...]:
    return tuple(f"layer.{sublayer}.DenseReluDense.{weight}" for weight in weights)


# model_type -> stack name -> LayerStack
FFN_LAYOUTS: dict[str, dict[str, LayerStack]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"), {"decoder": _GATED_MLP}),
    "phi": {"decoder": LayerStack("model.layers", ("mlp.fc1", "mlp.fc2"))},
    "phi3": {"decoder": LayerStack("model.layers", ("mlp.gate_up_proj", "mlp.down_proj"))},
    "gpt2": {"decoder": LayerStack("transformer.h", ("mlp.c_fc", "mlp.c_proj"), fan_in_fan_out=True)},
    "gpt_neox": {"decoder": LayerStack("gpt_neox.layers", _H_TO_4H)},
    "falcon": {"decoder": LayerStack("transformer.h", _H_TO_4H)},
    "bloom": {"decoder": LayerStack("transformer.h", _H_TO_4H)},
    "gptj": {"decoder": LayerStack("transformer.h", ("mlp.fc_in", "mlp.fc_out"))},
    "opt": {"decoder": LayerStack("model.decoder.layers", ("fc1", "fc2"))},
    "mixtral": {
        "decoder": LayerStack(
            "model.layers", ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"), fused_experts=True
        )
    },
    "t5": {
        "encoder": LayerStack("encoder.block", _t5_ffn(1, "wi", "wo"), _t5_ffn(1, "wi_0", "wi_1", "wo"), "num_layers"),
        "decoder": LayerStack(
            "decoder.block", _t5_ffn(2, "wi", "wo"), _t5_ffn(2, "wi_0", "wi_1", "wo"), "num_decoder_layers"
        ),
    },
}

# The final norm applied to the last layer's output, for architectures whose layer output is "something that does
# not depend on the FFN weights + the FFN module's output" (true of all of these). Others (OPT, whose FFN has no
# module of its own; Gemma 2/3, which normalise the FFN output) are left out.
FINAL_NORM: dict[str, str] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"), "model.norm"),
    "phi": "model.final_layernorm",
    "gpt_neox": "gpt_neox.final_layer_norm",
    **dict.fromkeys(("gpt2", "gptj", "falcon", "bloom"), "transformer.ln_f"),
}


def find_layers(model: nn.Module, path: str) -> tuple[str, int]:
    """The full name and length of the one `nn.ModuleList` of `model` named like `path`.

    Args:
        model: A transformers model (possibly wrapped, e.g. by peft: names then carry a prefix).
        path: The layers' dotted path from a `LayerStack`.

    Raises:
        ValueError: If no list, or more than one, matches.
    """
    found = [
        (name, len(module))
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and (name == path or name.endswith("." + path) or path.endswith("." + name))
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected one layer list named like {path!r} in {type(model).__name__}, found {[n for n, _ in found]}"
        )
    return found[0]


# Child-module names of a decoder layer's attention and feed-forward blocks, across transformers architectures.
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
FFN_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")


def is_gpt2_conv1d(module: nn.Module) -> bool:
    """Whether `module` is transformers' GPT-2 `Conv1D` (a linear layer storing its weight as (in, out)), also once
    parametrized (torch then makes a subclass named ParametrizedConv1D).

    Args:
        module: Any module.
    """
    return any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)


def is_adaptable(module: nn.Module) -> bool:
    """Whether `module` is a leaf a PEFT method can adapt: a linear layer (or GPT-2's `Conv1D`) or a convolution, or a
    peft layer already wrapping one (its `base_layer`).

    Args:
        module: Any module.
    """
    module = getattr(module, "base_layer", module)
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_gpt2_conv1d(module)


# ---------------------------------------------------------------------------------------------------------------
# Attention windows

# Config attributes giving, in tokens (cache slots), how far back a local layer attends (a sliding or local window)
# or the chunks that chunked attention stays within, across the transformers families that have them.
WINDOW_ATTRIBUTES = (
    "sliding_window",  # Mistral, Mixtral, Qwen2/3 (use_sliding_window), Gemma 2/3/3n/4, Cohere2, Phi-3, Starcoder2,
    # OLMo 3, EXAONE 4, GPT-OSS, Granite SWA, MiMo, Ministral, ModernBERT decoder, VaultGemma, Moshi, ...
    "sliding_window_size",  # Inkling
    "attention_chunk_size",  # Llama 4 (chunked attention)
    "window_size",  # GPT-Neo's "local" layers (attention_layers / attention_types)
    "local_attention",  # ModernBERT decoder
    "local_attention_window_len",  # BLT
    "attention_window_size",  # RecurrentGemma
    "keep_window_size",  # Doge (dynamic mask keeps this many keys)
    "local_attn_chunk_length",  # Reformer local attention
    "lsh_attn_chunk_length",  # Reformer LSH attention
    "attention_window",  # Longformer / LED (not causal; listed for completeness)
)
# Integer config attributes whose names speak of windows or chunks but that are no attention span.
NOT_WINDOWS = frozenset(
    {
        "chunk_size_feed_forward",  # feed-forward chunking (every config has it)
        "max_window_layers",  # Qwen2: a layer count
        "sliding_window_pattern",  # Gemma 3 / EXAONE 4 / Cohere2-MoE: a layer pattern
        "_sliding_window_pattern",
        "prefix_dense_sliding_window_pattern",
        "chunk_size",  # Mamba 2 / Zamba 2 / Nemotron-H / xLSTM: a state-space scan chunk (recurrent layers)
        "mamba_chunk_size",
        "max_inference_chunksize",
        "audio_chunk_size",
        "chunk_size_lm_head",
        "local_num_chunks_before",  # Reformer: chunk counts
        "local_num_chunks_after",
        "lsh_num_chunks_before",
        "lsh_num_chunks_after",
    }
)
_WINDOW_LIKE = re.compile(r"window|chunk|local_attention", re.IGNORECASE)
# Layer types whose layers are softmax attention over the cache, whole or in a window the attributes above give.
ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "chunked_attention"})


def _configs(model_or_config) -> list:
    config = getattr(model_or_config, "config", model_or_config)
    configs = [config]
    if hasattr(config, "get_text_config"):
        try:
            text = config.get_text_config(decoder=True)
        except (TypeError, ValueError):
            text = None
        if text is not None and text is not config:
            configs.append(text)
    return configs


def _is_size(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def attention_window(model_or_config) -> int | None:
    """The fewest past tokens (cache slots) some layer of the model attends over: its smallest sliding window, local
    window or attention chunk; None where every layer attends over the whole cache (plain causal attention).

    Local and chunked attention count cache slots, not positions, in every transformers family that has them (GPT-Neo
    indexes a banded mask by key length; the mask functions compare cache positions): anything that adds slots to a
    row's cache (masked tokens, padding) changes what a local layer sees once the cache reaches the window. This reads
    every attribute of `WINDOW_ATTRIBUTES`, and any other integer attribute named like a window or chunk that
    `NOT_WINDOWS` does not list (an unknown name counts: wrongly counting one costs callers speed, missing one would
    cost them exactness). A window in the config counts even where no layer uses it (Qwen2's with
    `use_sliding_window=False`), except GPT-Neo's `window_size` when no layer is "local". 0 means no number of slots
    is safe: a layer that is not softmax attention over the cache (`layer_types` naming linear, indexed, compressed
    or convolution layers), or BigBird's block-sparse attention.

    Args:
        model_or_config: A transformers model (its `config`, and the decoder's text config of a multimodal model) or a
            config.

    Returns:
        The smallest window in tokens, 0, or None.

    Examples:
        >>> from transformers import GPTNeoConfig, LlamaConfig, MistralConfig
        >>> attention_window(GPTNeoConfig(window_size=256, attention_types=[[["global", "local"], 6]], num_layers=12))
        256
        >>> attention_window(MistralConfig(sliding_window=4096)), attention_window(LlamaConfig())
        (4096, None)
    """
    spans = []
    for config in _configs(model_or_config):
        names = set(WINDOW_ATTRIBUTES) | {
            n for n in getattr(config, "__dict__", {}) if _WINDOW_LIKE.search(n) and n not in NOT_WINDOWS
        }
        for name in names:
            value = getattr(config, name, None)
            if name == "window_size" and "local" not in (getattr(config, "attention_layers", None) or ["local"]):
                continue  # GPT-Neo with global layers only
            if _is_size(value) and value > 0:
                spans.append(int(value))
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, (list, tuple)) and any(t not in ATTENTION_LAYER_TYPES for t in layer_types):
            spans.append(0)
        if getattr(config, "attention_type", None) == "block_sparse":
            spans.append(0)
    return min(spans) if spans else None


# ---------------------------------------------------------------------------------------------------------------
# Diffusion denoisers

DENOISER_CALLS = (
    "`model(x, t, encoder_hidden_states=c)` (a diffusers UNet2DConditionModel) or `model(x, encoder_hidden_states=c, "
    "timestep=t)` (a DiT such as PixArtTransformer2DModel)"
)


def denoiser(unet_or_pipeline: nn.Module | DiffusionPipeline) -> nn.Module:
    """The denoising model: the model itself, or a pipeline's `unet` (else its `transformer`).

    Args:
        unet_or_pipeline: A diffusers model (returned as is) or a pipeline holding one.

    Returns:
        The denoising model.

    Raises:
        TypeError: If `unet_or_pipeline` is neither a module nor a pipeline with a `unet` or `transformer` module.
    """
    if isinstance(unet_or_pipeline, nn.Module):
        return unet_or_pipeline
    for attribute in ("unet", "transformer"):
        module = getattr(unet_or_pipeline, attribute, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(
        f"Expected a diffusers model or a pipeline with a `unet` or `transformer`, got {type(unet_or_pipeline).__name__}."
    )


def pipeline_denoiser(pipe: DiffusionPipeline) -> nn.Module:
    """The denoiser of a text-to-image pipeline, after checking it has the components a text-conditioned call needs.

    Args:
        pipe: A text-to-image pipeline with a `tokenizer`, a `text_encoder` and a `scheduler`.

    Returns:
        The pipeline's `unet` (else its `transformer`).

    Raises:
        TypeError: If `pipe` lacks one of those components or a denoiser.
    """
    for name in ("tokenizer", "text_encoder", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise TypeError(f"`pipe` must be a text-to-image pipeline with a `{name}`, e.g. StableDiffusionPipeline.")
    return denoiser(pipe)


# forward method's function -> its parameter names (bound: without `self`), so that a call reads no signature
_FORWARD_PARAMETERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_parameters(model: nn.Module) -> list[str]:
    """The names of `model.forward`'s parameters, "**name" for a catch-all keyword parameter (read once per forward
    method, not on every call).

    Args:
        model: Any module.
    """
    forward = model.forward
    function = getattr(forward, "__func__", None)  # a bound method: its function is the cache key
    if function is not None and function in _FORWARD_PARAMETERS:
        return list(_FORWARD_PARAMETERS[function])
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return []
    names = tuple(
        f"**{p.name}" if p.kind is inspect.Parameter.VAR_KEYWORD else p.name for p in signature.parameters.values()
    )
    if function is not None:
        try:
            _FORWARD_PARAMETERS[function] = names
        except TypeError:  # a function that takes no weak reference
            pass
    return list(names)


def _is_dit(parameters: list[str]) -> bool:
    """A DiT's forward order: (hidden_states, encoder_hidden_states, timestep, ...)."""
    return len(parameters) > 1 and parameters[1] == "encoder_hidden_states"


def denoiser_problem(model) -> str | None:
    """What keeps `predict_noise` from calling `model` as a text-conditioned ε-predictor, or None if nothing does.

    Args:
        model: The UNet or DiT.

    Returns:
        A phrase naming what the model needs that `predict_noise` does not give, or None.
    """
    if not isinstance(model, nn.Module):
        return f"it is not a torch.nn.Module (a UNet or a DiT) but a {type(model).__name__}"
    parameters = forward_parameters(model)
    config = getattr(model, "config", None)
    if _is_dit(parameters) and "timestep" not in parameters:
        return "its forward takes no `timestep`"
    if "encoder_hidden_states" not in parameters and not any(p.startswith("**") for p in parameters):
        return "its forward takes no `encoder_hidden_states` (a class-conditional DiT?)"
    if any(p in parameters for p in ("pooled_projections", "img_ids", "txt_ids")):
        return "it needs pooled projections or image / text position ids (SD3, Flux: flow-matching models)"
    if getattr(config, "addition_embed_type", None) is not None:
        return f"it needs `added_cond_kwargs` (addition_embed_type={config.addition_embed_type!r}, e.g. SDXL)"
    if getattr(model, "use_additional_conditions", False):
        return "it needs resolution and aspect-ratio conditions (use_additional_conditions=True)"
    return None


def check_denoiser(model, name: str, caller: str, remedy: str = "") -> None:
    """Refuse, before any work, a denoiser that `predict_noise` cannot call.

    Args:
        model: The UNet or DiT.
        name: The argument name shown in the error.
        caller: What calls it, for the error ("the default training loop").
        remedy: A sentence the error ends with (what to do instead), or "".

    Raises:
        ValueError: Naming the model's class and what it needs that `predict_noise` does not give.
    """
    needs = denoiser_problem(model)
    if needs is not None:
        raise ValueError(
            f"`{name}` ({type(model).__name__}) cannot be called by {caller}, whose calls are {DENOISER_CALLS}, with "
            f"nothing else passed: {needs}.{' ' + remedy if remedy else ''}"
        )


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none): inputs are cast to it.

    Args:
        model: A `torch.nn.Module`.
    """
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def predict_noise(model: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The model's noise prediction for noised inputs `x` at `timesteps` with text embeddings `text`, in float32.

    The inputs go to the model's device, `x` and `text` to its dtype (a bf16 / fp16 UNet takes them as such), and
    one timestep (a 0-d tensor or number) to one per row. A UNet2DConditionModel is called as `model(x, t,
    encoder_hidden_states=text)`, a DiT whose forward takes `(hidden_states, encoder_hidden_states, timestep)` with
    keywords. An output with twice the input's channels (a learned variance, as PixArt's and DiT's) gives its first
    half, the ε prediction. `check_denoiser` refuses the models this cannot call.

    Args:
        model: A text-conditioned UNet or DiT returning `.sample`.
        x: (B, C, H, W) noised inputs.
        timesteps: (B,) integer timesteps, or one for every row.
        text: (B, L, D) text embeddings.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = model_dtype(model)
    x, text = x.to(device, dtype), text.to(device, dtype)
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(x.shape[0])
    if _is_dit(forward_parameters(model)):
        out = model(x, encoder_hidden_states=text, timestep=timesteps).sample
    else:
        out = model(x, timesteps, encoder_hidden_states=text).sample
    if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
        out = out[:, : x.shape[1]]
    return out.float()
