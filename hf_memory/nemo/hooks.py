"""NeMo (Hintersdorf et al. 2024): silence the cross-attention value channels that carry a memorized image.

A `NeMoConfig` names output channels of value projections (``...attn2.to_v``) per module; `apply_nemo` registers
a diffusers hook (under `NEMO_HOOK`) that multiplies those channels by ``scale`` every time the module runs, i.e.
at every denoising step and for the whole classifier-free-guidance batch. `remove_nemo` takes it off again, after
which the model computes exactly what it computed before.

Examples:
    >>> import torch
    >>> from diffusers import UNet2DConditionModel
    >>> unet = UNet2DConditionModel(
    ...     sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
    ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ...     cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)
    >>> config = NeMoConfig({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": [1, 5]})
    >>> apply_nemo(unet, config)
    >>> to_v = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v
    >>> to_v(torch.ones(1, 2, 8))[0, 0, :6].abs().gt(0).tolist()
    [True, False, True, True, True, False]
    >>> remove_nemo(unet)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .._utils import denoiser
from .config import NeMoConfig


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

NEMO_HOOK = "nemo_neuron_deactivation"


class NeMoHook(ModelHook):
    """Multiplies some output channels (last dimension) of a linear layer by ``scale``, out of place.

    `apply_nemo` registers one per hooked projection under the name `NEMO_HOOK`. The channel mask is built once on
    the layer's device and dtype, and converted (and cached) for outputs of another dtype or device.

    Args:
        channels: Output channel ids to scale, counted from `offset`.
        scale: Multiplier of those channels (0 switches them off).
        layer: The linear layer whose output the hook changes; sets the mask's length, dtype and device.
        offset: Added to every channel id; for fused projections (``to_kv``) it is the index of the first value
            channel.
    """

    def __init__(self, channels: list[int], scale: float, layer: torch.nn.Linear, offset: int = 0):
        super().__init__()
        self.channels = list(channels)
        self.scale = scale
        self.offset = offset
        weight = layer.weight
        mask = torch.ones(layer.out_features, dtype=weight.dtype, device=weight.device)
        mask[torch.tensor(self.channels, dtype=torch.long, device=weight.device) + offset] = scale
        self._masks = {(mask.dtype, mask.device): mask}

    def _mask(self, output: torch.Tensor) -> torch.Tensor:
        key = (output.dtype, output.device)
        if key not in self._masks:
            self._masks[key] = next(iter(self._masks.values())).to(dtype=output.dtype, device=output.device)
        return self._masks[key]

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        """Scale the hooked channels of the layer's output.

        Args:
            module: The hooked layer (unused).
            output: The layer's output; its last dimension holds the channels.

        Returns:
            A new tensor, `output` times the channel mask; `output` itself is left unchanged.
        """
        # A new tensor: the module's output may be shared with other code (caches, other hooks).
        return output * self._mask(output)

    def __repr__(self):
        return f"NeMoHook(channels={self.channels}, scale={self.scale}, offset={self.offset})"


class _FusedProjectionGuard(ModelHook):
    """On the attention module: refuse to run if its key/value projections were fused after `apply_nemo`."""

    def __init__(self, name: str, fused_hooked: bool):
        super().__init__()
        self.name = name
        self.fused_hooked = fused_hooked

    def pre_forward(self, module, *args, **kwargs):
        if not self.fused_hooked and getattr(module, "to_kv", None) is not None:
            raise RuntimeError(
                f"`{self.name}` got fused key/value projections (`to_kv`) after `apply_nemo`, so the NeMo hook on "
                "`to_v` would be skipped. Call `remove_nemo` and `apply_nemo` again after fusing."
            )
        return args, kwargs


def _has_nemo(model: torch.nn.Module) -> bool:
    return any(
        getattr(module, "_diffusers_hook", None) is not None and module._diffusers_hook.get_hook(NEMO_HOOK) is not None
        for module in model.modules()
    )


def value_projection_names(
    unet_or_pipeline: torch.nn.Module | DiffusionPipeline, blocks: tuple[str, ...] | None = None
) -> list[str]:
    """Names of the cross-attention value projections (``...attn2.to_v``), optionally only under ``blocks`` prefixes.

    Args:
        unet_or_pipeline: A diffusers model, or a pipeline (its ``unet``, else its ``transformer``).
        blocks: Keep only the projections whose name starts with one of these top-level modules (e.g.
            ``("down_blocks", "mid_block")``); None keeps all.

    Returns:
        The module names, in the model's module order.

    Examples:
        >>> from diffusers import UNet2DConditionModel
        >>> unet = UNet2DConditionModel(
        ...     sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ...     cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4)
        >>> value_projection_names(unet, blocks=("down_blocks", "mid_block"))
        ['down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v', 'mid_block.attentions.0.transformer_blocks.0.attn2.to_v']
    """
    model = denoiser(unet_or_pipeline)
    names = [
        name
        for name, module in model.named_modules()
        if name.endswith("attn2.to_v") and isinstance(module, torch.nn.Linear)
    ]
    if blocks is not None:
        names = [name for name in names if name.split(".")[0] in blocks]
    return names


def apply_nemo(unet_or_pipeline: torch.nn.Module | DiffusionPipeline, config: NeMoConfig) -> None:
    """Silence ``config.neurons`` (multiply them by ``config.scale``) in every forward pass, via diffusers hooks.

    Accepts a model (``UNet2DConditionModel``, a cross-attention transformer) or a pipeline (its ``unet``, else its
    ``transformer``). Fused key/value projections (``fuse_qkv_projections``) are handled: the matching half of
    ``to_kv`` is hooked as well; fusing *after* this call raises at the next forward instead of silently doing nothing.

    Args:
        unet_or_pipeline: The model to hook, or a pipeline holding it.
        config: The channels to silence per module, and their multiplier.

    Raises:
        TypeError: If `config` is not a `NeMoConfig`, or `unet_or_pipeline` holds no diffusers model.
        ValueError: If NeMo is already applied, or `config` names an unknown module, a module that is not a linear
            layer, or a channel out of its range. Nothing is hooked then.
    """
    if not isinstance(config, NeMoConfig):
        raise TypeError(f"`config` must be a NeMoConfig, got {type(config).__name__}.")
    model = denoiser(unet_or_pipeline)
    if not config.neurons:
        raise ValueError("`config` silences no channel (its `neurons` is empty): there is nothing to apply.")
    if _has_nemo(model):
        raise ValueError("NeMo is already applied to this model; call `remove_nemo` first.")
    modules = dict(model.named_modules())
    plan = []
    for name, channels in config.neurons.items():
        module = modules.get(name)
        if module is None:
            hints = value_projection_names(model)[:4]
            raise ValueError(f"Unknown module {name!r} in `neurons`; value projections look like {hints}.")
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"`neurons[{name!r}]` must name a linear projection, got {type(module).__name__}.")
        if channels[-1] >= module.out_features:
            raise ValueError(
                f"Channel {channels[-1]} is out of range for {name!r}, which has {module.out_features} output channels."
            )
        plan.append((name, module, channels))

    for name, module, channels in plan:
        hook = NeMoHook(channels, config.scale, module)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, NEMO_HOOK)
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = modules[parent_name]
        to_kv = getattr(parent, "to_kv", None)
        fused_hooked = False
        if name.endswith("to_v") and isinstance(to_kv, torch.nn.Linear) and parent_name:
            # Fused cross-attention computes [key | value] = to_kv(x): hook the value half too.
            offset = to_kv.out_features - module.out_features
            HookRegistry.check_if_exists_or_initialize(to_kv).register_hook(
                NeMoHook(channels, config.scale, to_kv, offset=offset), NEMO_HOOK
            )
            fused_hooked = True
        if parent_name and name.endswith("to_v"):
            HookRegistry.check_if_exists_or_initialize(parent).register_hook(
                _FusedProjectionGuard(parent_name, fused_hooked), NEMO_HOOK
            )


def remove_nemo(unet_or_pipeline: torch.nn.Module | DiffusionPipeline) -> None:
    """Remove the NeMo hooks `apply_nemo` added; the model's outputs are then exactly those of the unhooked model.

    Args:
        unet_or_pipeline: The model `apply_nemo` hooked, or a pipeline holding it.

    Raises:
        ValueError: If NeMo is not applied to the model.
    """
    model = denoiser(unet_or_pipeline)
    if not _has_nemo(model):
        raise ValueError("NeMo is not applied to this model; nothing to remove.")
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(NEMO_HOOK) is not None:
            registry.remove_hook(NEMO_HOOK, recurse=False)
