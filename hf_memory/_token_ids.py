"""One check for every public function that takes token ids."""

from __future__ import annotations

import torch


def as_token_ids(values, name: str, dims: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """`values` as an int64 tensor, or a `ValueError` naming `name` when they are not integer ids of `dims` dimensions."""
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {tensor.dtype}.")
    if tensor.dim() not in dims:
        allowed = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"`{name}` must be {allowed}, got a {tensor.dim()}-D tensor of shape {tuple(tensor.shape)}.")
    return tensor.long()
