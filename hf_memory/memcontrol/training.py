"""The default inner loops of the search: a short, seeded fine-tuning run of whatever the mask left trainable."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import as_sequences, check_choice, check_integer, check_number, model_device, predict_noise, train_steps
from .._utils import check_denoiser as _check_denoiser


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


def diffusion_data(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`data` as (images or latents (N, C, H, W), text embeddings (N, L, D)), checked.

    Args:
        data: A dict with "images" (or "latents") and "encoder_hidden_states", one row per example.
        name: The argument name shown in error messages.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"`{name}` must be a dict with 'images' (N, C, H, W) and 'encoder_hidden_states' (N, L, D) tensors, got "
            f"{type(data).__name__}."
        )
    images = data.get("images", data.get("latents"))
    text = data.get("encoder_hidden_states")
    if (
        not isinstance(images, torch.Tensor)
        or images.ndim != 4
        or not isinstance(text, torch.Tensor)
        or text.ndim != 3
    ):
        raise ValueError(
            f"`{name}` must hold 'images' as a 4-D (N, C, H, W) tensor and 'encoder_hidden_states' as a 3-D "
            f"(N, L, D) tensor; got keys {sorted(data)}."
        )
    if len(images) != len(text) or not len(images):
        raise ValueError(f"`{name}` has {len(images)} images for {len(text)} text embeddings: give one per image.")
    return images.float(), text.float()


def default_noise_scheduler():
    """Stable Diffusion's training noise schedule (DDPM, scaled linear betas 0.00085 to 0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def check_denoiser(model, name: str = "model") -> None:
    """Refuse a diffusion model that the default training loop and the built-in diffusion objectives cannot call:
    they call it as a text-conditioned ε-predictor (`hf_memory._utils.predict_noise`) and pass nothing else.

    Args:
        model: The UNet or DiT.
        name: The argument name shown in the error.

    Raises:
        ValueError: Naming the model's class and what it needs that these calls do not give.
    """
    _check_denoiser(
        model,
        name,
        "the default training loop and the built-in diffusion objectives",
        "Pass your own `train_fn` and callable objectives.",
    )


def _check_steps(steps, batch_size, seed, max_grad_norm, lr_scheduler, warmup_steps, steps_name="steps") -> tuple:
    """The arguments both inner loops share, checked (`steps` named `steps_name` in the messages)."""
    steps = check_integer(steps, steps_name, minimum=1)
    warmup_steps = check_integer(warmup_steps, "warmup_steps", minimum=0)
    if warmup_steps >= steps:
        raise ValueError(f"`warmup_steps` must be below `{steps_name}`={steps}, got {warmup_steps}.")
    if warmup_steps and lr_scheduler == "constant":
        raise ValueError("`lr_scheduler`='constant' has no warm-up: use 'constant_with_warmup', or `warmup_steps`=0.")
    return (
        steps,
        check_integer(batch_size, "batch_size", minimum=1),
        check_integer(seed, "seed"),
        check_number(max_grad_norm, "max_grad_norm", minimum=0, exclusive_minimum=True, allow_none=True),
        check_choice(lr_scheduler, "lr_scheduler", LR_SCHEDULERS),
        warmup_steps,
    )


def _run_steps(
    model: nn.Module,
    lr: float,
    steps: int,
    seed: int,
    max_grad_norm: float | None,
    lr_scheduler: str,
    warmup_steps: int,
    draw: Callable[[torch.Generator, torch.device], object],
    loss_fn: Callable[[object], torch.Tensor],
) -> list[float]:
    """`steps` AdamW steps (peak lr `lr` on transformers' `lr_scheduler` schedule, no weight decay) on the model's
    trainable parameters through the shared loop (`hf_memory._utils.train_steps`: the model held, in train mode,
    given back its modes and left without `.grad` tensors on every exit path), each on the batch
    `draw(generator, device)` draws from the seeded generator. Returns the loss of every step."""
    from transformers import get_scheduler

    device = model_device(model)

    def batches(generator: torch.Generator):
        for _ in range(steps):
            yield draw(generator, device)

    def scheduler(optimizer):
        return get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)

    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("The model has no trainable parameter: apply a MemControlMask first.")
    return train_steps(
        model,
        batches,
        loss_fn,
        lr=lr,
        seed=seed,
        max_grad_norm=max_grad_norm,
        scheduler=scheduler,
        what="MemControl training",
    )


def train_unet(
    model: nn.Module,
    train_data: dict,
    mask,
    steps: int = 100,
    batch_size: int = 16,
    seed: int = 0,
    noise_scheduler=None,
    max_grad_norm: float | None = 1.0,
    lr_scheduler: str = "constant",
    warmup_steps: int = 0,
) -> list[float]:
    """Fine-tune a text-conditioned UNet (epsilon prediction, MSE) on `train_data` for `steps` AdamW steps at
    `mask.lr`: only the parameters left trainable (by `mask.apply`) change. Batches, noise and timesteps are drawn
    from `seed`, so two runs with the same mask give the same model. The model trains in train mode and gets every
    module's own mode back afterwards, also when interrupted.

    Args:
        model: A diffusers UNet2DConditionModel or a text-conditioned DiT (e.g. PixArtTransformer2DModel), or any
            module called as `model(x, t, encoder_hidden_states=...)` returning `.sample` (see `predict_noise`),
            already masked; its inputs are cast to its dtype (bf16 works; fp16 trainable parameters would need loss
            scaling, which this loop does not do), the loss is computed in float32.
        train_data: A dict with "images" (N, C, H, W) in the model's input space and "encoder_hidden_states"
            (N, L, D); repeat an example in it to duplicate it.
        mask: The `MemControlMask` (its `lr` is used).
        steps: Optimizer steps.
        batch_size: Examples per step (drawn with replacement).
        seed: Seed of the batches, noise and timesteps.
        noise_scheduler: A diffusers noise scheduler with `add_noise`; default `default_noise_scheduler()`.
        max_grad_norm: Gradient-norm clip; None turns it off.
        lr_scheduler: The learning-rate schedule (transformers' `get_scheduler`): "constant" (the default, as
            diffusers' training scripts), "constant_with_warmup", "linear" or "cosine" (decay to 0 at `steps`).
        warmup_steps: Linear warm-up steps from 0 to `mask.lr` (below `steps`).

    Returns:
        The loss of every step.

    Raises:
        ValueError: Before any step, on a bad argument or a model these calls cannot drive (see `check_denoiser`).
        RuntimeError: If another call is changing `model` in place, or another thread is reading it, right now.
    """
    steps, batch_size, seed, max_grad_norm, lr_scheduler, warmup_steps = _check_steps(
        steps, batch_size, seed, max_grad_norm, lr_scheduler, warmup_steps
    )
    check_denoiser(model)
    images, text = diffusion_data(train_data, "train_data")
    scheduler = noise_scheduler or default_noise_scheduler()

    def draw(generator: torch.Generator, device: torch.device) -> tuple:
        index = torch.randint(len(images), (batch_size,), generator=generator)
        batch = images[index]
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        return scheduler.add_noise(batch, noise, timesteps), timesteps, text[index], noise.to(device)

    def loss_fn(batch: tuple) -> torch.Tensor:
        noisy, timesteps, texts, noise = batch
        return F.mse_loss(predict_noise(model, noisy, timesteps, texts), noise)

    return _run_steps(model, mask.lr, steps, seed, max_grad_norm, lr_scheduler, warmup_steps, draw, loss_fn)


def lm_batch(sequences: list[torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding) for a causal LM.

    Args:
        sequences: 1-D token id tensors.
        device: Where to put the batch.
    """
    length = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    attention = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        attention[row, : len(sequence)] = 1
    labels = ids.masked_fill(attention == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "labels": labels.to(device)}


def train_causal_lm(
    model: nn.Module,
    train_data,
    mask,
    steps: int = 50,
    batch_size: int = 8,
    seed: int = 0,
    max_grad_norm: float | None = 1.0,
    lr_scheduler: str = "constant",
    warmup_steps: int = 0,
) -> list[float]:
    """Fine-tune a causal LM with the standard next-token loss on `train_data` for `steps` AdamW steps at `mask.lr`:
    only the parameters left trainable (by `mask.apply`) change. Batches are drawn from `seed`. The model trains in
    train mode and gets every module's own mode back afterwards, also when interrupted.

    Args:
        model: A transformers causal LM, already masked.
        train_data: Token id sequences (lists, 1-D tensors or a 2-D tensor); the model learns each whole sequence.
        mask: The `MemControlMask` (its `lr` is used).
        steps: Optimizer steps.
        batch_size: Sequences per step (drawn with replacement).
        seed: Seed of the batches.
        max_grad_norm: Gradient-norm clip; None turns it off.
        lr_scheduler: The learning-rate schedule (transformers' `get_scheduler`): "constant" (the default, as
            diffusers' training scripts), "constant_with_warmup", "linear" or "cosine" (decay to 0 at `steps`).
        warmup_steps: Linear warm-up steps from 0 to `mask.lr` (below `steps`).

    Returns:
        The loss of every step.

    Raises:
        ValueError: Before any step, on a bad argument or empty `train_data`.
        RuntimeError: If another call is changing `model` in place, or another thread is reading it, right now.
    """
    steps, batch_size, seed, max_grad_norm, lr_scheduler, warmup_steps = _check_steps(
        steps, batch_size, seed, max_grad_norm, lr_scheduler, warmup_steps
    )
    sequences = as_sequences(train_data, "train_data")  # raises on an empty `train_data`

    def draw(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        index = torch.randint(len(sequences), (batch_size,), generator=generator).tolist()
        return lm_batch([sequences[i] for i in index], device)

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch, use_cache=False).loss

    return _run_steps(model, mask.lr, steps, seed, max_grad_norm, lr_scheduler, warmup_steps, draw, loss_fn)
