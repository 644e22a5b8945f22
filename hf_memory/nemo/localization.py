"""NeMo localization (Hintersdorf et al. 2024): which value channels make a prompt reproduce its training image.

Three steps, as in the paper and its official code:

1. `compute_activation_statistics`: per channel of each cross-attention value projection, the mean and standard
   deviation of ``mean_over_tokens(|to_v(text embedding)|)`` over non-memorized prompts, plus the memorization
   threshold (mean + 1 std of their `nemo_memorization_score`). These activations depend on the prompt only, so they
   are computed by running each ``to_v`` on the text embedding directly, with no UNet pass.
2. `nemo_memorization_score`: for ``seeds`` initial latents, the first denoising step's noise prediction minus the
   latent, min-max normalized per channel; the score is the largest SSIM between two seeds. A memorized prompt
   predicts (nearly) the same noise whatever the seed.
3. `localize_memorization_neurons`: an initial set of out-of-distribution (z-score > theta) and top-k channels,
   grown until silencing it brings the score under the threshold, then refined to a minimal set.

With ``scorer=NeMoScorerConfig.official()`` the localization follows the official code instead (see
`localize_memorization_neurons`): its score, its blocked-versus-unblocked criterion, its step-by-step initial loop
with its stopping rule, and its one-check-per-layer-and-channel refinement.

Cost is counted in *UNet evaluations*: latent rows pushed through the UNet once (a batch of 10 seeds in one call
counts 10). Ours: at most ``seeds`` rows per check (``2 * seeds`` with classifier-free guidance) in batched calls,
fewer when a check fails early (one pair of seeds over the threshold settles it), the text embedding computed once,
and refinement by adaptive group testing (binary search for the shortest sufficient prefix of the most anomalous
channels, then removal in growing / halving groups) instead of one check per layer and per channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._utils import check_choice, check_integer, check_number, pipeline_denoiser
from .config import NeMoConfig
from .scoring import MemorizationScorer, NeMoScorerConfig, scorer_config
from .search import (
    first_passing_step,
    initial_selection,
    official_refinement,
    official_scan,
    refine_greedy,
    refine_group,
)
from .statistics import ActivationStatistics, check_layers, value_activations


if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

REFINEMENTS = ("group", "greedy")


@dataclass
class NeMoResult:
    """What `localize_memorization_neurons` found for one prompt.

    Attributes:
        prompt: The prompt localized.
        memorized: Whether `score_before` >= `threshold` (> with the official score); otherwise nothing was
            localized and the configs are empty.
        threshold: The memorization-score threshold used.
        score_before: The score with no channel silenced.
        score_initial: The score with the initial selection silenced (with the official score: its blocked-vs-
            unblocked MS-SSIM, see `seeds`); None if not memorized.
        score_after: The score with the refined selection silenced; None if not memorized. Equal to
            `score_initial` when even the largest initial selection stayed over the threshold (then `refined` is
            `initial`; the official loop refines anyway, against its last initial score).
        initial: The initial selection (z-score above `theta` plus the top-`k` channels per layer).
        refined: The refined selection, a subset of `initial`.
        theta: The z-score threshold of the initial selection; None if not memorized.
        k: The top-k per layer of the initial selection; None if not memorized.
        unet_evaluations: Latent rows pushed through the UNet (one seed, one pass = 1).
        score_checks: Scores computed (each one batched UNet call).
        refinement_threshold: The threshold the refinement used: `threshold`, or with the official score the
            last initial score when its loop stopped without passing; None if nothing was refined.
        seeds: With the official score, the seeds localized on (`MemorizationScorer.memorized_seeds`), against
            which `score_initial` and `score_after` compare the blocked with the unblocked noise; None otherwise.
    """

    prompt: str
    memorized: bool
    threshold: float
    score_before: float
    score_initial: float | None
    score_after: float | None
    initial: NeMoConfig
    refined: NeMoConfig
    theta: float | None
    k: int | None
    unet_evaluations: int
    score_checks: int
    refinement_threshold: float | None = None
    seeds: list[int] | None = None


def search_initial_selection(
    check: Callable[[dict[str, list[int]]], float],
    acts: dict[str, torch.Tensor],
    z: dict[str, torch.Tensor],
    threshold: float,
    theta: float = 5.0,
    theta_step: float = 0.25,
    min_theta: float = 1.0,
    max_k: int | None = None,
    search: str = "group",
) -> tuple[dict[str, list[int]], float, int, float]:
    """The first search: grow the paper's initial set until silencing it brings the score under `threshold`.

    Step s uses z-score threshold `max(theta - s * theta_step, min_theta)` and the top-s activations per layer, so
    the sets grow with s. `"group"` finds the first passing step by exponential then binary search, `"greedy"` scans
    s = 0, 1, 2, ... as the official code does.

    Args:
        check: `check(neurons)` -> the score with those neurons silenced (may stop early once over `threshold`).
        acts: Layer name -> the prompt's activations.
        z: Layer name -> their z-scores.
        threshold: The memorization-score threshold.
        theta: The starting z-score threshold.
        theta_step: How much `theta` falls per step.
        min_theta: The floor of `theta`.
        max_k: The last step (largest top-k); None = the widest layer's channel count.
        search: "group" or "greedy".

    Returns:
        `(selection, score, k, theta)` at the first passing step, or at `max_k` if none passes.
    """
    check_choice(search, "search", REFINEMENTS)
    if not acts:
        raise ValueError("`acts` is empty: give the prompt's activations of at least one layer.")
    theta_step = check_number(theta_step, "theta_step", minimum=0, exclusive_minimum=True)
    min_theta = check_number(min_theta, "min_theta", minimum=0)
    theta = check_number(theta, "theta", minimum=min_theta, hint="at least `min_theta`")
    max_k = check_integer(max_k, "max_k", minimum=0, allow_none=True)
    max_k = max(len(a) for a in acts.values()) if max_k is None else max_k

    def theta_at(step):
        return max(theta - step * theta_step, min_theta)

    scores = {}

    def passes(step):
        if step not in scores:
            scores[step] = check(initial_selection(acts, z, theta_at(step), step))
        return scores[step] < threshold

    step = first_passing_step(passes, max_k, exhaustive=search == "greedy")
    return initial_selection(acts, z, theta_at(step), step), scores[step], step, theta_at(step)


def refine_selection(
    check: Callable[[dict[str, list[int]]], float],
    selection: dict[str, list[int]],
    threshold: float,
    z: dict[str, torch.Tensor],
    refinement: str = "group",
) -> tuple[dict[str, list[int]], float]:
    """The second search: drop layers, then channels, while silencing the rest keeps the score under `threshold`.

    `"group"` tests groups of candidates (binary search for the shortest sufficient prefix of the most anomalous
    channels, then removal in growing / halving groups); `"greedy"` is the official one-check-per-layer-and-channel
    loop. If the result misses the threshold (the score was not monotone on this prompt) the greedy loop runs.

    Args:
        check: `check(neurons)` -> the score with those neurons silenced.
        selection: Layer name -> channel ids whose silencing passes.
        threshold: The memorization-score threshold.
        z: Layer name -> z-scores (the group search tries the least anomalous channels first).
        refinement: "group" or "greedy".

    Returns:
        `(refined, score)`: layer name -> the kept channel ids, and the score with them silenced.
    """
    check_choice(refinement, "refinement", REFINEMENTS)
    refine = refine_group if refinement == "group" else refine_greedy
    refined = refine(check, selection, threshold, z)
    after = check(refined)
    if after >= threshold:
        logger.info("Refinement missed the threshold; refining one channel at a time.")
        refined = refine_greedy(check, selection, threshold)
        after = check(refined)
    return refined, after


def localize_memorization_neurons(
    pipe: DiffusionPipeline,
    prompt: str,
    statistics: ActivationStatistics,
    threshold: float | None = None,
    theta: float = 5.0,
    theta_step: float = 0.25,
    min_theta: float = 1.0,
    max_k: int | None = None,
    refinement: str | None = None,
    scale: float = 0.0,
    scorer: NeMoScorerConfig | None = None,
    **scorer_kwargs,
) -> NeMoResult:
    """Find value channels whose silencing brings `prompt`'s memorization score under the threshold.

    Two searches, as in the paper: `search_initial_selection` (channels with z-score above `theta` plus the top-k
    activations per layer, `theta` lowered and k raised until the score falls under the threshold) then
    `refine_selection` (drop whole layers, then channels, while it stays under). Both return a set whose score is
    under the threshold and where, if the score only grows when fewer channels are silenced, removing any single
    channel brings it back over. A prompt scoring under the threshold unhooked is not memorized: the result then
    has empty configs.

    With ``scorer=NeMoScorerConfig.official()`` (``score="official"``) every step is the official code's, to
    reproduce its numbers: memorized when some seed's largest pairwise MS-SSIM is over the threshold, and only those
    seeds are used; a neuron set is judged by the largest MS-SSIM between a seed's blocked and unblocked noise
    difference (`MemorizationScorer.similarity_to_unblocked`), not by comparing seeds with each other; the initial
    loop scans step by step, passes at a score at most the threshold, and stops untested when θ reaches `min_theta`
    (or k `max_k`), its last score then becoming the refinement threshold (`search.official_scan`); the refinement
    defaults to the official one-check-per-layer-and-channel loop (`search.official_refinement`, on the official
    code's channel lists) and keeps a channel when removing it does not bring the score strictly under that
    threshold.

    Args:
        pipe: A text-to-image pipeline (`StableDiffusionPipeline` or alike).
        prompt: The prompt to localize.
        statistics: Activation statistics of non-memorized prompts (`compute_activation_statistics`).
        threshold: The memorization-score threshold; default `statistics.threshold`.
        theta: Starting z-score threshold of the initial selection.
        theta_step: How much `theta` falls per step.
        min_theta: Floor of `theta`.
        max_k: Largest top-k of the initial selection; None = the widest layer's channel count.
        refinement: "group" (group testing, far fewer checks) or "greedy" (the official loops); None (default) =
            "group", or "greedy" with the official score.
        scale: Multiplier of the silenced channels (0 switches them off).
        scorer: Seeds, timestep, guidance, SSIM window, cache, early exit and which score (default
            `NeMoScorerConfig()`).
        **scorer_kwargs: Deprecated: the scorer fields passed loose (`seeds=...`); a `FutureWarning` says so.

    Returns:
        A `NeMoResult` with the initial and refined `NeMoConfig`s, scores and cost counters.

    Raises:
        ValueError: If `refinement` is unknown, no threshold is given or stored in `statistics`, a search setting
            is out of range (`min_theta` > `theta`, a negative `max_k`, `scale` outside [0, 1], ...), a layer of
            `statistics` is not in the model, or the official score gets latents under `official_min_size`.
        TypeError: If `statistics` is not an `ActivationStatistics`, or `scorer` / `scorer_kwargs` are not valid
            scorer settings.
    """
    if refinement is not None:
        check_choice(refinement, "refinement", REFINEMENTS)
    scorer = scorer_config(scorer, scorer_kwargs, "localize_memorization_neurons")
    official = scorer.score == "official"
    refinement = ("greedy" if official else "group") if refinement is None else refinement
    if not isinstance(statistics, ActivationStatistics):
        raise TypeError(f"`statistics` must be ActivationStatistics, got {type(statistics).__name__}.")
    threshold = statistics.threshold if threshold is None else check_number(threshold, "threshold")
    if threshold is None:
        raise ValueError(
            "No `threshold` given and `statistics.threshold` is None (compute it with calibrate_threshold=True)."
        )
    theta = check_number(theta, "theta")
    theta_step = check_number(theta_step, "theta_step", minimum=0, exclusive_minimum=True)
    min_theta = check_number(min_theta, "min_theta", minimum=0)
    if min_theta > theta:
        raise ValueError(f"Need 0 <= `min_theta` <= `theta`, got min_theta={min_theta}, theta={theta}.")
    max_k = check_integer(max_k, "max_k", minimum=0, allow_none=True)
    scale = check_number(scale, "scale", minimum=0, maximum=1)
    unet = pipeline_denoiser(pipe)
    layers = check_layers(unet, statistics.layers)
    score = MemorizationScorer(pipe, prompt, scorer)

    def result(**kwargs):
        return NeMoResult(
            prompt=prompt,
            threshold=threshold,
            score_before=before,
            unet_evaluations=score.unet_evaluations,
            score_checks=score.checks,
            **kwargs,
        )

    before = score(None, scale)
    seeds = score.memorized_seeds(threshold) if official else None
    memorized = bool(seeds) if official else before >= threshold  # official: some seed's pairs over the threshold
    if not memorized:
        return result(
            memorized=False,
            score_initial=None,
            score_after=None,
            initial=NeMoConfig(scale=scale),
            refined=NeMoConfig(scale=scale),
            theta=None,
            k=None,
            seeds=seeds,
        )

    acts = {name: a[0] for name, a in value_activations(unet, layers, score.cond).items()}
    for name, values in acts.items():
        if values.shape != statistics.mean[name].shape:
            raise ValueError(
                f"`statistics` were computed on another model: {name!r} has {statistics.mean[name].numel()} "
                f"channels there and {values.numel()} here."
            )
    z = statistics.z_scores(acts)

    if official:

        def check(neurons):  # the official criterion: blocked against unblocked noise, on the memorized seeds
            return score.similarity_to_unblocked(neurons, scale, seeds)

        widest = max(len(a) for a in acts.values()) if max_k is None else max_k
        selection, initial_score, k, current_theta, refine_at = official_scan(
            check, acts, z, threshold, theta, theta_step, min_theta, widest
        )
        if refinement == "greedy":
            refined = official_refinement(check, selection, refine_at)
            after = check(refined)
        else:
            unique = {name: list(dict.fromkeys(channels)) for name, channels in selection.items()}
            refined, after = refine_selection(check, unique, refine_at, z, refinement)
        return result(
            memorized=True,
            score_initial=initial_score,
            score_after=after,
            initial=NeMoConfig(selection, scale=scale),
            refined=NeMoConfig(refined, scale=scale),
            theta=current_theta,
            k=k,
            refinement_threshold=refine_at,
            seeds=seeds,
        )

    def check(neurons):  # only "under the threshold or not" is asked
        return score(neurons, scale, threshold)

    selection, initial_score, k, current_theta = search_initial_selection(
        check, acts, z, threshold, theta, theta_step, min_theta, max_k, search=refinement
    )
    initial = NeMoConfig(selection, scale=scale)
    if initial_score >= threshold:
        initial_score = score(selection, scale)  # the whole score, not the early exit's lower bound
        logger.warning("Silencing up to top-%d channels per layer did not bring %r under the threshold.", k, prompt)
        return result(
            memorized=True,
            score_initial=initial_score,
            score_after=initial_score,
            initial=initial,
            refined=initial,
            theta=current_theta,
            k=k,
        )
    refined, after = refine_selection(check, initial.neurons, threshold, z, refinement)
    return result(
        memorized=True,
        score_initial=initial_score,
        score_after=after,
        initial=initial,
        refined=NeMoConfig(refined, scale=scale),
        theta=current_theta,
        k=k,
        refinement_threshold=threshold,
    )
