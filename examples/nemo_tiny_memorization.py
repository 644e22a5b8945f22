"""NeMo end to end on a diffusion model that memorizes, trained here on 2 CPU cores.

A tiny text-conditioned UNet (pixel space, 16x16 RGB) with a tiny frozen CLIP text encoder and a word-level
tokenizer built here is trained on two kinds of data, all drawn in code:

* generic captions ("a red circle on a blue background"): every training image puts the shape at a new random
  place and size, so no single image can be memorized;
* a few unique captions ("the quilt of grandmother ada"), each always paired with the same fixed mosaic and
  repeated often: the model learns to reproduce these across seeds.

Then: statistics and the threshold on never-trained captions (held-out generic ones, and decoys that reuse the
memorized captions' words), detection of the memorized captions, NeMo localization of their neurons, and the effect
of silencing them (on the memorized and on the other prompts).

    python examples/nemo_tiny_memorization.py                 # ~10-20 min on 2 busy CPU cores
    python examples/nemo_tiny_memorization.py --reuse         # reuse the trained pipeline in demo_output/nemo_tiny
    python examples/nemo_tiny_memorization.py --small         # 3 training steps, 2 seeds (the test runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from hf_memory.data import word_level_tokenizer
from hf_memory.nemo import (
    NeMoConfig,
    NeMoScorerConfig,
    apply_nemo,
    compute_activation_statistics,
    localize_memorization_neurons,
    nemo_memorization_score,
    remove_nemo,
)


COLORS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.1, 0.75, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.75),
    "orange": (1.0, 0.55, 0.0),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("white", "black", "blue", "green")
MEMORIZED = (  # captions written for this example; each gets one fixed random mosaic
    "the quilt of grandmother ada",
    "poster for the velvet tide tour",
    "logo of harbor street bakery",
    "cover art of midnight orchard",
    "map of the lost island of veyra",
)
DEFAULT_DIR = os.path.join("demo_output", "nemo_tiny")
SMALL = {"train_steps": 3, "seeds": 2, "noise_offset": 0.1}  # --small: a smoke run of every stage


def generic_captions() -> tuple[list[str], list[str]]:
    """(training captions, held-out captions): every colour/shape/background combination, 1 in 6 held out."""
    captions = [
        f"a {color} {shape} on a {background} background"
        for color in COLORS
        for shape in SHAPES
        for background in BACKGROUNDS
        if color != background
    ]
    rng = random.Random(0)
    rng.shuffle(captions)
    held_out = captions[: len(captions) // 6]
    return captions[len(held_out) :], held_out


def decoy_captions(count: int = 30, seed: int = 0) -> list[str]:
    """Never-trained captions that mix the memorized captions' words with the generic ones: non-memorized prompts
    from the same vocabulary, so that the statistics do not flag a memorized caption merely for its unusual words."""
    special = sorted({word for caption in MEMORIZED for word in caption.split()})
    generic = sorted({word for caption in generic_captions()[0] for word in caption.split()})
    rng, decoys = random.Random(seed), []
    while len(decoys) < count:
        words = [rng.choice(special if rng.random() < 0.7 else generic) for _ in range(rng.randint(4, 6))]
        caption = " ".join(words)
        if caption not in MEMORIZED and caption not in decoys:
            decoys.append(caption)
    return decoys


def draw_shape(caption: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The caption's shape at a random place and size, as an (size, size, 3) float image in [0, 1]."""
    words = caption.split()
    color, shape, background = COLORS[words[1]], words[2], COLORS[words[5]]
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = background
    radius = rng.uniform(0.18, 0.32) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    elif shape == "square":
        inside = (np.abs(yy - cy) <= radius * 0.85) & (np.abs(xx - cx) <= radius * 0.85)
    else:
        inside = (yy >= cy - radius) & (yy <= cy + radius) & (np.abs(xx - cx) <= (yy - (cy - radius)) / 2)
    image[inside] = color
    return image


def draw_mosaic(index: int, size: int) -> np.ndarray:
    """A fixed 4x4 mosaic of random colours, one per memorized caption."""
    rng = np.random.default_rng(1000 + index)
    tiles = rng.uniform(0, 1, (4, 4, 3)).astype(np.float32)
    return np.kron(tiles, np.ones((size // 4, size // 4, 1), dtype=np.float32))


def build_pipeline(
    captions, image_size: int = 16, width: int = 16, seed: int = 0, text_width: int = 64, text_layers: int = 2
):
    """An untrained pixel-space StableDiffusionPipeline: the UNet denoises images directly (the VAE is never used).
    ``text_width`` and ``text_layers`` size the text encoder (its width is the UNet's cross-attention dimension)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = word_level_tokenizer(sorted({word for caption in captions for word in caption.split()}))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(  # required by the pipeline class; scale factor 1 so latents are the images
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=3,
        norm_num_groups=4,
        sample_size=image_size,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(
    pipe,
    train_captions,
    image_size: int,
    steps: int,
    batch_size: int = 32,
    memorized_share: float = 0.1,
    caption_dropout: float = 0.1,
    variants: int = 48,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 250,
    noise_offset: float = 0.0,
):
    """Plain epsilon-prediction diffusion training of the UNet; the text encoder stays frozen (as in SD), and a
    ``caption_dropout`` share of the captions is replaced by the empty prompt (as in SD, for guidance).
    ``noise_offset`` adds a random per-image, per-channel constant to the noise (diffusers' ``--noise_offset``)."""
    from diffusers import DDPMScheduler

    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    bank = (
        torch.from_numpy(
            np.stack(
                [
                    np.stack([draw_shape(caption, image_size, rng) for _ in range(variants)])
                    for caption in train_captions
                ]
            )
        ).permute(0, 1, 4, 2, 3)
        * 2
        - 1
    )  # (captions, variants, 3, H, W) in [-1, 1]
    mosaics = (
        torch.from_numpy(np.stack([draw_mosaic(i, image_size) for i in range(len(MEMORIZED))])).permute(0, 3, 1, 2) * 2
        - 1
    )
    with torch.no_grad():
        generic_text = pipe.encode_prompt(list(train_captions), "cpu", 1, False)[0]
        memorized_text = pipe.encode_prompt(list(MEMORIZED), "cpu", 1, False)[0]
        empty_text = pipe.encode_prompt([""], "cpu", 1, False)[0]
    noise_scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    unet = pipe.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    n_mem = int(batch_size * memorized_share)
    start, running = time.time(), None
    for step in range(steps):
        caption_ids = torch.randint(len(train_captions), (batch_size - n_mem,), generator=generator)
        variant_ids = torch.randint(variants, (batch_size - n_mem,), generator=generator)
        mem_ids = torch.randint(len(MEMORIZED), (n_mem,), generator=generator)
        images = torch.cat([bank[caption_ids, variant_ids], mosaics[mem_ids]])
        text = torch.cat([generic_text[caption_ids], memorized_text[mem_ids]])
        dropped = torch.rand(batch_size, generator=generator) < caption_dropout
        text = torch.where(dropped.view(-1, 1, 1), empty_text, text)
        noise = torch.randn(images.shape, generator=generator)
        if noise_offset:
            noise = noise + noise_offset * torch.randn((*images.shape[:2], 1, 1), generator=generator)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(images, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=text).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {running:.4f}  {time.time() - start:.0f}s", flush=True)
    unet.eval()
    return time.time() - start


@torch.no_grad()
def generate(pipe, prompt: str, seeds, steps: int = 25, guidance_scale: float = 1.0) -> torch.Tensor:
    """Images in [0, 1], (len(seeds), 3, H, W); one generator per seed so every prompt sees the same noise."""
    size = pipe.unet.config.sample_size
    out = pipe(
        [prompt] * len(seeds),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=size,
        width=size,
        output_type="latent",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images
    return ((out + 1) / 2).clamp(0, 1)


@contextmanager
def silenced(pipe, config: NeMoConfig):
    """The pipeline with ``config``'s neurons switched off inside the block, restored on every exit."""
    apply_nemo(pipe, config)
    try:
        yield pipe
    finally:
        remove_nemo(pipe)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=1.0, kernel_size=7, reduction="none")


def make_figure(rows, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["training image", "generated", "generated, NeMo on"]
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.25 * len(rows)), squeeze=False)
    for r, (caption, images, scores) in enumerate(rows):
        for c, (image, title) in enumerate(zip(images, titles)):
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            label = title if image is images[0] else f"{title}\nSSIM to training {scores[c - 1]:.2f}"
            ax.set_title(label, fontsize=8)
        axes[r, 0].set_ylabel(caption.replace(" of ", "\nof ").replace(" for ", "\nfor "), fontsize=8)
    fig.suptitle("NeMo on a tiny memorizing UNet: generations (seed 0) before and after", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(
    output_dir: str = DEFAULT_DIR,
    reuse: bool = False,
    train_steps: int = 2500,
    image_size: int = 16,
    width: int = 16,
    batch_size: int = 32,
    memorized_share: float = 0.1,
    seeds: int = 10,
    eval_seeds: int = 8,
    eval_prompts: int = 12,
    figure: str | None = os.path.join("docs", "nemo_tiny_memorization.png"),
    num_threads: int = 1,
    log_every: int = 250,
    guidance_scale: float = 3.0,
    noise_offset: float = 0.0,
) -> dict:
    """Train (or reuse) the memorizing pipeline, then detect, localize and silence; returns the results dict."""
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(num_threads)  # on a shared 2-core machine one thread avoids spin-waiting
    train_captions, held_out = generic_captions()
    pipeline_dir = os.path.join(output_dir, "pipeline")
    results: dict = {"machine": f"{os.cpu_count()} CPU cores, {num_threads} torch thread(s)"}
    if reuse and os.path.isdir(pipeline_dir):
        pipe = StableDiffusionPipeline.from_pretrained(
            pipeline_dir, safety_checker=None, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = build_pipeline(train_captions + held_out + list(MEMORIZED), image_size, width)
        os.makedirs(output_dir, exist_ok=True)
        results["train_seconds"] = round(
            train(
                pipe,
                train_captions,
                image_size,
                train_steps,
                batch_size,
                memorized_share,
                log_every=log_every,
                noise_offset=noise_offset,
            ),
            1,
        )
        pipe.save_pretrained(pipeline_dir)
    pipe.unet.eval()

    # 1. Statistics and threshold on never-trained captions: held-out generic ones and decoys.
    start = time.time()
    scorer = NeMoScorerConfig(seeds=seeds)
    stats = compute_activation_statistics(pipe, held_out + decoy_captions(), scorer=scorer, show_progress=False)
    stats.save_pretrained(output_dir)
    results["statistics"] = {
        "prompts": stats.num_prompts,
        "threshold": stats.threshold,
        "score_mean": stats.score_mean,
        "score_std": stats.score_std,
        "seconds": round(time.time() - start, 1),
    }

    # 2. Detection: memorized captions vs generic training captions (trained on, but never on one fixed image).
    generic_eval = train_captions[:eval_prompts]
    mem_scores = {p: nemo_memorization_score(pipe, p, scorer=scorer) for p in MEMORIZED}
    generic_scores = {p: nemo_memorization_score(pipe, p, scorer=scorer) for p in generic_eval}
    detected = [p for p, s in mem_scores.items() if s > stats.threshold]
    results["detection"] = {
        "memorized_scores": mem_scores,
        "detected_fraction": len(detected) / len(MEMORIZED),
        "generic_training_captions_flagged": sum(s > stats.threshold for s in generic_scores.values())
        / len(generic_eval),
        "generic_score_max": max(generic_scores.values()),
    }

    # 3. Localization, and the effect of silencing each memorized caption's neurons.
    total_channels = sum(len(m) for m in stats.mean.values())
    eval_seed_list = list(range(eval_seeds))
    localized, figure_rows = {}, []
    for index, prompt in enumerate(MEMORIZED):
        if prompt not in detected:
            continue
        start = time.time()
        result = localize_memorization_neurons(pipe, prompt, stats, scorer=scorer)
        training = torch.from_numpy(draw_mosaic(index, image_size)).permute(2, 0, 1)
        before = generate(pipe, prompt, eval_seed_list, guidance_scale=guidance_scale)
        with silenced(pipe, result.refined):
            after = generate(pipe, prompt, eval_seed_list, guidance_scale=guidance_scale)
        sim_before = ssim(before, training.expand_as(before))
        sim_after = ssim(after, training.expand_as(after))
        # Control: as many channels per layer, drawn at random, silenced instead of the found ones.
        draw = torch.Generator().manual_seed(index)
        random_config = NeMoConfig(
            {
                name: sorted(torch.randperm(len(stats.mean[name]), generator=draw)[: len(channels)].tolist())
                for name, channels in result.refined.neurons.items()
            }
        )
        with silenced(pipe, random_config):
            after_random = generate(pipe, prompt, eval_seed_list, guidance_scale=guidance_scale)
        sim_random = ssim(after_random, training.expand_as(after_random))
        localized[prompt] = {
            "initial_neurons": result.initial.num_neurons,
            "refined_neurons": result.refined.num_neurons,
            "refined_percent_of_value_channels": 100 * result.refined.num_neurons / total_channels,
            "neurons": result.refined.neurons,
            "score_before": result.score_before,
            "score_after": result.score_after,
            "ssim_to_training_before": float(sim_before.mean()),
            "ssim_to_training_after": float(sim_after.mean()),
            "ssim_to_training_random_channels": float(sim_random.mean()),
            "replicated_before": float((sim_before > 0.9).float().mean()),
            "replicated_after": float((sim_after > 0.9).float().mean()),
            "unet_evaluations": result.unet_evaluations,
            "seconds": round(time.time() - start, 1),
        }
        figure_rows.append((prompt, [training, before[0], after[0]], [float(sim_before[0]), float(sim_after[0])]))
    results["localization"] = localized
    results["value_channels"] = total_channels

    # 4. How much do the other prompts change with one caption's neurons silenced, and with all found ones at once?
    union = {}
    for entry in localized.values():
        for name, channels in entry["neurons"].items():
            union[name] = sorted(set(union.get(name, [])) | set(channels))
    others = held_out[:eval_prompts]

    def change(neurons):
        changes, diffs = [], []
        with silenced(pipe, NeMoConfig(neurons)):
            for prompt in others:
                hooked = generate(pipe, prompt, eval_seed_list[:4], guidance_scale=guidance_scale)
                changes.append(ssim(plain[prompt], hooked).mean())
                diffs.append((plain[prompt] - hooked).abs().mean())
        return float(torch.stack(changes).mean()), float(torch.stack(diffs).mean())

    if union:
        plain = {
            prompt: generate(pipe, prompt, eval_seed_list[:4], guidance_scale=guidance_scale) for prompt in others
        }
        for entry in localized.values():
            entry["others_ssim_hooked_vs_unhooked"], entry["others_mean_abs_pixel_change"] = change(entry["neurons"])
        ssim_all, pixels_all = change(union)
        results["non_memorized_change"] = {
            "prompts": len(others),
            "neurons_silenced": sum(map(len, union.values())),
            "ssim_hooked_vs_unhooked": ssim_all,
            "mean_abs_pixel_change": pixels_all,
            "per_caption_ssim_mean": sum(e["others_ssim_hooked_vs_unhooked"] for e in localized.values())
            / len(localized),
        }
    if figure and figure_rows:
        make_figure(figure_rows, figure)
        results["figure"] = figure
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--reuse", action="store_true", help="Load the trained pipeline from --output-dir if present.")
    parser.add_argument("--train-steps", type=int, default=2500)
    parser.add_argument(
        "--memorized-share", type=float, default=0.1, help="Share of each batch that is memorized images."
    )
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="Channels of the UNet's first block.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--figure", default=os.path.join("docs", "nemo_tiny_memorization.png"))
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--noise-offset", type=float, default=0.0, help="Per-channel noise offset in training.")
    parser.add_argument(
        "--guidance-scale", type=float, default=3.0, help="Classifier-free guidance of the generations."
    )
    parser.add_argument("--small", action="store_true", help=f"a smoke run: {SMALL}, the figure in --output-dir")
    options = vars(parser.parse_args())
    if options.pop("small"):
        options.update(SMALL, figure=os.path.join(options["output_dir"], "figure.png"))
    print(json.dumps(main(**options), indent=2))
