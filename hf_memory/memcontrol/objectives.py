"""The search's objectives, as plain functions of a trained model: memorization (lower is better) and quality."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import as_sequences, check_choice, check_integer, check_vocabulary, eval_mode, exclusive, model_device
from .attack import _sampler_from_pipeline
from .training import check_denoiser, default_noise_scheduler, diffusion_data, lm_batch, predict_noise


def _scheduler(noise_scheduler):
    scheduler = noise_scheduler or default_noise_scheduler()
    if not callable(getattr(scheduler, "add_noise", None)) or not hasattr(scheduler, "config"):
        raise ValueError(
            f"`noise_scheduler` must be a diffusers noise scheduler with `add_noise` and a `config` (e.g. "
            f"DDPMScheduler), got {type(noise_scheduler).__name__}."
        )
    return scheduler


def _timesteps(timesteps, scheduler) -> list[int]:
    if isinstance(timesteps, (str, bytes)) or getattr(timesteps, "ndim", None) == 0:
        timesteps = [timesteps]
    elif not hasattr(timesteps, "__iter__"):
        timesteps = [timesteps]  # one number: check_integer names it
    steps = [check_integer(t, "timesteps", minimum=0) for t in list(timesteps)]
    limit = scheduler.config.num_train_timesteps
    if not steps or max(steps) >= limit:
        raise ValueError(f"`timesteps` must be a non-empty list of integers in [0, {limit - 1}], got {timesteps!r}.")
    return steps


def _check_noise_magnitude_arguments(
    encoder_hidden_states, empty_hidden_states, images, timesteps, num_noise, seed, noise_scheduler
) -> tuple:
    """`noise_magnitude`'s argument checks, without the model (also run by the search before any training); returns
    (scheduler, timesteps, num_noise, seed, the empty prompt as (1, L, D), images as float32 or None)."""
    scheduler = _scheduler(noise_scheduler)
    steps = _timesteps(timesteps, scheduler)
    num_noise = check_integer(num_noise, "num_noise", minimum=1)
    seed = check_integer(seed, "seed")
    text = encoder_hidden_states
    if not isinstance(text, torch.Tensor) or text.ndim != 3 or not len(text) or not text.is_floating_point():
        raise ValueError(
            "`encoder_hidden_states` must be a (P, L, D) floating-point tensor of prompt embeddings with P >= 1, got "
            f"{_describe(text)}."
        )
    empty = empty_hidden_states
    if not isinstance(empty, torch.Tensor) or not empty.is_floating_point() or empty.ndim not in (2, 3):
        raise ValueError(
            f"`empty_hidden_states` must be the empty prompt's embedding, a (L, D) or (1, L, D) floating-point tensor, "
            f"got {_describe(empty)}."
        )
    empty = empty if empty.ndim == 3 else empty[None]
    if len(empty) != 1 or empty.shape[1:] != text.shape[1:]:
        raise ValueError(
            f"`empty_hidden_states` has shape {tuple(empty_hidden_states.shape)}, which does not match the prompts' "
            f"(L, D) = {tuple(text.shape[1:])}: give (L, D) or (1, L, D)."
        )
    if images is not None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) != len(text):
            raise ValueError("`images` must be a (P, C, H, W) tensor with one image per prompt.")
        if not images.is_floating_point():
            raise ValueError(
                f"`images` must be floating point, in the model's input space (e.g. [-1, 1]), got dtype {images.dtype}."
            )
        images = images.float()
    return scheduler, steps, num_noise, seed, empty, images


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _sample_shape(unet: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of the model's input, from its config (`in_channels`, `sample_size`)."""
    config = getattr(unet, "config", None)
    size, channels = getattr(config, "sample_size", None), getattr(config, "in_channels", None)
    if size is None or channels is None:
        raise ValueError(
            f"`unet` ({type(unet).__name__}) has no `config.in_channels` and `config.sample_size` to draw pure noise "
            "from: give `images`, or a diffusers model."
        )
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (channels, *size)


@torch.no_grad()
def noise_magnitude(
    unet: nn.Module,
    encoder_hidden_states: torch.Tensor,
    empty_hidden_states: torch.Tensor,
    images: torch.Tensor | None = None,
    timesteps=(999,),
    num_noise: int = 4,
    seed: int = 0,
    noise_scheduler=None,
) -> float:
    """Wen et al. (ICLR 2024)'s memorization score: the text-conditional noise magnitude ‖ε(x_t, c) − ε(x_t, ∅)‖₂,
    averaged over `num_noise` seeded noises, the fixed `timesteps` and the prompts. Memorized prompts pull the
    prediction far from the unconditional one. Fixed seeds and timesteps (the official MemControl code draws a random
    timestep per call) make it a deterministic objective.

    Args:
        unet: A text-conditioned UNet or DiT returning `.sample` (see `predict_noise`; inputs are cast to its
            dtype, the norm is computed in float32).
        encoder_hidden_states: (P, L, D) text embeddings of the P prompts to score (the duplicated captions).
        empty_hidden_states: The empty prompt's embedding, (L, D) or (1, L, D).
        images: Optional (P, C, H, W) floating-point training images (or latents) of the prompts, in the model's
            input space: x_t is each image noised to t. None: x_t is pure noise of the model's
            `config.in_channels` x `config.sample_size` (Wen et al.'s first sampling step; use t = 999).
        timesteps: The timesteps to score at (integers).
        num_noise: Seeded noise draws per prompt and timestep (the same draws for every prompt).
        seed: Seed of the noise.
        noise_scheduler: A diffusers scheduler with `add_noise` (for `images`); default Stable Diffusion's.

    Returns:
        The mean L2 norm (over all C·H·W values of a sample) of the difference.

    Raises:
        ValueError: Before any forward pass, if an argument has the wrong type, shape or range (integer images
            included), or the model cannot be called so (see `check_denoiser`).

    Examples:
        >>> class Echo(torch.nn.Module):  # ε = x + mean of the text embedding
        ...     config = type("C", (), {"in_channels": 1, "sample_size": 2})
        ...     def forward(self, x, t, encoder_hidden_states):
        ...         return type("O", (), {"sample": x + encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1)})
        >>> round(noise_magnitude(Echo(), torch.full((1, 3, 2), 0.5), torch.zeros(3, 2)), 4)  # 0.5 * sqrt(4)
        1.0
    """
    check_denoiser(unet, "unet")
    scheduler, steps, num_noise, seed, empty, images = _check_noise_magnitude_arguments(
        encoder_hidden_states, empty_hidden_states, images, timesteps, num_noise, seed, noise_scheduler
    )
    shape = tuple(images.shape[1:]) if images is not None else _sample_shape(unet)
    noise = torch.randn((num_noise, *shape), generator=torch.Generator().manual_seed(seed))
    norms = []
    with eval_mode(unet):
        for p in range(len(encoder_hidden_states)):
            for t in steps:
                timestep = torch.full((num_noise,), t, dtype=torch.long)
                x = noise if images is None else scheduler.add_noise(images[p].expand_as(noise), noise, timestep)
                text = torch.cat(
                    [encoder_hidden_states[p : p + 1].expand(num_noise, -1, -1), empty.expand(num_noise, -1, -1)]
                )
                out = predict_noise(unet, torch.cat([x, x]), torch.cat([timestep, timestep]), text)
                conditional, unconditional = out.chunk(2)
                norms.append((conditional - unconditional).flatten(1).norm(dim=1).cpu())
    return float(torch.cat(norms).mean())


@torch.no_grad()
def denoising_loss(
    unet: nn.Module,
    data: dict,
    timesteps=(100, 300, 500, 700, 900),
    seed: int = 0,
    noise_scheduler=None,
    batch_size: int = 64,
) -> float:
    """Held-out denoising loss: the mean squared error of the predicted noise at fixed timesteps and seeded noise
    (the training objective, made deterministic), on data the model was not fine-tuned on.

    Args:
        unet: A text-conditioned UNet or DiT returning `.sample` (see `predict_noise`; inputs are cast to its
            dtype, the error is computed in float32).
        data: A dict with "images" (N, C, H, W) and "encoder_hidden_states" (N, L, D).
        timesteps: The timesteps (integers); every example is scored at each.
        seed: Seed of the noise.
        noise_scheduler: A diffusers scheduler with `add_noise`; default Stable Diffusion's.
        batch_size: Examples per forward pass.

    Returns:
        The mean MSE over examples, timesteps and values.

    Raises:
        ValueError: Before any forward pass, on a bad argument or a model that cannot be called so.
    """
    check_denoiser(unet, "unet")
    scheduler, steps, seed, batch_size, images, text = _check_denoising_arguments(
        data, timesteps, seed, noise_scheduler, batch_size
    )
    device = model_device(unet)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    with eval_mode(unet):
        for t in steps:
            noise = torch.randn(images.shape, generator=generator)
            for start in range(0, len(images), batch_size):
                x, n = images[start : start + batch_size], noise[start : start + batch_size]
                timestep = torch.full((len(x),), t, dtype=torch.long)
                noisy = scheduler.add_noise(x, n, timestep)
                out = predict_noise(unet, noisy, timestep, text[start : start + batch_size])
                total += F.mse_loss(out, n.to(device), reduction="sum").item()
                count += n.numel()
    return total / count


def _check_denoising_arguments(data, timesteps, seed, noise_scheduler, batch_size, name: str = "data") -> tuple:
    """`denoising_loss`'s argument checks, without the model (also run by the search before any training); returns
    (scheduler, timesteps, seed, batch_size, images, text)."""
    scheduler = _scheduler(noise_scheduler)
    steps = _timesteps(timesteps, scheduler)
    seed = check_integer(seed, "seed")
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    images, text = diffusion_data(data, name)
    return scheduler, steps, seed, batch_size, images, text


def _check_feature_extractor(feature_extractor) -> None:
    if not isinstance(feature_extractor, nn.Module):
        raise ValueError(f"`feature_extractor` must be a torch.nn.Module, got {type(feature_extractor).__name__}.")


def _check_fid_images(images, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) < 2:
        raise ValueError(f"`{name}` must be a (N, C, H, W) tensor of at least 2 images in [0, 1].")


def frechet_distance(generated: torch.Tensor, reference: torch.Tensor, feature_extractor: nn.Module) -> float:
    """Fréchet distance between the features of generated and reference images (FID with your own features, as
    MemControl uses a domain network), through torchmetrics' `FrechetInceptionDistance(feature=...)`.

    Args:
        generated: (N, C, H, W) float images, as the feature extractor takes them.
        reference: (M, C, H, W) float images.
        feature_extractor: A module mapping a batch of images to (batch, d) features; it needs at least d + 1 images
            on each side for a full-rank covariance.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_feature_extractor(feature_extractor)
    _check_fid_images(generated, "generated")
    _check_fid_images(reference, "reference")
    metric = FrechetInceptionDistance(
        feature=feature_extractor, normalize=True, input_img_size=tuple(reference.shape[1:])
    )
    metric.update(reference.float(), real=True)
    metric.update(generated.float(), real=False)
    return float(metric.compute())


def _check_fid_arguments(
    pipeline, prompts, reference_images, feature_extractor, n_per_prompt, seed, generation_kwargs
):
    """`generated_fid`'s argument checks (also run by the search before any training); returns (n_per_prompt, seed)."""
    if not hasattr(pipeline, "unet") or not callable(pipeline):
        raise ValueError(
            "`pipeline` must be a diffusers text-to-image pipeline with a `unet` (e.g. StableDiffusionPipeline)."
        )
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("`prompts` must be a non-empty list of strings.")
    _check_fid_images(reference_images, "reference_images")
    _check_feature_extractor(feature_extractor)
    n_per_prompt = check_integer(n_per_prompt, "n_per_prompt", minimum=1)
    seed = check_integer(seed, "seed")
    if generation_kwargs is not None and not isinstance(generation_kwargs, dict):
        raise ValueError(f"`generation_kwargs` must be a dict or None, got {type(generation_kwargs).__name__}.")
    if len(prompts) * n_per_prompt < 2:
        raise ValueError("`prompts` × `n_per_prompt` must give at least 2 generated images.")
    return n_per_prompt, seed


def generated_fid(
    model: nn.Module,
    pipeline,
    prompts,
    reference_images: torch.Tensor,
    feature_extractor: nn.Module,
    n_per_prompt: int = 4,
    seed: int = 0,
    generation_kwargs: dict | None = None,
) -> float:
    """FID of the images a text-to-image pipeline generates with `model` as its UNet, against reference images, in
    your feature network's space (`frechet_distance`): MemControl's quality objective. The search calls it as
    `objectives=[..., "fid"]` with `objective_kwargs={"fid": {"pipeline": ..., "prompts": ..., ...}}`.

    Generation `i` of every prompt uses seed `seed + i`, so two calls on the same model give the same number. The
    pipeline's own UNet is put back on every exit path (an exception or Ctrl-C included), and two calls cannot share
    one pipeline at once.

    Args:
        model: The fine-tuned UNet, swapped into `pipeline` for the generations.
        pipeline: A diffusers text-to-image pipeline (e.g. `StableDiffusionPipeline`) whose `unet` attribute the
            model replaces while it generates.
        prompts: The prompts to generate from (e.g. held-out captions), a non-empty list of strings.
        reference_images: (M, C, H, W) real images in [0, 1] at the generations' size.
        feature_extractor: A module mapping a batch of images in [0, 1] to (batch, d) features; each side needs at
            least d + 1 images for a full-rank covariance.
        n_per_prompt: Generations per prompt.
        seed: Seed of the first generation of every prompt.
        generation_kwargs: Extra keyword arguments of the pipeline call (steps, guidance, size); with
            `output_type="latent"` a pixel-space pipeline's outputs in [-1, 1] are mapped to [0, 1].

    Returns:
        The Fréchet distance (lower is better).

    Raises:
        ValueError: Before any generation, if `pipeline` has no `unet`, `prompts` is empty or not strings,
            `reference_images` is not a 4-D tensor of at least 2 images, or a count is out of range.
        RuntimeError: If another call is using `pipeline`.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module (a UNet), got {type(model).__name__}.")
    n_per_prompt, seed = _check_fid_arguments(
        pipeline, prompts, reference_images, feature_extractor, n_per_prompt, seed, generation_kwargs
    )
    sample = _sampler_from_pipeline(pipeline, dict(generation_kwargs or {}))
    with exclusive(pipeline, "generated_fid"):
        original = pipeline.unet
        pipeline.unet = model
        try:
            with eval_mode(model):
                generated = torch.cat([torch.as_tensor(sample(p, n_per_prompt, seed)) for p in prompts])
        finally:
            pipeline.unet = original
    if generated.shape[1:] != reference_images.shape[1:]:
        raise ValueError(
            f"The generations are {tuple(generated.shape[1:])}, `reference_images` "
            f"{tuple(reference_images.shape[1:])}: generate at the reference size (`generation_kwargs` height / width)."
        )
    return frechet_distance(generated, reference_images, feature_extractor)


@torch.no_grad()
def causal_lm_loss(model: nn.Module, sequences, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats per token) of a causal LM on `sequences`: the held-out quality objective.

    Args:
        model: A transformers causal LM.
        sequences: Token id sequences (lists, 1-D tensors or a 2-D tensor); at least one of 2 tokens or more.
        batch_size: Sequences per forward pass.

    Raises:
        ValueError: Before any forward pass, if no sequence has a token to predict (all are shorter than 2 tokens)
            or an id is outside the model's vocabulary.
    """
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    rows = _loss_rows(sequences, "sequences")
    check_vocabulary(torch.cat(rows), model, "sequences")
    device = model_device(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = lm_batch(rows[start : start + batch_size], device)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
            labels = batch["labels"][:, 1:]
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), reduction="sum")
            total += loss.item()
            count += int((labels != -100).sum())
    return total / count


def _loss_rows(sequences, name: str) -> list[torch.Tensor]:
    """`sequences` as 1-D id tensors, refused when no sequence has a next token to predict."""
    rows = as_sequences(sequences, name)
    if not any(len(row) >= 2 for row in rows):
        raise ValueError(f"`{name}` has no sequence of 2 or more tokens: a causal LM loss needs a token to predict.")
    return rows


EXTRACTION_METRICS = ("memorization_score", "exact_match", "longest_common_prefix")


def extraction_rate(
    model: nn.Module,
    sequences,
    prefix_len: int = 32,
    suffix_len: int = 32,
    metric: str = "memorization_score",
    batch_size: int = 16,
) -> float:
    """How much of the training data the model reproduces: greedy extraction of each sequence's suffix from its
    prefix (`hf_memory.measure_extraction`), one metric's mean.

    Args:
        model: A transformers causal LM.
        sequences: The training sequences (each at least `prefix_len + suffix_len` tokens).
        prefix_len: Tokens given to the model.
        suffix_len: Tokens it must reproduce.
        metric: "memorization_score" (share of suffix tokens reproduced at their position), "exact_match" (share
            of suffixes reproduced whole) or "longest_common_prefix".
        batch_size: Windows per forward pass.
    """
    from ..extraction import measure_extraction

    check_choice(metric, "metric", EXTRACTION_METRICS)
    method = "auto" if metric == "memorization_score" else "prefix"
    result = measure_extraction(
        model, sequences, prefix_len, suffix_len, batch_size=batch_size, method=method, show_progress=False
    )
    return float(result.metrics[metric])
