"""MemControl: the groups, the mask <-> trainable parameters, the objectives, the attack and the Optuna search."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hf_memory.memcontrol import (
    MemControlMask,
    MemControlResult,
    MemControlSearch,
    causal_lm_loss,
    count_parameters,
    denoising_loss,
    diffusion_extraction_attack,
    extraction_rate,
    frechet_distance,
    generated_fid,
    hypervolume,
    maskable_groups,
    noise_magnitude,
    pareto_front,
    tile_distance,
    train_causal_lm,
    train_unet,
)
from tests.testing_utils import load_example, run_example, tiny_causal_lm


optuna = pytest.importorskip("optuna")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_unet(layers_per_block: int = 1, seed: int = 0):
    """A tiny UNet: a cross-attention down block, the mid block and a cross-attention up block (which holds
    layers_per_block + 1 transformers: 3 for Stable Diffusion's layers_per_block=2)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


def unet_data(n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(n, 3, 8, 8, generator=g) * 2 - 1,
        "encoder_hidden_states": torch.randn(n, 4, 8, generator=g),
        "empty_hidden_states": torch.zeros(4, 8),
    }


def lm_data(n: int = 8, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (n, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- groups


def test_unet_groups_hold_every_transformer_including_the_third_up_block_attention():
    unet = tiny_unet(layers_per_block=2)
    groups = maskable_groups(unet)
    transformers = [n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    assert sorted(groups) == sorted(transformers)
    # data-flow order: down, mid, up; the up block has 3 transformers and the third is a group (the official code
    # never masks it)
    assert list(groups) == [
        "down_blocks.0.attentions.0",
        "down_blocks.0.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
    ]
    assert all(paths == [name] for name, paths in groups.items())
    modules = maskable_groups(unet, "module")
    assert "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k" in modules
    assert "up_blocks.1.attentions.2.proj_in" in modules
    assert all(isinstance(unet.get_submodule(n), (nn.Linear, nn.Conv2d)) for n in modules)


def test_dit_groups_are_its_transformer_blocks():
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=3, out_channels=3, num_layers=3, sample_size=8,
        patch_size=2, norm_num_groups=1, num_embeds_ada_norm=10,
    )  # fmt: skip
    assert list(maskable_groups(model)) == ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]


@pytest.mark.parametrize(
    ("arch", "attention", "ffn"),
    [
        ("llama", "model.layers.{}.self_attn", ["model.layers.{}.mlp"]),
        ("gpt2", "transformer.h.{}.attn", ["transformer.h.{}.mlp"]),
        ("gpt_neox", "gpt_neox.layers.{}.attention", ["gpt_neox.layers.{}.mlp"]),
        ("opt", "model.decoder.layers.{}.self_attn", ["model.decoder.layers.{}.fc1", "model.decoder.layers.{}.fc2"]),
    ],
)
def test_language_model_groups_split_attention_and_ffn_per_layer(arch, attention, ffn):
    model = tiny_causal_lm(arch, layers=3)
    groups = maskable_groups(model)
    assert len(groups) == 6
    names = list(groups)
    for i in range(3):
        assert names[2 * i] == attention.format(i) and groups[names[2 * i]] == [attention.format(i)]
        assert groups[names[2 * i + 1]] == [p.format(i) for p in ffn]
    modules = maskable_groups(model, "module")
    assert len(modules) == sum(len(list(_linears(model, paths))) for paths in groups.values())


def _linears(model, paths):
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in paths) and (
            isinstance(module, (nn.Linear, nn.Conv2d)) or type(module).__name__ == "Conv1D"
        ):
            yield name


def test_llama_module_granularity_names_qkvo_and_ffn_projections():
    modules = list(maskable_groups(tiny_causal_lm("llama", layers=1), "module"))
    suffixes = [m.rsplit(".", 1)[1] for m in modules]
    assert suffixes == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_model_without_maskable_group_and_bad_granularity_raise():
    with pytest.raises(ValueError, match="no maskable group"):
        maskable_groups(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ValueError, match="`granularity` must be one of 'block', 'module'"):
        maskable_groups(tiny_causal_lm(), "layer")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        maskable_groups("gpt2")


# ---------------------------------------------------------------- masks <-> trainable parameters


def _is_norm(module):
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _expected_trainable(model, paths, method):
    """What the mask must train, written independently of the library: everything under the selected paths that
    the method trains, nothing else."""
    under = lambda name: any(name.startswith(p + ".") for p in paths)  # noqa: E731
    norm_params = {
        f"{m_name}.{p_name}"
        for m_name, module in model.named_modules()
        if _is_norm(module)
        for p_name, _ in module.named_parameters(recurse=False)
    }
    expected = set()
    for name, _ in model.named_parameters():
        if not under(name):
            continue
        if method == "full" and "lora_" not in name and "ia3_" not in name and "svdiff_" not in name:
            expected.add(name)
        elif method == "lora" and "lora_" in name:
            expected.add(name)
        elif method == "scale_bias" and ("ia3_" in name or name.endswith(".bias") or name in norm_params):
            expected.add(name)
        elif method == "svdiff" and name.endswith(".parametrizations.weight.0.svdiff_delta"):
            expected.add(name)
    return expected


def _train_steps(model, kind, steps=3):
    """A few AdamW steps at a large learning rate on whatever is trainable."""
    mask = MemControlMask(["g"], [1], lr=5e-2)
    if kind == "unet":
        train_unet(model, unet_data(), mask, steps=steps, batch_size=4, max_grad_norm=None)
    else:
        train_causal_lm(model, lm_data(), mask, steps=steps, batch_size=4, max_grad_norm=None)


MODELS = {
    "llama": lambda: tiny_causal_lm("llama"),
    "gpt2": lambda: tiny_causal_lm("gpt2"),
    "unet": lambda: tiny_unet(layers_per_block=2),
}


@pytest.mark.parametrize("method", ["lora", "full", "scale_bias", "svdiff"])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "unet"])
def test_mask_trains_exactly_its_groups_for_every_group_and_method(kind, method):
    groups = maskable_groups(MODELS[kind]())
    masks = [[int(i == j) for i in range(len(groups))] for j in range(len(groups))]
    masks.append([int(i % 2 == 0) for i in range(len(groups))])  # several groups at once
    for bits in masks:
        mask = MemControlMask(list(groups), bits, method=method)
        model = mask.apply(MODELS[kind]())
        paths = [p for g, b in zip(groups, bits) if b for p in groups[g]]
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == _expected_trainable(model, paths, method), (kind, method, bits)
        assert trainable, (kind, method, bits)
        assert set(mask.trainable_names(model)) == trainable
    # the last model (several groups): train, then compare every parameter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(model, "unet" if kind == "unet" else "lm")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable
    assert len(changed) >= 0.8 * len(trainable), sorted(trainable - changed)
    if method == "full":
        assert changed == trainable


def test_the_up_block_third_transformer_can_be_switched_on_alone_and_trains():
    unet = tiny_unet(layers_per_block=2)
    mask = MemControlMask.for_model(unet, ["up_blocks.1.attentions.2"], method="lora")
    model = mask.apply(unet)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("up_blocks.1.attentions.2.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_steps(model, "unet")
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == trainable


def test_lora_config_targets_exactly_the_selected_groups_linears():
    from peft import LoraConfig, get_peft_model

    model = tiny_causal_lm("llama")
    mask = MemControlMask.for_model(model, ["model.layers.1.mlp", "model.layers.0.self_attn"], lora_r=2)
    config = mask.to_peft_config(model)
    assert isinstance(config, LoraConfig) and config.r == 2
    assert sorted(config.target_modules) == sorted(
        [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]
        + [f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")]
    )
    peft_model = get_peft_model(tiny_causal_lm("llama"), config)
    peft_trainable = {n.removeprefix("base_model.model.") for n, p in peft_model.named_parameters() if p.requires_grad}
    applied = mask.apply(tiny_causal_lm("llama"))
    assert peft_trainable == {n for n, p in applied.named_parameters() if p.requires_grad}
    assert MemControlMask.for_model(model, method="full").to_peft_config(model) is None
    gpt2 = tiny_causal_lm("gpt2")
    assert MemControlMask.for_model(gpt2).to_peft_config(gpt2).fan_in_fan_out


def test_mask_validates_its_fields():
    groups = ["a", "b", "c"]
    assert MemControlMask(groups, np.array([1, 0, 1])).bits == [1, 0, 1]  # numpy ints
    assert MemControlMask(groups, [np.int64(1), True, torch.tensor(0)]).bits == [1, 1, 0]
    assert MemControlMask(groups, [1, 0, 0], lr=np.float32(0.001)).lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="all 0: an empty mask trains nothing"):
        MemControlMask(groups, [0, 0, 0])
    with pytest.raises(ValueError, match="3 groups"):
        MemControlMask(groups, [1, 0])
    with pytest.raises(ValueError, match=r"`bits\[1\]` must be 0 or 1"):
        MemControlMask(groups, [1, 2, 0])
    with pytest.raises(ValueError, match="`method` must be one of 'lora', 'full', 'scale_bias'"):
        MemControlMask(groups, [1, 0, 0], method="dora")
    with pytest.raises(ValueError, match="more than once"):
        MemControlMask(["a", "a"], [1, 0])
    with pytest.raises(ValueError, match="non-empty list"):
        MemControlMask([], [])
    with pytest.raises(ValueError, match="`lr` must be a finite number > 0"):
        MemControlMask(groups, [1, 0, 0], lr=0)
    with pytest.raises(ValueError, match="`lora_r` must be an integer >= 1"):
        MemControlMask(groups, [1, 0, 0], lora_r=1.5)


def test_apply_refuses_a_foreign_mask_and_an_adapted_model():
    mask = MemControlMask.for_model(tiny_causal_lm("llama"), ["model.layers.1.mlp"])
    with pytest.raises(ValueError, match=r"does not have; its block groups are \['transformer.h.0.attn'"):
        mask.apply(tiny_causal_lm("gpt2"))
    with pytest.raises(ValueError, match="not groups of the model"):
        MemControlMask.for_model(tiny_causal_lm("llama"), ["model.layers.7.mlp"])
    adapted = mask.apply(tiny_causal_lm("llama"))
    with pytest.raises(ValueError, match="already holds LoRA"):
        mask.apply(adapted)


def test_mask_json_round_trip_and_transfer_to_a_fresh_model(tmp_path):
    model = tiny_causal_lm("llama", seed=0)
    mask = MemControlMask.for_model(model, ["model.layers.0.mlp"], method="scale_bias", lr=3e-4)
    mask.save_pretrained(tmp_path)
    loaded = MemControlMask.from_pretrained(tmp_path)
    assert loaded == mask and loaded.to_dict() == mask.to_dict()
    fresh = loaded.apply(tiny_causal_lm("llama", seed=1))  # same architecture, other weights (another dataset's run)
    original = mask.apply(model)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in original.named_parameters() if p.requires_grad
    }
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "memcontrol_mask.json").write_text('{"groups": ["a"], "bits": [0]}')
    with pytest.raises(ValueError, match="empty mask"):
        MemControlMask.from_pretrained(tmp_path / "bad")


def test_count_parameters_counts_adapters_as_trainable_not_in_the_total():
    model = tiny_causal_lm("llama")
    total = sum(p.numel() for p in model.parameters())
    mask = MemControlMask.for_model(model, ["model.layers.0.mlp"], lora_r=2)
    trainable, base = count_parameters(mask.apply(model))
    # gate/up: 16 -> 32, down: 32 -> 16; LoRA r=2 adds r * (in + out) each
    assert (trainable, base) == (3 * 2 * (16 + 32), total)


# ---------------------------------------------------------------- objectives


class Echo(nn.Module):
    """ε(x, t, c) = x + mean(c): the conditional and unconditional predictions differ by a known constant."""

    def __init__(self, channels=1, size=2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"in_channels": channels, "sample_size": size})

    def forward(self, x, t, encoder_hidden_states):
        shift = encoder_hidden_states.mean((1, 2)).view(-1, 1, 1, 1) + self.weight
        return type("Output", (), {"sample": x + shift})


def test_noise_magnitude_is_the_conditional_shift_norm_and_deterministic():
    text = torch.stack([torch.full((3, 2), 0.5), torch.full((3, 2), 2.0)])
    empty = torch.zeros(3, 2)
    # per prompt: |shift| * sqrt(C*H*W) = 0.5 * 2 and 2 * 2 -> mean 2.5, whatever the noise or timestep
    assert noise_magnitude(Echo(), text, empty, timesteps=[10, 999]) == pytest.approx(2.5)
    images = torch.rand(2, 1, 2, 2)
    assert noise_magnitude(Echo(), text, empty[None], images=images, timesteps=500) == pytest.approx(2.5)
    unet = tiny_unet()
    data = unet_data(3)
    first = noise_magnitude(unet, data["encoder_hidden_states"], data["empty_hidden_states"], num_noise=2)
    assert first == noise_magnitude(unet, data["encoder_hidden_states"], data["empty_hidden_states"], num_noise=2)
    assert first > 0
    with pytest.raises(ValueError, match="`empty_hidden_states` has shape"):
        noise_magnitude(unet, data["encoder_hidden_states"], torch.zeros(5, 8))
    with pytest.raises(ValueError, match=r"`timesteps` must be a non-empty list of integers in \[0, 999\]"):
        noise_magnitude(unet, data["encoder_hidden_states"], data["empty_hidden_states"], timesteps=[1000])


def test_denoising_loss_matches_a_hand_computation():
    from diffusers import DDPMScheduler

    class Zero(Echo):
        def forward(self, x, t, encoder_hidden_states):
            return type("Output", (), {"sample": torch.zeros_like(x) + self.weight})

    data = unet_data(5)
    # predicting 0 everywhere: the loss is the mean square of the seeded noise, one draw per timestep
    g = torch.Generator().manual_seed(3)
    expected = torch.cat([torch.randn(5, 3, 8, 8, generator=g).flatten() for _ in range(2)]).pow(2).mean()
    got = denoising_loss(Zero(), data, timesteps=[10, 900], seed=3, batch_size=2, noise_scheduler=DDPMScheduler())
    assert got == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="'encoder_hidden_states' as a 3-D"):
        denoising_loss(Zero(), {"images": data["images"]})


def test_causal_lm_loss_equals_the_models_own_loss():
    model = tiny_causal_lm("llama").eval()
    data = lm_data(4)
    with torch.no_grad():
        expected = model(input_ids=data, labels=data).loss.item()
    assert causal_lm_loss(model, data, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_extraction_rate_is_the_harness_metric():
    from hf_memory.extraction import measure_extraction

    model = tiny_causal_lm("llama")
    data = lm_data(4, 12)
    result = measure_extraction(model, data, 6, 6, show_progress=False)
    assert extraction_rate(model, data, 6, 6) == pytest.approx(result.metrics["memorization_score"])
    assert extraction_rate(model, data, 6, 6, metric="exact_match") == pytest.approx(result.metrics["exact_match"])
    with pytest.raises(ValueError, match="`metric` must be one of"):
        extraction_rate(model, data, 6, 6, metric="bleu")


def test_frechet_distance_with_a_custom_feature_extractor():
    x = torch.rand(40, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    features = nn.Flatten()
    # same covariance, mean shifted by 0.1 in each of 4 features: FID = 4 * 0.1^2
    assert frechet_distance(x + 0.1, x, features) == pytest.approx(0.04, abs=1e-4)
    assert frechet_distance(x, x, features) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="`feature_extractor` must be a torch.nn.Module"):
        frechet_distance(x, x, lambda im: im)


# ---------------------------------------------------------------- the extraction attack


def test_tile_distance_takes_the_worst_tile():
    a = torch.zeros(1, 1, 8, 8)
    b = a.clone()
    b[0, 0, :4, :4] = 0.2  # one of 4 tiles off by 0.2 everywhere
    assert tile_distance(a, b, tile_grid=2).item() == pytest.approx(0.2)
    assert tile_distance(a, b, tile_grid=1).item() == pytest.approx(0.1)  # whole-image RMS: sqrt(0.04 / 4)
    with pytest.raises(ValueError, match="does not divide"):
        tile_distance(a, b, tile_grid=3)


def test_attack_finds_the_planted_duplicates_only():
    g = torch.Generator().manual_seed(0)
    training = torch.rand(5, 3, 8, 8, generator=g)

    def sampler(prompt, n, seed):
        rng = torch.Generator().manual_seed(seed + len(prompt))
        images = torch.rand(n, 3, 8, 8, generator=rng)
        if prompt == "memorized":  # 4 near-copies of training image 2
            images[:4] = training[2] + 0.01 * torch.randn(4, 3, 8, 8, generator=rng)
        if prompt == "two copies":  # 2 copies: under min_cluster=3
            images[:2] = training[1]
        if prompt == "mode collapse":  # a cluster, but of an image that is not in the training set
            images[:5] = 0.5
        return images.clamp(0, 1)

    prompts = ["memorized", "two copies", "mode collapse", "novel"]
    result = diffusion_extraction_attack(sampler, prompts, training, n_generations=10, threshold=0.1)
    assert result.memorized == [True, False, True, False]
    assert result.extracted == [True, False, False, False]
    assert result.cluster_sizes[:3] == [4, 2, 5]
    assert result.nearest_training[0] == 2 and result.training_distances[0] < 0.05
    assert (result.num_memorized, result.num_extracted, result.extracted_training_images) == (2, 1, [2])
    no_training = diffusion_extraction_attack(sampler, prompts, None, n_generations=10, min_cluster=2)
    assert no_training.extracted == [True, True, True, False]
    with pytest.raises(ValueError, match="`min_cluster`=11 exceeds `n_generations`=10"):
        diffusion_extraction_attack(sampler, prompts, training, n_generations=10, min_cluster=11)
    with pytest.raises(ValueError, match="`prompts` must be a non-empty list of strings"):
        diffusion_extraction_attack(sampler, "memorized", training)
    with pytest.raises(ValueError, match="`threshold` must be a finite number > 0"):
        diffusion_extraction_attack(sampler, prompts, training, threshold=0)


# ---------------------------------------------------------------- geometry helpers


def test_pareto_front_and_hypervolume_agree_with_optuna():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    points = rng.random((30, 2))
    front = pareto_front(points)
    for i in range(30):
        dominated = any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in range(30))
        assert (i in front) == (not dominated)
    ref = np.array([1.1, 1.1])
    assert hypervolume(points, ref) == pytest.approx(compute_hypervolume(points[front], ref))
    assert hypervolume(points[front], ref) == pytest.approx(hypervolume(points, ref))
    assert hypervolume([[2.0, 2.0]], ref) == 0.0
    three = rng.random((10, 3))
    assert hypervolume(three, [1, 1, 1]) == pytest.approx(compute_hypervolume(three[pareto_front(three)], np.ones(3)))


# ---------------------------------------------------------------- the search


def lm_search(tmp_path=None, **kwargs):
    settings = {
        "model_factory": lambda: tiny_causal_lm("llama"),
        "train_data": lm_data(6, 12),
        "val_data": lm_data(3, 12, seed=1),
        "train_steps": 2,
        "batch_size": 2,
        "lr": 1e-2,
        "objective_kwargs": {"extraction": {"prefix_len": 6, "suffix_len": 6}},
        "show_progress": False,
    }
    settings.update(kwargs)
    return MemControlSearch(**settings)


def test_search_returns_a_pareto_front_with_ready_peft_configs():
    result = lm_search(n_trials=4, sampler="random").run()
    assert 1 <= len(result.trials) <= 4 and result.objective_names == ["extraction", "heldout_loss"]
    points = result.points(result.trials)
    front_keys = {t.mask.key for t in result.pareto_front}
    assert front_keys == {result.trials[i].mask.key for i in pareto_front(points)}
    for trial in result.pareto_front:
        model = tiny_causal_lm("llama")
        config = trial.peft_config
        assert config.target_modules == set(trial.mask.to_peft_config(model).target_modules)
        assert all(any(m.startswith(g + ".") for g in trial.mask.selected_groups) for m in config.target_modules)


def test_exhaustive_enumeration_evaluates_every_mask_once_and_caches(tmp_path):
    calls = []

    def train_fn(model, data, mask):
        calls.append(mask.key)
        train_causal_lm(model, data, mask, steps=1, batch_size=2)

    search = lm_search(sampler="exhaustive", train_fn=train_fn)
    result = search.run()
    assert sorted(t.mask.key for t in result.trials) == sorted(
        "".join(map(str, b)) for b in itertools.product((0, 1), repeat=4) if any(b)
    )
    assert sorted(calls) == sorted(t.mask.key for t in result.trials)  # each mask trained exactly once
    front = pareto_front(result.points(result.trials))
    assert {result.trials[i].mask.key for i in front} == {t.mask.key for t in result.pareto_front}
    for trial in result.trials:
        assert 0 < trial.trainable_fraction < 1
        model = trial.mask.apply(tiny_causal_lm("llama"))
        assert trial.trainable_parameters == count_parameters(model)[0]
        assert sorted(trial.peft_config.target_modules) == sorted(
            n for n, m in model.named_modules() if hasattr(m, "lora_A")
        )
    # a later search reuses the enumeration's values: nothing is trained again
    calls.clear()
    again = lm_search(n_trials=5, sampler="nsga2", train_fn=train_fn, cache=result).run()
    assert calls == [] and again.num_trained == 0 and len(again.trials) == 5
    for trial in again.trials:
        assert trial.values == next(t.values for t in result.trials if t.mask.key == trial.mask.key)


def test_search_resumes_from_sqlite_after_an_interrupted_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def interrupted(model, data, mask):
        if len(calls) == 2:
            calls.append("interrupted")
            raise KeyboardInterrupt
        calls.append(mask.key)
        train_causal_lm(model, data, mask, steps=1, batch_size=2)

    with pytest.raises(KeyboardInterrupt):
        lm_search(n_trials=6, sampler="tpe", storage=storage, study_name="resume", train_fn=interrupted).run()
    study = optuna.load_study(study_name="resume", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    finished = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert finished == 2
    resumed_calls = []

    def plain(model, data, mask):
        resumed_calls.append(mask.key)
        train_causal_lm(model, data, mask, steps=1, batch_size=2)

    result = lm_search(n_trials=6, sampler="tpe", storage=storage, study_name="resume", train_fn=plain).run()
    study = optuna.load_study(study_name="resume", storage=storage)
    finished = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 6  # 2 before the interruption + 4 after
    assert len(resumed_calls) <= 4  # never the first run's masks again (they are cached from the storage)
    assert len(result.trials) == sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # a finished study runs nothing more
    resumed_calls.clear()
    lm_search(n_trials=6, sampler="tpe", storage=storage, study_name="resume", train_fn=plain).run()
    assert resumed_calls == []


ALL_MASKS = sorted("".join(map(str, b)) for b in itertools.product((0, 1), repeat=4) if any(b))


def test_exhaustive_enumeration_resumed_after_ctrl_c_trains_the_interrupted_mask(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def interrupted(model, data, mask):
        if len(calls) == 3:
            calls.append(f"interrupted {mask.key}")
            raise KeyboardInterrupt
        calls.append(mask.key)

    with pytest.raises(KeyboardInterrupt):
        lm_search(sampler="exhaustive", storage=storage, study_name="enum", train_fn=interrupted).run()
    lost = calls[-1].split()[-1]
    resumed = []
    result = lm_search(
        sampler="exhaustive", storage=storage, study_name="enum", train_fn=lambda m, d, mask: resumed.append(mask.key)
    ).run()
    assert sorted(t.mask.key for t in result.trials) == ALL_MASKS  # every mask once, the interrupted one included
    assert lost in resumed and not set(resumed) & set(calls[:3])  # finished masks are not trained again


def test_exhaustive_enumeration_resumed_after_sigkill_fails_the_dead_trial_and_trains_its_mask(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    script = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from tests.test_memcontrol import lm_search
calls = []
def killed(model, data, mask):
    calls.append(mask.key)
    if len(calls) == 3:
        print(mask.key, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
lm_search(sampler="exhaustive", storage={storage!r}, study_name="enum", train_fn=killed).run()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == -9, out.stderr[-2000:]
    lost = out.stdout.split()[-1]
    study = optuna.load_study(study_name="enum", storage=storage)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.RUNNING) == 1  # killed: no time to fail it
    resumed = []
    result = lm_search(
        sampler="exhaustive", storage=storage, study_name="enum", train_fn=lambda m, d, mask: resumed.append(mask.key)
    ).run()
    study = optuna.load_study(study_name="enum", storage=storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and states.count(optuna.trial.TrialState.FAIL) == 1
    assert sorted(t.mask.key for t in result.trials) == ALL_MASKS
    assert lost in resumed and len(resumed) == len(ALL_MASKS) - 2  # the two masks finished before the kill stay


def test_a_running_trial_of_a_live_process_is_left_alone(tmp_path):
    from hf_memory.memcontrol.search import _fail_killed_trials

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
    alive, dead, elsewhere = study.ask(), study.ask(), study.ask()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        import socket

        for trial, host, pid in ((alive, socket.gethostname(), sleeper.pid),
                                 (dead, socket.gethostname(), int(finished.stdout)),
                                 (elsewhere, "another-machine", int(finished.stdout))):  # fmt: skip
            trial.set_user_attr("host", host)
            trial.set_user_attr("pid", pid)
        assert _fail_killed_trials(study) == [dead.number]
    finally:
        sleeper.kill()
    states = {t.number: t.state for t in study.trials}
    assert states[alive.number] == states[elsewhere.number] == optuna.trial.TrialState.RUNNING


def test_result_json_round_trip_and_transfer(tmp_path):
    result = lm_search(n_trials=3, sampler="random", seed=1).run()
    result.save(tmp_path / "result.json")
    loaded = MemControlResult.load(tmp_path / "result.json")
    assert [t.mask for t in loaded.trials] == [t.mask for t in result.trials]
    assert [t.values for t in loaded.trials] == [t.values for t in result.trials]
    assert [t.number for t in loaded.pareto_front] == [t.number for t in result.pareto_front]
    for old, new in zip(result.trials, loaded.trials):
        assert sorted(new.peft_config.target_modules) == sorted(old.peft_config.target_modules)
    best = loaded.pareto_front[0]
    best.mask.save_pretrained(tmp_path / "mask")
    fresh = MemControlMask.from_pretrained(tmp_path / "mask").apply(tiny_causal_lm("llama", seed=5))
    assert count_parameters(fresh)[0] == best.trainable_parameters
    with pytest.warns(FutureWarning, match="now `save`"):
        result.save_json(tmp_path / "old.json")
    with pytest.warns(FutureWarning, match="now `load`"):
        assert [t.values for t in MemControlResult.from_json(tmp_path / "old.json").trials] == [
            t.values for t in result.trials
        ]
    # P1: a tampered file raised KeyError: 'trials', and a NaN objective loaded silently
    import json

    data = json.loads((tmp_path / "result.json").read_text())
    damaged = {
        "no trials": {k: v for k, v in data.items() if k != "trials"},
        "trials not a list": {**data, "trials": 3},
        "front names no trial": {**data, "pareto_front": [999]},
        "NaN objective": {
            **data,
            "trials": [{**data["trials"][0], "values": {n: float("nan") for n in data["objective_names"]}}],
        },
        "settings a list": {**data, "settings": [1]},
    }
    for case, content in damaged.items():
        (tmp_path / "bad.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match="bad.json (is not a MemControlResult|is damaged)"):
            MemControlResult.load(tmp_path / "bad.json")


@pytest.mark.parametrize("loop", ["unet", "causal_lm"])
def test_inner_loops_follow_the_learning_rate_schedule(loop, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)

    def run(**kwargs):
        seen.clear()
        if loop == "unet":
            model = tiny_unet()
            mask = MemControlMask.for_model(model, list(maskable_groups(model))[:1], method="full", lr=0.1)
            train_unet(model, unet_data(), mask, steps=4, batch_size=2, **kwargs)
        else:
            model = tiny_causal_lm("llama")
            mask = MemControlMask.for_model(model, list(maskable_groups(model))[:1], method="full", lr=0.1)
            train_causal_lm(model, lm_data(), mask, steps=4, batch_size=2, **kwargs)
        return list(seen)

    assert run() == [0.1] * 4  # "constant", the default: what the loops always did
    assert run(lr_scheduler="linear") == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert run(lr_scheduler="cosine", warmup_steps=2) == pytest.approx([0.0, 0.05, 0.1, 0.05])
    assert run(lr_scheduler="constant_with_warmup", warmup_steps=1) == pytest.approx([0.0, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="`lr_scheduler` must be one of"):
        run(lr_scheduler="one_cycle")
    with pytest.raises(ValueError, match="`warmup_steps` must be below `steps`=4"):
        run(lr_scheduler="cosine", warmup_steps=4)
    with pytest.raises(ValueError, match="'constant' has no warm-up"):
        run(warmup_steps=1)
    assert seen == []  # refused before any step


def test_search_on_a_unet_with_the_diffusion_objectives():
    data = unet_data(6)
    search = MemControlSearch(
        lambda: tiny_unet(),
        data,
        unet_data(3, seed=1),
        n_trials=2,
        sampler="random",
        train_steps=1,
        batch_size=2,
        method="scale_bias",
        objective_kwargs={"noise_magnitude": {"num_noise": 1}, "denoising_loss": {"timesteps": [500]}},
        show_progress=False,
    )
    assert search.groups == ["down_blocks.0.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.0",
                             "up_blocks.1.attentions.1"]  # fmt: skip
    result = search.run()
    assert result.objective_names == ["noise_magnitude", "denoising_loss"]
    assert all(v > 0 for t in result.trials for v in t.values.values())
    assert all(type(t.peft_config).__name__ == "IA3Config" for t in result.trials)


def test_search_refuses_bad_input_before_any_training(tmp_path):
    def never(model, data, mask):
        raise AssertionError("trained")

    with pytest.raises(ValueError, match="`objectives` must be one of 'extraction', 'exact_match', 'heldout_loss'"):
        lm_search(objectives=["extraction", "fid"], train_fn=never)
    with pytest.raises(ValueError, match="at least two objectives"):
        lm_search(objectives=["extraction"], train_fn=never)
    with pytest.raises(ValueError, match="needs `val_data`"):
        lm_search(val_data=None, train_fn=never)
    with pytest.raises(ValueError, match="cannot be opened as an Optuna storage"):
        lm_search(storage=f"sqlite:///{tmp_path}/missing/folder/study.db", train_fn=never)
    with pytest.raises(ValueError, match="cannot be opened as an Optuna storage"):
        lm_search(storage="nosuchdb://host/study", train_fn=never)
    with pytest.raises(ValueError, match="no maskable group"):
        lm_search(model_factory=lambda: nn.Sequential(nn.Linear(2, 2)), train_fn=never)
    with pytest.raises(ValueError, match="`sampler` must be one of 'nsga2', 'tpe', 'random', 'exhaustive'"):
        lm_search(sampler="cmaes", train_fn=never)
    with pytest.raises(ValueError, match="one learning rate"):
        lm_search(sampler="exhaustive", lr=(1e-5, 1e-3), train_fn=never)
    with pytest.raises(ValueError, match="`n_trials` must be an integer >= 1"):
        lm_search(n_trials=0, train_fn=never)
    with pytest.raises(ValueError, match="`method` must be one of"):
        lm_search(method="sv_diff", train_fn=never)
    with pytest.raises(ValueError, match="`lr_scheduler` must be one of"):
        lm_search(lr_scheduler="step")
    with pytest.raises(ValueError, match="`warmup_steps` must be below `train_steps`=2"):
        lm_search(lr_scheduler="cosine", warmup_steps=5)
    with pytest.raises(ValueError, match="'noise_magnitude' objective needs"):
        MemControlSearch(tiny_unet, {"images": torch.zeros(2, 3, 8, 8), "encoder_hidden_states": torch.zeros(2, 4, 8)},
                         unet_data(2), train_fn=never)  # fmt: skip
    with pytest.raises(ValueError, match="`objective_kwargs` names"):
        lm_search(objective_kwargs={"rouge": {}}, train_fn=never)
    with pytest.raises(ValueError, match=r"`train_data\[0\]` must hold integer token ids"):
        lm_search(train_data=[[1.5, 2.5]])
    with pytest.raises(ValueError, match="`val_data` must be a dict with 'images'"):
        MemControlSearch(tiny_unet, unet_data(2), [[1, 2]], train_fn=never)
    assert lm_search(n_trials=np.int64(3), train_fn=never).n_trials == 3  # numpy integers are fine


def test_searched_learning_rate_and_custom_objectives():
    seen = []

    def train_fn(model, data, mask):
        seen.append(mask.lr)

    result = lm_search(
        n_trials=3,
        sampler="random",
        lr=(1e-5, 1e-3),
        train_fn=train_fn,
        objective_kwargs={},
        objectives={"size": lambda m: float(count_parameters(m)[0]), "loss": "heldout_loss"},
    ).run()
    assert all(1e-5 <= lr <= 1e-3 for lr in seen) and len(set(seen)) == len(seen)
    assert result.objective_names == ["size", "loss"]
    assert [t.mask.lr for t in result.trials] == pytest.approx(seen[: len(result.trials)])


# ---------------------------------------------------------------- examples


@pytest.mark.slow
@pytest.mark.parametrize("name", ["memcontrol_diffusion", "memcontrol_lm"])
def test_example_small_mode_runs(name, tmp_path):
    if not os.path.exists(os.path.join(ROOT, "examples", f"{name}.py")):
        pytest.skip(f"examples/{name}.py not written")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, f"examples/{name}.py", "--small", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "results.json").exists()
    if name == "memcontrol_diffusion":  # the long (memorizing) arms: full, all-blocks LoRA, one sparse mask
        with open(tmp_path / "results.json") as f:
            arms = json.load(f)["long"]["arms"]
        assert list(arms)[:2] == ["full fine-tune (whole UNet)", "all-blocks LoRA"] and len(arms) == 3
        assert all(len(arm["attack"]["distance_to_training"]) == 5 for arm in arms.values())
        assert (tmp_path / "generations.png").exists()
    if name == "memcontrol_lm":  # the full fine-tuning arm, measured as the LoRA arms are
        with open(tmp_path / "results.json") as f:
            results = json.load(f)
        full = results["full fine-tune (every parameter)"]
        assert full["trainable_fraction"] == 1.0 > results["all-layers LoRA"]["trainable_fraction"]
        assert {"extraction", "exact_match", "heldout_loss"} <= set(full)
        assert full["heldout_loss"] != results["before fine-tuning"]["heldout_loss"]  # it trained


def test_matched_training_loop_is_train_unets_and_resumes_after_a_kill(tmp_path):
    matched = load_example("memcontrol_matched")
    data = unet_data(6)
    groups = list(maskable_groups(tiny_unet()))
    mask = MemControlMask(groups, [1, 0, 1, 0], lr=1e-2)

    def fresh():
        torch.manual_seed(0)
        return mask.apply(tiny_unet())

    reference = fresh()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    train_unet(reference, data, mask, steps=6, batch_size=4, seed=3, lr_scheduler="cosine", warmup_steps=1)
    assert any(not torch.equal(before[k], v) for k, v in reference.state_dict().items())

    def evaluate(model):
        return {"heldout_loss": denoising_loss(model, data, timesteps=[500])}

    def run(model, state, on_checkpoint, recorded=()):
        matched.train_with_checkpoints(model, mask, data, 6, 4, 3, 1, [2, 4, 6], evaluate, str(state), on_checkpoint,
                                       recorded_steps=recorded)  # fmt: skip

    uninterrupted, seen = fresh(), []
    run(uninterrupted, tmp_path / "a.pt", seen.append)
    assert [c["step"] for c in seen] == [2, 4, 6]
    for name, value in reference.state_dict().items():  # the same steps as the library's loop
        assert torch.equal(uninterrupted.state_dict()[name], value), name

    def killed_at_4(numbers):  # the state of step 4 is saved, its numbers are not recorded
        if numbers["step"] == 4:
            raise KeyboardInterrupt

    run(fresh(), tmp_path / "b.pt", lambda c: None)  # a first full run elsewhere must not matter
    with pytest.raises(KeyboardInterrupt):
        run(fresh(), tmp_path / "c.pt", killed_at_4)
    resumed, again = tiny_unet(), []
    torch.manual_seed(123)  # another adapter initialization: the saved state replaces it
    resumed = mask.apply(resumed)
    run(resumed, tmp_path / "c.pt", again.append, recorded={2})
    assert [c["step"] for c in again] == [4, 6]  # step 4 evaluated again first, then training goes on
    assert [c["heldout_loss"] for c in again] == [c["heldout_loss"] for c in seen[1:]]
    for name, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_matched_comparison_reads_copying_at_the_same_held_out_loss():
    matched = load_example("memcontrol_matched")

    def trajectory(losses, distances):
        return [{"step": 100 * i, "heldout_loss": loss, "nearest_distance": d, "copied": 0, "clusters": 0,
                 "noise_magnitude": 1.0} for i, (loss, d) in enumerate(zip(losses, distances))]  # fmt: skip

    full = trajectory([0.060, 0.050, 0.040], [0.60, 0.50, 0.30])
    sparse = trajectory([0.060, 0.055, 0.050], [0.60, 0.59, 0.58])
    result = matched.compare(full, sparse, levels=2)
    rows = result["matched"]
    assert [r["heldout_loss"] for r in rows] == pytest.approx([0.055, 0.050])  # down to the sparse arm's best
    assert [r["full"] for r in rows] == pytest.approx([0.55, 0.50])  # halfway between step 0 and 100, then step 100
    assert [r["full_step"] for r in rows] == pytest.approx([50, 100])
    assert [r["arm"] for r in rows] == pytest.approx([0.59, 0.58])
    assert [r["difference"] for r in rows] == pytest.approx([0.04, 0.08])
    assert result["levels_where_arm_copies_less"] == 2 and "copies less" in result["verdict"]
    assert result["early_stopping"]["full"]["step"] == 200 and result["early_stopping"]["arm"]["step"] == 200
    assert result["early_stopping"]["difference"] == pytest.approx(0.28)
    # a copying sparse arm: the verdict turns
    assert "as much or more" in matched.compare(full, trajectory([0.060, 0.055, 0.050], [0.6, 0.4, 0.2]))["verdict"]
    # the first crossing counts, not a later one
    bumpy = trajectory([0.060, 0.048, 0.056, 0.045], [0.6, 0.2, 0.9, 0.1])
    assert matched.value_at_loss(bumpy, 0.050) == pytest.approx((0.6 - 0.4 * 10 / 12, 100 * 10 / 12))
    assert matched.value_at_loss(bumpy, 0.040) is None
    # an arm that never improves on the pretrained model: nothing to match
    assert matched.compare(full, trajectory([0.060, 0.061], [0.6, 0.6]))["matched"] == []
    assert matched.nondominated_ranks([[1, 3], [2, 2], [3, 1], [2, 3], [3, 3]]) == [0, 0, 0, 1, 2]


def test_matched_memorization_counts_a_planted_copy():
    matched = load_example("memcontrol_matched")
    g = torch.Generator().manual_seed(0)
    training = torch.rand(7, 3, 8, 8, generator=g)  # 2 generic images, then the 5 captions' mosaics
    generations = torch.rand(15, 3, 8, 8, generator=g)  # 3 per caption
    generations[0:3] = training[2]  # caption 0: three exact copies of its mosaic
    generations[3] = training[0]  # caption 1: one copy of a generic image, not of its mosaic
    out = matched.memorization(generations, training, first_mosaic=2, threshold=0.1)
    assert out["copied"] == 1 and out["clusters"] == 1 and out["extracted"] == 1
    assert out["closest_per_caption"][:2] == [0.0, 0.0] and min(out["closest_per_caption"][2:]) > 0.1
    assert out["nearest_is_own_mosaic"] >= 3 / 15
    full = tile_distance(generations, training).min(dim=1).values
    assert out["nearest_distance"] == pytest.approx(float(full.mean()))
    own = tile_distance(generations, training)[torch.arange(15), 2 + torch.arange(5).repeat_interleave(3)]
    assert out["own_mosaic_distance"] == pytest.approx(float(own.mean())) and float(own[:3].max()) == 0.0


@pytest.mark.slow
def test_matched_example_small_mode_runs_and_resumes(tmp_path):
    from scipy.stats import spearmanr

    first = run_example("memcontrol_matched", "--small", "--output-dir", str(tmp_path), timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    results = tmp_path / "results"
    with open(results / "plan.json") as f:
        plan = json.load(f)
    names = [a["name"] for a in plan["arms"]]
    assert names[:2] == ["full", "lora_11"] and len(names) >= 3 and plan["seeds"] == [0, 1]
    trajectories = {}
    for name in names:
        for seed in (0, 1):
            with open(results / f"{name}_seed{seed}.json") as f:
                trajectories[name, seed] = record = json.load(f)
            assert record["finished"] and [c["step"] for c in record["checkpoints"]] == [0, 1, 2]
            for c in record["checkpoints"]:
                assert np.isfinite([c["heldout_loss"], c["noise_magnitude"], c["nearest_distance"]]).all()
                assert 0 < c["nearest_distance"] < 1 and 0 <= c["copied"] <= 5 and len(c["closest_per_caption"]) == 5
    assert trajectories["full", 0]["trainable_fraction"] == 1.0 > trajectories["lora_11", 0]["trainable_fraction"]
    # the two seeds train differently; the step-0 checkpoint (the pretrained model) is shared
    assert trajectories["full", 0]["checkpoints"][-1] != trajectories["full", 1]["checkpoints"][-1]
    assert trajectories["full", 0]["checkpoints"][0] == trajectories["lora_11", 1]["checkpoints"][0]
    with open(results / "enumeration.json") as f:
        enumeration = json.load(f)
    masks = enumeration["masks"]
    assert sorted(masks) == ["01", "10", "11"]
    keys = sorted(masks)
    rho = spearmanr([masks[k]["noise_magnitude"] for k in keys], [masks[k]["nearest_distance"] for k in keys])[0]
    assert enumeration["spearman_noise_vs_distance"]["rho"] == pytest.approx(rho)
    with open(results / "summary.json") as f:
        summary = json.load(f)
    assert set(summary["status"].values()) == {"finished"}
    assert {f"{n} vs full, seed {s}" for n in names[1:] for s in (0, 1)} == set(summary["comparisons"])
    assert summary["reproduced"]["value"] in (True, False)
    assert (tmp_path / "matched.png").exists()

    stored = {p.name: p.read_text() for p in results.glob("*_seed*.json")}
    second = run_example("memcontrol_matched", "--small", "--output-dir", str(tmp_path), timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("finished earlier: skipped") == 2 * len(names)
    assert {p.name: p.read_text() for p in results.glob("*_seed*.json")} == stored

    # two trajectories at a time in forked workers: the same numbers as one at a time (all but the CPU seconds)
    parallel = tmp_path / "parallel"
    shutil.copytree(tmp_path, parallel, ignore=shutil.ignore_patterns("results", "state", "parallel"))
    third = run_example("memcontrol_matched", "--small", "--output-dir", str(parallel), "--workers", "2", timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]

    def numbers(text):
        record = json.loads(text)
        return [{k: v for k, v in c.items() if "seconds" not in k} for c in record["checkpoints"]]

    in_parallel = {p.name: numbers(p.read_text()) for p in (parallel / "results").glob("*_seed*.json")}
    assert in_parallel == {name: numbers(text) for name, text in stored.items()}


def test_matched_refuses_an_edited_trajectory_file_naming_it(tmp_path):
    matched = load_example("memcontrol_matched")
    groups = list(maskable_groups(tiny_unet()))
    arm = {"name": "lora_1010", "mask": MemControlMask(groups, [1, 0, 1, 0]).to_dict()}
    path = tmp_path / "lora_1010_seed0.json"
    path.write_text('{"arm": "LoRA", "checkpo')
    with pytest.raises(SystemExit, match="not a results file this script wrote") as refused:
        matched.run_trajectory(None, arm, 0, {"long_steps": 2}, str(tmp_path), str(tmp_path))
    assert str(path) in str(refused.value)
    for edited in ("[]", '{"checkpoints": []}', json.dumps({"settings": {"long_steps": 3}, "mask": arm["mask"]})):
        path.write_text(edited)
        with pytest.raises(ValueError, match="other settings or another mask"):
            matched.run_trajectory(None, arm, 0, {"long_steps": 2}, str(tmp_path), str(tmp_path))


def test_matched_workers_end_when_their_run_is_killed(tmp_path):
    import signal
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import os, sys, time
sys.path.insert(0, {root!r})
from tests.testing_utils import load_example
matched = load_example("memcontrol_matched")
def slow(setup, arm, seed, settings, results_dir, state_dir):
    open(os.path.join(results_dir, f"{{arm['name']}}.pid"), "w").write(str(os.getpid()))
    time.sleep(120)
matched.run_trajectory = slow
list(matched.run_units(None, [({{"name": "a"}}, 0), ({{"name": "b"}}, 0)], {{}}, {str(tmp_path)!r}, "", 2, 1))
"""
    run = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 2 and run.pid not in pids
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.time() + 20
        alive = pids
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid)]
        assert alive == [], "an orphaned worker went on training after its run was killed"
    finally:
        run.kill()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line for line in f if line.startswith("State:")).lower()
    except (OSError, StopIteration):
        return "zombie"


def test_matched_units_run_in_forked_workers_and_workers_is_checked(tmp_path, monkeypatch):
    matched = load_example("memcontrol_matched")
    calls = []

    def fake(setup, arm, seed, settings, results_dir, state_dir):
        (tmp_path / f"{arm['name']}_{seed}.pid").write_text(str(os.getpid()))
        calls.append((arm["name"], seed))

    monkeypatch.setattr(matched, "run_trajectory", fake)
    units = [({"name": "a"}, 0), ({"name": "b"}, 0), ({"name": "a"}, 1)]
    done = list(matched.run_units(None, units, {}, str(tmp_path), str(tmp_path), workers=2, threads=1))
    assert sorted(done) == ["a_seed0", "a_seed1", "b_seed0"] and calls == []  # the calls ran in the workers
    pids = {p.read_text() for p in tmp_path.glob("*.pid")}
    assert len(list(tmp_path.glob("*.pid"))) == 3 and str(os.getpid()) not in pids
    assert not matched._FORKED  # the inherited setup is not kept
    assert list(matched.run_units(None, units, {}, str(tmp_path), str(tmp_path), workers=1, threads=1)) == [
        "a_seed0",
        "b_seed0",
        "a_seed1",
    ]
    assert calls == [("a", 0), ("b", 0), ("a", 1)]
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="`workers` must be a whole number"):
            matched.main(output_dir=str(tmp_path / "unused"), small=True, workers=bad)
    assert not (tmp_path / "unused").exists()
    refused = run_example("memcontrol_matched", "--small", "--output-dir", str(tmp_path / "unused"), "--workers", "0")
    assert refused.returncode == 2 and "--workers must be >= 1" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "unused").exists()


def test_search_over_a_subset_of_groups_leaves_the_others_frozen():
    seen = []

    def train_fn(model, data, mask):
        seen.append({n.split(".lora_")[0].rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad})

    subset = ["model.layers.1.mlp", "model.layers.0.self_attn"]
    search = lm_search(n_trials=3, sampler="exhaustive", groups=subset, train_fn=train_fn, objective_kwargs={},
                       objectives={"a": lambda m: 0.0, "b": lambda m: 1.0})  # fmt: skip
    assert search.groups == ["model.layers.0.self_attn", "model.layers.1.mlp"]  # the model's order
    result = search.run()
    assert sorted(t.mask.key for t in result.trials) == ["01", "10", "11"]
    assert all(modules <= set(subset) for modules in seen) and set.union(*seen) == set(subset)
    with pytest.raises(ValueError, match=r"`groups` names \['model.layers.9.mlp'\]"):
        lm_search(groups=["model.layers.9.mlp"])


def test_evaluating_a_mask_twice_gives_the_same_values_whatever_the_global_seed():
    search = lm_search(n_trials=1)
    mask = MemControlMask(search.groups, [1, 0, 1, 1], lr=1e-2)
    torch.manual_seed(123)
    first = search.evaluate(mask)
    torch.manual_seed(999)
    assert search.evaluate(mask) == first


def tiny_pipeline(unet=None):
    """A pixel-space StableDiffusionPipeline around `tiny_unet()` with a tiny local CLIP text encoder (no VAE)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from hf_memory.data import word_level_tokenizer

    tokenizer = word_level_tokenizer(["a", "red", "blue", "square"], max_length=8)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=8, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
    ).eval()  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet or tiny_unet(), scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


# without a VAE the pipeline assumes a scale factor of 8: 64 x 64 "pixels" are 8 x 8 latents, the UNet's size
TINY_GENERATION = {"num_inference_steps": 2, "guidance_scale": 1.0, "height": 64, "width": 64, "output_type": "latent"}


def test_attack_runs_a_diffusers_pipeline_with_seeded_generations():
    pipe = tiny_pipeline()
    kwargs = TINY_GENERATION
    training = torch.rand(2, 3, 8, 8)
    first = diffusion_extraction_attack(pipe, ["a red square"], training, 3, tile_grid=2, generation_kwargs=kwargs)
    again = diffusion_extraction_attack(pipe, ["a red square"], training, 3, tile_grid=2, generation_kwargs=kwargs)
    assert first.training_distances == again.training_distances  # generation i always uses seed + i
    assert first.cluster_sizes[0] >= 1 and first.nearest_training[0] in (0, 1)


# ---------------------------------------------------------------- FID of generations (the "fid" objective)


def _fid_kwargs(pipe, **overrides):
    kwargs = {
        "pipeline": pipe,
        "prompts": ["a red square", "a blue square"],
        "reference_images": torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(3)),
        "feature_extractor": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # 3 features: mean colour
        "n_per_prompt": 4,
        "generation_kwargs": TINY_GENERATION,
    }
    kwargs.update(overrides)
    return kwargs


def test_generated_fid_is_the_frechet_distance_of_the_models_generations_and_puts_the_unet_back():
    pipe = tiny_pipeline()
    own_unet = pipe.unet
    model = tiny_unet(seed=5).train()
    kwargs = _fid_kwargs(pipe)
    value = generated_fid(model, **kwargs)
    assert pipe.unet is own_unet and model.training  # the pipeline's UNet and the model's mode are restored
    assert generated_fid(model, **kwargs) == value  # seeded generations
    # the same images by hand: the model in the pipeline, generation i of each prompt from seed i, [-1, 1] -> [0, 1]
    hand = tiny_pipeline(unet=tiny_unet(seed=5))
    images = []
    for prompt in kwargs["prompts"]:
        generators = [torch.Generator().manual_seed(i) for i in range(4)]
        out = hand([prompt] * 4, generator=generators, **TINY_GENERATION).images
        images.append(((torch.as_tensor(out) + 1) / 2).clamp(0, 1))
    expected = frechet_distance(torch.cat(images), kwargs["reference_images"], kwargs["feature_extractor"])
    assert value == pytest.approx(expected, rel=1e-6)
    assert generated_fid(tiny_unet(seed=6), **kwargs) != pytest.approx(value, rel=1e-3)  # another model, another FID


def test_generated_fid_restores_the_pipeline_on_an_interrupt_and_refuses_to_share_it():
    from hf_memory._utils import exclusive

    pipe = tiny_pipeline()
    own_unet = pipe.unet
    broken = tiny_unet(seed=5)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    broken.forward = interrupt
    with pytest.raises(KeyboardInterrupt):
        generated_fid(broken, **_fid_kwargs(pipe))
    assert pipe.unet is own_unet
    with exclusive(pipe, "another call"):  # e.g. a second thread scoring with the same pipeline
        with pytest.raises(RuntimeError, match="another call is already doing so"):
            generated_fid(tiny_unet(seed=5), **_fid_kwargs(pipe))
    assert pipe.unet is own_unet
    assert generated_fid(tiny_unet(seed=5), **_fid_kwargs(pipe)) > 0  # and the pipeline is free again


def test_generated_fid_bad_input():
    pipe = tiny_pipeline()
    model = tiny_unet()
    cases = [
        ({"pipeline": lambda prompt: None}, "`pipeline` must be a diffusers text-to-image pipeline"),
        ({"prompts": "a red square"}, "`prompts` must be a non-empty list of strings"),
        ({"prompts": []}, "`prompts` must be a non-empty list of strings"),
        ({"reference_images": torch.rand(1, 3, 8, 8)}, "`reference_images` must be a"),
        ({"feature_extractor": lambda x: x}, "`feature_extractor` must be a torch.nn.Module"),
        ({"n_per_prompt": 0}, "`n_per_prompt`"),
        ({"generation_kwargs": [("height", 64)]}, "`generation_kwargs` must be a dict"),
        ({"prompts": ["a red square"], "n_per_prompt": 1}, "at least 2 generated images"),
        ({"reference_images": torch.rand(4, 3, 16, 16)}, "generate at the reference size"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            generated_fid(model, **_fid_kwargs(pipe, **overrides))
    with pytest.raises(ValueError, match="`model` must be a torch.nn.Module"):
        generated_fid("unet", **_fid_kwargs(pipe))


def test_search_takes_fid_by_name_and_checks_its_arguments_before_training():
    def never(model, data, mask):
        raise AssertionError("trained")

    pipe = tiny_pipeline()
    fid = _fid_kwargs(pipe)
    search = MemControlSearch(
        tiny_unet, unet_data(4), unet_data(2, seed=1), objectives=["noise_magnitude", "fid"], n_trials=1,
        sampler="random", train_steps=1, batch_size=2, objective_kwargs={"fid": fid}, show_progress=False,
    )  # fmt: skip
    model = tiny_unet(seed=7)
    assert search.objectives["fid"](model) == generated_fid(model, **fid)
    result = search.run()
    assert result.objective_names == ["noise_magnitude", "fid"] and result.trials[0].values["fid"] > 0
    with pytest.raises(ValueError, match=r"missing: \['reference_images', 'feature_extractor'\]"):
        MemControlSearch(tiny_unet, unet_data(4), unet_data(2), objectives=["denoising_loss", "fid"], train_fn=never,
                         objective_kwargs={"fid": {"pipeline": pipe, "prompts": ["a"]}})  # fmt: skip
    with pytest.raises(TypeError, match=r"unexpected keyword argument \['steps'\]"):
        MemControlSearch(tiny_unet, unet_data(4), unet_data(2), objectives=["denoising_loss", "fid"], train_fn=never,
                         objective_kwargs={"fid": {**fid, "steps": 3}})  # fmt: skip
    with pytest.raises(ValueError, match="`n_per_prompt`"):
        MemControlSearch(tiny_unet, unet_data(4), unet_data(2), objectives=["denoising_loss", "fid"], train_fn=never,
                         objective_kwargs={"fid": {**fid, "n_per_prompt": -1}})  # fmt: skip


# ---------------------------------------------------------------- SV-Diff (spectral shifts)


def _shifts(model):
    """Layer name -> its SV-Diff parametrization, for every layer that has one."""
    from hf_memory.memcontrol.svdiff import SpectralShift

    return {
        name.removesuffix(".parametrizations.weight.0"): module
        for name, module in model.named_modules()
        if isinstance(module, SpectralShift)
    }


def _model_output(model, kind):
    with torch.no_grad():
        if kind == "unet":
            data = unet_data(2)
            return model(data["images"], torch.tensor([10, 700]), encoder_hidden_states=data["encoder_hidden_states"])
        return model(lm_data(2, 10)).logits


@pytest.mark.parametrize("kind", ["llama", "gpt2", "unet"])
def test_svdiff_at_zero_shift_is_bit_exact_and_adapts_every_layer_of_the_groups(kind):
    model = MODELS[kind]().eval()
    groups = maskable_groups(model)
    selected = list(groups)[::2]
    paths = [p for g in selected for p in groups[g]]
    layers = set(_linears(model, paths))
    weights = {name: model.get_submodule(name).weight.detach().clone() for name in layers}
    reference = _model_output(model, kind)
    mask = MemControlMask.for_model(model, selected, method="svdiff")
    assert mask.to_peft_config(model) is None  # peft has no SV-Diff
    model = mask.apply(model)
    assert set(_shifts(model)) == layers  # every linear / conv layer of the selected groups, nothing else
    output = _model_output(model, kind)
    if kind == "unet":
        reference, output = reference.sample, output.sample
    assert torch.equal(output, reference)  # bit for bit, not just close
    for name in layers:
        assert torch.equal(model.get_submodule(name).weight, weights[name])
        shift = _shifts(model)[name]
        assert not shift.U.requires_grad and not shift.S.requires_grad and not shift.Vh.requires_grad
        assert {n for n, _ in shift.named_buffers()} == {"U", "S", "Vh"}
    if kind == "unet":  # the transformers' proj_in / proj_out are 1x1 convolutions
        assert any(isinstance(model.get_submodule(name), nn.Conv2d) for name in layers)


@pytest.mark.parametrize(
    "layer",
    [nn.Linear(6, 4), nn.Linear(7, 1), nn.Conv2d(3, 5, 3), nn.Conv1d(4, 2, 3), "gpt2_conv1d"],
    ids=["linear", "linear_1xN", "conv2d", "conv1d", "gpt2_conv1d"],
)
def test_svdiff_shift_gives_u_relu_sigma_plus_delta_vt(layer):
    from transformers.pytorch_utils import Conv1D

    from hf_memory.memcontrol.svdiff import add_svdiff

    torch.manual_seed(0)
    if layer == "gpt2_conv1d":
        layer = Conv1D(nf=5, nx=3)  # weight stored (in, out) = (3, 5)
        nn.init.normal_(layer.weight)
    model = nn.Sequential(layer)
    weight = layer.weight.detach().clone()
    transposed = isinstance(layer, Conv1D)
    matrix = (weight.t() if transposed else weight.reshape(weight.shape[0], -1)).double()
    add_svdiff(model, ["0"])
    shift = _shifts(model)["0"]
    rank = min(matrix.shape)
    assert shift.svdiff_delta.shape == (rank,) and torch.equal(shift.svdiff_delta, torch.zeros(rank))
    with torch.no_grad():
        shift.svdiff_delta.copy_(torch.linspace(-3.0, 0.5, rank))  # the largest shifts push σ below 0: ReLU clamps
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)  # an independent float64 SVD
    expected = u @ torch.diag(torch.relu(s + shift.svdiff_delta.double())) @ vh
    expected = expected.t() if transposed else expected.reshape(weight.shape)
    torch.testing.assert_close(layer.weight.double(), expected, atol=1e-5, rtol=1e-5)
    assert not torch.equal(layer.weight, weight)
    # and exactly W + U diag(ReLU(σ + δ) − σ) Vᵀ with the stored (float32) factors
    update = (shift.U * (torch.relu(shift.S + shift.svdiff_delta) - shift.S)) @ shift.Vh
    assert torch.equal(layer.weight, weight + (update.t() if transposed else update.reshape(weight.shape)))
    torch.testing.assert_close(shift.U @ torch.diag(shift.S) @ shift.Vh, matrix.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(layer.parametrizations.weight.original, weight)  # the original weight is kept, unchanged


def test_svdiff_training_changes_only_the_selected_deltas():
    model = tiny_causal_lm("llama")
    mask = MemControlMask.for_model(model, ["model.layers.0.mlp", "model.layers.1.self_attn"], method="svdiff")
    model = mask.apply(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".svdiff_delta") for n in trainable)
    assert {n.split(".parametrizations.")[0] for n in trainable} == {
        *(f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")),
        *(f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"),
    }
    before = {n: t.detach().clone() for n, t in itertools.chain(model.named_parameters(), model.named_buffers())}
    _train_steps(model, "lm")
    after = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    changed = {n for n, t in after.items() if not torch.equal(t, before[n])}
    assert changed == trainable  # every delta moved; weights, U, σ, V and everything else are bit-identical
    layer = model.model.layers[0].mlp.up_proj
    assert not torch.equal(layer.weight, layer.parametrizations.weight.original)  # the effective weight moved


def test_svdiff_count_parameters_json_round_trip_and_refusals(tmp_path):
    model = tiny_causal_lm("llama")
    total = sum(p.numel() for p in model.parameters())
    mask = MemControlMask.for_model(model, ["model.layers.0.mlp"], method="svdiff", lr=3e-4)
    # gate/up: 32 x 16, down: 16 x 32 -> 16 singular values each
    assert count_parameters(mask.apply(model)) == (3 * 16, total)
    mask.save_pretrained(tmp_path)
    loaded = MemControlMask.from_pretrained(tmp_path)
    assert loaded == mask and loaded.method == "svdiff" and loaded.to_dict() == mask.to_dict()
    fresh = loaded.apply(tiny_causal_lm("llama", seed=1))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == set(mask.trainable_names(model))
    with pytest.raises(ValueError, match="already holds LoRA, IA3 or SV-Diff parameters"):
        mask.apply(model)
    with pytest.raises(ValueError, match="already holds LoRA, IA3 or SV-Diff parameters"):
        MemControlMask.for_model(model, ["model.layers.1.mlp"]).apply(model)  # LoRA on top of SV-Diff
    lora = MemControlMask.for_model(model, ["model.layers.1.mlp"]).apply(tiny_causal_lm("llama"))
    with pytest.raises(ValueError, match="already holds LoRA"):
        mask.apply(lora)  # SV-Diff on top of LoRA
    with pytest.raises(ValueError, match="torch.nn.Module"):
        mask.apply("model")


def test_svdiff_runs_forward_backward_in_bf16_and_in_module_granularity():
    model = tiny_causal_lm("gpt2").eval().to(torch.bfloat16)
    reference = _model_output(model, "gpt2")
    mask = MemControlMask.for_model(model, ["transformer.h.1.mlp.c_fc"], method="svdiff", granularity="module")
    model = mask.apply(model)
    assert torch.equal(_model_output(model, "gpt2"), reference)
    shift = _shifts(model)["transformer.h.1.mlp.c_fc"]
    assert shift.svdiff_delta.dtype == shift.U.dtype == torch.bfloat16 and shift.transposed
    data = lm_data(2, 10)
    model(input_ids=data, labels=data).loss.backward()
    assert shift.svdiff_delta.grad is not None and shift.svdiff_delta.grad.abs().sum() > 0
    # the adapted model's groups are still read correctly (GPT-2's Conv1D is now a ParametrizedConv1D)
    assert list(maskable_groups(model, "module")) == list(maskable_groups(tiny_causal_lm("gpt2"), "module"))


def test_svdiff_refuses_layers_it_cannot_decompose():
    from hf_memory.memcontrol.svdiff import add_svdiff

    with pytest.raises(ValueError, match="SV-Diff adapts linear and convolution layers"):
        add_svdiff(nn.Sequential(nn.LayerNorm(3)), ["0"])
    with pytest.raises(ValueError, match="has no module 'nope'"):
        add_svdiff(nn.Sequential(nn.Linear(2, 2)), ["nope"])
    with pytest.raises(ValueError, match="`targets` must be a list of module names"):
        add_svdiff(nn.Sequential(nn.Linear(2, 2)), "0")
    broken = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'1' holds NaN or infinite values"):
        add_svdiff(broken, ["0", "1"])
    assert not hasattr(broken[0], "parametrizations")  # checked before anything changed
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="already has a parametrization"):
        add_svdiff(normed, ["0"])
    quantized = nn.Sequential(nn.Linear(2, 2))
    quantized[0].weight = nn.Parameter(torch.ones(2, 2, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match="SV-Diff needs floating-point weights"):
        add_svdiff(quantized, ["0"])


def test_search_with_svdiff():
    result = lm_search(n_trials=2, sampler="random", method="svdiff").run()
    assert result.trials and all(t.mask.method == "svdiff" for t in result.trials)
    assert all(t.peft_config is None and 0 < t.trainable_fraction < 0.05 for t in result.trials)
    for trial in result.trials:
        model = trial.mask.apply(tiny_causal_lm("llama"))
        assert trial.trainable_parameters == count_parameters(model)[0]
        assert all(np.isfinite(v) for v in trial.values.values())


# ---------------------------------------------------------------- settings recorded in a study / a result


def _no_training(model, data, mask):
    pass


def _trainable_objectives():
    return {"trainable": lambda m: float(count_parameters(m)[0]), "heldout": lambda m: 0.0}


def test_a_stored_study_refuses_to_resume_with_other_settings(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = {"storage": storage, "study_name": "s", "train_fn": _no_training, "objectives": _trainable_objectives(),
              "objective_kwargs": {}, "n_trials": 1, "sampler": "random"}  # fmt: skip
    first = lm_search(method="lora", lr=1e-4, mask_kwargs={"lora_r": 2}, **common).run()
    changed = [
        ({"method": "full", "lr": 1e-4, "mask_kwargs": {"lora_r": 2}}, r"method: 'lora' there, 'full' now"),
        ({"lr": 5e-2, "mask_kwargs": {"lora_r": 2}}, r"lr: 0.0001 there, 0.05 now"),
        ({"lr": (1e-4, 1e-2), "mask_kwargs": {"lora_r": 2}}, r"lr: 0.0001 there, \[0.0001, 0.01\] now"),
        ({"lr": 1e-4, "mask_kwargs": {"lora_r": 8}}, "mask_fields"),
        ({"lr": 1e-4, "mask_kwargs": {"lora_r": 2}, "seed": 1}, "seed: 0 there, 1 now"),
        ({"lr": 1e-4, "mask_kwargs": {"lora_r": 2}, "val_data": lm_data(3, 12, seed=2)}, "val_data"),
    ]
    for settings, message in changed:
        with pytest.raises(ValueError, match=f"was run with other settings: {message}"):
            lm_search(**{**common, **settings, "n_trials": 2}).run()
    # the same settings resume, and a list of ids counts as the same data as a tensor of them
    resumed = lm_search(method="lora", lr=1e-4, mask_kwargs={"lora_r": 2}, **{**common, "n_trials": 2},
                        val_data=lm_data(3, 12, seed=1).tolist()).run()  # fmt: skip
    assert resumed.trials[0].values == first.trials[0].values and len(resumed.trials) >= 1
    # a study without the record (an older version, or written by hand) is refused once it holds trials
    legacy = optuna.create_study(storage=storage, study_name="legacy", directions=["minimize", "minimize"])
    legacy.enqueue_trial({})
    with pytest.raises(ValueError, match="no record of the MemControlSearch settings"):
        lm_search(**{**common, "study_name": "legacy"}).run()


def test_cache_reuses_only_masks_equal_in_every_field_and_refuses_other_settings():
    calls = []

    def train_fn(model, data, mask):
        calls.append((mask.method, mask.key))

    layer0 = ["model.layers.0.self_attn", "model.layers.0.mlp"]
    layer1 = ["model.layers.1.self_attn", "model.layers.1.mlp"]
    common = {"train_fn": train_fn, "objectives": _trainable_objectives(), "objective_kwargs": {}}
    cache = lm_search(sampler="exhaustive", groups=layer0, **common).run()
    calls.clear()
    with pytest.warns(UserWarning, match="3 of its 3 trials have other groups"):
        search = lm_search(sampler="exhaustive", groups=layer1, method="full", cache=cache, **common)
    result = search.run()
    assert sorted(calls) == [("full", "01"), ("full", "10"), ("full", "11")]  # nothing reused from another mask
    for trial in result.trials:
        assert trial.values["trainable"] == count_parameters(trial.mask.apply(tiny_causal_lm("llama")))[0]
    calls.clear()
    again = lm_search(sampler="exhaustive", groups=layer1, method="full", cache=result, **common).run()
    assert calls == [] and again.num_trained == 0  # the same fields: reused
    with pytest.raises(ValueError, match="`cache` was made with other settings: val_data"):
        lm_search(sampler="exhaustive", groups=layer1, method="full", cache=result, val_data=lm_data(3, 12, seed=9),
                  **common)  # fmt: skip


# ---------------------------------------------------------------- objectives of the search


def test_a_renamed_builtin_objective_takes_its_kwargs():
    data = lm_data(6, 12)
    kwargs = {"prefix_len": 4, "suffix_len": 4}
    model = tiny_causal_lm("llama")
    expected = extraction_rate(model, data, 4, 4)
    for key in ("mem", "extraction"):  # its name in this search, or its built-in name
        search = lm_search(objectives={"mem": "extraction", "quality": "heldout_loss"}, train_fn=_no_training,
                           objective_kwargs={key: kwargs})  # fmt: skip
        assert search.objectives["mem"](model) == expected  # the default 32 + 32 window would not fit 12 tokens
    with pytest.raises(ValueError, match="under both 'mem' and 'extraction'"):
        lm_search(objectives={"mem": "extraction", "quality": "heldout_loss"}, train_fn=_no_training,
                  objective_kwargs={"mem": kwargs, "extraction": kwargs})  # fmt: skip


def test_objectives_with_the_same_name_or_a_non_string_name_are_refused():
    first, second = (lambda m: 1.0), (lambda m: 2.0)
    with pytest.raises(ValueError, match="Objectives 1 and 2 are both named '<lambda>'"):
        lm_search(objectives=["heldout_loss", first, second], train_fn=_no_training)
    with pytest.raises(ValueError, match="Objectives 0 and 1 are both named 'heldout_loss'"):
        lm_search(objectives=["heldout_loss", "heldout_loss", first], train_fn=_no_training)
    with pytest.raises(ValueError, match="names must be non-empty strings, got \\[0, 1\\]"):
        lm_search(objectives={0: "heldout_loss", 1: first}, train_fn=_no_training)
    search = lm_search(objectives={"one": first, "two": second}, train_fn=_no_training, objective_kwargs={})
    assert {name: f(None) for name, f in search.objectives.items()} == {"one": 1.0, "two": 2.0}
    with pytest.raises(ValueError, match="a callable objective takes no arguments from it"):
        lm_search(objectives={"one": first, "two": second}, train_fn=_no_training, objective_kwargs={"one": {"x": 1}})


def test_search_checks_every_objective_argument_before_training():
    def never(model, data, mask):
        raise AssertionError("trained")

    lm_cases = [
        (
            {"objective_kwargs": {"extraction": {"prefix": 8}}},
            r"`extraction_rate`\) got unexpected keyword argument \['prefix'\]; it takes",
        ),
        ({"objective_kwargs": {}}, "prefix_len \\+ suffix_len = 64 tokens"),  # the default window, 12-token data
        ({"val_data": torch.randint(0, 1000, (3, 12))}, "`val_data` holds token id .* outside the model's vocab"),
        ({"val_data": [[5], [6]]}, "`val_data` has no sequence of 2 or more tokens"),
        (
            {"objective_kwargs": {"extraction": {"prefix_len": 6, "suffix_len": 6}, "heldout_loss": {"batch": 2}}},
            r"`causal_lm_loss`\) got unexpected keyword argument \['batch'\]; it takes \['batch_size'\]",
        ),
    ]
    for overrides, message in lm_cases:
        with pytest.raises(TypeError if "keyword" in message else ValueError, match=message):
            lm_search(**{"train_fn": never, **overrides})
    data = unet_data(4)
    unet_cases = [
        ({"objective_kwargs": {"noise_magnitude": {"num_noises": 2}}}, r"keyword argument \['num_noises'\]"),
        ({"objective_kwargs": {"denoising_loss": {"timestep": [10]}}}, r"keyword argument \['timestep'\]"),
        ({"objective_kwargs": {"noise_magnitude": {"timesteps": [1000]}}}, r"integers in \[0, 999\]"),
        ({"memorization_data": {**data, "empty_hidden_states": torch.zeros(7, 8)}}, "`empty_hidden_states` has shape"),
        ({"memorization_data": {**data, "encoder_hidden_states": data["encoder_hidden_states"].numpy()}},
         "`encoder_hidden_states` must be a \\(P, L, D\\) floating-point tensor"),
    ]  # fmt: skip
    for overrides, message in unet_cases:
        with pytest.raises(TypeError if "keyword" in message else ValueError, match=message):
            MemControlSearch(tiny_unet, data, unet_data(2, seed=1), **{"train_fn": never, **overrides})


# ---------------------------------------------------------------- determinism, modes, dtypes and models


def test_evaluating_a_mask_with_dropout_is_deterministic_and_leaves_the_global_rng_alone():
    search = lm_search(n_trials=1, train_steps=3, mask_kwargs={"lora_dropout": 0.5})
    mask = MemControlMask(search.groups, [1, 1, 1, 1], lr=1e-2, lora_dropout=0.5)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = search.evaluate(mask)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is not consumed
    torch.manual_seed(2)
    assert search.evaluate(mask) == first  # dropout masks are drawn from the trial's seed, not the global state


def test_apply_keeps_the_models_modes_on_its_new_modules():
    for method in ("lora", "scale_bias", "svdiff"):
        model = tiny_causal_lm("llama").eval()
        MemControlMask.for_model(model, method=method, lora_dropout=0.5).apply(model)
        assert not any(m.training for m in model.modules()), method
    model = tiny_causal_lm("llama").eval()
    MemControlMask.for_model(model, lora_dropout=0.5).apply(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # trained adapter weights: dropout would now change the output
    ids = lm_data(2, 8)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
    trained = MemControlMask.for_model(tiny_causal_lm("llama").train(), lora_dropout=0.5).apply(
        tiny_causal_lm("llama").train()
    )
    assert all(m.training for m in trained.modules())  # a model in train mode: its adapters train too


def test_the_diffusion_functions_take_a_half_precision_unet():
    data = unet_data(4)
    reference = tiny_unet()
    expected = denoising_loss(reference, data, timesteps=[500])
    for dtype in (torch.bfloat16, torch.float16):
        unet = tiny_unet().to(dtype)
        assert denoising_loss(unet, data, timesteps=[500]) == pytest.approx(expected, rel=0.05)
        value = noise_magnitude(
            unet, data["encoder_hidden_states"].to(dtype), data["empty_hidden_states"], num_noise=1
        )
        assert np.isfinite(value) and value > 0
        if dtype == torch.bfloat16:  # (pure fp16 AdamW needs loss scaling, which this short loop does not do)
            mask = MemControlMask.for_model(unet, lr=1e-3)
            losses = train_unet(mask.apply(unet), data, mask, steps=2, batch_size=2)
            assert all(np.isfinite(losses))
            trainable = [p for p in unet.parameters() if p.requires_grad]
            assert trainable and all(p.dtype == dtype for p in trainable)


def _tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=3, out_channels=6, num_layers=2,
        cross_attention_dim=8, sample_size=8, patch_size=2, norm_num_groups=1, caption_channels=8,
        use_additional_conditions=False,
    )  # fmt: skip


def test_the_default_loop_and_objectives_call_a_text_conditioned_dit_and_refuse_other_dits():
    from diffusers import DiTTransformer2DModel

    dit = _tiny_pixart()
    data = unet_data(4)
    assert noise_magnitude(dit, data["encoder_hidden_states"], data["empty_hidden_states"], num_noise=1) > 0
    assert denoising_loss(dit, data, timesteps=[500]) > 0
    from hf_memory.memcontrol.training import predict_noise

    x, t, text = data["images"][:2], torch.tensor([10, 500]), data["encoder_hidden_states"][:2]
    with torch.no_grad():
        full = dit(x, encoder_hidden_states=text, timestep=t).sample  # learned variance: 6 channels for 3
        assert torch.equal(predict_noise(dit, x, t, text), full[:, :3])
    result = MemControlSearch(_tiny_pixart, data, unet_data(2, seed=1), n_trials=1, sampler="random", train_steps=1,
                              batch_size=2, objective_kwargs={"noise_magnitude": {"num_noise": 1}},
                              show_progress=False).run()  # fmt: skip
    assert len(result.trials) == 1 and all(np.isfinite(v) for v in result.trials[0].values.values())
    class_conditional = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=3, out_channels=3, num_layers=1, sample_size=8,
        patch_size=2, norm_num_groups=1, num_embeds_ada_norm=10,
    )  # fmt: skip
    with pytest.raises(ValueError, match="DiTTransformer2DModel.*cannot be called by the default training loop"):
        MemControlSearch(class_conditional, data, unet_data(2, seed=1))
    with pytest.raises(ValueError, match="cannot be called by the default training loop"):
        denoising_loss(class_conditional, data)
    MemControlSearch(class_conditional, data, unet_data(2, seed=1), train_fn=_no_training,
                     objectives={"a": lambda m: 0.0, "b": lambda m: 1.0})  # fmt: skip  # your own calls: accepted


def test_training_gives_every_module_its_mode_back_without_grads_when_interrupted():
    model = tiny_causal_lm("llama").eval()
    mask = MemControlMask.for_model(model, lr=1e-2)
    mask.apply(model)
    model.model.layers[1].train()  # a submodule in another mode than its parent
    modes = [m.training for m in model.modules()]
    calls, seen = [], []

    def interrupt(module, args):
        calls.append(1)
        seen.append(module.training)
        if len(calls) == 2:
            raise KeyboardInterrupt

    handle = model.model.layers[0].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(model, lm_data(), mask, steps=4, batch_size=2)
    handle.remove()
    assert seen == [True, True]  # trained in train mode
    assert [m.training for m in model.modules()] == modes and all(p.grad is None for p in model.parameters())
    train_causal_lm(model, lm_data(), mask, steps=1, batch_size=2)  # not left held
    assert [m.training for m in model.modules()] == modes and all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- masks


def test_scale_bias_refuses_conv1d_layers_before_changing_the_model_and_a_failed_inject_is_undone(monkeypatch):
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.conv = nn.Linear(8, 8), nn.Conv1d(8, 8, 1)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.mlp = Attention(), Mlp()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

    model = Model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"cannot adapt the nn.Conv1d layers \['layers.0.mlp.conv', 'layers.1.mlp"):
        MemControlMask.for_model(model, method="scale_bias").apply(model)
    assert {n for n, _ in model.named_parameters()} == set(before)  # nothing injected
    # a failure inside peft half-way: the layers already replaced are put back
    from peft.tuners.lora import LoraModel

    create = LoraModel._create_and_replace
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injection failed")
        return create(self, *args, **kwargs)

    monkeypatch.setattr(LoraModel, "_create_and_replace", failing)
    with pytest.raises(RuntimeError, match="injection failed"):
        MemControlMask.for_model(model).apply(model)
    monkeypatch.undo()
    assert {n for n, _ in model.named_parameters()} == set(before)
    assert all(type(m) in (Model, nn.ModuleList, Layer, Attention, Mlp, nn.Linear, nn.Conv1d) for m in model.modules())
    MemControlMask.for_model(model, ["layers.0.self_attn"]).apply(model)  # the model can be masked again


def test_for_model_refuses_a_string_and_reads_a_generator_once():
    model = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match=r"got the string 'model.layers.0.mlp': write \['model.layers.0.mlp'\]"):
        MemControlMask.for_model(model, "model.layers.0.mlp")
    assert MemControlMask.for_model(model, (g for g in ["model.layers.0.mlp"])).bits == [0, 1, 0, 0]
    with pytest.raises(ValueError, match=r"do not pass \['groups'\]"):
        MemControlMask.for_model(model, None, groups=["a"])


def test_apply_refuses_a_model_another_call_is_changing():
    from hf_memory._utils import exclusive

    model = tiny_causal_lm("llama")
    with exclusive(model, "another call"):  # e.g. a second thread applying another mask
        with pytest.raises(RuntimeError, match="another call is already doing so"):
            MemControlMask.for_model(model, ["model.layers.0.mlp"]).apply(model)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    MemControlMask.for_model(model, ["model.layers.0.mlp"]).apply(model)


# ---------------------------------------------------------------- results and studies


def test_save_keeps_the_previous_file_when_interrupted(tmp_path, monkeypatch):
    from hf_memory.memcontrol import MemControlTrial

    groups = ["a", "b"]
    trials = [MemControlTrial(i, MemControlMask(groups, bits), {"x": float(i), "y": 1.0 - i}, 10, 0.1)
              for i, bits in enumerate([[1, 0], [0, 1], [1, 1]])]  # fmt: skip
    result = MemControlResult(["x", "y"], trials, trials[:1], "s")
    path = tmp_path / "result.json"
    result.save(path)
    saved = path.read_text()
    to_dict = MemControlTrial.to_dict
    calls = []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return to_dict(self)

    monkeypatch.setattr(MemControlTrial, "to_dict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        result.save(path)
    assert path.read_text() == saved and os.listdir(tmp_path) == ["result.json"]
    assert [t.values for t in MemControlResult.load(path).trials] == [t.values for t in trials]


def test_result_of_an_in_memory_search_holds_the_trials_of_its_run():
    calls = []

    def interrupted(model, data, mask):
        calls.append(mask.key)
        if len(calls) == 3:
            raise KeyboardInterrupt

    search = lm_search(n_trials=4, sampler="random", train_fn=interrupted, objectives=_trainable_objectives(),
                       objective_kwargs={})  # fmt: skip
    with pytest.raises(ValueError, match="no study yet"):
        search.result()
    with pytest.raises(KeyboardInterrupt):
        search.run()
    assert len(search.result().trials) == 2  # the trials completed before the interrupt
    assert len(search.run().trials) + sum(t.state.name == "PRUNED" for t in search._study().trials) == 4  # continued


def test_seed_is_checked_and_the_resumed_samplers_seed_wraps(tmp_path):
    for seed in (-1, 2**32, True):
        with pytest.raises(ValueError, match=r"`seed` must be an integer"):
            lm_search(seed=seed, train_fn=_no_training)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = {"storage": storage, "study_name": "s", "seed": 2**32 - 1, "sampler": "random", "train_fn": _no_training,
              "objectives": _trainable_objectives(), "objective_kwargs": {}}  # fmt: skip
    lm_search(n_trials=1, **common).run()
    assert len(lm_search(n_trials=2, **common).run().trials) >= 1  # the resumed sampler's seed 2**32 wraps to 0


def _add_trial_of_another_process(study, groups, bits, values, state="COMPLETE", host="another-machine"):
    distributions = {g: optuna.distributions.IntDistribution(0, 1) for g in groups}
    params = dict(zip(groups, bits))
    if state == "COMPLETE":
        attrs = {"trainable_parameters": 1, "total_parameters": 10}
        trial = optuna.trial.create_trial(params=params, distributions=distributions, values=values, user_attrs=attrs)
        study.add_trial(trial)
        return None
    study.enqueue_trial(params)
    trial = study.ask()  # RUNNING, holding the mask
    for group in groups:
        trial.suggest_int(group, 0, 1)
    trial.set_user_attr("host", host)
    trial.set_user_attr("pid", 1)
    return trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask()
def test_processes_sharing_a_study_never_overshoot_n_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []
    groups = ["model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn", "model.layers.1.mlp"]

    def train_fn(model, data, mask):
        calls.append(mask.key)
        if len(calls) == 1:  # meanwhile, another process completes two trials
            other = optuna.load_study(study_name="s", storage=storage)
            for bits in ([1, 0, 0, 0], [0, 1, 0, 0]):
                _add_trial_of_another_process(other, groups, bits, [1.0, 2.0])

    common = {"storage": storage, "study_name": "s", "sampler": "random", "train_fn": train_fn,
              "objectives": _trainable_objectives(), "objective_kwargs": {}}  # fmt: skip
    lm_search(n_trials=3, **common).run()
    study = optuna.load_study(study_name="s", storage=storage)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3 and len(calls) <= 1
    # a trial still running elsewhere takes a slot: this process stops short, and says why
    _add_trial_of_another_process(study, groups, [0, 0, 1, 0], None, state="RUNNING", host="node-a")
    calls.clear()
    with pytest.warns(UserWarning, match=r"holds 4 finished trials of n_trials=5; still running elsewhere: trial \d+ "
                                         r"\(mask 0010, host 'node-a'"):  # fmt: skip
        lm_search(n_trials=5, **common).run()
    study = optuna.load_study(study_name="s", storage=storage)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 4


def test_an_enumeration_shared_with_another_process_trains_each_mask_once(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    groups = ["model.layers.0.self_attn", "model.layers.0.mlp"]
    calls = []

    def train_fn(model, data, mask):
        calls.append(mask.key)
        if len(calls) == 1:  # another process completed mask 11 (queued here too) and queued 01 again
            other = optuna.load_study(study_name="s", storage=storage)
            _add_trial_of_another_process(other, groups, [1, 1], [1.0, 2.0])
            other.enqueue_trial(dict(zip(groups, [0, 1])))

    result = lm_search(sampler="exhaustive", groups=groups, storage=storage, study_name="s", train_fn=train_fn,
                       objectives=_trainable_objectives(), objective_kwargs={}).run()  # fmt: skip
    assert sorted(calls) == ["01", "10"]  # 11 was not trained again
    assert sorted(t.mask.key for t in result.trials) == ["01", "10", "11"]  # each mask once


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own ask()
def test_a_trial_killed_on_another_machine_is_failed_by_its_heartbeat(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(MemControlSearch, "HEARTBEAT_INTERVAL", 1, raising=False)
    monkeypatch.setattr(MemControlSearch, "GRACE_PERIOD", 1, raising=False)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    groups = ["model.layers.0.self_attn", "model.layers.0.mlp"]
    resumed = []
    common = {"sampler": "exhaustive", "groups": groups, "storage": storage, "objectives": _trainable_objectives(),
              "objective_kwargs": {}, "train_fn": lambda m, d, mask: resumed.append(mask.key)}  # fmt: skip
    search = lm_search(study_name="beating", **common)
    study = search._study()
    killed = _add_trial_of_another_process(study, groups, [1, 0], None, state="RUNNING", host="node-a")
    study._storage.record_heartbeat(killed._trial_id)  # its last heartbeat, then the machine went away
    time.sleep(2.5)
    result = search.run()
    assert sorted(t.mask.key for t in result.trials) == ["01", "10", "11"] and "10" in resumed
    assert optuna.load_study(study_name="beating", storage=storage).trials[killed.number].state.name == "FAIL"
    # a trial without a heartbeat (an older run) cannot be judged: the result says which mask it holds
    search = lm_search(study_name="silent", **common)
    _add_trial_of_another_process(search._study(), groups, [0, 1], None, state="RUNNING", host="node-a")
    with pytest.warns(UserWarning, match=r"1 of the 4 masks \(01\) are not evaluated yet; still running elsewhere"):
        result = search.run()
    assert sorted(t.mask.key for t in result.trials) == ["10", "11"]


# ---------------------------------------------------------------- objectives and the attack, input checks


def test_noise_magnitude_refuses_integer_images_and_unclear_inputs():
    unet = tiny_unet()
    data = unet_data(2)
    text, empty = data["encoder_hidden_states"], data["empty_hidden_states"]
    images = data["images"]
    assert noise_magnitude(unet, text, empty, images=images.double(), num_noise=1) == pytest.approx(
        noise_magnitude(unet, text, empty, images=images, num_noise=1), rel=1e-6
    )
    cases = [
        ({"images": (images * 127 + 128).to(torch.uint8)}, "`images` must be floating point"),
        ({"empty_hidden_states": empty.numpy()}, "`empty_hidden_states` must be the empty prompt's embedding"),
        ({"empty_hidden_states": torch.zeros(2, 4, 8)}, r"give \(L, D\) or \(1, L, D\)"),
        ({"encoder_hidden_states": text[:0]}, "with P >= 1"),
        ({"timesteps": 999.0}, "`timesteps` must be an integer >= 0, got 999.0"),
        ({"unet": nn.Identity()}, "cannot be called by the default training loop"),
    ]
    for overrides, message in cases:
        arguments = {"unet": unet, "encoder_hidden_states": text, "empty_hidden_states": empty, **overrides}
        with pytest.raises(ValueError, match=message):
            noise_magnitude(**arguments)


def test_causal_lm_loss_refuses_sequences_without_a_token_to_predict():
    with pytest.raises(ValueError, match="has no sequence of 2 or more tokens"):
        causal_lm_loss(tiny_causal_lm("llama"), [[5], [6]])
    assert causal_lm_loss(tiny_causal_lm("llama"), [[5], [6, 7]]) > 0  # one predicted token is enough


def test_tile_distance_of_identical_images_is_zero_and_exact_copies_are_extracted():
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).expand(50, -1, -1, -1)
    assert tile_distance(images, images).max().item() == 0.0  # more than 25 rows: cdist's matrix form cancels badly
    result = diffusion_extraction_attack(lambda p, n, s: images[:n], ["copy"], images[:1], n_generations=50,
                                         threshold=1e-4)  # fmt: skip
    assert result.cluster_sizes == [50] and result.extracted == [True]


def test_attack_reads_prompts_once_and_checks_the_samplers_images():
    training = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def sampler(prompt, n, seed):
        return training[:1].expand(n, -1, -1, -1)

    result = diffusion_extraction_attack(sampler, (p for p in ["a", "b"]), training, n_generations=4)
    assert result.prompts == ["a", "b"] and result.cluster_sizes == [4, 4]
    assert diffusion_extraction_attack(sampler, np.array(["a"]), training, n_generations=4).prompts == ["a"]
    bad_samplers = [
        (lambda p, n, s: training[:1].expand(2, -1, -1, -1), r"shape \(2, 3, 8, 8\) .* expected \(4, C, H, W\)"),
        (lambda p, n, s: training[:1].expand(n, -1, -1, -1) * 255, r"range over \[.*\]; the attack compares images in"),
        (lambda p, n, s: torch.full((n, 3, 8, 8), float("nan")), "hold NaN or infinite values"),
    ]  # fmt: skip
    for bad, message in bad_samplers:
        with pytest.raises(ValueError, match=message):
            diffusion_extraction_attack(bad, ["a"], training, n_generations=4)
    with pytest.raises(ValueError, match="M >= 1 images"):
        diffusion_extraction_attack(sampler, ["a"], training[:0], n_generations=4)


# ---------------------------------------------------------------- the shared training loop changes no number


def _loop_before_the_shared_loop(model, lr, steps, seed, max_grad_norm, lr_scheduler, warmup_steps, step_loss):
    """MemControl's own `_run_steps` as it was before the loop moved to `hf_memory._utils.training` (frozen)."""
    from transformers import get_scheduler

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        loss = step_loss(generator, next(model.parameters()).device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return losses


def _old_unet_step_loss(model, data, batch_size):
    from hf_memory.memcontrol.training import default_noise_scheduler, predict_noise

    images, text, scheduler = data["images"].float(), data["encoder_hidden_states"].float(), default_noise_scheduler()

    def step_loss(generator, device):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        batch = images[index]
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(batch, noise, timesteps)
        return torch.nn.functional.mse_loss(predict_noise(model, noisy, timesteps, text[index]), noise.to(device))

    return step_loss


def _old_lm_step_loss(model, data, batch_size):
    from hf_memory.memcontrol.training import lm_batch

    sequences = list(data)

    def step_loss(generator, device):
        index = torch.randint(len(sequences), (batch_size,), generator=generator).tolist()
        return model(**lm_batch([sequences[i] for i in index], device), use_cache=False).loss

    return step_loss


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("unet", {"max_grad_norm": 1.0, "lr_scheduler": "constant", "warmup_steps": 0, "seed": 3}),
        ("lm", {"max_grad_norm": None, "lr_scheduler": "cosine", "warmup_steps": 2, "seed": 0}),
        ("lm", {"max_grad_norm": 0.5, "lr_scheduler": "linear", "warmup_steps": 1, "seed": 7}),
    ],
)
def test_the_inner_loops_give_the_losses_and_weights_of_the_loop_they_had_before(kind, settings):
    """Fixed seeds, LoRA dropout (drawn from the global RNG): every step's loss and every final weight equal, bit for
    bit, those of the loop MemControl had before the shared loop."""
    build = tiny_unet if kind == "unet" else (lambda: tiny_causal_lm("gpt2"))
    data = unet_data(6) if kind == "unet" else lm_data(6, 12)
    models = []
    for _ in range(2):
        model = build()
        mask = MemControlMask.for_model(model, lr=1e-2, lora_dropout=0.3)
        models.append(mask.apply(model))
    reference, model = models
    step_loss = (_old_unet_step_loss if kind == "unet" else _old_lm_step_loss)(reference, data, 3)
    torch.manual_seed(5)
    expected = _loop_before_the_shared_loop(reference, 1e-2, 5, step_loss=step_loss, **settings)
    torch.manual_seed(5)
    train = train_unet if kind == "unet" else train_causal_lm
    assert train(model, data, mask, steps=5, batch_size=3, **settings) == expected
    for (name, trained), (_, ref) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(trained, ref), name


# ---------------------------------------------------------------- the model is known by its weights (issue 30 B7, B8)


def _unseeded_llama():
    """A factory that does not seed itself: the search seeds the global RNG, so every call builds the same model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))  # fmt: skip


def test_a_stored_study_refuses_another_checkpoint_of_the_same_architecture(tmp_path):
    """B7: the study recorded the model as class and size only, so a checkpoint with other weights resumed it and
    the result reported the first model's values as its own."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = {"storage": storage, "study_name": "s", "train_fn": _no_training, "objectives": _trainable_objectives(),
              "objective_kwargs": {}, "sampler": "random"}  # fmt: skip
    lm_search(model_factory=_unseeded_llama, n_trials=1, **common).run()
    resumed = lm_search(model_factory=_unseeded_llama, n_trials=2, **common)  # a factory the search seeds: the same
    assert len(resumed.run().trials) == 2

    def other_checkpoint():
        torch.manual_seed(1)
        return _unseeded_llama()

    other = lm_search(model_factory=other_checkpoint, n_trials=3, **common)
    with pytest.raises(ValueError, match=r"other settings: model weights_sha256: '[0-9a-f]{64}' there, "
                                         r"'[0-9a-f]{64}' now \(other weights: another checkpoint"):  # fmt: skip
        other.run()
    changed = _unseeded_llama()
    with torch.no_grad():
        changed.model.norm.weight[0] += 1  # one weight
    with pytest.raises(ValueError, match="model weights_sha256"):
        lm_search(model_factory=changed, n_trials=3, **common).run()
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.user_attrs["memcontrol_settings"]["config"] == {
        **resumed.config.to_dict(),
        "n_trials": 1,
    }  # the first


def test_the_same_checkpoint_from_another_folder_or_library_release_resumes_the_study(tmp_path):
    """The identity is what the model computes: not the folder it was loaded from, nor the transformers release
    that wrote its config (both are in `config.to_json_string()`, so a hash of it refused a resume elsewhere)."""
    import json

    from transformers import AutoModelForCausalLM

    model = _unseeded_llama()
    for folder in ("a", "b"):
        model.save_pretrained(tmp_path / folder)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**config, "transformers_version": "9.9.9"}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = {"storage": storage, "study_name": "s", "train_fn": _no_training, "objectives": _trainable_objectives(),
              "objective_kwargs": {}, "sampler": "random"}  # fmt: skip
    lm_search(model_factory=lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "a"), n_trials=1, **common).run()
    resumed = lm_search(model_factory=lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "b"), n_trials=2,
                        **common)  # fmt: skip
    assert resumed.reference_model.config._name_or_path != "" and len(resumed.run().trials) == 2
    config["attention_bias"] = True  # other computation (and other parameters): refused
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model config_sha256.*model parameters"):
        lm_search(model_factory=lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "b"), n_trials=3,
                  **common).run()  # fmt: skip


def test_a_cache_made_on_another_checkpoint_is_refused():
    """B8: `cache` was checked against the class name and size only; another checkpoint's values were reused."""
    common = {"train_fn": _no_training, "objectives": _trainable_objectives(), "objective_kwargs": {},
              "sampler": "exhaustive", "groups": ["model.layers.0.self_attn", "model.layers.0.mlp"]}  # fmt: skip
    cache = lm_search(**common).run()
    with pytest.raises(ValueError, match=r"`cache` was made with other settings: model weights_sha256"):
        lm_search(model_factory=lambda: tiny_causal_lm("llama", seed=1), cache=cache, **common)
    assert cache.settings["model"]["weights_sha256"] and cache.settings["model"]["class"] == "LlamaForCausalLM"
    assert lm_search(cache=cache, **common).run().num_trained == 0  # the same model: reused
    with pytest.raises(ValueError, match=r"model config_sha256.*model weights_sha256"):
        lm_search(model_factory=lambda: tiny_causal_lm("llama", hidden=8), cache=cache,
                  **{**common, "groups": None})  # fmt: skip
    legacy = MemControlResult(cache.objective_names, cache.trials, cache.pareto_front, cache.study_name,
                              {**cache.settings, "model": "LlamaForCausalLM, 10000 parameters"})  # fmt: skip
    with pytest.raises(ValueError, match="records no weights fingerprint"):
        lm_search(cache=legacy, **common)
    with pytest.raises(ValueError, match="records no weights fingerprint"):
        lm_search(cache=MemControlResult(cache.objective_names, cache.trials), **common)


def test_a_study_written_without_a_weights_fingerprint_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = lm_search(storage=storage, study_name="old", train_fn=_no_training, n_trials=1, sampler="random",
                       objectives=_trainable_objectives(), objective_kwargs={})  # fmt: skip
    search.run()
    study = optuna.load_study(study_name="old", storage=storage)
    old = dict(study.user_attrs["memcontrol_settings"])
    old["model"] = "LlamaForCausalLM, 10000 parameters"  # as hf-memory recorded it before
    study.set_user_attr("memcontrol_settings", old)
    again = lm_search(storage=storage, study_name="old", train_fn=_no_training, n_trials=2, sampler="random",
                      objectives=_trainable_objectives(), objective_kwargs={})  # fmt: skip
    with pytest.raises(ValueError, match="records no weights fingerprint of the model"):
        again.run()


def test_a_cached_mask_builds_no_model_and_keeps_its_parameter_count():
    built = []

    def factory():
        built.append(1)
        return tiny_causal_lm("llama")

    common = {"objectives": _trainable_objectives(), "objective_kwargs": {}, "train_fn": _no_training,
              "groups": ["model.layers.0.self_attn", "model.layers.0.mlp"]}  # fmt: skip
    cache = lm_search(model_factory=factory, sampler="exhaustive", **common).run()
    built.clear()
    again = lm_search(model_factory=factory, n_trials=4, sampler="random", cache=cache, **common).run()
    assert built == [1]  # the reference model only: no model per cached trial
    by_key = {t.mask.key: t for t in cache.trials}
    for trial in again.trials:
        assert trial.cached
        assert trial.trainable_parameters == by_key[trial.mask.key].trainable_parameters
        assert trial.trainable_fraction == by_key[trial.mask.key].trainable_fraction


def test_extraction_windows_the_model_cannot_decode_are_refused_before_training():
    """The search checked the window against the data only: a GPT-2 whose learned positions are shorter than the
    window passed the constructor, trained, and failed in the objective."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def short_gpt2():
        return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=16, n_layer=1, n_head=2, n_positions=10,
                                          bos_token_id=1, eos_token_id=2))  # fmt: skip

    def never(model, data, mask):
        raise AssertionError("trained")

    with pytest.raises(ValueError, match=r"`objective_kwargs\['extraction'\]`: prefix_len \+ suffix_len = 12 tokens "
                                         r"is more than .*`config.n_positions` = 10"):  # fmt: skip
        lm_search(model_factory=short_gpt2, train_data=lm_data(6, 12), val_data=lm_data(3, 10, seed=1), train_fn=never)
    search = lm_search(model_factory=short_gpt2, train_data=lm_data(6, 12), val_data=lm_data(3, 10, seed=1),
                       objective_kwargs={"extraction": {"prefix_len": 5, "suffix_len": 5}}, train_fn=never)  # fmt: skip
    assert search.objectives["extraction"](search.reference_model) >= 0


# ---------------------------------------------------------------- the config: both call styles, recorded


def test_the_search_takes_a_config_or_keywords_and_records_the_config():
    from hf_memory.memcontrol import MemControlSearchConfig

    config = MemControlSearchConfig(n_trials=2, sampler="random", seed=3, lr=1e-2, train_steps=2, batch_size=2,
                                    mask_kwargs={"lora_r": np.int64(2)})  # fmt: skip
    assert config.mask_kwargs == {"lora_r": 2} and type(config.mask_kwargs["lora_r"]) is int
    keywords = lm_search(n_trials=2, sampler="random", seed=3, mask_kwargs={"lora_r": 2})
    configured = lm_search(config=config)
    assert keywords.config == configured.config == config
    assert keywords.settings == configured.settings
    overridden = lm_search(config=config, seed=5)  # a keyword that differs from its default overrides the config
    assert overridden.config.seed == 5 and overridden.config.n_trials == 2
    result = configured.run()
    assert result.settings["config"] == config.to_dict() and result.config == config
    # positional call style, as before
    search = MemControlSearch(lambda: tiny_causal_lm("llama"), lm_data(6, 12), lm_data(3, 12, seed=1), None, None,
                              _no_training, 3, "random", objective_kwargs={"extraction": {"prefix_len": 6,
                              "suffix_len": 6}}, show_progress=False)  # fmt: skip
    assert search.config.n_trials == 3 and search.config.sampler == "random"


def test_the_search_config_refuses_bad_values_and_calls():
    from hf_memory.memcontrol import MemControlSearchConfig

    with pytest.raises(TypeError, match="`config` must be a MemControlSearchConfig, got MemControlMask"):
        lm_search(config=MemControlMask(["a"], [1]))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        lm_search(n_trial=3)
    for kwargs, match in (
        ({"sampler": "custom"}, "an optuna sampler object passed as `sampler`"),
        ({"mask_kwargs": {"lora_rank": 2}}, r"`mask_kwargs` has unknown keys \['lora_rank'\]"),
        ({"mask_kwargs": {"lora_r": 0}}, "`lora_r` must be an integer >= 1"),
        ({"groups": "model.layers.0.mlp"}, "`groups` must be a non-empty list"),
        ({"groups": ["model.layers.9.mlp"]}, r"`groups` names \['model.layers.9.mlp'\]"),
        ({"granularity": "layer"}, "`granularity` must be one of"),
        ({"lr": (1e-3, 1e-4)}, "`lr\\[1\\]` must be"),
        ({"seed": 2**32}, "`seed` must be an integer"),
        (
            {"train_steps": 5, "warmup_steps": 5, "lr_scheduler": "linear"},
            "`warmup_steps` must be below `train_steps`=5",
        ),
    ):
        with pytest.raises(ValueError, match=match):
            lm_search(train_fn=_no_training, **kwargs)
    with pytest.raises(ValueError, match="`n_trials` must be an integer >= 1"):
        MemControlSearchConfig.from_dict({"n_trials": 0})
    sampler = optuna.samplers.RandomSampler(seed=0)
    search = lm_search(sampler=sampler, n_trials=1, train_fn=_no_training, objectives=_trainable_objectives(),
                       objective_kwargs={})  # fmt: skip
    assert search.config.sampler == "custom" and search.sampler_name == "RandomSampler"
    assert len(search.run().trials) == 1


def test_the_trained_model_is_scored_in_eval_mode_whatever_the_training_left():
    seen = []

    def leave_in_train_mode(model, data, mask):
        model.train()

    objectives = {"mode": lambda m: seen.append(m.training) or 0.0, "other": lambda m: 1.0}
    lm_search(n_trials=1, sampler="random", train_fn=leave_in_train_mode, objectives=objectives,
              objective_kwargs={}).run()  # fmt: skip
    assert seen == [False]


def test_the_denoiser_call_reads_the_forward_signature_once(monkeypatch):
    from hf_memory._utils import anatomy

    calls = []
    signature = anatomy.inspect.signature

    def counting(obj, *args, **kwargs):
        if getattr(obj, "__name__", "") == "forward":
            calls.append(obj)
        return signature(obj, *args, **kwargs)

    monkeypatch.setattr(anatomy.inspect, "signature", counting)
    unet = tiny_unet()
    mask = MemControlMask.for_model(unet, lr=1e-3)
    train_unet(mask.apply(unet), unet_data(), mask, steps=3, batch_size=2)
    assert len(calls) <= 1  # once per forward method (the old code read it on every step)
