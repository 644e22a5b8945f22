"""MemControl at matched quality (issue 34): does a searched sparse LoRA mask copy its duplicated training images less
than full fine-tuning *at the same held-out loss*?

A fixed step budget confounds "learned less" with "memorized less": in `memcontrol_diffusion.py`'s 2,500-step runs
full fine-tuning copies more, but it also reaches a far lower held-out loss. Here every arm is evaluated along its
training trajectory, so arms can be compared where they reach the same held-out loss. Same tiny UNet, data and
pretraining as `memcontrol_diffusion.py` (imported from it).

1. Every one of the 15 non-empty masks over the 4 transformer blocks is trained for the enumeration's budget (80
   steps, LoRA) and scored with three objectives: Wen et al.'s noise magnitude, the held-out denoising loss and the
   nearest-training-image distance of generations for the 5 duplicated captions (negated, so that all three are
   minimized). Spearman's rank correlation between the noise magnitude and the distance across the 15 masks says
   whether the search's usual memorization objective ranks masks as copying does.
2. Long arms, at seeds 0 and 1 (the seed draws the LoRA initialization, batches, noise and timesteps; pretraining
   and data are shared): full fine-tuning of the whole UNet, all-blocks LoRA, the best sparse masks of the
   (noise magnitude, held-out loss) enumeration (by non-dominated rank, then noise magnitude) and the best sparse
   mask of the (distance, held-out loss) front, `--long-steps` steps of batch 16 on a cosine schedule (5% warm-up).
   At every checkpoint (`--eval-every` steps, plus `--extra-evals`): the held-out denoising loss on never-trained
   generic captions, the noise magnitude, and `--generations` generations per duplicated caption (seeds 0..n-1, 50
   DDIM steps, guidance 3) scored by their tile-L2 distance (`tile_distance`, the extraction attack's: the largest
   RMS difference over 4x4 tiles, [0, 1] pixels) to the nearest distinct fine-tuning image, the count of captions
   with a generation whose nearest image is its own mosaic within `--threshold` ("copied"), and the attack's
   clusters on the same generations.
3. Analysis: for each mask arm against full fine-tuning at the same seed, the distance interpolated along each
   trajectory (first crossing) at held-out loss levels both arms reach, and at each arm's early-stopping point (its
   lowest held-out loss). A figure: distance against held-out loss, one trajectory per arm and seed.

Resumable: the enumeration lives in a SQLite study, each (arm, seed) trajectory in its own JSON under
`--results-dir` (checkpoints appended as they come), the training state after each checkpoint under `--output-dir`
(a killed run loses at most one checkpoint interval); a rerun skips finished trajectories. `--workers N` trains N
trajectories at once, each in its own forked process on `--num-threads` threads (the enumeration stays serial).

    python examples/memcontrol_matched.py                  # many CPU hours (see docs/memcontrol.md); resumable
    python examples/memcontrol_matched.py --analyze-only   # the summary and figure from the trajectories so far
    python examples/memcontrol_matched.py --small          # smoke test
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
import torch.nn.functional as F

from hf_memory.memcontrol import (
    MemControlMask,
    MemControlSearch,
    count_parameters,
    denoising_loss,
    diffusion_extraction_attack,
    maskable_groups,
    noise_magnitude,
    pareto_front,
    tile_distance,
)
from hf_memory.memcontrol.training import default_noise_scheduler


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memcontrol_diffusion as mcd  # noqa: E402  (the examples folder is not a package)


nemo = mcd.nemo
DEFAULT_DIR = os.path.join("demo_output", "memcontrol_matched")
RESULTS_DIR = os.path.join("examples", "results", "memcontrol_matched")
FIGURE = os.path.join("docs", "memcontrol_matched.png")
DISTANCE = "nearest_distance"  # the memorization measure the analysis compares (higher = farther from copying)
OBJECTIVE_KWARGS = {  # as memcontrol_diffusion.py
    "noise_magnitude": {"timesteps": [999], "num_noise": 4},
    "denoising_loss": {"timesteps": [100, 300, 500, 700, 900]},
}
SMALL_OBJECTIVE_KWARGS = {
    "noise_magnitude": {"timesteps": [999], "num_noise": 1},
    "denoising_loss": {"timesteps": [500]},
}


def write_json(path: str, data) -> None:
    """Write `data` as JSON atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def read_json(path: str):
    """A results file this script wrote; one line naming the file if it cannot be read (an edit gone wrong)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise SystemExit(
            f"{path}: not a results file this script wrote ({error}); delete it to start that part again."
        )


# ------------------------------------------------------------------ measuring copying


def generate(pipe, model, per_caption: int, steps: int, guidance: float = 3.0) -> torch.Tensor:
    """`per_caption` generations for each duplicated caption (generation i from seed i), caption-major, in [0, 1]."""
    pipe.unet = model.eval()
    size = model.config.sample_size
    prompts = [caption for caption in nemo.MEMORIZED for _ in range(per_caption)]
    generators = [torch.Generator().manual_seed(i) for _ in nemo.MEMORIZED for i in range(per_caption)]
    out = pipe(prompts, generator=generators, num_inference_steps=steps, guidance_scale=guidance, height=size,
               width=size, output_type="latent").images  # fmt: skip
    return ((torch.as_tensor(out).float() + 1) / 2).clamp(0, 1)


def memorization(images: torch.Tensor, training_images: torch.Tensor, first_mosaic: int, threshold: float) -> dict:
    """How close the generations of the duplicated captions come to the training set.

    Args:
        images: (P * n, C, H, W) generations in [0, 1], n per duplicated caption, caption-major (`generate`).
        training_images: (M, C, H, W) the distinct fine-tuning images in [0, 1]; caption p's mosaic at
            `first_mosaic + p`.
        first_mosaic: The index of the first caption's mosaic in `training_images`.
        threshold: Tile distance under which a generation counts as a copy of its mosaic (the attack's threshold).

    Returns:
        `nearest_distance` (the mean over generations of the tile-L2 distance to the nearest training image, the
        measure the analysis uses), `nearest_rms` (the same with the whole image as one tile), `closest_per_caption`
        (each caption's closest generation), `nearest_is_own_mosaic` (the fraction of generations whose nearest
        training image is their caption's mosaic), `own_mosaic_distance` (the mean tile-L2 distance of the
        generations to their own caption's mosaic), `copied` (captions with a generation within `threshold` of its
        own mosaic, which is also its nearest image), and the extraction attack's `clusters` (captions with >= 3
        near-identical generations, fewer when n < 3) and `extracted` on the same generations.
    """
    captions = len(nemo.MEMORIZED)
    per_caption = len(images) // captions
    tiles = tile_distance(images, training_images, tile_grid=4)
    nearest, index = tiles.min(dim=1)
    whole = tile_distance(images, training_images, tile_grid=1).min(dim=1).values
    own = first_mosaic + torch.arange(captions).repeat_interleave(per_caption)
    copies = ((index == own) & (nearest < threshold)).view(captions, per_caption)
    by_prompt = dict(zip(nemo.MEMORIZED, images.split(per_caption)))
    attack = diffusion_extraction_attack(
        lambda prompt, n, seed: by_prompt[prompt],
        list(nemo.MEMORIZED),
        training_images,
        n_generations=per_caption,
        threshold=threshold,
        min_cluster=min(3, per_caption),
    )
    return {
        "nearest_distance": float(nearest.mean()),
        "nearest_rms": float(whole.mean()),
        "closest_per_caption": [round(float(d), 4) for d in nearest.view(captions, per_caption).min(dim=1).values],
        "nearest_is_own_mosaic": float((index == own).float().mean()),
        "own_mosaic_distance": float(tiles[torch.arange(len(images)), own].mean()),
        "copied": int(copies.any(dim=1).sum()),
        "clusters": attack.num_memorized,
        "extracted": attack.num_extracted,
    }


class Setup:
    """The pipeline, pretrained UNet and data shared by every part of the run (built as `memcontrol_diffusion.py`)."""

    def __init__(self, output_dir: str, pretrain_steps: int, lr: float, copies: int, generations: int,
                 sample_steps: int, threshold: float, objective_kwargs: dict):  # fmt: skip
        self.generations, self.sample_steps, self.threshold = generations, sample_steps, threshold
        self.objective_kwargs = objective_kwargs
        train_captions, held_out = nemo.generic_captions()
        self.pipe = nemo.build_pipeline(train_captions + held_out + list(nemo.MEMORIZED), 16, 16)
        self.pipe.set_progress_bar_config(disable=True)
        pretrain, self.finetune, self.val, self.probe, mosaics = mcd.make_data(self.pipe, 16, copies, 1)
        self.unet, self.pretrain_seconds = mcd.pretrained_unet(output_dir, pretrain, pretrain_steps, lr)
        generic = len(self.finetune["images"]) - copies * len(nemo.MEMORIZED)
        self.first_mosaic = generic
        self.training_images = torch.cat([(self.finetune["images"][:generic] + 1) / 2, mosaics])
        self.pretrained: dict = {}  # the pretrained model's `evaluate`, every trajectory's step 0 (set by `main`)

    def copying(self, model) -> dict:
        images = generate(self.pipe, model, self.generations, self.sample_steps)
        return memorization(images, self.training_images, self.first_mosaic, self.threshold)

    def evaluate(self, model) -> dict:
        """A checkpoint's numbers: held-out denoising loss, noise magnitude and `copying`, with the CPU seconds."""
        started = time.process_time()
        values = {
            "heldout_loss": denoising_loss(model, self.val, **self.objective_kwargs["denoising_loss"]),
            "noise_magnitude": noise_magnitude(
                model,
                self.probe["encoder_hidden_states"],
                self.probe["empty_hidden_states"],
                **self.objective_kwargs["noise_magnitude"],
            ),
            **self.copying(model),
        }
        values["eval_cpu_seconds"] = round(time.process_time() - started, 1)
        return values


# ------------------------------------------------------------------ training along a trajectory


def train_with_checkpoints(
    model,
    mask: MemControlMask,
    data: dict,
    steps: int,
    batch_size: int,
    seed: int,
    warmup_steps: int,
    eval_steps: list[int],
    evaluate,
    state_path: str,
    on_checkpoint,
    recorded_steps=(),
) -> None:
    """`train_unet`'s loop (AdamW without weight decay, gradient clip 1, cosine schedule with warm-up, batches, noise
    and timesteps from a generator seeded with `seed`: the same steps, the same model) with a pause at each of
    `eval_steps`: `evaluate(model)` gives a checkpoint's numbers, the training state is saved to `state_path`, then
    `on_checkpoint(numbers)` is called with `step` and the segment's mean `train_loss` added.

    A rerun continues from the saved state; a saved step not in `recorded_steps` (the run was killed between saving
    and recording) is evaluated again first.
    """
    from transformers import get_scheduler

    images, text = data["images"].float(), data["encoder_hidden_states"].float()
    noise_scheduler = default_noise_scheduler()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=mask.lr, weight_decay=0.0)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    step, segment_loss = 0, None
    if os.path.exists(state_path):
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        step, segment_loss = state["step"], state["train_loss"]
        if step not in recorded_steps:
            on_checkpoint({"step": step, "train_loss": segment_loss, **evaluate(model)})

    for target in [s for s in eval_steps if s > step]:
        started, losses = time.process_time(), []
        model.train()
        while step < target:
            index = torch.randint(len(images), (batch_size,), generator=generator)
            batch = images[index]
            noise = torch.randn(batch.shape, generator=generator)
            timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
            noisy = noise_scheduler.add_noise(batch, noise, timesteps)
            loss = F.mse_loss(model(noisy, timesteps, encoder_hidden_states=text[index]).sample.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        train_seconds = round(time.process_time() - started, 1)
        numbers = {"step": step, "train_loss": float(np.mean(losses)), "train_cpu_seconds": train_seconds}
        numbers.update(evaluate(model))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "generator": generator.get_state(), "rng": torch.get_rng_state(), "step": step,
                 "train_loss": numbers["train_loss"]}  # fmt: skip
        os.makedirs(os.path.dirname(state_path) or ".", exist_ok=True)
        torch.save(state, state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
        on_checkpoint(numbers)


def run_trajectory(setup: Setup, arm: dict, seed: int, settings: dict, results_dir: str, state_dir: str) -> dict:
    """One (arm, seed) trajectory, resumed from its JSON and saved state; returns the finished trajectory."""
    path = os.path.join(results_dir, f"{arm['name']}_seed{seed}.json")
    state_path = os.path.join(state_dir, f"{arm['name']}_seed{seed}.pt")
    mask = MemControlMask.from_dict(arm["mask"]) if isinstance(arm["mask"], dict) else arm["mask"]
    record = None
    if os.path.exists(path):
        record = read_json(path)
        if not isinstance(record, dict) or record.get("settings") != settings or record.get("mask") != mask.to_dict():
            raise ValueError(
                f"{path} was written with other settings or another mask; use another --results-dir (and "
                f"--output-dir) for these settings, or delete it and {state_path}."
            )
        if record["finished"]:
            print(f"[{arm['name']} seed {seed}] finished earlier: skipped", flush=True)
            return record
    torch.manual_seed(seed)  # the adapter initialization, as the search seeds each trial's
    model = copy.deepcopy(setup.unet)
    if mask.method != "full":
        model = mask.apply(model)
    trainable, total = count_parameters(model)
    if record is None or not os.path.exists(state_path):  # nothing to resume from: start again
        record = {"arm": arm["label"], "name": arm["name"], "seed": seed, "mask": mask.to_dict(),
                  "trainable_fraction": trainable / total, "settings": settings, "finished": False,
                  "checkpoints": [{"step": 0, **setup.pretrained}]}  # fmt: skip
    saved_step = torch.load(state_path, weights_only=False)["step"] if os.path.exists(state_path) else 0
    record["checkpoints"] = [c for c in record["checkpoints"] if c["step"] <= saved_step]
    wall = time.time()

    def on_checkpoint(numbers: dict) -> None:
        record["checkpoints"].append(numbers)
        record["finished"] = numbers["step"] == settings["long_steps"]
        write_json(path, record)
        print(
            f"[{arm['name']} seed {seed}] step {numbers['step']}/{settings['long_steps']}: held-out loss "
            f"{numbers['heldout_loss']:.4f}, nearest distance {numbers[DISTANCE]:.3f}, copied {numbers['copied']}/5, "
            f"clusters {numbers['clusters']}/5, noise magnitude {numbers['noise_magnitude']:.3f} (CPU s: train "
            f"{numbers.get('train_cpu_seconds', 0)}, eval {numbers['eval_cpu_seconds']}; wall "
            f"{time.time() - wall:.0f} s)",
            flush=True,
        )

    train_with_checkpoints(
        model, mask, setup.finetune, settings["long_steps"], settings["batch_size"], seed,
        max(1, settings["long_steps"] // 20), settings["eval_steps"], setup.evaluate, state_path, on_checkpoint,
        recorded_steps={c["step"] for c in record["checkpoints"]},
    )  # fmt: skip
    if not record["finished"]:  # every checkpoint was recorded before a kill that came after the last one
        record["finished"] = record["checkpoints"][-1]["step"] == settings["long_steps"]
        write_json(path, record)
    return record


_FORKED: dict = {}  # what the forked workers of `run_units` inherit: the setup and the run's folders


def _die_with_parent(parent: int) -> None:
    """A worker ends when the run that forked it is killed, even by SIGKILL (Linux), so that a rerun never trains a
    trajectory that an orphaned worker is still writing."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def _run_forked_unit(unit: tuple[dict, int]) -> str:
    torch.set_num_threads(_FORKED["threads"])
    arm, seed = unit
    run_trajectory(_FORKED["setup"], arm, seed, _FORKED["settings"], _FORKED["results_dir"], _FORKED["state_dir"])
    return f"{arm['name']}_seed{seed}"


def run_units(setup: Setup, units: list, settings: dict, results_dir: str, state_dir: str, workers: int, threads: int):
    """Run the (arm, seed) trajectories, `workers` at a time in forked processes (1: here, in order); yields each
    finished unit's name. Each trajectory writes its own JSON and training state, so workers share no file."""
    if workers == 1 or len(units) <= 1:
        for arm, seed in units:
            run_trajectory(setup, arm, seed, settings, results_dir, state_dir)
            yield f"{arm['name']}_seed{seed}"
        return
    import multiprocessing

    _FORKED.update(setup=setup, settings=settings, results_dir=results_dir, state_dir=state_dir, threads=threads)
    try:
        with multiprocessing.get_context("fork").Pool(
            min(workers, len(units)), initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            yield from pool.imap_unordered(_run_forked_unit, units)
    finally:
        _FORKED.clear()


# ------------------------------------------------------------------ the enumeration and the choice of arms


def nondominated_ranks(points) -> list[int]:
    """Each row's non-dominated rank (0 = the Pareto front, 1 = the front once it is removed, ...), minimizing."""
    points = np.asarray(points, dtype=float)
    ranks, remaining, rank = [None] * len(points), list(range(len(points))), 0
    while remaining:
        dominated = {
            i for i in remaining
            if any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in remaining)
        }  # fmt: skip
        for i in remaining:
            if i not in dominated:
                ranks[i] = rank
        remaining, rank = sorted(dominated), rank + 1
    return ranks


def enumerate_masks(setup: Setup, output_dir: str, steps: int, lr: float, batch_size: int, groups=None) -> dict:
    """Every non-empty mask over `groups` (None: all), LoRA for `steps` steps, under three objectives (an exhaustive
    study in SQLite)."""
    scored = []

    def minus_nearest_distance(model) -> float:
        value = setup.copying(model)[DISTANCE]
        scored.append(value)
        print(f"enumeration: mask {len(scored)} scored, nearest distance {value:.4f}", flush=True)
        return -value

    search = MemControlSearch(
        model_factory=lambda: copy.deepcopy(setup.unet),
        train_data=setup.finetune,
        val_data=setup.val,
        memorization_data=setup.probe,
        objectives={
            "noise_magnitude": "noise_magnitude",
            "denoising_loss": "denoising_loss",
            "minus_nearest_distance": minus_nearest_distance,
        },
        objective_kwargs=setup.objective_kwargs,
        groups=groups,
        sampler="exhaustive",
        lr=lr,
        train_steps=steps,
        batch_size=batch_size,
        storage=f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'studies.db'))}",
        study_name=(
            f"matched_{steps}_lr{lr}_b{batch_size}_g{setup.generations}_s{setup.sample_steps}_t{setup.threshold}"
            + ("" if groups is None else f"_groups{len(groups)}")
        ),
        show_progress=False,
    )
    started = time.process_time()
    result = search.run()
    trials = sorted(result.trials, key=lambda t: t.mask.key)
    noise = [t.values["noise_magnitude"] for t in trials]
    loss = [t.values["denoising_loss"] for t in trials]
    distance = [-t.values["minus_nearest_distance"] for t in trials]
    from scipy.stats import spearmanr

    rho, p = spearmanr(noise, distance)
    keys = [t.mask.key for t in trials]
    noise_points, distance_points = np.c_[noise, loss], np.c_[[-d for d in distance], loss]
    return {
        "groups": search.groups,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "cpu_seconds_this_call": round(time.process_time() - started, 1),
        "masks": {
            key: {
                "noise_magnitude": n,
                "denoising_loss": v,
                DISTANCE: d,
                "trainable_fraction": t.trainable_fraction,
                "bits": t.mask.bits,
            }  # fmt: skip
            for key, n, v, d, t in zip(keys, noise, loss, distance, trials)
        },
        "noise_front": [keys[i] for i in pareto_front(noise_points)],
        "noise_ranks": dict(zip(keys, nondominated_ranks(noise_points))),
        "distance_front": [keys[i] for i in pareto_front(distance_points)],
        "spearman_noise_vs_distance": {
            "rho": None if np.isnan(rho) else float(rho),
            "p_value": None if np.isnan(p) else float(p),
            "masks": len(keys),
            "reading": "rho < 0: the masks with a higher noise magnitude generate closer to training images (the "
            "noise magnitude ranks masks as copying does); rho >= 0: it does not",
        },
    }


def choose_arms(enumeration: dict, lr_full: float, lr_lora: float, sparse: int, by_distance: int) -> list[dict]:
    """Full fine-tuning, all-blocks LoRA, the `sparse` best sparse masks by the (noise magnitude, loss) ranks (ties:
    lower noise magnitude), then the `by_distance` best sparse masks of the (distance, loss) front not yet chosen
    (farthest first)."""
    groups, masks = enumeration["groups"], enumeration["masks"]
    every = "1" * len(groups)

    def lora(name: str, label: str, key: str) -> dict:
        return {"name": name, "label": label, "mask": MemControlMask(groups, masks[key]["bits"], lr=lr_lora)}

    full = MemControlMask(["all"], [1], method="full", lr=lr_full)
    arms = [
        {"name": "full", "label": "full fine-tune (whole UNet)", "mask": full},
        lora(f"lora_{every}", f"all-blocks LoRA ({every})", every),
    ]
    ranks = enumeration["noise_ranks"]
    others = sorted((k for k in masks if k != every), key=lambda k: (ranks[k], masks[k]["noise_magnitude"]))
    for key in others[:sparse]:
        arms.append(lora(f"lora_{key}", f"sparse mask {key} (noise-magnitude rank {ranks[key]})", key))
    chosen = {a["name"] for a in arms}
    front = [k for k in enumeration["distance_front"] if k != every and f"lora_{k}" not in chosen]
    for key in sorted(front, key=lambda k: -masks[k][DISTANCE])[:by_distance]:
        arms.append(lora(f"lora_{key}", f"sparse mask {key} (distance front)", key))
    return arms


# ------------------------------------------------------------------ analysis


def value_at_loss(checkpoints: list[dict], level: float, key: str = DISTANCE) -> tuple[float, float] | None:
    """`key` and the step where the trajectory first reaches held-out loss `level`, linearly interpolated between the
    two checkpoints around that crossing; None if it never does."""
    for i, current in enumerate(checkpoints):
        if current["heldout_loss"] <= level:
            if i == 0:
                return current[key], float(current["step"])
            previous = checkpoints[i - 1]
            fraction = (previous["heldout_loss"] - level) / (previous["heldout_loss"] - current["heldout_loss"])
            value = previous[key] + fraction * (current[key] - previous[key])
            return float(value), float(previous["step"] + fraction * (current["step"] - previous["step"]))
    return None


def early_stopping_point(checkpoints: list[dict]) -> dict:
    """The checkpoint with the lowest held-out loss (the pretrained model's if none is lower)."""
    best = min(checkpoints, key=lambda c: c["heldout_loss"])
    return {k: best[k] for k in ("step", "heldout_loss", DISTANCE, "copied", "clusters", "noise_magnitude")}


def compare(full: list[dict], arm: list[dict], levels: int = 5) -> dict:
    """An arm's trajectory against full fine-tuning's (same seed): the distance at `levels` held-out loss levels both
    reach, evenly spaced from the pretrained loss (excluded: every arm starts there) down to the higher of the two
    arms' lowest losses; and at each one's early-stopping point. `difference` = arm − full: positive means the arm's
    generations stay farther from the training images (it copies less) at that loss."""
    start = full[0]["heldout_loss"]
    lowest = max(min(c["heldout_loss"] for c in full), min(c["heldout_loss"] for c in arm))
    out = {"early_stopping": {"full": early_stopping_point(full), "arm": early_stopping_point(arm)}}
    es = out["early_stopping"]
    es["difference"] = es["arm"][DISTANCE] - es["full"][DISTANCE]
    if lowest >= start:
        out.update(matched=[], verdict="no common held-out loss below the pretrained model's: nothing to match")
        return out
    rows = []
    for level in np.linspace(start, lowest, levels + 1)[1:]:
        (full_value, full_step), (arm_value, arm_step) = value_at_loss(full, level), value_at_loss(arm, level)
        rows.append({"heldout_loss": float(level), "full": full_value, "arm": arm_value,
                     "difference": arm_value - full_value, "full_step": full_step, "arm_step": arm_step})  # fmt: skip
    out["matched"] = rows
    out["levels_where_arm_copies_less"] = sum(r["difference"] > 0 for r in rows)
    last = rows[-1]
    out["verdict"] = (
        f"at held-out loss {last['heldout_loss']:.4f} (the lowest both reach) the arm's generations are "
        f"{abs(last['difference']):.3f} {'farther from' if last['difference'] > 0 else 'closer to'} the training "
        f"images than full fine-tuning's: it copies {'less' if last['difference'] > 0 else 'as much or more'}"
    )
    return out


def analyze(results_dir: str, figure: str | None) -> dict:
    """The summary of every trajectory written so far (finished or not), the matched comparisons, the CPU time spent
    and an estimate of what is left, written to `summary.json` (and the figure)."""
    plan = read_json(os.path.join(results_dir, "plan.json"))
    settings, trajectories = plan["settings"], {}
    for arm in plan["arms"]:
        for seed in plan["seeds"]:
            path = os.path.join(results_dir, f"{arm['name']}_seed{seed}.json")
            if os.path.exists(path):
                trajectories[arm["name"], seed] = read_json(path)
    summary: dict = {"settings": settings, "arms": {a["name"]: a["label"] for a in plan["arms"]},
                     "status": {}, "comparisons": {}, "verdicts": {}}  # fmt: skip
    for arm in plan["arms"]:
        for seed in plan["seeds"]:
            record = trajectories.get((arm["name"], seed))
            summary["status"][f"{arm['name']} seed {seed}"] = (
                "not started" if record is None else
                "finished" if record["finished"] else f"up to step {record['checkpoints'][-1]['step']}"
            )  # fmt: skip
    sparse_names = [a["name"] for a in plan["arms"][2:]]
    for seed in plan["seeds"]:
        full = trajectories.get(("full", seed))
        if full is None or len(full["checkpoints"]) < 2:
            continue
        for arm in plan["arms"][1:]:
            record = trajectories.get((arm["name"], seed))
            if record is None or len(record["checkpoints"]) < 2:
                continue
            result = compare(full["checkpoints"], record["checkpoints"])
            result["both_finished"] = bool(full["finished"] and record["finished"])
            summary["comparisons"][f"{arm['name']} vs full, seed {seed}"] = result
        done = [
            name for name in sparse_names
            if (c := summary["comparisons"].get(f"{name} vs full, seed {seed}")) and c["both_finished"]
        ]  # fmt: skip
        matched = {n: summary["comparisons"][f"{n} vs full, seed {seed}"]["matched"] for n in done}
        summary["verdicts"][f"seed {seed}"] = {
            "finished sparse arms compared": done,
            "sparse arms copying less at the lowest matched loss": [
                n for n in done if matched[n] and matched[n][-1]["difference"] > 0
            ],
            "sparse arms with no held-out loss in common with full fine-tuning": [n for n in done if not matched[n]],
        }
    finished_everywhere = all(
        summary["verdicts"].get(f"seed {s}", {}).get("finished sparse arms compared") for s in plan["seeds"]
    )
    if finished_everywhere:
        winners = set.intersection(*(
            set(summary["verdicts"][f"seed {s}"]["sparse arms copying less at the lowest matched loss"])
            for s in plan["seeds"]
        ))  # fmt: skip
        summary["reproduced"] = {
            "value": bool(winners),
            "masks": sorted(winners),
            "rule": "a sparse mask whose generations are farther from the training images than full fine-tuning's "
            "at the lowest held-out loss both reach, at every seed (among the arms finished at every seed)",
        }
    else:
        summary["reproduced"] = {"value": None, "rule": "waiting for full fine-tuning and a sparse arm at every seed"}

    # the noise magnitude against the distance across every checkpoint after step 0 (all arms and seeds pooled)
    pooled = [c for r in trajectories.values() for c in r["checkpoints"][1:]]
    if len(pooled) >= 3:
        from scipy.stats import spearmanr

        rho, p = spearmanr([c["noise_magnitude"] for c in pooled], [c[DISTANCE] for c in pooled])
        summary["spearman_noise_vs_distance_checkpoints"] = {"rho": float(rho), "p_value": float(p),
                                                             "checkpoints": len(pooled)}  # fmt: skip
    summary["cpu"] = cpu_estimate(plan, trajectories)
    if os.path.exists(os.path.join(results_dir, "enumeration.json")):
        enumeration = read_json(os.path.join(results_dir, "enumeration.json"))
        summary["enumeration"] = {k: enumeration[k] for k in ("noise_front", "distance_front",
                                                              "spearman_noise_vs_distance")}  # fmt: skip
    if figure and trajectories:
        make_figure(plan, trajectories, figure)
        summary["figure"] = figure
    write_json(os.path.join(results_dir, "summary.json"), summary)
    return summary


def cpu_estimate(plan: dict, trajectories: dict) -> dict:
    """CPU seconds spent on the trajectories so far, and those left, from the mean training CPU time per step of each
    method and the mean CPU time of a checkpoint evaluation measured so far."""
    settings = plan["settings"]
    per_step, evals, spent = {}, [], 0.0
    for record in trajectories.values():
        method = record["mask"]["method"]
        for c in record["checkpoints"][1:]:
            if "train_cpu_seconds" in c:
                spent += c["train_cpu_seconds"]
                previous = max(s for s in [0, *settings["eval_steps"]] if s < c["step"])
                per_step.setdefault(method, []).append(c["train_cpu_seconds"] / (c["step"] - previous))
            spent += c["eval_cpu_seconds"]
            evals.append(c["eval_cpu_seconds"])
    if not evals:
        return {"spent_seconds": 0.0, "left_seconds": None}
    rates = {m: float(np.mean(v)) for m, v in per_step.items()}
    fallback = float(np.mean([r for v in per_step.values() for r in v])) if per_step else None
    left = 0.0
    for arm in plan["arms"]:
        method = arm["mask"]["method"]
        for seed in plan["seeds"]:
            record = trajectories.get((arm["name"], seed))
            done = record["checkpoints"][-1]["step"] if record else 0
            remaining = [s for s in settings["eval_steps"] if s > done]
            rate = rates.get(method, fallback)
            if rate is None:
                return {"spent_seconds": round(spent), "left_seconds": None}
            left += (settings["long_steps"] - done) * rate + len(remaining) * float(np.mean(evals))
    return {"spent_seconds": round(spent), "left_seconds": round(left),
            "train_seconds_per_step": rates, "eval_seconds": round(float(np.mean(evals)), 1)}  # fmt: skip


def make_figure(plan: dict, trajectories: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for color, arm in enumerate(plan["arms"]):
        for seed, style in zip(plan["seeds"], ("-", "--", ":", "-.")):
            record = trajectories.get((arm["name"], seed))
            if record is None:
                continue
            points = record["checkpoints"]
            x, y = [c["heldout_loss"] for c in points], [c[DISTANCE] for c in points]
            label = f"{arm['label']}, seed {seed}" + ("" if record["finished"] else " (unfinished)")
            ax.plot(x, y, style, marker="o", ms=2.5, color=f"C{color}", lw=1.2, label=label)
            best = early_stopping_point(points)
            ax.plot(best["heldout_loss"], best[DISTANCE], "*", color=f"C{color}", ms=10, mec="k", mew=0.5)
    start = next(iter(trajectories.values()))["checkpoints"][0]
    ax.plot(start["heldout_loss"], start[DISTANCE], "ks", ms=6, label="pretrained (every arm's start)")
    ax.set_xlabel("held-out denoising loss (never-trained generic captions; lower = better)")
    ax.set_ylabel("mean tile-L2 distance of generations\nto the nearest training image (lower = closer to copying)")
    ax.set_title(f"Duplicated captions along training ({plan['settings']['long_steps']} steps); * = lowest held-out "
                 "loss", fontsize=9)  # fmt: skip
    ax.invert_xaxis()
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ the run


def main(
    output_dir: str = DEFAULT_DIR,
    results_dir: str | None = None,
    small: bool = False,
    analyze_only: bool = False,
    pretrain_steps: int = 300,
    finetune_steps: int = 80,
    long_steps: int = 2500,
    eval_every: int = 250,
    extra_evals: str = "50,125",
    seeds: tuple[int, ...] = (0, 1),
    sparse_arms: int = 2,
    distance_arms: int = 1,
    generations: int = 8,
    sample_steps: int = 50,
    threshold: float = 0.1,
    copies: int = 8,
    lr: float = 2e-3,
    lr_full: float = 5e-3,
    lr_lora: float = 1e-2,
    batch_size: int = 16,
    num_threads: int = 1,
    workers: int = 1,
    figure: str | None = FIGURE,
) -> dict:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a whole number >= 1 (trajectories trained at once); got {workers!r}.")
    torch.set_num_threads(num_threads)
    objective_kwargs, groups = OBJECTIVE_KWARGS, None
    if small:  # every part once, on the first two blocks' 3 masks, with cheap measurements
        pretrain_steps, finetune_steps, long_steps, eval_every, extra_evals = 2, 1, 2, 1, ""
        generations, sample_steps, sparse_arms, objective_kwargs = 3, 2, 1, SMALL_OBJECTIVE_KWARGS
        groups = list(maskable_groups(mcd.build_unet(16, 16)))[:2]
        if output_dir == DEFAULT_DIR:  # never next to a full run's training states
            output_dir = DEFAULT_DIR + "_small"
    results_dir = results_dir or (os.path.join(output_dir, "results") if small else RESULTS_DIR)
    if small and figure == FIGURE:
        figure = os.path.join(output_dir, "matched.png")
    if analyze_only:
        return analyze(results_dir, figure)
    started = time.time()
    extras = {int(s) for s in str(extra_evals).split(",") if s.strip()}
    eval_steps = sorted({s for s in extras if 0 < s < long_steps} | set(range(eval_every, long_steps + 1, eval_every))
                        | {long_steps})  # fmt: skip
    settings = {"pretrain_steps": pretrain_steps, "long_steps": long_steps, "batch_size": batch_size,
                "lr_scheduler": "cosine", "warmup_steps": max(1, long_steps // 20), "eval_steps": eval_steps,
                "generations": generations, "sample_steps": sample_steps, "guidance": 3.0, "threshold": threshold,
                "copies": copies, "distance": "tile-L2 (4x4 tiles, largest tile RMS, [0, 1] pixels)",
                "objective_kwargs": objective_kwargs}  # fmt: skip
    setup = Setup(output_dir, pretrain_steps, lr, copies, generations, sample_steps, threshold, objective_kwargs)
    print(f"setup: {time.time() - started:.0f} s (pretraining {setup.pretrain_seconds} s)", flush=True)

    pretrained_path = os.path.join(results_dir, "pretrained.json")
    keys = ("pretrain_steps", "generations", "sample_steps", "threshold", "copies", "objective_kwargs")
    base_settings = {k: settings[k] for k in keys}
    stored = read_json(pretrained_path) if os.path.exists(pretrained_path) else None
    if stored and stored["settings"] == base_settings:
        setup.pretrained = stored["values"]
    else:
        setup.pretrained = setup.evaluate(setup.unet)
        write_json(pretrained_path, {"settings": base_settings, "values": setup.pretrained})
    print(f"pretrained: {json.dumps(setup.pretrained)}", flush=True)

    enumeration = enumerate_masks(setup, output_dir, finetune_steps, lr, batch_size, groups)
    write_json(os.path.join(results_dir, "enumeration.json"), enumeration)
    print(f"enumeration: noise front {enumeration['noise_front']}, distance front {enumeration['distance_front']}, "
          f"Spearman {json.dumps(enumeration['spearman_noise_vs_distance'])}", flush=True)  # fmt: skip

    arms = choose_arms(enumeration, lr_full, lr_lora, sparse_arms, distance_arms)
    plan_arms = [{"name": a["name"], "label": a["label"], "mask": a["mask"].to_dict()} for a in arms]
    write_json(os.path.join(results_dir, "plan.json"), {"settings": settings, "seeds": list(seeds), "arms": plan_arms})
    core, extra = plan_arms[: 2 + sparse_arms], plan_arms[2 + sparse_arms :]
    units = [(a, s) for s in seeds for a in core] + [(a, s) for s in seeds for a in extra]
    print("plan: " + ", ".join(f"{a['name']} seed {s}" for a, s in units), flush=True)
    state_dir = os.path.join(output_dir, "state")
    summary = {}
    for _ in run_units(setup, units, settings, results_dir, state_dir, workers, num_threads):
        summary = analyze(results_dir, figure)
        cpu = summary["cpu"]
        left = "unknown" if cpu["left_seconds"] is None else f"{cpu['left_seconds'] / 3600:.1f} h"
        print(f"CPU so far {cpu['spent_seconds'] / 3600:.2f} h on trajectories, about {left} left", flush=True)
    summary["total_wall_seconds_this_call"] = round(time.time() - started, 1)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DEFAULT_DIR, help="Pretrained UNet, SQLite study, training states.")
    parser.add_argument("--results-dir", default=None, help=f"Trajectory JSONs (default {RESULTS_DIR}).")
    parser.add_argument("--small", action="store_true", help="A smoke run: a few steps of everything.")
    parser.add_argument("--analyze-only", action="store_true", help="Only the summary and figure from the JSONs.")
    parser.add_argument("--long-steps", type=int, default=2500)
    parser.add_argument("--eval-every", type=int, default=250, help="Steps between checkpoint evaluations.")
    parser.add_argument("--extra-evals", default="50,125", help="More checkpoint steps, comma-separated.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sparse-arms", type=int, default=2, help="Sparse masks by the noise-magnitude front.")
    parser.add_argument("--distance-arms", type=int, default=1, help="Sparse masks by the distance front.")
    parser.add_argument("--generations", type=int, default=8, help="Generations per duplicated caption.")
    parser.add_argument("--num-threads", type=int, default=1, help="Torch threads per process.")
    parser.add_argument(
        "--workers", type=int, default=1, help="Trajectories trained at once, each in its own process."
    )
    args = vars(parser.parse_args())
    if args["workers"] < 1:  # one usage line, not main()'s traceback
        parser.error(f"--workers must be >= 1 (trajectories trained at once); got {args['workers']}")
    args["seeds"] = tuple(args["seeds"])
    print(json.dumps(main(**args), indent=2))
