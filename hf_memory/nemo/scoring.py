"""NeMo's memorization score: how alike the first denoising step's noise predictions are across seeds.

A memorized prompt predicts (nearly) the same noise whatever the initial latent, so the score is the largest SSIM
between two seeds of the min-max normalized ``noise prediction - latent``. `MemorizationScorer` holds one prompt's
seeds and text embedding and scores it under any NeMo config; `NeMoScorerConfig` groups its settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from .._utils import HubConfigMixin, check_integer, check_number
from ._common import pipeline_denoiser
from .config import NeMoConfig
from .hooks import _has_nemo, apply_nemo, remove_nemo


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass
class NeMoScorerConfig(HubConfigMixin):
    """How the memorization score is computed: seeds, timestep, guidance, SSIM window and check shortcuts.

    Args:
        seeds: Initial latents compared pairwise (>= 2); the paper and official code use 10.
        seed: Seed of the generator drawing those latents (the same latents for every check).
        num_inference_steps: Scheduler steps; only sets the first timestep, the one scored.
        guidance_scale: Classifier-free guidance of the scored prediction; 0 (the official code's choice) scores
            the conditional prediction alone, anything else doubles the UNet rows.
        height: Latent height (and width) in the denoiser's units; None = `unet.config.sample_size`.
        kernel_size: SSIM Gaussian window (made odd and no larger than the latent).
        cache: Remember the score of every neuron set already checked.
        early_exit: Stop a threshold check at the first pair of seeds that reaches the threshold (seeds scored
            2, 4, 8, ... at a time): the same decisions for fewer UNet evaluations.

    Raises:
        ValueError: If a field is out of range or of the wrong type (e.g. `seeds` < 2, a negative `guidance_scale`).

    Example:
        >>> NeMoScorerConfig(seeds=4).seeds
        4
    """

    config_name: ClassVar[str] = "nemo_scorer_config.json"

    seeds: int = field(default=10, metadata={"help": "Initial latents compared pairwise (>= 2)."})
    seed: int = field(default=0, metadata={"help": "Seed of the generator drawing the latents."})
    num_inference_steps: int = field(default=50, metadata={"help": "Scheduler steps (sets the first timestep)."})
    guidance_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance; 0 = conditional only."})
    height: int | None = field(default=None, metadata={"help": "Latent size; None = unet.config.sample_size."})
    kernel_size: int = field(default=11, metadata={"help": "SSIM Gaussian window."})
    cache: bool = field(default=True, metadata={"help": "Remember the score of every neuron set checked."})
    early_exit: bool = field(default=True, metadata={"help": "Stop a check at the first pair over the threshold."})

    def __post_init__(self):
        self.seeds = check_integer(self.seeds, "seeds", minimum=2, hint="the score compares seeds pairwise")
        self.seed = check_integer(self.seed, "seed", minimum=0)
        self.num_inference_steps = check_integer(self.num_inference_steps, "num_inference_steps", minimum=1)
        self.guidance_scale = check_number(
            self.guidance_scale, "guidance_scale", minimum=0, hint="0 = conditional prediction only"
        )
        self.height = check_integer(self.height, "height", minimum=1, allow_none=True)
        self.kernel_size = check_integer(self.kernel_size, "kernel_size", minimum=1)
        for name in ("cache", "early_exit"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")


SCORER_FIELDS = tuple(f for f in NeMoScorerConfig.__dataclass_fields__ if f != "config_name")


def scorer_config(scorer: NeMoScorerConfig | None, legacy: dict, caller: str) -> NeMoScorerConfig:
    """`scorer`, or one built from the scorer keywords an older call passed loose (with a `FutureWarning`).

    Args:
        scorer: The sub-config given, or None for the defaults.
        legacy: Keyword arguments the caller received besides its own; each must be a `NeMoScorerConfig` field.
        caller: The public function's name, for messages.

    Returns:
        `scorer`, a `NeMoScorerConfig` built from `legacy`, or the default config when both are empty.

    Raises:
        TypeError: If `scorer` is not a `NeMoScorerConfig`, `legacy` holds a name that is not a scorer field, or
            both `scorer` and `legacy` are given.
    """
    if scorer is not None and not isinstance(scorer, NeMoScorerConfig):
        raise TypeError(f"`scorer` must be a NeMoScorerConfig, got {type(scorer).__name__}.")
    if not legacy:
        return scorer if scorer is not None else NeMoScorerConfig()
    unknown = sorted(set(legacy) - set(SCORER_FIELDS))
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}.")
    if scorer is not None:
        raise TypeError(f"{caller}(): pass the scorer settings {sorted(legacy)} inside `scorer`, not next to it.")
    warnings.warn(
        f"Passing {', '.join(sorted(legacy))} to {caller}() directly is deprecated and will be removed in hf-memory "
        f"0.3: pass scorer=NeMoScorerConfig({', '.join(f'{k}=...' for k in sorted(legacy))}).",
        FutureWarning,
        stacklevel=3,
    )
    return NeMoScorerConfig(**legacy)


@torch.no_grad()
def encode_prompts(
    pipe: DiffusionPipeline, prompts: Sequence[str], with_uncond: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings (and the empty prompt's, for classifier-free guidance), as the pipeline computes them.

    Args:
        pipe: A text-to-image pipeline (`StableDiffusionPipeline` or alike).
        prompts: The prompts to embed.
        with_uncond: Also return the empty prompt's embedding (else None).

    Returns:
        `(cond, uncond)` in the denoiser's dtype: one row per prompt, and the empty prompt's embeddings (one row per
        prompt too) or None.
    """
    unet = pipeline_denoiser(pipe)
    cond, uncond = pipe.encode_prompt(list(prompts), unet.device, 1, with_uncond, negative_prompt=None)
    return cond.to(unet.dtype), (uncond.to(unet.dtype) if with_uncond else None)


def _pair_ssim(images: torch.Tensor, pairs: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """SSIM of `images[i]` and `images[j]` for each row `(i, j)` of `pairs`."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    size = min(images.shape[-2:])
    kernel_size = min(kernel_size, size)
    kernel_size = kernel_size if kernel_size % 2 else kernel_size - 1  # odd and no larger than the image
    # torchmetrics' Gaussian window takes its width from sigma (width = 2·int(3.5·sigma + 0.5) + 1), not from
    # `kernel_size`: sigma = 1.5 · width / 11 gives back exactly this width, and 1.5 (the SSIM standard) for 11.
    return structural_similarity_index_measure(
        images[pairs[:, 0]].float(),
        images[pairs[:, 1]].float(),
        data_range=1.0,
        kernel_size=kernel_size,
        sigma=1.5 * kernel_size / 11,
        reduction="none",
    )


def _seed_stages(seeds: int) -> list[int]:
    """How many seeds an early-exit check has scored after each stage: 2, 4, 8, ... then all."""
    stages, n = [], 2
    while n < seeds:
        stages.append(n)
        n *= 2
    return [*stages, seeds]


class MemorizationScorer:
    """The memorization score of one prompt under any NeMo config; fixed seeds, embeddings computed once.

    Called with a `threshold`, a check only has to say whether the score is under it, and the score is the largest
    SSIM over seed pairs: any one pair at or over the threshold settles "no". With `config.early_exit` seeds are
    scored in stages (2, 4, 8, ... then all), the seeds of the last pair that settled a check first, and the check
    stops at the first stage with such a pair; the returned score is then the largest over the pairs scored so far.
    "Yes" still scores every seed. The decision is the one the full score gives (up to the float rounding of
    differently batched calls). `unet_evaluations` counts latent rows pushed through the UNet, `checks` the scores
    computed.

    Args:
        pipe: A text-to-image pipeline with `tokenizer`, `text_encoder`, `scheduler` and a `unet`.
        prompt: The prompt to score.
        config: The scorer settings (default `NeMoScorerConfig()`).
        embeddings: `(cond, uncond)` text embeddings computed beforehand (uncond None without guidance); None
            encodes `prompt` with the pipeline.

    Attributes:
        config: The scorer settings in use.
        unet_evaluations: Latent rows pushed through the UNet so far (twice the seeds per call with guidance).
        checks: Scores computed so far (cache hits not included).

    Raises:
        TypeError: If `prompt` is not a string, `config` is not a `NeMoScorerConfig`, or `pipe` is not a
            text-to-image pipeline.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        prompt: str,
        config: NeMoScorerConfig | None = None,
        embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ):
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
        self.config = scorer_config(config, {}, "MemorizationScorer")
        config = self.config
        self.pipe, self.unet = pipe, pipeline_denoiser(pipe)
        self.seeds, self.guidance_scale = config.seeds, config.guidance_scale
        guided = config.guidance_scale != 0
        cond, uncond = embeddings if embeddings is not None else encode_prompts(pipe, [prompt], guided)
        self.cond, self.uncond = cond, uncond
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(config.num_inference_steps)
        self.timestep = scheduler.timesteps[0]
        size = config.height or self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        generator = torch.Generator().manual_seed(config.seed)
        latents = torch.randn((config.seeds, self.unet.config.in_channels, *size), generator=generator)
        self.latents = (latents * scheduler.init_noise_sigma).to(self.unet.device, self.unet.dtype)
        self.model_input = scheduler.scale_model_input(self.latents, self.timestep)
        self.kernel_size = config.kernel_size
        self.cache = {} if config.cache else None
        self.early_exit = config.early_exit
        self.order = list(range(config.seeds))  # seeds in the order staged checks score them
        self.unet_evaluations = 0
        self.checks = 0

    @torch.no_grad()
    def noise_differences(self, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """First-step noise prediction minus the latent, min-max normalized per sample and channel (hooks as set).

        One UNet call over the chosen seeds (guided as `config.guidance_scale` says); adds to `unet_evaluations`.

        Args:
            seeds: Indices of the seeds to evaluate, in [0, `config.seeds`); None evaluates all of them in order.

        Returns:
            A float32 tensor `(len(seeds), channels, height, width)` with values in [0, 1].
        """
        index = list(range(self.seeds)) if seeds is None else list(seeds)
        latents, model_input = self.latents[index], self.model_input[index]
        embeddings = self.cond.expand(len(index), -1, -1)
        if self.guidance_scale != 0:
            model_input = torch.cat([model_input] * 2)
            embeddings = torch.cat([self.uncond.expand(len(index), -1, -1), embeddings])
        noise = self.unet(model_input, self.timestep, encoder_hidden_states=embeddings).sample
        self.unet_evaluations += len(model_input)
        if self.guidance_scale != 0:
            uncond, cond = noise.chunk(2)
            noise = uncond + self.guidance_scale * (cond - uncond)
        diff = (noise - latents).float()
        low = diff.amin(dim=(2, 3), keepdim=True)
        high = diff.amax(dim=(2, 3), keepdim=True)
        return (diff - low) / (high - low).clamp_min(1e-12)

    def _score(self, threshold: float | None) -> tuple[float, bool]:
        """(score, complete) under the hooks as set; stops early once a pair reaches ``threshold``."""
        stages = _seed_stages(self.seeds) if threshold is not None and self.early_exit else [self.seeds]
        order, images, done, best = list(self.order), [], 0, -float("inf")
        for stage in stages:
            images.append(self.noise_differences(order[done:stage]))
            pairs = torch.tensor([(i, j) for j in range(done, stage) for i in range(j)])
            ssim = _pair_ssim(torch.cat(images), pairs, self.kernel_size)
            top = int(ssim.argmax())
            best, done = max(best, float(ssim[top])), stage
            if threshold is not None and float(ssim[top]) >= threshold:
                settling = [order[int(i)] for i in pairs[top]]
                self.order = settling + [s for s in self.order if s not in settling]
                return best, stage == self.seeds
        if threshold is None:  # all pairs known: the most similar pairs' seeds first
            ranked = [order[int(i)] for i in pairs[ssim.argsort(descending=True)].flatten()]
            self.order = list(dict.fromkeys(ranked + self.order))
        return best, True

    def __call__(
        self, neurons: dict[str, list[int]] | None = None, scale: float = 0.0, threshold: float | None = None
    ) -> float:
        """The score with `neurons` silenced; given `threshold`, possibly a lower bound that is >= it (see above).

        Args:
            neurons: Module name -> channel ids to silence (None or empty: the unhooked model).
            scale: Multiplier for those channels (0 switches them off).
            threshold: Only ask whether the score is under this value (allows the early exit).

        Returns:
            The largest SSIM over the seed pairs scored, in [-1, 1].
        """
        key = (tuple(sorted((name, tuple(c)) for name, c in (neurons or {}).items() if c)), scale)
        if self.cache is not None and key in self.cache:
            score, complete = self.cache[key]
            if complete or (threshold is not None and score >= threshold):
                return score
        if _has_nemo(self.unet):
            raise ValueError(
                "NeMo is already applied to this model: call `remove_nemo` first (the score applies the neurons to "
                "silence itself, and None means the unhooked model)."
            )
        config = NeMoConfig(dict(neurons or {}), scale=scale)
        if config.neurons:
            apply_nemo(self.unet, config)
        try:
            score, complete = self._score(threshold)
        finally:
            if config.neurons:
                remove_nemo(self.unet)
        self.checks += 1
        if self.cache is not None:
            self.cache[key] = (score, complete)
        return score


def nemo_memorization_score(
    pipe: DiffusionPipeline, prompt: str, config: NeMoConfig | None = None, scorer: NeMoScorerConfig | None = None
) -> float:
    """NeMo's memorization score of `prompt`: the largest SSIM between seeds of the first denoising step's min-max
    normalized `noise prediction - latent`.

    One batched UNet call over all seeds (`2 * seeds` rows with guidance). Not to be confused with the extraction
    metric's `memorization_score` (Pythia's positional score for language models).

    Args:
        pipe: A text-to-image pipeline (`StableDiffusionPipeline` or alike).
        prompt: The prompt to score.
        config: Score the prompt with these neurons silenced (default: none).
        scorer: Seeds, timestep, guidance and SSIM settings (default `NeMoScorerConfig()`).

    Returns:
        The score, in [-1, 1]; memorized prompts score near 1.

    Raises:
        TypeError: If `config` is not a `NeMoConfig`, `scorer` not a `NeMoScorerConfig`, or `prompt` not a string.
    """
    if config is not None and not isinstance(config, NeMoConfig):
        raise TypeError(f"`config` must be a NeMoConfig or None, got {type(config).__name__}.")
    score = MemorizationScorer(pipe, prompt, scorer)
    return score(config.neurons if config else None, config.scale if config else 0.0)


def memorization_score(
    pipe: DiffusionPipeline,
    prompt: str,
    seeds: int = 10,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 0.0,
    config: NeMoConfig | None = None,
    kernel_size: int = 11,
) -> float:
    """Deprecated name of `nemo_memorization_score` (it clashed with the extraction metric's `memorization_score`).

    Args:
        pipe: A text-to-image pipeline.
        prompt: The prompt to score.
        seeds: `NeMoScorerConfig.seeds`.
        seed: `NeMoScorerConfig.seed`.
        num_inference_steps: `NeMoScorerConfig.num_inference_steps`.
        guidance_scale: `NeMoScorerConfig.guidance_scale`.
        config: Score the prompt with these neurons silenced.
        kernel_size: `NeMoScorerConfig.kernel_size`.

    Returns:
        What `nemo_memorization_score` returns.
    """
    warnings.warn(
        "hf_memory.memorization_score (NeMo) is renamed nemo_memorization_score(pipe, prompt, config, scorer="
        "NeMoScorerConfig(...)); the old name will be removed in hf-memory 0.3.",
        FutureWarning,
        stacklevel=2,
    )
    scorer = NeMoScorerConfig(
        seeds=seeds,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        kernel_size=kernel_size,
    )
    return nemo_memorization_score(pipe, prompt, config, scorer)
