"""The search space: which groups of modules a mask switches on and off, read from the model's module tree."""

from __future__ import annotations

from torch import nn

from .._utils import ATTENTION_NAMES, FFN_NAMES, check_choice, is_adaptable


GRANULARITIES = ("block", "module")


def _inside_adapter(name: str) -> bool:
    """Whether a module name lies inside a peft layer (its base layer or adapter weights), not the layer itself."""
    return any(part == "base_layer" or part.startswith(("lora_", "ia3_")) for part in name.split("."))


def adaptable_modules(model: nn.Module, paths: list[str]) -> list[str]:
    """Full names of the adaptable leaf modules (linear and convolution layers) at or under `paths`, in module order.

    Args:
        model: The model.
        paths: Module paths (as in `model.named_modules()`).
    """
    found = []
    for name, module in model.named_modules():
        if (
            is_adaptable(module)
            and not _inside_adapter(name)
            and any(name == path or name.startswith(path + ".") for path in paths)
        ):
            found.append(name)
    return found


def _diffusion_groups(model: nn.Module) -> dict[str, list[str]]:
    """Every cross-attention transformer of a UNet (each `Transformer2DModel`, all of them, the third attention of an
    SD up-block included), or every block of a DiT-style transformer (`transformer_blocks` on the model itself)."""
    groups: dict[str, list[str]] = {}
    for attribute in ("transformer_blocks", "single_transformer_blocks"):
        blocks = getattr(model, attribute, None)
        if isinstance(blocks, nn.ModuleList):
            groups.update({f"{attribute}.{i}": [f"{attribute}.{i}"] for i in range(len(blocks))})
    if groups:
        return groups
    found = []
    for index, (name, module) in enumerate(model.named_modules()):
        if not name or not isinstance(getattr(module, "transformer_blocks", None), nn.ModuleList):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # a transformer nested inside another one belongs to it
        found.append((name, index))
    rank = {"down": 0, "mid": 1, "up": 2}  # data-flow order (diffusers registers mid_block after up_blocks)

    def order(item):
        top = item[0].split(".")[0]
        return next((r for prefix, r in rank.items() if top.startswith(prefix)), 1), item[1]

    return {name: [name] for name, _ in sorted(found, key=order)}


def _decoder_layers(model: nn.Module) -> list[str]:
    """Paths of the layers of the decoder stack: the `nn.ModuleList` whose items each hold an attention module."""
    stacks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and name:
            if all(any(child in ATTENTION_NAMES for child, _ in item.named_children()) for item in module):
                stacks.append([f"{name}.{i}" for i in range(len(module))])
    # An encoder-decoder model has two stacks; a causal LM one. Take the last registered (the decoder).
    return stacks[-1] if stacks else []


def _language_model_groups(model: nn.Module) -> dict[str, list[str]]:
    """Each decoder layer's attention and its feed-forward network, as two groups."""
    groups: dict[str, list[str]] = {}
    for layer_path in _decoder_layers(model):
        layer = model.get_submodule(layer_path)
        children = dict(layer.named_children())
        attention = next(name for name in ATTENTION_NAMES if name in children)
        groups[f"{layer_path}.{attention}"] = [f"{layer_path}.{attention}"]
        ffn = next((name for name in FFN_NAMES if name in children), None)
        if ffn is not None:
            groups[f"{layer_path}.{ffn}"] = [f"{layer_path}.{ffn}"]
        else:  # OPT-style layers hold their FFN linears (fc1, fc2) directly
            linears = [f"{layer_path}.{n}" for n, m in children.items() if n != attention and is_adaptable(m)]
            if linears:
                groups[f"{layer_path}.ffn"] = linears
    return groups


def maskable_groups(model: nn.Module, granularity: str = "block") -> dict[str, list[str]]:
    """The groups one MemControl mask bit switches, read from the module tree, in the model's data-flow order.

    With `granularity="block"`: for a diffusers UNet every cross-attention transformer (`Transformer2DModel`: its
    self- and cross-attention, FFN, norms and projections; all of them, including the third transformer of each
    Stable Diffusion up-block that the official code never masks); for a DiT-style transformer every block of
    `transformer_blocks`; for a transformers causal LM each decoder layer's attention and its FFN, separately.
    With `granularity="module"` every linear (or convolution) layer inside those groups is a group of its own:
    q/k/v/out and the FFN projections.

    Args:
        model: A diffusers UNet2DConditionModel or DiT-style transformer, or a transformers causal LM (a peft-wrapped
            model works too, with its wrapped names).
        granularity: "block" (one bit per transformer block / per attention or FFN of a layer) or "module" (one bit
            per linear layer inside them).

    Returns:
        Group name -> the module paths it covers (as in `model.named_modules()`); a block's name is its module path.

    Raises:
        ValueError: If `granularity` is unknown, or the model has no maskable group.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
        >>> list(maskable_groups(model))
        ['model.layers.0.self_attn', 'model.layers.0.mlp', 'model.layers.1.self_attn', 'model.layers.1.mlp']
        >>> list(maskable_groups(model, "module"))[:4]
        ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.self_attn.o_proj']
    """
    check_choice(granularity, "granularity", GRANULARITIES)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"`model` must be a torch.nn.Module (a UNet, a DiT or a causal LM), got {type(model).__name__}."
        )
    groups = _diffusion_groups(model) or _language_model_groups(model)
    if granularity == "module":
        groups = {name: [name] for paths in groups.values() for name in adaptable_modules(model, paths)}
    if not groups:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no maskable group: expected a diffusers UNet with cross-attention "
            "transformers, a DiT with `transformer_blocks`, or a causal LM whose layers hold an attention module."
        )
    return groups
