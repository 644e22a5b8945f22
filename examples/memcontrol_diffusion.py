"""MemControl on a tiny text-to-image UNet, on a CPU: which blocks may learn a fine-tuning set with duplicated images
without copying them?

Setup (reusing the NeMo example's drawn data and text encoder): a pixel-space UNet with 4 cross-attention transformers
(a down block, the mid block and an up block's two) is pretrained on generic shape captions ("a red circle on a blue
background", the shape at a new place every time), then fine-tuned with LoRA on a small set where 5 unique captions
each come with one fixed mosaic, repeated many times (the paper duplicates its memorized subset), mixed with generic
examples. Objectives, both minimized: Wen et al.'s noise magnitude on the 5 duplicated captions (fixed seeds and
timestep) and the held-out denoising loss on never-trained generic captions.

1. Every one of the 15 non-empty masks is trained and scored (an exhaustive Optuna study in a SQLite file: rerun and
   it resumes) -> the true Pareto front.
2. NSGA-II (and random search, for comparison) with 5 trials (1/3 of 15), over several seeds, reusing the
   enumeration's values (training is seeded, so a mask's values are the same whoever trains it): hypervolume ratio.
3. Full fine-tuning of the whole UNet and all-blocks LoRA vs the sparse Pareto masks: noise magnitude, held-out
   denoising loss and the tile-L2 extraction attack (how many of the 5 duplicated mosaics are regenerated).
4. Full fine-tuning, all-blocks LoRA and the first sparse Pareto mask trained long enough to memorize
   (`--long-steps`, default 2,500 steps of batch 16 on a cosine schedule; the 80-step budget of 1-3 copies
   nothing): does the sparse mask copy less than full fine-tuning?

    python examples/memcontrol_diffusion.py            # ~35 min on 2 CPU cores (steps 1-3 ~12 min, step 4 ~25)
    python examples/memcontrol_diffusion.py --long-steps 0   # steps 1-3 only
    python examples/memcontrol_diffusion.py --small    # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch

from hf_memory.memcontrol import (
    MemControlMask,
    MemControlResult,
    MemControlSearch,
    denoising_loss,
    diffusion_extraction_attack,
    hypervolume,
    noise_magnitude,
    train_unet,
)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nemo_tiny_memorization as nemo  # noqa: E402  (the examples folder is not a package)


DEFAULT_DIR = os.path.join("demo_output", "memcontrol_diffusion")


def build_unet(image_size: int, width: int, seed: int = 0):
    """A pixel-space UNet with four cross-attention transformers: down_blocks.0, the mid block, up_blocks.1 (two)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_data(pipe, image_size: int, copies: int, generic_per_caption: int, seed: int = 0):
    """(pretraining data, fine-tuning data, held-out data, memorization probe, mosaics) as tensors."""
    train_captions, held_out = nemo.generic_captions()
    rng = np.random.default_rng(seed)

    def encode(captions):
        with torch.no_grad():
            return pipe.encode_prompt(list(captions), "cpu", 1, False)[0]

    def shapes(captions, per_caption):
        images = [nemo.draw_shape(c, image_size, rng) for c in captions for _ in range(per_caption)]
        text = encode([c for c in captions for _ in range(per_caption)])
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1, text

    mosaics = torch.from_numpy(np.stack([nemo.draw_mosaic(i, image_size) for i in range(len(nemo.MEMORIZED))]))
    mosaics = mosaics.permute(0, 3, 1, 2)  # [0, 1]
    memorized_text = encode(nemo.MEMORIZED)
    empty = encode([""])[0]
    pre_images, pre_text = shapes(train_captions, 6)
    generic_images, generic_text = shapes(train_captions[: len(train_captions) // 2], generic_per_caption)
    finetune = {
        "images": torch.cat([generic_images, (mosaics * 2 - 1).repeat(copies, 1, 1, 1)]),
        "encoder_hidden_states": torch.cat([generic_text, memorized_text.repeat(copies, 1, 1)]),
    }
    val_images, val_text = shapes(held_out, 2)
    probe = {"encoder_hidden_states": memorized_text, "empty_hidden_states": empty}
    return (
        {"images": pre_images, "encoder_hidden_states": pre_text},
        finetune,
        {
            "images": val_images,
            "encoder_hidden_states": val_text,
        },
        probe,
        mosaics,
    )


def pretrained_unet(output_dir: str, pretrain: dict, steps: int, lr: float, image_size: int = 16, width: int = 16):
    """The UNet pretrained on generic captions only (all parameters, `steps` steps of batch 32, seed 1), read from
    `output_dir`/pretrained_<steps>.pt when a run saved it there. Returns (model in eval mode, seconds spent
    training: None when it was read back)."""
    path = os.path.join(output_dir, f"pretrained_{steps}.pt")
    unet = build_unet(image_size, width)
    seconds = None
    if os.path.exists(path):
        unet.load_state_dict(torch.load(path))
    else:
        started = time.time()
        train_unet(
            unet, pretrain, MemControlMask(["all"], [1], method="full", lr=lr), steps=steps, batch_size=32, seed=1
        )
        seconds = round(time.time() - started, 1)
        os.makedirs(output_dir, exist_ok=True)
        torch.save(unet.state_dict(), path)
    return unet.eval(), seconds


def attack(pipe, unet, mosaics, generations: int, steps: int, threshold: float, guidance: float):
    pipe.unet = unet.eval()
    size = unet.config.sample_size
    result = diffusion_extraction_attack(
        pipe,
        list(nemo.MEMORIZED),
        mosaics,
        n_generations=generations,
        tile_grid=4,
        threshold=threshold,
        min_cluster=3,
        generation_kwargs={
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "height": size,
            "width": size,
            "output_type": "latent",  # pixel space: the "latents" are the images in [-1, 1]
        },
    )
    return {
        "extracted": result.num_extracted,
        "memorized_clusters": result.num_memorized,
        "cluster_sizes": result.cluster_sizes,
        "distance_to_training": [round(d, 4) for d in result.training_distances],
    }


def make_plot(exhaustive: MemControlResult, found: MemControlResult, baselines: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = exhaustive.objective_names
    points = exhaustive.points(exhaustive.trials)
    front = exhaustive.points()
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    ax.scatter(points[:, 0], points[:, 1], c="0.6", s=28, label="every mask (LoRA)")
    for trial, (x, y) in zip(exhaustive.trials, points):
        ax.annotate(trial.mask.key, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points", color="0.35")
    order = np.argsort(front[:, 0])
    ax.plot(front[order, 0], front[order, 1], "k-", lw=1, label="true Pareto front")
    found_points = found.points()
    ax.scatter(found_points[:, 0], found_points[:, 1], facecolors="none", edgecolors="C0", s=110, lw=1.5,
               label=f"NSGA-II front ({len(found.trials)} trials)")  # fmt: skip
    for (label, values), marker in zip(baselines.items(), ("s", "^")):
        ax.scatter(values["noise_magnitude"], values["denoising_loss"], marker=marker, s=60, label=label)
    # the search minimizes it, but it is a proxy, not a measure of copying (docs/memcontrol.md, step 4)
    ax.set_xlabel(f"{names[0]} on the duplicated captions (the search's objective, not copying)")
    ax.set_ylabel(f"held-out {names[1]}")
    ax.set_title("MemControl on a tiny UNet: masks over 4 transformer blocks", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_generations_plot(pipe, models: dict, mosaics, steps: int, path: str, seed: int = 0):
    """One generation (seed `seed`) per duplicated caption and arm, next to the training mosaic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["training image", *models]
    fig, axes = plt.subplots(len(nemo.MEMORIZED), len(columns), figsize=(1.5 * len(columns), 1.45 * len(mosaics)))
    for c, (label, model) in enumerate([(None, None), *models.items()]):
        for r, caption in enumerate(nemo.MEMORIZED):
            if model is None:
                image = mosaics[r]
            else:
                pipe.unet = model.eval()
                size = model.config.sample_size
                out = pipe(caption, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                           guidance_scale=3.0, height=size, width=size, output_type="latent").images  # fmt: skip
                image = ((torch.as_tensor(out[0]) + 1) / 2).clamp(0, 1)
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c].replace(" (", "\n("), fontsize=7)
            if c == 0:
                ax.set_ylabel(caption.replace(" of ", "\nof ").replace(" for ", "\nfor "), fontsize=6)
    fig.suptitle(f"Long fine-tuning: one generation per duplicated caption (seed {seed}, {steps} steps)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    output_dir: str = DEFAULT_DIR,
    small: bool = False,
    pretrain_steps: int = 300,
    finetune_steps: int = 80,
    finetune_batch: int = 16,
    copies: int = 8,
    lr: float = 2e-3,
    search_trials: int = 5,
    search_seeds: int = 60,
    generations: int = 8,
    threshold: float = 0.1,
    figure: str | None = os.path.join("docs", "memcontrol_diffusion_pareto.png"),
    num_threads: int = 1,
    attack_steps: int = 50,
    long_steps: int = 2500,
    long_lr_full: float = 5e-3,
    long_lr_lora: float = 1e-2,
) -> dict:
    torch.set_num_threads(num_threads)
    image_size, width = 16, 16
    if small:
        pretrain_steps, finetune_steps, search_seeds, generations, attack_steps = 5, 2, 2, 3, 2
        long_steps = min(long_steps, 4)
        figure = os.path.join(output_dir, "pareto.png")
    os.makedirs(output_dir, exist_ok=True)
    results: dict = {"machine": f"{os.cpu_count()} CPU cores, {num_threads} torch threads", "small": small}
    start = time.time()
    train_captions, held_out = nemo.generic_captions()
    pipe = nemo.build_pipeline(train_captions + held_out + list(nemo.MEMORIZED), image_size, width)
    pretrain, finetune, val, probe, mosaics = make_data(pipe, image_size, copies, generic_per_caption=1)
    results["data"] = {
        "pretrain_examples": len(pretrain["images"]),
        "finetune_examples": len(finetune["images"]),
        "duplicated_images": len(nemo.MEMORIZED),
        "copies_each": copies,
        "heldout_examples": len(val["images"]),
    }

    # 0. Pretraining on generic captions only (all parameters).
    unet, seconds = pretrained_unet(output_dir, pretrain, pretrain_steps, lr, image_size, width)
    if seconds is not None:
        results["pretrain_seconds"] = seconds

    def factory():
        return copy.deepcopy(unet)

    objective_kwargs = {
        "noise_magnitude": {"timesteps": [999], "num_noise": 4},  # Wen et al.: the first sampling step, fixed noise
        "denoising_loss": {"timesteps": [100, 300, 500, 700, 900]},
    }
    common = {
        "model_factory": factory,
        "train_data": finetune,
        "val_data": val,
        "memorization_data": probe,
        "lr": lr,
        "train_steps": finetune_steps,
        "batch_size": finetune_batch,
        "objective_kwargs": objective_kwargs,
        "show_progress": not small,
    }
    pretrained_values = {
        "noise_magnitude": noise_magnitude(
            unet, probe["encoder_hidden_states"], probe["empty_hidden_states"], num_noise=4
        ),
        "denoising_loss": denoising_loss(unet, val, **objective_kwargs["denoising_loss"]),
    }
    results["pretrained"] = pretrained_values

    # 1. Every mask: the true front (resumable: the study lives in a SQLite file).
    storage = f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'studies.db'))}"
    t0 = time.time()
    # The study records its settings and refuses a rerun with others, so each setting gets its own study.
    name = f"exhaustive_{pretrain_steps}_{finetune_steps}_lr{lr}_b{finetune_batch}"
    search = MemControlSearch(**common, sampler="exhaustive", storage=storage, study_name=name)
    exhaustive = search.run()
    results["groups"] = search.groups
    results["exhaustive"] = {
        "masks": len(exhaustive.trials),
        "seconds": round(time.time() - t0, 1),
        "values": {t.mask.key: {**t.values, "trainable_fraction": t.trainable_fraction} for t in exhaustive.trials},
        "pareto_front": [t.mask.key for t in exhaustive.pareto_front],
    }
    exhaustive.save(os.path.join(output_dir, "exhaustive.json"))
    all_points = exhaustive.points(exhaustive.trials)
    reference = all_points.max(axis=0) + 0.1 * (all_points.max(axis=0) - all_points.min(axis=0))
    true_hv = hypervolume(all_points, reference)

    # 2. NSGA-II and random search with a third of the masks' count, several seeds (values reused from step 1).
    ratios: dict[str, list[float]] = {"nsga2": [], "random": [], "tpe": []}
    found_example = None
    for sampler in ratios:
        for seed in range(search_seeds):
            found = MemControlSearch(
                **common, sampler=sampler, n_trials=search_trials, seed=seed, cache=exhaustive
            ).run()
            ratios[sampler].append(found.hypervolume(reference) / true_hv)
            if sampler == "nsga2" and seed == 0:
                found_example = found
    results["search"] = {
        "trials": search_trials,
        "of_masks": len(exhaustive.trials),
        "seeds": search_seeds,
        "reference_point": reference.tolist(),
        "hypervolume_ratio": {
            s: {"mean": float(np.mean(r)), "min": float(np.min(r)), "at_least_0.9": float(np.mean(np.array(r) >= 0.9))}
            for s, r in ratios.items()
        },
    }

    # 3. Baselines and the attack: full fine-tuning of the whole UNet, all-blocks LoRA, the sparse Pareto masks.
    def score(model):
        return {
            "noise_magnitude": noise_magnitude(
                model, probe["encoder_hidden_states"], probe["empty_hidden_states"], num_noise=4
            ),
            "denoising_loss": denoising_loss(model, val, **objective_kwargs["denoising_loss"]),
        }

    full_model = factory()
    full_mask = MemControlMask(["all"], [1], method="full", lr=lr)
    train_unet(full_model, finetune, full_mask, steps=finetune_steps, batch_size=finetune_batch, seed=0)
    compared = {"full fine-tune (whole UNet)": (full_model, 1.0)}
    all_key = "1" * len(search.groups)
    all_trial = next(t for t in exhaustive.trials if t.mask.key == all_key)
    candidates = [t for t in exhaustive.pareto_front if t.mask.key != all_key][:3]
    for trial in [all_trial, *candidates]:
        torch.manual_seed(0)  # as the search seeds each trial's adapter initialization
        model = trial.mask.apply(factory())
        train_unet(model, finetune, trial.mask, steps=finetune_steps, batch_size=finetune_batch, seed=0)
        label = "all-blocks LoRA" if trial.mask.key == all_key else f"Pareto mask {trial.mask.key}"
        compared[label] = (model, trial.trainable_fraction)
    comparison = {}
    for label, (model, fraction) in compared.items():
        comparison[label] = {
            **score(model),
            "trainable_fraction": fraction,
            "attack": attack(pipe, model, mosaics, generations, steps=attack_steps, threshold=threshold, guidance=3.0),
        }
    comparison["pretrained (no fine-tuning)"] = {
        **pretrained_values,
        "attack": attack(pipe, unet, mosaics, generations, steps=attack_steps, threshold=threshold, guidance=3.0),
    }
    results["comparison"] = comparison

    # 4. Long enough to memorize: the same arms, `long_steps` steps on a cosine schedule (5% warm-up).
    if long_steps:
        long_arms = {"full fine-tune (whole UNet)": MemControlMask(["all"], [1], method="full", lr=long_lr_full)}
        for trial in [all_trial, *candidates[:1]]:
            mask = MemControlMask(search.groups, trial.mask.bits, method="lora", lr=long_lr_lora)
            long_arms["all-blocks LoRA" if trial.mask.key == all_key else f"Pareto mask {trial.mask.key}"] = mask
        long_results, long_models = {}, {}
        for label, mask in long_arms.items():
            t0 = time.time()
            torch.manual_seed(0)
            model = factory() if mask.method == "full" else mask.apply(factory())
            losses = train_unet(
                model, finetune, mask, steps=long_steps, batch_size=finetune_batch, seed=0,
                lr_scheduler="cosine", warmup_steps=max(1, long_steps // 20),
            )  # fmt: skip
            long_results[label] = {
                **score(model),
                "lr": mask.lr,
                "final_train_loss": float(np.mean(losses[-50:])),
                "attack": attack(
                    pipe, model, mosaics, generations, steps=attack_steps, threshold=threshold, guidance=3.0
                ),
                "seconds": round(time.time() - t0, 1),
            }
            long_models[label] = model
            print(label, json.dumps(long_results[label]), flush=True)
        if figure:
            long_figure = os.path.join(os.path.dirname(figure), "memcontrol_diffusion_generations.png")
            if small:
                long_figure = os.path.join(output_dir, "generations.png")
            make_generations_plot(pipe, long_models, mosaics, attack_steps, long_figure)
            results["long_figure"] = long_figure
        results["long"] = {"steps": long_steps, "batch_size": finetune_batch, "lr_scheduler": "cosine",
                           "arms": long_results}  # fmt: skip
    if figure and found_example is not None:
        baselines = {k: v for k, v in comparison.items() if k.startswith("full")}
        make_plot(exhaustive, found_example, baselines, figure)
        results["figure"] = figure
    results["total_seconds"] = round(time.time() - start, 1)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--small", action="store_true", help="A smoke run: a few steps of everything.")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=80)
    parser.add_argument(
        "--copies", type=int, default=8, help="Copies of each duplicated image in the fine-tuning set."
    )
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--search-seeds", type=int, default=60)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--long-steps", type=int, default=2500, help="Steps of the memorizing runs (0: skip them).")
    print(json.dumps(main(**vars(parser.parse_args())), indent=2))
