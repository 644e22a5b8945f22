"""Helpers shared by the NeMo modules (diffusers' `hooks/_common.py` pattern)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def denoiser(unet_or_pipeline: torch.nn.Module | DiffusionPipeline) -> torch.nn.Module:
    """The module NeMo works on: the model itself, or a pipeline's `unet` (else its `transformer`).

    Args:
        unet_or_pipeline: A diffusers model (returned as is) or a pipeline holding one.

    Returns:
        The denoising model.

    Raises:
        TypeError: If `unet_or_pipeline` is neither a module nor a pipeline with a `unet` or `transformer` module.
    """
    if isinstance(unet_or_pipeline, torch.nn.Module):
        return unet_or_pipeline
    for attribute in ("unet", "transformer"):
        module = getattr(unet_or_pipeline, attribute, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise TypeError(
        f"Expected a diffusers model or a pipeline with a `unet` or `transformer`, got {type(unet_or_pipeline).__name__}."
    )


def pipeline_denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The denoiser of a text-to-image pipeline, after checking it has what scoring needs.

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
