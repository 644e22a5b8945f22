"""Where each supported architecture keeps its transformer layers, their feed-forward (FFN) modules and final norm."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


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
