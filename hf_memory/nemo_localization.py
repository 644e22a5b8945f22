"""NeMo localization (Hintersdorf et al. 2024): which value channels make a prompt reproduce its training image.

Three steps, as in the paper and its official code:

1. `compute_activation_statistics`: per channel of each cross-attention value projection, the mean and standard
   deviation of ``mean_over_tokens(|to_v(text embedding)|)`` over non-memorized prompts, plus the memorization
   threshold (mean + 1 std of their `memorization_score`). These activations depend on the prompt only, so they are
   computed by running each ``to_v`` on the text embedding directly, with no UNet pass.
2. `memorization_score`: for ``seeds`` initial latents, the first denoising step's noise prediction minus the latent,
   min-max normalized per channel; the score is the largest SSIM between two seeds. A memorized prompt predicts
   (nearly) the same noise whatever the seed.
3. `localize_memorization_neurons`: an initial set of out-of-distribution (z-score > theta) and top-k channels,
   grown until silencing it brings the score under the threshold, then refined to a minimal set.

Cost is counted in *UNet evaluations*: latent rows pushed through the UNet once (a batch of 10 seeds in one call
counts 10). Ours: at most ``seeds`` rows per check (``2 * seeds`` with classifier-free guidance) in batched calls,
fewer when a check fails early (one pair of seeds over the threshold settles it), the text embedding computed once,
and refinement by adaptive group testing (binary search for the shortest sufficient prefix of the most anomalous
channels, then removal in growing / halving groups) instead of one check per layer and per channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .nemo import NeMoConfig, _denoiser, apply_nemo, remove_nemo, value_projection_names

logger = logging.getLogger(__name__)

PAPER_BLOCKS = ("down_blocks", "mid_block")  # the paper hooks the down and mid blocks' value projections
REFINEMENTS = ("group", "greedy")


@dataclass
class ActivationStatistics:
    """Per-channel mean and std of value-projection activations over non-memorized prompts, and the score threshold.

    Example:
        >>> import tempfile, os
        >>> stats = ActivationStatistics({"a.to_v": torch.zeros(4)}, {"a.to_v": torch.ones(4)}, threshold=0.5)
        >>> path = os.path.join(tempfile.mkdtemp(), "stats.safetensors")
        >>> stats.save(path)
        >>> ActivationStatistics.load(path).threshold
        0.5
    """

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    threshold: float | None = None
    score_mean: float | None = None
    score_std: float | None = None
    num_prompts: int = 0
    scores: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if set(self.mean) != set(self.std):
            raise ValueError("`mean` and `std` must name the same layers.")
        for name in self.mean:
            if self.mean[name].shape != self.std[name].shape or self.mean[name].ndim != 1:
                raise ValueError(f"`mean[{name!r}]` and `std[{name!r}]` must be 1-D tensors of the same length.")

    @property
    def layers(self) -> list[str]:
        return list(self.mean)

    def z_scores(self, activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``|a - mean| / std`` per channel, for the activations of one prompt."""
        return {
            name: (activations[name].float().cpu() - self.mean[name]).abs() / self.std[name].clamp_min(1e-12)
            for name in self.layers
        }

    def save(self, path: str) -> None:
        """Write to one ``.safetensors`` file (tensors plus string metadata; never pickle)."""
        from safetensors.torch import save_file

        tensors = {f"mean/{name}": t.float().contiguous().cpu() for name, t in self.mean.items()}
        tensors.update({f"std/{name}": t.float().contiguous().cpu() for name, t in self.std.items()})
        metadata = {
            "format": "pt",
            "kind": "hf_memory.nemo.ActivationStatistics",
            "threshold": repr(self.threshold),
            "score_mean": repr(self.score_mean),
            "score_std": repr(self.score_std),
            "num_prompts": str(self.num_prompts),
            "scores": ",".join(repr(s) for s in self.scores),
            "layers": ",".join(self.layers),
        }
        save_file(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str) -> "ActivationStatistics":
        from safetensors import safe_open

        def number(text):
            return None if text in (None, "None") else float(text)

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("kind") != "hf_memory.nemo.ActivationStatistics":
                raise ValueError(f"{path!r} does not hold NeMo activation statistics.")
            layers = metadata["layers"].split(",") if metadata.get("layers") else []
            mean = {name: f.get_tensor(f"mean/{name}") for name in layers}
            std = {name: f.get_tensor(f"std/{name}") for name in layers}
        scores = [float(s) for s in metadata.get("scores", "").split(",") if s]
        return cls(
            mean, std, threshold=number(metadata.get("threshold")), score_mean=number(metadata.get("score_mean")),
            score_std=number(metadata.get("score_std")), num_prompts=int(metadata.get("num_prompts", 0)), scores=scores,
        )


@dataclass
class NeMoResult:
    """What `localize_memorization_neurons` found for one prompt."""

    prompt: str
    memorized: bool  # score_before >= threshold; otherwise nothing was localized
    threshold: float
    score_before: float
    score_initial: float | None  # score with the initial selection silenced
    score_after: float | None  # score with the refined selection silenced
    initial: NeMoConfig
    refined: NeMoConfig
    theta: float | None  # z-score threshold of the initial selection
    k: int | None  # top-k per layer of the initial selection
    unet_evaluations: int  # latent rows pushed through the UNet (one seed, one pass = 1)
    score_checks: int  # scores computed (each one batched UNet call)


def _parts(pipe):
    for name in ("tokenizer", "text_encoder", "scheduler"):
        if getattr(pipe, name, None) is None:
            raise TypeError(f"`pipe` must be a text-to-image pipeline with a `{name}`, e.g. StableDiffusionPipeline.")
    return _denoiser(pipe)


@torch.no_grad()
def _encode(pipe, prompts: Sequence[str], with_uncond: bool = False):
    """Text embeddings (and the empty prompt's, for classifier-free guidance), as the pipeline computes them."""
    unet = _parts(pipe)
    cond, uncond = pipe.encode_prompt(list(prompts), unet.device, 1, with_uncond, negative_prompt=None)
    return cond.to(unet.dtype), (uncond.to(unet.dtype) if with_uncond else None)


def _check_layers(unet, layers):
    if layers is None:
        layers = value_projection_names(unet, blocks=PAPER_BLOCKS) or value_projection_names(unet)
    if not layers:
        raise ValueError("The model has no cross-attention value projections (`attn2.to_v`).")
    modules = dict(unet.named_modules())
    for name in layers:
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise ValueError(f"Unknown layer {name!r}; value projections are {value_projection_names(unet)}.")
    return list(layers)


@torch.no_grad()
def value_activations(unet, layers: Sequence[str], embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mean_over_tokens(|to_v(embedding)|)`` per layer, shape (prompts, channels); any NeMo hook is bypassed."""
    modules = dict(unet.named_modules())
    if getattr(unet.config, "encoder_hid_dim_type", None) is not None:
        raise NotImplementedError("UNets that project the text embedding (`encoder_hid_proj`) are not supported.")
    out = {}
    for name in layers:
        to_v = modules[name]
        attention = modules[name.rsplit(".", 1)[0]]
        hidden = embeddings
        if getattr(attention, "norm_cross", None):
            hidden = attention.norm_encoder_hidden_states(hidden)
        out[name] = F.linear(hidden, to_v.weight, to_v.bias).abs().mean(dim=1).float().cpu()
    return out


def _pair_ssim(images: torch.Tensor, pairs: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """SSIM of ``images[i]`` and ``images[j]`` for each row ``(i, j)`` of ``pairs``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    size = min(images.shape[-2:])
    kernel_size = min(kernel_size, size - 1 if size % 2 == 0 else size)  # odd and no larger than the image
    return structural_similarity_index_measure(
        images[pairs[:, 0]].float(), images[pairs[:, 1]].float(), data_range=1.0, kernel_size=kernel_size,
        reduction="none",
    )


def _seed_stages(seeds: int) -> list[int]:
    """How many seeds an early-exit check has scored after each stage: 2, 4, 8, ... then all."""
    stages, n = [], 2
    while n < seeds:
        stages.append(n)
        n *= 2
    return stages + [seeds]


class _Scorer:
    """The memorization score of one prompt under any NeMo config; fixed seeds, embeddings computed once.

    Called with a ``threshold``, a check only has to say whether the score is under it, and the score is the
    largest SSIM over seed pairs: any one pair at or over the threshold settles "no". So seeds are scored in stages
    (2, 4, 8, ... then all), the seeds of the last pair that settled a check first, and the check stops at the first
    stage with such a pair; the returned score is then the largest over the pairs scored so far. "Yes" still scores
    every seed. The decision is the one the full score gives (up to the float rounding of differently batched calls).
    """

    def __init__(self, pipe, prompt: str, seeds: int = 10, seed: int = 0, num_inference_steps: int = 50,
                 guidance_scale: float = 0.0, height: int | None = None, kernel_size: int = 11, cache: bool = True,
                 embeddings=None, early_exit: bool = True):
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
            raise ValueError(f"`seeds` must be an integer >= 2 (the score compares seeds pairwise), got {seeds!r}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0 (0 = conditional prediction only), got {guidance_scale!r}.")
        self.pipe, self.unet = pipe, _parts(pipe)
        self.seeds, self.guidance_scale = seeds, guidance_scale
        cond, uncond = embeddings if embeddings is not None else _encode(pipe, [prompt], guidance_scale != 0)
        self.cond, self.uncond = cond, uncond
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        self.timestep = scheduler.timesteps[0]
        size = height or self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn((seeds, self.unet.config.in_channels, *size), generator=generator)
        self.latents = (latents * scheduler.init_noise_sigma).to(self.unet.device, self.unet.dtype)
        self.model_input = scheduler.scale_model_input(self.latents, self.timestep)
        self.kernel_size = kernel_size
        self.cache = {} if cache else None
        self.early_exit = early_exit
        self.order = list(range(seeds))  # seeds in the order staged checks score them
        self.unet_evaluations = 0
        self.checks = 0

    @torch.no_grad()
    def noise_differences(self, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """First-step noise prediction minus the latent, min-max normalized per sample and channel (hooks as set)."""
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

    def __call__(self, neurons: dict[str, list[int]] | None = None, scale: float = 0.0,
                 threshold: float | None = None) -> float:
        """The score with ``neurons`` silenced; given ``threshold``, possibly a lower bound that is >= it (see above)."""
        key = (tuple(sorted((name, tuple(c)) for name, c in (neurons or {}).items() if c)), scale)
        if self.cache is not None and key in self.cache:
            score, complete = self.cache[key]
            if complete or (threshold is not None and score >= threshold):
                return score
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


def memorization_score(pipe, prompt: str, seeds: int = 10, seed: int = 0, num_inference_steps: int = 50,
                       guidance_scale: float = 0.0, config: NeMoConfig | None = None, kernel_size: int = 11) -> float:
    """Largest pairwise SSIM between seeds of the first step's min-max normalized ``noise prediction - latent``.

    One batched UNet call over all seeds (``2 * seeds`` rows with ``guidance_scale != 0``). ``guidance_scale=0``
    (default, as the official code) scores the conditional prediction alone; ``num_inference_steps`` only sets the
    first timestep. ``config`` scores the prompt with those neurons silenced.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}.")
    scorer = _Scorer(pipe, prompt, seeds, seed, num_inference_steps, guidance_scale, kernel_size=kernel_size)
    return scorer(config.neurons if config else None, config.scale if config else 0.0)


@torch.no_grad()
def compute_activation_statistics(pipe, prompts: Sequence[str], layers: Sequence[str] | None = None,
                                  batch_size: int = 32, calibrate_threshold: bool = True, seeds: int = 10,
                                  seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 0.0,
                                  show_progress: bool = True) -> ActivationStatistics:
    """Per-channel mean/std of ``mean_over_tokens(|to_v(text embedding)|)`` over non-memorized ``prompts``.

    ``layers`` defaults to the value projections of the down and mid blocks (the paper's choice), or all
    ``attn2.to_v`` if the model has no such blocks. With ``calibrate_threshold`` (default) the memorization score
    of every prompt is computed too (``seeds`` UNet evaluations each) and ``threshold = mean + std`` of the scores.
    """
    prompts = list(prompts)
    if len(prompts) < 2 or not all(isinstance(p, str) for p in prompts):
        raise ValueError("`prompts` must be at least 2 strings (a std needs two samples).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
    unet = _parts(pipe)
    layers = _check_layers(unet, layers)
    per_layer = {name: [] for name in layers}
    scores = []
    chunks = range(0, len(prompts), batch_size)
    for start in tqdm(chunks, desc="NeMo statistics", disable=not show_progress):
        batch = prompts[start : start + batch_size]
        cond, uncond = _encode(pipe, batch, calibrate_threshold and guidance_scale != 0)
        for name, acts in value_activations(unet, layers, cond).items():
            per_layer[name].append(acts)
        if calibrate_threshold:
            for i, prompt in enumerate(batch):
                pair = (cond[i : i + 1], None if uncond is None else uncond[i : i + 1])
                scores.append(_Scorer(pipe, prompt, seeds, seed, num_inference_steps, guidance_scale, embeddings=pair)())
    acts = {name: torch.cat(chunks) for name, chunks in per_layer.items()}
    stats = ActivationStatistics(
        {name: a.mean(0) for name, a in acts.items()}, {name: a.std(0) for name, a in acts.items()},
        num_prompts=len(prompts),
    )
    if scores:
        values = torch.tensor(scores, dtype=torch.float64)
        stats.score_mean, stats.score_std = float(values.mean()), float(values.std())
        stats.threshold = stats.score_mean + stats.score_std
        stats.scores = scores
    return stats


def _initial_selection(acts, z, theta, k):
    return {
        name: sorted(set((z[name] > theta).nonzero().flatten().tolist())
                     | set(acts[name].topk(min(k, len(acts[name]))).indices.tolist()))
        for name in acts
    }


def _drop_unneeded(atoms: list, holds: Callable[[list], bool], order: list | None = None) -> list:
    """Remove atoms of ``atoms`` while ``holds`` stays true, trying them in ``order`` (default: as listed).

    Adaptive group testing: try removing a group at once; on success drop it and double the group size, on failure
    halve it; an atom that fails alone is kept. Every kept atom failed alone against a superset of the result, so,
    if ``holds`` is monotone (a superset of a passing set passes), removing any single kept atom breaks ``holds``
    (the guarantee of the one-at-a-time loop, which needs one check per atom). Given ``holds(atoms)``.
    """
    current, queue, size = list(atoms), list(atoms if order is None else order), 1
    while queue:
        group = queue[:size]
        trial = [a for a in current if a not in group]
        if holds(trial):
            current, queue, size = trial, queue[size:], size * 2
        elif size > 1:
            size //= 2
        else:
            queue = queue[1:]
    return current


def _as_neurons(pairs) -> dict[str, list[int]]:
    neurons: dict[str, list[int]] = {}
    for name, channel in pairs:
        neurons.setdefault(name, []).append(channel)
    return neurons


def _shortest_sufficient_prefix(atoms: list, holds: Callable[[list], bool]) -> list:
    """The shortest prefix of ``atoms`` with ``holds`` (binary search, ~log2(n) checks), given ``holds(atoms)``."""
    low, high = 0, len(atoms)  # holds(atoms[:high]) is known; atoms[:low] is not known to hold
    while high - low > 1:
        middle = (low + high) // 2
        if holds(atoms[:middle]):
            high = middle
        else:
            low = middle
    return atoms[:high]


def _refine_group(score, selection, threshold, z):
    """Drop layers, then channels, by adaptive group testing; least anomalous (lowest z-score) tried first.

    Channels: first the shortest sufficient prefix of the most anomalous ones (binary search), so everything after
    it goes in ~log2(n) checks; then `_drop_unneeded` inside the prefix.
    """

    def holds_layers(names):
        return score({name: selection[name] for name in names}) < threshold

    layers = [name for name in selection if selection[name]]
    peak = {name: max(float(z[name][c]) for c in selection[name]) for name in layers}
    layers = _drop_unneeded(layers, holds_layers, order=sorted(layers, key=peak.get))
    channels = sorted(((name, c) for name in layers for c in selection[name]), key=lambda p: -float(z[p[0]][p[1]]))

    def holds(pairs):
        return score(_as_neurons(pairs)) < threshold

    prefix = _shortest_sufficient_prefix(channels, holds)
    kept = _as_neurons(_drop_unneeded(prefix, holds, order=prefix[::-1]))
    return {name: sorted(kept[name]) for name in selection if name in kept}


def _refine_greedy(score, selection, threshold, z=None):
    """The official refinement: drop each layer, then each channel, whenever the score stays under the threshold."""
    current = {name: list(c) for name, c in selection.items() if c}
    for name in reversed(list(current)):
        without = {n: c for n, c in current.items() if n != name}
        if score(without) < threshold:
            current = without
    for name in reversed(list(current)):
        for channel in list(current[name]):
            without = {**current, name: [c for c in current[name] if c != channel]}
            if score(without) < threshold:
                current = without
    return {name: c for name, c in current.items() if c}


def localize_memorization_neurons(
    pipe, prompt: str, statistics: ActivationStatistics, threshold: float | None = None, seeds: int = 10,
    seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 0.0, theta: float = 5.0,
    theta_step: float = 0.25, min_theta: float = 1.0, max_k: int | None = None, refinement: str = "group",
    scale: float = 0.0, kernel_size: int = 11, cache: bool = True, early_exit: bool = True,
) -> NeMoResult:
    """Find value channels whose silencing brings ``prompt``'s memorization score under the threshold.

    Initial selection (as the paper): channels with z-score above ``theta`` plus the top-``k`` activations per
    layer, with ``theta`` lowered by ``theta_step`` (floor ``min_theta``) and ``k`` raised by 1 from 0 until the
    score with them silenced falls under ``threshold`` (default: ``statistics.threshold``); ``"group"`` finds that
    first step by exponential and binary search (the sets grow with the step), ``"greedy"`` scans step by step. Refinement drops whole
    layers, then channels, keeping the score under the threshold: ``"group"`` (default) tests groups of candidates
    (binary search, then growing / halving groups); ``"greedy"`` is the official one-check-per-layer-and-channel loop. Both return a set whose score is
    under the threshold and where, if the score only grows when fewer channels are silenced, removing any single
    channel brings it back over the threshold. A prompt scoring under the threshold unhooked is not memorized:
    the result then has empty configs. With ``early_exit`` (default) a check stops at the first pair of seeds whose
    SSIM reaches the threshold (seeds scored 2, 4, 8, ... at a time): the same decisions for fewer UNet evaluations.
    """
    if refinement not in REFINEMENTS:
        raise ValueError(f"`refinement` must be one of {', '.join(map(repr, REFINEMENTS))}, got {refinement!r}.")
    if not isinstance(statistics, ActivationStatistics):
        raise TypeError(f"`statistics` must be ActivationStatistics, got {type(statistics).__name__}.")
    threshold = statistics.threshold if threshold is None else threshold
    if threshold is None:
        raise ValueError("No `threshold` given and `statistics.threshold` is None (compute it with calibrate_threshold=True).")
    if not 0 <= min_theta <= theta or theta_step <= 0:
        raise ValueError(f"Need 0 <= `min_theta` <= `theta` and `theta_step` > 0, got {min_theta}, {theta}, {theta_step}.")
    unet = _parts(pipe)
    layers = _check_layers(unet, statistics.layers)
    score = _Scorer(pipe, prompt, seeds, seed, num_inference_steps, guidance_scale, kernel_size=kernel_size,
                    cache=cache, early_exit=early_exit)

    def scored(neurons):  # a check: only "under the threshold or not" is asked
        return score(neurons, scale, threshold)

    def result(**kwargs):
        return NeMoResult(prompt=prompt, threshold=threshold, score_before=before,
                          unet_evaluations=score.unet_evaluations, score_checks=score.checks, **kwargs)

    before = score(None, scale)
    if before < threshold:
        return result(memorized=False, score_initial=None, score_after=None, initial=NeMoConfig(scale=scale),
                      refined=NeMoConfig(scale=scale), theta=None, k=None)

    acts = {name: a[0] for name, a in value_activations(unet, layers, score.cond).items()}
    z = statistics.z_scores(acts)
    max_k = max(len(a) for a in acts.values()) if max_k is None else max_k

    def theta_at(step):  # the initial-selection sets grow with the step: theta falls and k = step rises
        return max(theta - step * theta_step, min_theta)

    step_scores = {}

    def passes(step):
        if step not in step_scores:
            step_scores[step] = scored(_initial_selection(acts, z, theta_at(step), step))
        return step_scores[step] < threshold

    if refinement == "greedy":  # the official scan: one step at a time
        step = 0
        while not passes(step) and step < max_k:
            step += 1
    else:  # the first passing step by exponential then binary search (the same step if the score is monotone)
        low, step = -1, 0
        while not passes(step) and step < max_k:
            low, step = step, min(max(1, 2 * step), max_k)
        while passes(step) and step - low > 1:
            middle = (low + step) // 2
            if passes(middle):
                step = middle
            else:
                low = middle
    current_theta, k = theta_at(step), step
    selection, initial_score = _initial_selection(acts, z, current_theta, k), step_scores[step]
    initial = NeMoConfig(selection, scale=scale)
    if initial_score >= threshold:
        initial_score = score(selection, scale)  # the whole score, not the early exit's lower bound
        logger.warning("Silencing up to top-%d channels per layer did not bring %r under the threshold.", k, prompt)
        return result(memorized=True, score_initial=initial_score, score_after=initial_score, initial=initial,
                      refined=initial, theta=current_theta, k=k)

    refine = _refine_group if refinement == "group" else _refine_greedy
    refined = refine(scored, initial.neurons, threshold, z)
    after = scored(refined)
    if after >= threshold:  # the score was not monotone on this prompt: fall back to the one-at-a-time loop
        logger.info("Group refinement missed the threshold for %r; refining one channel at a time.", prompt)
        refined = _refine_greedy(scored, initial.neurons, threshold)
        after = scored(refined)
    return result(memorized=True, score_initial=initial_score, score_after=after, initial=initial,
                  refined=NeMoConfig(refined, scale=scale), theta=current_theta, k=k)
