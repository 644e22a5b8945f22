"""NeMo cost: the two scores side by side, UNet evaluations of our localization vs the official scheme, and the
hook's per-step overhead.

Scores (``score_cost``): ours (plain SSIM at the first timestep) and the official one (``NeMoScorerConfig.official``:
MS-SSIM at the second timestep), timed interleaved on the same pipeline, prompts and 64 x 64 latents, with the
similarity alone timed on the same noise differences; the ratio official / ours is printed.

Unit: one *UNet evaluation* is one latent row through the UNet once (a batched call over 10 seeds = 10).
Per check (one score of one neuron set):
* ours:     batched calls at the first denoising step, seeds scored 2, 4, 8, ... at a time until one pair of
            seeds reaches the threshold ("no": early exit) or every seed is scored ("yes")
                                                                              -> 2 to ``seeds`` evaluations
            (``seeds`` for every check with ``early_exit=False``, also measured);
* official: 2 UNet passes per seed (its noise difference is the output of the second pass, at timesteps[1]
            on the initial latents; the first pass, at timesteps[0], is computed and discarded; guidance 0)
                                                                              -> ``2 * seeds`` evaluations,
  with one check per layer and then per channel in the refinement, plus its two extra reference passes
  (unblocked and all-blocked) at the start of the refinement, and no reuse of repeated checks.
Both run on the same prompts, seeds and threshold, and both results are verified against the same refined
criterion: score under the threshold, and every single kept channel needed (removing it puts the score back
over the threshold).

    python benchmarks/nemo_cost.py              # needs examples/nemo_tiny_memorization.py's pipeline (its cache)
    python benchmarks/nemo_cost.py --scores-only   # just the two scores; an untrained pipeline if none is cached
"""

from __future__ import annotations

import argparse
import os
import statistics as stats_lib
import time

import torch

from hf_memory.nemo import (
    ActivationStatistics,
    MemorizationScorer,
    NeMoConfig,
    NeMoScorerConfig,
    apply_nemo,
    compute_activation_statistics,
    localize_memorization_neurons,
    nemo_memorization_score,
    remove_nemo,
    value_projection_names,
)
from hf_memory.nemo.statistics import STATISTICS_NAME


OFFICIAL_PASSES_PER_CHECK = 2  # the official compute_noise_diff returns at the second UNet pass (early_stopping=1)
OFFICIAL_EXTRA_CHECKS = 2  # neuron_refinement recomputes the unblocked and the all-blocked noise differences


def criterion(pipe, prompt, neurons, threshold, seeds) -> str:
    """'U' if the score is under the threshold, 'M' if removing any single kept channel puts it back over (1-minimal).

    Checked afresh on the same seeds; not counted as cost.
    """
    score = MemorizationScorer(pipe, prompt, NeMoScorerConfig(seeds=seeds))
    under = score(neurons) < threshold
    minimal = all(
        score({**neurons, name: [c for c in channels if c != channel]}) >= threshold
        for name, channels in neurons.items()
        for channel in channels
    )
    return ("U" if under else "-") + ("M" if minimal else "-")


def localization_cost(pipe, statistics: ActivationStatistics, prompts, seeds: int = 10) -> dict:
    rows, unlocalized, ours_total, whole_total, official_total, ours_checks, official_checks = [], [], 0, 0, 0, 0, 0
    for prompt in prompts:
        ours = localize_memorization_neurons(
            pipe, prompt, statistics, refinement="group", scorer=NeMoScorerConfig(seeds=seeds)
        )
        whole = localize_memorization_neurons(
            pipe, prompt, statistics, refinement="group", scorer=NeMoScorerConfig(seeds=seeds, early_exit=False)
        )
        official = localize_memorization_neurons(
            pipe, prompt, statistics, refinement="greedy", scorer=NeMoScorerConfig(seeds=seeds, cache=False)
        )
        if not ours.memorized:
            continue
        if ours.score_initial >= ours.threshold:  # no initial set reached the threshold: nothing to refine
            unlocalized.append(prompt)
            continue
        official_evals = (official.score_checks + OFFICIAL_EXTRA_CHECKS) * OFFICIAL_PASSES_PER_CHECK * seeds
        rows.append(
            {
                "prompt": prompt,
                "initial": ours.initial.num_neurons,
                "ours_neurons": ours.refined.num_neurons,
                "official_neurons": official.refined.num_neurons,
                "ours_checks": ours.score_checks,
                "official_checks": official.score_checks + OFFICIAL_EXTRA_CHECKS,
                "ours_evals": ours.unet_evaluations,
                "whole_evals": whole.unet_evaluations,
                "official_evals": official_evals,
                "same_as_whole": ours.refined == whole.refined,
                "ours_ok": criterion(pipe, prompt, ours.refined.neurons, ours.threshold, seeds),
                "official_ok": criterion(pipe, prompt, official.refined.neurons, official.threshold, seeds),
            }
        )
        ours_total += ours.unet_evaluations
        whole_total += whole.unet_evaluations
        official_total += official_evals
        ours_checks += ours.score_checks
        official_checks += official.score_checks + OFFICIAL_EXTRA_CHECKS
    return {
        "rows": rows,
        "unlocalized": unlocalized,
        "ours": ours_total,
        "whole": whole_total,
        "official": official_total,
        "ours_checks": ours_checks,
        "official_checks": official_checks,
    }


def score_cost(pipe, prompts, height: int = 64, seeds: int = 10, repeats: int = 5) -> dict:
    """Seconds per memorization score, ours vs the official one, interleaved on the same prompts and latent size.

    A score here is what `nemo_memorization_score` does: encode the prompt, one batched UNet call over `seeds`
    latents, the similarity of every pair of seeds. The similarity alone (45 pairs for 10 seeds) is timed as well,
    on the same noise differences (the official ones). Also returns the scores: ours, the official one, and SSIM vs
    MS-SSIM on the same noise differences.
    """
    from hf_memory.nemo.scoring import _ms_ssim, _ssim

    ours_config = NeMoScorerConfig(seeds=seeds, height=height)
    official_config = NeMoScorerConfig.official(seeds=seeds, height=height)
    times = {"ours": [], "official": [], "ssim": [], "ms_ssim": []}
    values = {"ours": [], "official": [], "ssim_same_inputs": [], "ms_ssim_same_inputs": []}
    for prompt in prompts:
        # The first calls also warm up (imports, allocations); they give the scores.
        values["ours"].append(nemo_memorization_score(pipe, prompt, scorer=ours_config))
        values["official"].append(nemo_memorization_score(pipe, prompt, scorer=official_config))
        for _ in range(repeats):
            for name, config in (("ours", ours_config), ("official", official_config)):
                start = time.perf_counter()
                nemo_memorization_score(pipe, prompt, scorer=config)
                times[name].append(time.perf_counter() - start)
        images = MemorizationScorer(pipe, prompt, official_config).noise_differences()
        pairs = torch.combinations(torch.arange(seeds), r=2)
        first, second = images[pairs[:, 0]], images[pairs[:, 1]]
        for name, similarity in (("ssim", _ssim), ("ms_ssim", _ms_ssim)):
            values[f"{name}_same_inputs"].append(float(similarity(first, second, 11).max()))
        for _ in range(repeats):
            for name, similarity in (("ssim", _ssim), ("ms_ssim", _ms_ssim)):
                start = time.perf_counter()
                similarity(first, second, 11)
                times[name].append(time.perf_counter() - start)
    medians = {name: stats_lib.median(t) for name, t in times.items()}
    return {
        "seconds": medians,
        "score_ratio": medians["official"] / medians["ours"],
        "similarity_ratio": medians["ms_ssim"] / medians["ssim"],
        "values": values,
        "pairs": seeds * (seeds - 1) // 2,
        "unet_evaluations": {
            "ours": seeds,
            "official here": seeds,
            "official code": OFFICIAL_PASSES_PER_CHECK * seeds,
        },
    }


def print_score_cost(cost: dict, prompts, height: int, description: str) -> None:
    seconds, values = cost["seconds"], cost["values"]
    print(f"\nthe two scores, {description}, {height}x{height} latents, medians of interleaved calls")
    print(
        f"score (encode + 1 UNet call + {cost['pairs']} pairs): ours {seconds['ours'] * 1e3:.1f} ms, official "
        f"{seconds['official'] * 1e3:.1f} ms -> ratio official/ours {cost['score_ratio']:.3f}"
    )
    print(
        f"similarity alone, same noise differences: SSIM {seconds['ssim'] * 1e3:.1f} ms, MS-SSIM "
        f"{seconds['ms_ssim'] * 1e3:.1f} ms -> ratio {cost['similarity_ratio']:.3f}"
    )
    evals = cost["unet_evaluations"]
    print(
        f"UNet evaluations per score: ours {evals['ours']}, official here {evals['official here']} (the official "
        f"code's discarded first pass skipped), official code {evals['official code']}"
    )
    for i, prompt in enumerate(prompts):
        print(
            f"  {prompt[:34]:34s} ours {values['ours'][i]:.4f}  official {values['official'][i]:.4f}  "
            f"same inputs: SSIM {values['ssim_same_inputs'][i]:.4f} vs MS-SSIM {values['ms_ssim_same_inputs'][i]:.4f}"
        )


@torch.no_grad()
def hook_overhead(
    unet, config: NeMoConfig, batch: int, tokens: int, size: int, repeats: int
) -> tuple[float, float, float]:
    """Median seconds per UNet call (one denoising step) unhooked and hooked, interleaved; ratio of the medians."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor(981)
    unet(sample, t, encoder_hidden_states=text)  # warm-up
    plain, hooked = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        unet(sample, t, encoder_hidden_states=text)
        plain.append(time.perf_counter() - start)
        apply_nemo(unet, config)
        start = time.perf_counter()
        unet(sample, t, encoder_hidden_states=text)
        hooked.append(time.perf_counter() - start)
        remove_nemo(unet)
    return stats_lib.median(plain), stats_lib.median(hooked), stats_lib.median(hooked) / stats_lib.median(plain)


@torch.no_grad()
def hook_cost_per_call(unet, name: str, batch: int = 2, tokens: int = 77, calls: int = 2000) -> float:
    """Seconds the hook adds to one call of the value projection ``name`` (tight loop, median of 7 rounds).

    The hook's work happens there (dispatch plus one multiply by the channel mask); the fused-projection guard
    on the attention module adds one attribute lookup.
    """
    import timeit

    to_v = unet.get_submodule(name)
    text = torch.randn(batch, tokens, to_v.in_features, generator=torch.Generator().manual_seed(0))
    config = NeMoConfig({name: [0, 1, 2]})
    deltas = []
    for _ in range(7):
        plain = timeit.timeit(lambda: to_v(text), number=calls)
        apply_nemo(unet, config)
        hooked = timeit.timeit(lambda: to_v(text), number=calls)
        remove_nemo(unet)
        deltas.append((hooked - plain) / calls)
    return stats_lib.median(deltas)


def sd_like_unet(seed: int = 0):
    """Stable Diffusion 1.x's UNet architecture (random weights, built from its config; nothing downloaded)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    ).eval()


def load_example():
    """The example module (its captions), imported from its file: examples/ is not a package."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "nemo_tiny_memorization.py")
    spec = importlib.util.spec_from_file_location("nemo_tiny_memorization", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(
    pipeline_dir: str = os.path.join("demo_output", "nemo_tiny", "pipeline"),
    seeds: int = 10,
    repeats: int = 30,
    sd_repeats: int = 7,
    sd_latent: int = 16,
    num_threads: int = 1,
    skip_sd: bool = False,
    scores_only: bool = False,
    score_height: int = 64,
    score_repeats: int = 5,
):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(num_threads)
    example = load_example()
    MEMORIZED, generic_captions = example.MEMORIZED, example.generic_captions
    score_prompts = [*MEMORIZED[:3], *generic_captions()[1][:2]]

    if scores_only:
        trained = os.path.isdir(pipeline_dir)
        if trained:
            pipe = StableDiffusionPipeline.from_pretrained(
                pipeline_dir, safety_checker=None, requires_safety_checker=False
            )
            pipe.set_progress_bar_config(disable=True)
        else:  # the cost of a score does not depend on training: the example's architecture, untrained
            train_captions, held_out = generic_captions()
            pipe = example.build_pipeline(train_captions + held_out + list(MEMORIZED), image_size=score_height)
        description = "example pipeline" + ("" if trained else " (untrained)")
        print(f"machine: {os.cpu_count()} CPU cores, {num_threads} torch thread(s); {seeds} seeds")
        cost = score_cost(pipe, score_prompts, score_height, seeds, score_repeats)
        print_score_cost(cost, score_prompts, score_height, description)
        return cost

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    scorer = NeMoScorerConfig(seeds=seeds)
    stats_dir = os.path.dirname(pipeline_dir)
    if os.path.isfile(os.path.join(stats_dir, STATISTICS_NAME)):
        statistics = ActivationStatistics.from_pretrained(stats_dir)
    else:
        statistics = compute_activation_statistics(pipe, generic_captions()[1], scorer=scorer)
    memorized = [p for p in MEMORIZED if nemo_memorization_score(pipe, p, scorer=scorer) > statistics.threshold]
    print(
        f"machine: {os.cpu_count()} CPU cores, {num_threads} torch thread(s); {len(memorized)} memorized prompts, "
        f"threshold {statistics.threshold:.3f}, {seeds} seeds"
    )

    cost = localization_cost(pipe, statistics, memorized, seeds)
    print("\nUNet evaluations per localization (1 evaluation = 1 latent row through the UNet once)")
    print(
        "neurons: initial selection, refined by ours / official; criterion: U = score under the threshold, "
        "M = every kept channel needed (1-minimal)"
    )
    print("evals: ours (early exit) / ours without early exit / official; 'same' = early exit found the same set")
    print(
        f"{'prompt':34s} {'init':>4s} {'ours':>4s} {'off.':>4s} {'checks ours/off.':>17s} "
        f"{'evals ours/no-exit/off.':>24s}  criterion ours/off."
    )
    for r in cost["rows"]:
        print(
            f"{r['prompt'][:34]:34s} {r['initial']:4d} {r['ours_neurons']:4d} {r['official_neurons']:4d} "
            f"{r['ours_checks']:8d}/{r['official_checks']:<8d} {r['ours_evals']:7d}/{r['whole_evals']:<6d}/"
            f"{r['official_evals']:<8d}  {r['ours_ok']}/{r['official_ok']}{'  same' if r['same_as_whole'] else '  differs'}"
        )
    for prompt in cost["unlocalized"]:
        print(f"{prompt[:34]:34s} no initial selection reached the threshold (up to top-k = all channels): skipped")
    if cost["official"]:
        print(
            f"total: ours {cost['ours']} vs official {cost['official']} UNet evaluations -> ratio "
            f"{cost['ours'] / cost['official']:.3f} (without early exit {cost['whole']} -> "
            f"{cost['whole'] / cost['official']:.3f}; checks: {cost['ours_checks']} vs {cost['official_checks']}, "
            f"ratio {cost['ours_checks'] / cost['official_checks']:.3f})"
        )

    scores = score_cost(pipe, score_prompts, score_height, seeds, score_repeats)
    print_score_cost(scores, score_prompts, score_height, "the example's trained pipeline")
    cost["scores"] = scores

    layers = statistics.layers
    tiny_config = NeMoConfig({name: [0, 1, 2] for name in layers})
    plain, hooked, ratio = hook_overhead(
        pipe.unet,
        tiny_config,
        batch=2,
        tokens=pipe.tokenizer.model_max_length,
        size=pipe.unet.config.sample_size,
        repeats=repeats,
    )
    print(f"\nhook cost per denoising step (batch 2 = one CFG step, medians of {repeats} interleaved calls each)")
    print(
        f"tiny UNet 16x16, {tiny_config.num_neurons} channels in {len(layers)} layers: "
        f"{plain * 1e3:.2f} ms -> {hooked * 1e3:.2f} ms, ratio {ratio:.3f}"
    )
    if not skip_sd:
        unet = sd_like_unet()
        names = value_projection_names(unet, blocks=("down_blocks", "mid_block"))
        config = NeMoConfig({names[0]: [5, 17], names[1]: [3], names[-1]: [100, 200, 300]})
        plain, hooked, ratio = hook_overhead(unet, config, batch=2, tokens=77, size=sd_latent, repeats=sd_repeats)
        print(
            f"SD-1.x-architecture UNet, {sd_latent}x{sd_latent} latents, {config.num_neurons} channels: "
            f"{plain:.3f} s -> {hooked:.3f} s, ratio {ratio:.3f}"
        )
        per_call = hook_cost_per_call(unet, names[0])
        worst = len(names) * per_call  # every down/mid value projection hooked
        print(
            f"hook's own cost per hooked attention call: {per_call * 1e6:.1f} us; all {len(names)} down/mid layers "
            f"hooked -> {worst * 1e3:.2f} ms per step = ratio {1 + worst / plain:.4f} at these latents"
        )
    return cost


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-dir", default=os.path.join("demo_output", "nemo_tiny", "pipeline"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--sd-repeats", type=int, default=7)
    parser.add_argument("--sd-latent", type=int, default=16)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--skip-sd", action="store_true", help="Skip the SD-1.x-sized timing.")
    parser.add_argument(
        "--scores-only", action="store_true", help="Only time the two scores (no trained pipeline needed)."
    )
    parser.add_argument("--score-height", type=int, default=64, help="Latent side for the score timing (>= 44).")
    parser.add_argument("--score-repeats", type=int, default=5)
    main(**vars(parser.parse_args()))
