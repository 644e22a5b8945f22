"""SV-Diff (Han et al., ICCV 2023, "SVDiff: Compact Parameter Space for Diffusion Fine-Tuning"): learn one shift per
singular value of each frozen weight, W = U diag(σ) Vᵀ -> U diag(ReLU(σ + δ)) Vᵀ, through a
`torch.nn.utils.parametrize` parametrization of the layer's `weight`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._utils import is_gpt2_conv1d


SVDIFF_MARKER = "svdiff_"
"""Every parameter SV-Diff adds has this in its name (the shifts are `...parametrizations.weight.0.svdiff_delta`)."""


def _check_layer(module: nn.Module, name: str) -> torch.Tensor:
    """The layer's weight, checked: a finite, non-empty float parameter of a linear or convolution layer."""
    if not (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_gpt2_conv1d(module)):
        raise ValueError(
            "SV-Diff adapts linear and convolution layers (nn.Linear, nn.Conv1d/2d/3d, transformers' Conv1D); "
            f"{name!r} is a {type(module).__name__}."
        )
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(
            f"The weight of {name!r} already has a parametrization ({type(module).__name__}); SV-Diff adapts plain "
            "weights only (remove the other parametrization, or SV-Diff's own, first)."
        )
    weight = module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter):
        raise ValueError(
            f"{name!r} has no `weight` parameter (got {type(weight).__name__}; e.g. the deprecated "
            "`torch.nn.utils.weight_norm` computes it); SV-Diff needs a weight parameter to decompose."
        )
    if weight.ndim < 2 or weight.numel() == 0:
        raise ValueError(f"The weight of {name!r} has shape {tuple(weight.shape)}: SV-Diff needs a non-empty matrix.")
    if weight.is_meta:
        raise ValueError(f"The weight of {name!r} is on the meta device: load the model's weights before SV-Diff.")
    if not weight.is_floating_point():
        raise ValueError(f"The weight of {name!r} has dtype {weight.dtype}: SV-Diff needs floating-point weights.")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"The weight of {name!r} holds NaN or infinite values: its SVD is undefined.")
    return weight


class SpectralShift(nn.Module):
    """The SV-Diff parametrization of one layer's weight: the frozen SVD of the weight (reshaped to
    (out, in·k·…)) as buffers `U`, `S`, `Vh`, and the trainable shifts `svdiff_delta` (one per singular value, 0 at
    the start). `forward(W)` returns W + U diag(ReLU(S + δ) − S) Vh reshaped to W's shape: equal to
    U diag(ReLU(S + δ)) Vh up to the SVD's rounding, and exactly W (bit for bit) while δ = 0.

    The SVD is computed in float32 (float64 for a float64 weight) and the buffers and the shifts are stored in the
    weight's dtype and on its device.

    Args:
        weight: The layer's weight as stored.
        transposed: Whether the weight is stored as (in, out) (transformers' `Conv1D`); it is transposed to
            (out, in) before the SVD and the update transposed back.
    """

    def __init__(self, weight: torch.Tensor, transposed: bool = False):
        super().__init__()
        self.transposed = bool(transposed)
        with torch.no_grad():
            matrix = weight.detach()
            matrix = matrix.t() if self.transposed else matrix.reshape(matrix.shape[0], -1)
            work = torch.float64 if matrix.dtype == torch.float64 else torch.float32
            u, s, vh = torch.linalg.svd(matrix.to(work), full_matrices=False)
        self.register_buffer("U", u.to(weight.dtype).contiguous())
        self.register_buffer("S", s.to(weight.dtype).contiguous())
        self.register_buffer("Vh", vh.to(weight.dtype).contiguous())
        self.svdiff_delta = nn.Parameter(torch.zeros_like(self.S))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shift = torch.relu(self.S + self.svdiff_delta) - self.S  # exactly 0 while δ = 0 (S >= 0)
        update = (self.U * shift) @ self.Vh
        update = update.t() if self.transposed else update.reshape(weight.shape)
        return weight + update

    def extra_repr(self) -> str:
        return f"rank={self.S.numel()}, transposed={self.transposed}"


def add_svdiff(model: nn.Module, targets: list[str]) -> nn.Module:
    """Register a `SpectralShift` on the `weight` of each layer named in `targets`, in place. The original weight
    moves to `<layer>.parametrizations.weight.original` and `<layer>.weight` becomes the shifted weight; the shifts
    are `<layer>.parametrizations.weight.0.svdiff_delta`. Every layer is checked before any is changed.

    Args:
        model: The model.
        targets: Full module names of linear / convolution layers (e.g. from `adaptable_modules`).

    Returns:
        The same model object.

    Raises:
        ValueError: If a target is not a linear / convolution layer of `model`, or its weight is already
            parametrized, not a floating-point parameter, empty, on the meta device or not finite.
    """
    if isinstance(targets, (str, bytes)) or not hasattr(targets, "__iter__"):
        raise ValueError(f"`targets` must be a list of module names, got {targets!r}.")
    layers, seen = [], set()
    for name in dict.fromkeys(targets):
        if not isinstance(name, str) or not name:
            raise ValueError(f"`targets` must hold module names (non-empty strings), got {name!r}.")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"`model` has no module {name!r} to adapt with SV-Diff.") from None
        if id(module) not in seen:  # the same layer reached under two names is adapted once
            seen.add(id(module))
            layers.append((module, _check_layer(module, name)))
    for module, weight in layers:
        parametrize.register_parametrization(module, "weight", SpectralShift(weight, is_gpt2_conv1d(module)))
    return model
