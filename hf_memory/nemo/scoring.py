"""NeMo's memorization score: how alike the first denoising step's noise predictions are across seeds.

A memorized prompt predicts (nearly) the same noise whatever the initial latent, so the score is the largest SSIM
between two seeds of the min-max normalized ``noise prediction - latent``. `MemorizationScorer` holds one prompt's
seeds and text embedding and scores it under any NeMo config; `NeMoScorerConfig` groups its settings.

Two scores: ``score="ours"`` (the default: plain SSIM at the first timestep, any latent size) and
``score="official"``, the official code's (MS-SSIM with kernel 11 and betas (0.33, 0.33, 0.33) as its pinned
torchmetrics 1.3.2 computes it, the UNet output at the *second* timestep on the initial latents, its swapped
classifier-free guidance, latents of at least 44×44).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from .._utils import (
    HubConfigMixin,
    check_bool,
    check_choice,
    check_denoiser,
    check_integer,
    check_number,
    pipeline_denoiser,
    predict_noise,
)
from .config import NeMoConfig
from .hooks import _has_nemo, apply_nemo, remove_nemo


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


SCORES = ("ours", "official")
OFFICIAL_BETAS = (0.33, 0.33, 0.33)  # the official MS-SSIM call: three scales, equal weights


def _odd_window(kernel_size: int) -> int:
    """The SSIM window actually used: `kernel_size`, made odd (torchmetrics needs an odd window)."""
    return kernel_size if kernel_size % 2 else kernel_size - 1


def official_min_size(kernel_size: int = 11) -> int:
    """The smallest latent side the official score accepts: torchmetrics' MS-SSIM with the official three betas
    needs a side of at least ``2 ** 3`` and ``side // 4 > window - 1``, i.e. 44 for the window 11.

    Args:
        kernel_size: The SSIM window (`NeMoScorerConfig.kernel_size`), made odd as the score does.

    Returns:
        The smallest height (and width) in latent pixels.

    Examples:
        >>> official_min_size(11)
        44
    """
    scales = len(OFFICIAL_BETAS)
    return max(2**scales, (scales - 1) ** 2 * _odd_window(kernel_size))


def _too_small_message(size: tuple[int, ...], kernel_size: int, where: str) -> str:
    return (
        f"score='official' uses MS-SSIM over {len(OFFICIAL_BETAS)} scales with a {_odd_window(kernel_size)}-wide "
        f"window, which needs latents of at least {official_min_size(kernel_size)}×{official_min_size(kernel_size)}; "
        f"got {'×'.join(map(str, size))} ({where}). Set `height` (SD-1.x: 64) or use score='ours', which takes any "
        "size."
    )


def latent_size(unet: torch.nn.Module, config: NeMoScorerConfig) -> tuple[int, int]:
    """The (height, width) of the latents scored: `config.height`, else the denoiser's `sample_size`.

    Args:
        unet: The denoiser.
        config: The scorer settings.

    Returns:
        The latent size.

    Raises:
        ValueError: With ``config.score == "official"``, if the size is under `official_min_size`; naming `height`.
    """
    size = config.height or unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    if config.score == "official" and min(size) < official_min_size(config.kernel_size):
        where = "`height`" if config.height else f"`height`=None takes unet.config.sample_size={size[0]}"
        raise ValueError(_too_small_message(size, config.kernel_size, where))
    return size


@dataclass
class NeMoScorerConfig(HubConfigMixin):
    """How the memorization score is computed: seeds, timestep, guidance, SSIM window and check shortcuts.

    `score` picks the measure. ``"ours"`` (default): the largest plain SSIM between seeds of the first timestep's
    noise difference, on latents of any size, staged early exits allowed. ``"official"``: the official code's
    measure, for reproducing its numbers (`NeMoScorerConfig.official()` gives all its defaults): the UNet output at
    the scheduler's *second* timestep (961 for SD's DDIM-50) on the initial latents, MS-SSIM (window 11, betas
    (0.33, 0.33, 0.33)) on latents of at least 44×44, and, with guidance, its swapped halves
    ``text + g·(uncond − text)``; `localize_memorization_neurons` then also follows the official search (see there).

    Args:
        seeds: Initial latents compared pairwise (>= 2); the paper and official code use 10.
        seed: Seed of the generator drawing those latents (the same latents for every check); the official code
            uses 1.
        num_inference_steps: Scheduler steps; only sets the timestep scored (the first one, or the second one with
            ``score="official"``).
        guidance_scale: Classifier-free guidance of the scored prediction; 0 (the official code's choice for the
            localization) scores the conditional prediction alone, anything else doubles the UNet rows. With
            ``score="official"`` the halves are swapped as in the official code, ``text + g·(uncond − text)``
            (its 0.428 threshold was calibrated so, at g = 7).
        height: Latent height (and width) in the denoiser's units; None = `unet.config.sample_size`.
        kernel_size: SSIM Gaussian window (made odd; with ``score="ours"`` also no larger than the latent).
        cache: Remember the score of every neuron set already checked.
        early_exit: Stop a threshold check at the first pair of seeds that reaches the threshold (seeds scored
            2, 4, 8, ... at a time): the same decisions for fewer UNet evaluations. None (default) = on for
            ``score="ours"``, off for ``score="official"``, which cannot stage seeds (its MS-SSIM takes the data
            range from the whole batch).
        score: ``"ours"`` (default) or ``"official"``, as above.

    Raises:
        ValueError: If a field is out of range or of the wrong type (e.g. `seeds` < 2, a negative `guidance_scale`,
            a `score` other than "ours" / "official"), or, with ``score="official"``, `early_exit` is True or
            `height` is under `official_min_size(kernel_size)`.

    Examples:
        >>> NeMoScorerConfig(seeds=4).seeds
        4
        >>> official = NeMoScorerConfig.official()
        >>> official.score, official.seed, official.early_exit
        ('official', 1, False)
    """

    config_name: ClassVar[str] = "nemo_scorer_config.json"

    seeds: int = field(default=10, metadata={"help": "Initial latents compared pairwise (>= 2)."})
    seed: int = field(default=0, metadata={"help": "Seed of the generator drawing the latents."})
    num_inference_steps: int = field(default=50, metadata={"help": "Scheduler steps (sets the timestep scored)."})
    guidance_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance; 0 = conditional only."})
    height: int | None = field(default=None, metadata={"help": "Latent size; None = unet.config.sample_size."})
    kernel_size: int = field(default=11, metadata={"help": "SSIM Gaussian window."})
    cache: bool = field(default=True, metadata={"help": "Remember the score of every neuron set checked."})
    early_exit: bool | None = field(
        default=None,
        metadata={
            "help": "Stop a check at the first pair over the threshold; None = on for 'ours', off for 'official'."
        },
    )
    score: str = field(default="ours", metadata={"help": "'ours' (SSIM, first timestep) or 'official' (MS-SSIM)."})

    def __post_init__(self):
        self.score = check_choice(self.score, "score", SCORES)
        self.seeds = check_integer(self.seeds, "seeds", minimum=2, hint="the score compares seeds pairwise")
        self.seed = check_integer(self.seed, "seed", minimum=0)
        self.num_inference_steps = check_integer(self.num_inference_steps, "num_inference_steps", minimum=1)
        self.guidance_scale = check_number(
            self.guidance_scale, "guidance_scale", minimum=0, hint="0 = conditional prediction only"
        )
        self.height = check_integer(self.height, "height", minimum=1, allow_none=True)
        self.kernel_size = check_integer(self.kernel_size, "kernel_size", minimum=1)
        if self.early_exit is None:
            self.early_exit = self.score == "ours"
        self.cache = check_bool(self.cache, "cache")
        self.early_exit = check_bool(self.early_exit, "early_exit")
        if self.score == "official":
            if self.early_exit:
                raise ValueError(
                    "`early_exit` must be False or None with score='official': its MS-SSIM takes the data range "
                    "from the whole batch of seeds, so a check cannot score them in stages."
                )
            if self.height is not None and self.height < official_min_size(self.kernel_size):
                raise ValueError(_too_small_message((self.height, self.height), self.kernel_size, "`height`"))

    @classmethod
    def official(cls, **overrides) -> NeMoScorerConfig:
        """The official code's scorer settings: ``score="official"``, 10 seeds drawn with seed 1, 50 DDIM steps,
        guidance 0 (its localization; its threshold calibration used 7), window 11, no early exit.

        Args:
            **overrides: Fields to set otherwise, e.g. ``guidance_scale=7`` for the threshold calibration or
                ``height=64`` for a model whose `sample_size` is smaller.

        Returns:
            The config.
        """
        settings = {
            "score": "official",
            "seeds": 10,
            "seed": 1,
            "num_inference_steps": 50,
            "guidance_scale": 0.0,
            "kernel_size": 11,
            "early_exit": False,
        }
        return cls(**{**settings, **overrides})


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
    try:
        parameters = list(inspect.signature(pipe.encode_prompt).parameters)[1:4]
    except (AttributeError, TypeError, ValueError):
        parameters = []
    if parameters != ["device", "num_images_per_prompt", "do_classifier_free_guidance"]:
        raise ValueError(
            f"`pipe` ({type(pipe).__name__}) has no Stable Diffusion-style `encode_prompt(prompt, device, "
            "num_images_per_prompt, do_classifier_free_guidance, ...)`: compute the text embeddings yourself and pass "
            "them as `embeddings=(cond, uncond)`."
        )
    cond, uncond = pipe.encode_prompt(list(prompts), unet.device, 1, with_uncond, negative_prompt=None)
    return cond.to(unet.dtype), (uncond.to(unet.dtype) if with_uncond else None)


def _ssim(first: torch.Tensor, second: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Plain SSIM of `first[i]` and `second[i]` for each row (our score)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    size = min(first.shape[-2:])
    kernel_size = _odd_window(min(kernel_size, size))  # odd and no larger than the image
    # torchmetrics' Gaussian window takes its width from sigma (width = 2·int(3.5·sigma + 0.5) + 1), not from
    # `kernel_size`: sigma = 1.5 · width / 11 gives back exactly this width, and 1.5 (the SSIM standard) for 11.
    return structural_similarity_index_measure(
        first.float(),
        second.float(),
        data_range=1.0,
        kernel_size=kernel_size,
        sigma=1.5 * kernel_size / 11,
        reduction="none",
    )


def _gaussian_window(width: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A normalized 2-D Gaussian window per channel, shape (channels, 1, width, width), for a depthwise conv."""
    offsets = torch.arange(width, dtype=like.dtype, device=like.device) - (width - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    profile = profile / profile.sum()
    return (profile[:, None] * profile[None, :]).expand(channels, 1, width, width)


def _ms_ssim(first: torch.Tensor, second: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """MS-SSIM of `first[i]` and `second[i]` for each row, as the official code computes it (the score "official").

    The official code calls torchmetrics' `multiscale_structural_similarity_index_measure(kernel_size=11,
    betas=(0.33, 0.33, 0.33))` and pins torchmetrics 1.3.2; this is that computation, written out so that it does
    not drift with the installed torchmetrics. Per scale (three): a Gaussian window (σ = 1.5 for 11) over the
    reflect-padded images, the data range taken from the whole batch (so the rows scored together matter), the
    SSIM and contrast maps averaged over the region away from the padding, each clipped at 0 (`normalize="relu"`);
    then 2×2 average pooling. Result: the contrast terms of the first two scales and the SSIM of the last, each to
    the power 0.33, multiplied. (torchmetrics 1.5 and later average the SSIM term over the padded border too, which
    moves low similarities noticeably: that is why the installed version is not called.)
    """
    import torch.nn.functional as F

    width = _odd_window(kernel_size)
    sigma, pad = 1.5 * width / 11, width // 2
    x, y = first.float(), second.float()
    rows, channels = x.shape[:2]
    terms = []
    for scale in range(len(OFFICIAL_BETAS)):
        data_range = torch.maximum(x.max() - x.min(), y.max() - y.min())
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        stacked = F.pad(torch.cat([x, y, x * x, y * y, x * y]), (pad, pad, pad, pad), mode="reflect")
        window = _gaussian_window(width, sigma, channels, x)
        mean_x, mean_y, mean_xx, mean_yy, mean_xy = F.conv2d(stacked, window, groups=channels).split(rows)
        var_x = (mean_xx - mean_x**2).clamp_min(0)
        var_y = (mean_yy - mean_y**2).clamp_min(0)
        contrast = (2 * (mean_xy - mean_x * mean_y) + c2) / (var_x + var_y + c2)
        inner = (..., slice(pad, contrast.shape[-2] - pad), slice(pad, contrast.shape[-1] - pad))
        if scale < len(OFFICIAL_BETAS) - 1:
            term = contrast[inner]
        else:
            term = ((2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1) * contrast)[inner]
        terms.append(term.reshape(rows, -1).mean(-1).relu())
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    betas = torch.tensor(OFFICIAL_BETAS, dtype=x.dtype, device=x.device).view(-1, 1)
    return (torch.stack(terms) ** betas).prod(dim=0)


def _pair_ssim(images: torch.Tensor, pairs: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """SSIM of `images[i]` and `images[j]` for each row `(i, j)` of `pairs`."""
    return _ssim(images[pairs[:, 0]], images[pairs[:, 1]], kernel_size)


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

    With ``config.score == "official"`` the scorer computes the official code's quantities instead: the noise
    difference at the second timestep, MS-SSIM over every pair of seeds at once (`pairwise_similarities`), the
    seeds whose largest pairwise MS-SSIM exceeds a threshold (`memorized_seeds`), and the official localization
    criterion, the MS-SSIM of each such seed's blocked and unblocked noise difference (`similarity_to_unblocked`).
    The official code also evaluates the UNet at the first timestep and discards the result; that pass is skipped
    here (and not counted).

    Args:
        pipe: A text-to-image pipeline with `tokenizer`, `text_encoder`, `scheduler` and a denoiser: a `unet`
            (called `unet(x, t, encoder_hidden_states=c)`), or a text-conditioned DiT `transformer` (called
            `transformer(x, encoder_hidden_states=c, timestep=t)`; PixArt's needs `embeddings` computed beforehand,
            its `encode_prompt` differing from Stable Diffusion's). See `hf_memory._utils.predict_noise`.
        prompt: The prompt to score.
        config: The scorer settings (default `NeMoScorerConfig()`).
        embeddings: `(cond, uncond)` text embeddings computed beforehand (uncond None without guidance); None
            encodes `prompt` with the pipeline.

    Attributes:
        config: The scorer settings in use.
        timestep: The timestep scored (the scheduler's first, or second with ``score="official"``).
        unet_evaluations: Latent rows pushed through the UNet so far (twice the seeds per call with guidance).
        checks: Scores computed so far (cache hits not included).

    Raises:
        TypeError: If `prompt` is not a string, `config` is not a `NeMoScorerConfig`, or `pipe` is not a
            text-to-image pipeline.
        ValueError: If the denoiser cannot be called so (a class-conditional DiT, SDXL's added conditions, SD3 or
            Flux), or, with ``score="official"``, if the latents are smaller than `official_min_size` (raised before
            any UNet evaluation; set `NeMoScorerConfig.height`); if `embeddings` is None and the pipeline's
            `encode_prompt` is not Stable Diffusion's.
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
        check_denoiser(self.unet, "pipe", "NeMo's memorization scorer", "NeMo scores text-conditioned UNets and DiTs.")
        self.official = config.score == "official"
        size = latent_size(self.unet, config)
        self.seeds, self.guidance_scale = config.seeds, config.guidance_scale
        guided = config.guidance_scale != 0
        cond, uncond = embeddings if embeddings is not None else encode_prompts(pipe, [prompt], guided)
        self.cond, self.uncond = cond, uncond
        # A copy of the pipeline's own scheduler: `from_config(pipe.scheduler.config)` would drop settings the
        # pipeline corrected after construction (StableDiffusionPipeline sets `steps_offset=1`, which diffusers
        # lists as a default value and `from_config` then resets to 0: timesteps 980, 960 instead of 981, 961).
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(config.num_inference_steps)
        # The official code scores the UNet output at timesteps[1] (its `early_stopping=1`), or at the only
        # timestep of a one-step schedule, always on the initial latents (it never calls `scheduler.step`).
        index = min(1, len(scheduler.timesteps) - 1) if self.official else 0
        self.timestep = scheduler.timesteps[index]
        generator = torch.Generator().manual_seed(config.seed)
        latents = torch.randn((config.seeds, self.unet.config.in_channels, *size), generator=generator)
        if not self.official:  # the official code uses the draw as is (the same for DDIM, whose sigma is 1)
            latents = latents * scheduler.init_noise_sigma
        self.latents = latents.to(self.unet.device, self.unet.dtype)
        self.model_input = scheduler.scale_model_input(self.latents, self.timestep)
        self.kernel_size = config.kernel_size
        self.cache = {} if config.cache else None
        self.early_exit = config.early_exit
        self.order = list(range(config.seeds))  # seeds in the order staged checks score them
        self._unblocked: tuple[torch.Tensor, torch.Tensor] | None = None  # official: images, pairwise MS-SSIM
        self.unet_evaluations = 0
        self.checks = 0

    @torch.no_grad()
    def noise_differences(self, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Noise prediction minus the latent, min-max normalized per sample and channel (hooks as set).

        One UNet call over the chosen seeds at `timestep` (guided as `config.guidance_scale` says, with the
        official code's swapped halves under ``score="official"``); adds to `unet_evaluations`.

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
        # A UNet takes the timestep second, a DiT by keyword; a learned variance is dropped (the ε half kept).
        noise = predict_noise(self.unet, model_input, self.timestep, embeddings).to(latents.dtype)
        self.unet_evaluations += len(model_input)
        if self.guidance_scale != 0:
            uncond, cond = noise.chunk(2)
            if self.official:
                # The official code names the halves the other way round (`noise_pred_text, noise_pred_uncond =
                # noise_pred.chunk(2)` on [uncond | text] rows), so it computes text + g·(uncond − text).
                noise = cond + self.guidance_scale * (uncond - cond)
            else:
                noise = uncond + self.guidance_scale * (cond - uncond)
        diff = (noise - latents).float()
        low = diff.amin(dim=(2, 3), keepdim=True)
        high = diff.amax(dim=(2, 3), keepdim=True)
        return (diff - low) / (high - low).clamp_min(1e-12)

    def _similarity(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity of the configured score: SSIM (ours) or the official MS-SSIM."""
        return (_ms_ssim if self.official else _ssim)(first, second, self.kernel_size)

    def _score(self, threshold: float | None) -> tuple[float, bool]:
        """(score, complete) under the hooks as set; stops early once a pair reaches ``threshold``."""
        if self.official:
            return float(self._pairwise()[1].max()), True
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

    def _pairwise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise differences of every seed, similarity of every pair in `torch.combinations` order), hooks as set;
        one UNet call, one similarity call over all pairs (as the official code batches them)."""
        images = self.noise_differences()
        pairs = torch.combinations(torch.arange(self.seeds), r=2)
        return images, self._similarity(images[pairs[:, 0]], images[pairs[:, 1]])

    def _unblocked_official(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unhooked model's `_pairwise()`, computed once (the reference of `similarity_to_unblocked`)."""
        if self._unblocked is None:
            with self._silenced(None, 0.0):
                self._unblocked = self._pairwise()
            self.checks += 1
        return self._unblocked

    @contextmanager
    def _silenced(self, neurons: dict[str, list[int]] | None, scale: float):
        """Apply `neurons` (none: the unhooked model) for the duration; refuses a model NeMo is already applied to."""
        if _has_nemo(self.unet):
            raise ValueError(
                "NeMo is already applied to this model: call `remove_nemo` first (the score applies the neurons to "
                "silence itself, and None means the unhooked model)."
            )
        config = NeMoConfig(dict(neurons or {}), scale=scale)
        if config.neurons:
            apply_nemo(self.unet, config)
        try:
            yield
        finally:
            if config.neurons:
                remove_nemo(self.unet)

    @staticmethod
    def _key(neurons: dict[str, list[int]] | None, scale: float) -> tuple:
        return tuple(sorted((name, tuple(sorted(set(c)))) for name, c in (neurons or {}).items() if c)), scale

    def __call__(
        self, neurons: dict[str, list[int]] | None = None, scale: float = 0.0, threshold: float | None = None
    ) -> float:
        """The score with `neurons` silenced; given `threshold`, possibly a lower bound that is >= it (see above).

        Args:
            neurons: Module name -> channel ids to silence (None or empty: the unhooked model).
            scale: Multiplier for those channels (0 switches them off).
            threshold: Only ask whether the score is under this value (allows the early exit; ignored by the
                official score, which always scores every seed).

        Returns:
            The largest SSIM (MS-SSIM with ``score="official"``) over the seed pairs scored, in [-1, 1].
        """
        key = self._key(neurons, scale)
        if self.cache is not None and key in self.cache:
            score, complete = self.cache[key]
            if complete or (threshold is not None and score >= threshold):
                return score
        if self.official and not key[0]:  # the unhooked pairs, shared with `memorized_seeds`
            score, complete = float(self._unblocked_official()[1].max()), True
        else:
            with self._silenced(neurons, scale):
                score, complete = self._score(threshold)
            self.checks += 1
        if self.cache is not None:
            self.cache[key] = (score, complete)
        return score

    def _require_official(self, method: str) -> None:
        if not self.official:
            raise ValueError(f"`{method}` is the official criterion: it needs NeMoScorerConfig(score='official').")

    def pairwise_similarities(self) -> torch.Tensor:
        """The official score's MS-SSIM of every pair of seeds of the unhooked model, as the official code's
        `calculate_max_pairwise_ssim` and threshold script compute them (its threshold is mean + 1 std of these).

        Returns:
            A 1-D tensor, one value per pair in `torch.combinations(torch.arange(seeds), 2)` order.

        Raises:
            ValueError: If the scorer's `config.score` is not "official", or NeMo is applied to the model.
        """
        self._require_official("pairwise_similarities")
        return self._unblocked_official()[1].clone()

    def memorized_seeds(self, threshold: float) -> list[int]:
        """The seeds the official code localizes on: those whose largest MS-SSIM with any other seed (unhooked
        model) is over `threshold`; none means the prompt is not memorized.

        Args:
            threshold: The memorization threshold (the official code's `pairwise_ssim_threshold`, 0.428).

        Returns:
            The seed indices, ascending.

        Raises:
            ValueError: If the scorer's `config.score` is not "official", or NeMo is applied to the model.
        """
        self._require_official("memorized_seeds")
        threshold = check_number(threshold, "threshold")
        similarities = self._unblocked_official()[1]
        pairs = torch.combinations(torch.arange(self.seeds), r=2)
        best = [float(similarities[(pairs == seed).any(dim=1)].max()) for seed in range(self.seeds)]
        return [seed for seed in range(self.seeds) if best[seed] > threshold]

    def similarity_to_unblocked(
        self, neurons: dict[str, list[int]] | None, scale: float = 0.0, seeds: Sequence[int] | None = None
    ) -> float:
        """The official localization criterion: the largest, over `seeds`, MS-SSIM between a seed's noise
        difference with `neurons` silenced and the same seed's unhooked one (the official code compares blocked
        with unblocked noise, not seeds with each other). Under its threshold, the silenced neurons are taken to
        remove the memorization.

        Args:
            neurons: Module name -> channel ids to silence (None or empty: the unhooked model, scoring 1).
            scale: Multiplier for those channels (0 switches them off).
            seeds: The seeds to compare, e.g. `memorized_seeds(threshold)`; None = all seeds.

        Returns:
            The largest MS-SSIM over `seeds`, in [0, 1].

        Raises:
            ValueError: If the scorer's `config.score` is not "official", `seeds` is empty or out of range, or NeMo
                is applied to the model.
        """
        self._require_official("similarity_to_unblocked")
        index = list(range(self.seeds)) if seeds is None else [int(s) for s in seeds]
        if not index or min(index) < 0 or max(index) >= self.seeds:
            raise ValueError(f"`seeds` must be seed indices in [0, {self.seeds}), at least one, got {seeds!r}.")
        key = ("unblocked", *self._key(neurons, scale), tuple(index))
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        reference = self._unblocked_official()[0][index]
        with self._silenced(neurons, scale):
            blocked = self.noise_differences(index)
        score = float(self._similarity(reference, blocked).max())
        self.checks += 1
        if self.cache is not None:
            self.cache[key] = score
        return score


def nemo_memorization_score(
    pipe: DiffusionPipeline, prompt: str, config: NeMoConfig | None = None, scorer: NeMoScorerConfig | None = None
) -> float:
    """NeMo's memorization score of `prompt`: the largest SSIM between seeds of the first denoising step's min-max
    normalized `noise prediction - latent`.

    One batched UNet call over all seeds (`2 * seeds` rows with guidance). With
    ``scorer=NeMoScorerConfig.official()`` it is the official code's detection score instead: the largest MS-SSIM
    between seeds of the noise difference at the second timestep. Not to be confused with the extraction metric's
    `memorization_score` (Pythia's positional score for language models).

    Args:
        pipe: A text-to-image pipeline (`StableDiffusionPipeline` or alike).
        prompt: The prompt to score.
        config: Score the prompt with these neurons silenced (default: none).
        scorer: Seeds, timestep, guidance, SSIM settings and which score (default `NeMoScorerConfig()`).

    Returns:
        The score, in [-1, 1]; memorized prompts score near 1.

    Raises:
        TypeError: If `config` is not a `NeMoConfig`, `scorer` not a `NeMoScorerConfig`, or `prompt` not a string.
        ValueError: With the official score, if the latents are smaller than `official_min_size` (before any work).
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
