"""NeMo: the deactivation hook, its config, the activation statistics, the score and the localization."""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

import hf_memory
from hf_memory.data import word_level_tokenizer
from hf_memory.nemo import (
    NEMO_HOOK,
    ActivationStatistics,
    MemorizationScorer,
    NeMoConfig,
    NeMoResult,
    NeMoScorerConfig,
    apply_nemo,
    compute_activation_statistics,
    localize_memorization_neurons,
    memorization_score,
    nemo_memorization_score,
    remove_nemo,
    value_activations,
    value_projection_names,
)
from hf_memory.nemo.search import drop_unneeded as _drop_unneeded
from hf_memory.nemo.search import shortest_sufficient_prefix as _shortest_sufficient_prefix


WORDS = "a the red green blue small big circle square stripes on of with dog cat painting photo".split()
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
MID = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"


def word_tokenizer(max_length: int = 12) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then WORDS in order."""
    return word_level_tokenizer(WORDS, max_length)


def tiny_unet(seed: int = 0, attention_at_full_size: bool = True) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    cross = "CrossAttnDownBlock2D" if attention_at_full_size else "DownBlock2D"  # the latter: cheap at 64 x 64
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=(cross, "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", cross.replace("Down", "Up")),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


def tiny_pipeline(seed: int = 0, attention_at_full_size: bool = True) -> StableDiffusionPipeline:
    unet = tiny_unet(seed, attention_at_full_size)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=4 + len(WORDS),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=word_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def pipe64():
    """The tiny pipeline without self-attention at full resolution, so that 64 x 64 latents (the official score's
    size) stay cheap; its cross-attention value projections sit in the second down block and the mid block."""
    return tiny_pipeline(attention_at_full_size=False)


def unet_inputs(unet, batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    text = torch.randn(batch, 12, 16, generator=g)
    return sample, torch.tensor(500), text


def run_unet(unet, inputs):
    with torch.no_grad():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample


# ---------------------------------------------------------------- config


def test_config_validates_and_normalizes():
    config = NeMoConfig({LAYER: [5, 1, 5], MID: []}, scale=0)
    assert config.neurons == {LAYER: [1, 5]} and config.scale == 0.0 and config.num_neurons == 2
    for bad in (
        {"neurons": {LAYER: [-1]}},
        {"neurons": {LAYER: [1.5]}},
        {"neurons": {LAYER: [True]}},
        {"neurons": {"": [1]}},
        {"neurons": {LAYER: "12"}},
        {"neurons": [1, 2]},
        {"scale": 1.5},
        {"scale": -0.1},
        {"scale": "0"},
    ):
        with pytest.raises(ValueError, match="neurons|scale"):
            NeMoConfig(**bad)
    with pytest.raises(ValueError, match="Unknown NeMoConfig field"):
        NeMoConfig.from_dict({"neurons": {}, "factor": 0})


def test_config_json_round_trip(tmp_path):
    config = NeMoConfig({LAYER: [3, 0], MID: [7]}, scale=0.25)
    path = config.save_pretrained(tmp_path)
    with open(path) as f:
        saved = json.load(f)  # plain JSON, no pickle
    assert saved == {"neurons": {LAYER: [0, 3], MID: [7]}, "scale": 0.25, "hf_memory_version": hf_memory.__version__}
    assert NeMoConfig.from_pretrained(tmp_path) == config
    assert NeMoConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="No nemo_config.json"):
        NeMoConfig.from_pretrained(tmp_path / "..")


# ---------------------------------------------------------------- hook


def test_hook_scales_exactly_the_listed_channels():
    unet = tiny_unet()
    to_v = unet.get_submodule(LAYER)
    x = torch.randn(2, 5, 16)
    plain = to_v(x)
    apply_nemo(unet, NeMoConfig({LAYER: [0, 3, 7]}, scale=0.5))
    hooked = to_v(x)
    expected = plain.clone()
    expected[..., [0, 3, 7]] *= 0.5
    assert torch.equal(hooked, expected)  # exact: the other channels are multiplied by exactly 1
    assert unet.get_submodule(LAYER)._diffusers_hook.get_hook(NEMO_HOOK) is not None
    remove_nemo(unet)
    assert torch.equal(to_v(x), plain)


def test_removal_is_bit_identical_to_a_never_hooked_model():
    unet = tiny_unet()
    never_hooked = copy.deepcopy(unet)
    inputs = unet_inputs(unet)
    reference = run_unet(never_hooked, inputs)
    apply_nemo(unet, NeMoConfig({LAYER: list(range(8)), MID: [0, 15]}))
    assert not torch.equal(run_unet(unet, inputs), reference)
    remove_nemo(unet)
    assert torch.equal(run_unet(unet, inputs), reference)
    apply_nemo(unet, NeMoConfig({MID: [3]}))  # can be applied again after removal
    remove_nemo(unet)
    assert torch.equal(run_unet(unet, inputs), reference)


def test_hook_fires_every_step_on_the_whole_cfg_batch(pipe):
    seen = []
    to_v = pipe.unet.get_submodule(LAYER)
    handle = to_v.register_forward_hook(lambda m, args, out: seen.append(out[..., [2, 6]].abs().amax().item()))
    apply_nemo(pipe, NeMoConfig({LAYER: [2, 6]}))
    try:
        pipe(
            "a red circle",
            num_inference_steps=2,
            guidance_scale=3.0,
            num_images_per_prompt=2,
            output_type="latent",
            height=8,
            width=8,
        )
    finally:
        remove_nemo(pipe)
        handle.remove()
    assert len(seen) == 2 and seen == [0.0, 0.0]  # one call per step, covering the 2 x 2 CFG rows
    assert value_projection_names(pipe) == [
        LAYER,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v",
        MID,
    ]


def test_pipeline_output_changes_then_returns_exactly(pipe):
    def generate():
        return pipe(
            "a blue square",
            num_inference_steps=2,
            guidance_scale=2.0,
            output_type="latent",
            height=8,
            width=8,
            generator=torch.Generator().manual_seed(0),
        ).images

    reference = generate()
    apply_nemo(pipe, NeMoConfig({LAYER: list(range(8))}))
    changed = generate()
    remove_nemo(pipe)
    assert not torch.equal(changed, reference)
    assert torch.equal(generate(), reference)


def test_bad_uses_raise_clear_errors():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="not applied"):
        remove_nemo(unet)
    with pytest.raises(ValueError, match="Unknown module 'down_blocks.9.attn2.to_v'"):
        apply_nemo(unet, NeMoConfig({"down_blocks.9.attn2.to_v": [0]}))
    with pytest.raises(ValueError, match="Channel 8 is out of range .* 8 output channels"):
        apply_nemo(unet, NeMoConfig({LAYER: [8]}))
    with pytest.raises(ValueError, match="linear projection"):
        apply_nemo(unet, NeMoConfig({"down_blocks.0.attentions.0": [0]}))
    with pytest.raises(TypeError, match="NeMoConfig"):
        apply_nemo(unet, {LAYER: [0]})
    with pytest.raises(TypeError, match="unet"):
        apply_nemo(object(), NeMoConfig())
    assert not hasattr(unet.get_submodule(LAYER), "_diffusers_hook")  # nothing half-applied
    apply_nemo(unet, NeMoConfig({LAYER: [0]}))
    with pytest.raises(ValueError, match="already applied"):
        apply_nemo(unet, NeMoConfig({MID: [0]}))
    remove_nemo(unet)


def test_fused_projections_are_handled_or_refused():
    unet = tiny_unet()
    inputs = unet_inputs(unet)
    config = NeMoConfig({LAYER: [1, 4], MID: [0, 9]})
    apply_nemo(unet, config)
    unfused_hooked = run_unet(unet, inputs)
    remove_nemo(unet)

    fused = copy.deepcopy(unet)
    fused.fuse_qkv_projections()
    apply_nemo(fused, config)  # hooks the value half of `to_kv` too
    assert torch.allclose(run_unet(fused, inputs), unfused_hooked, atol=1e-5)
    remove_nemo(fused)

    late = copy.deepcopy(unet)
    apply_nemo(late, config)
    late.fuse_qkv_projections()  # after apply_nemo: the to_v hook would be skipped
    with pytest.raises(RuntimeError, match="fused key/value projections"):
        run_unet(late, inputs)


# ---------------------------------------------------------------- statistics and score


def test_statistics_match_the_activations_inside_the_unet(pipe, tmp_path):
    prompts = ["a red circle", "the big dog", "a photo of a cat", "green stripes on a square"]
    scorer = NeMoScorerConfig(seeds=3, num_inference_steps=2)
    stats = compute_activation_statistics(pipe, prompts, scorer=scorer, show_progress=False)
    layers = [LAYER, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v", MID]  # down + mid, as the paper
    assert stats.layers == layers and stats.num_prompts == 4

    # Reference: record |to_v| inside a real UNet pass, as the official code does, one prompt at a time.
    recorded = {name: [] for name in layers}
    handles = [
        pipe.unet.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: recorded[name].append(out[0].abs().mean(0))
        )
        for name in layers
    ]
    for prompt in prompts:
        embedding = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
        run_unet(pipe.unet, (torch.randn(1, 4, 8, 8), torch.tensor(999), embedding))
    for handle in handles:
        handle.remove()
    for name in layers:
        acts = torch.stack(recorded[name])
        assert torch.allclose(stats.mean[name], acts.mean(0), atol=1e-6)
        assert torch.allclose(stats.std[name], acts.std(0), atol=1e-6)

    scores = [nemo_memorization_score(pipe, p, scorer=scorer) for p in prompts]
    assert stats.scores == pytest.approx(scores)
    assert stats.threshold == pytest.approx(torch.tensor(scores).mean().item() + torch.tensor(scores).std().item())

    path = stats.save_pretrained(tmp_path)
    loaded = ActivationStatistics.from_pretrained(tmp_path)
    assert loaded.layers == layers and loaded.threshold == stats.threshold and loaded.scores == stats.scores
    assert all(torch.equal(loaded.mean[n], stats.mean[n]) and torch.equal(loaded.std[n], stats.std[n]) for n in layers)
    with open(path, "rb") as f:
        assert b"pickle" not in f.read(2000)
    assert sorted(os.listdir(tmp_path)) == ["nemo_activation_statistics.safetensors"]  # no temporary file left
    with pytest.warns(FutureWarning, match="save_pretrained"):  # the old single-file API still works
        stats.save(str(tmp_path / "old.safetensors"))
    with pytest.warns(FutureWarning, match="from_pretrained"):
        assert ActivationStatistics.load(str(tmp_path / "old.safetensors")).scores == stats.scores
    assert ActivationStatistics.from_pretrained(str(tmp_path / "old.safetensors")).threshold == stats.threshold
    with pytest.raises(ValueError, match="No nemo_activation_statistics"):
        ActivationStatistics.from_pretrained(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
    with pytest.raises(ValueError, match="at least 2"):
        compute_activation_statistics(pipe, ["one prompt"])
    with pytest.raises(ValueError, match="Unknown layer"):
        compute_activation_statistics(pipe, prompts, layers=["mid_block.nothing.to_v"], calibrate_threshold=False)


def test_memorization_score_is_deterministic_and_sees_the_hook(pipe):
    four = NeMoScorerConfig(seeds=4, num_inference_steps=2)
    score = nemo_memorization_score(pipe, "a red circle", scorer=four)
    assert -1.0 <= score <= 1.0
    assert nemo_memorization_score(pipe, "a red circle", scorer=four) == score
    silenced = NeMoConfig(
        {name: list(range(pipe.unet.get_submodule(name).out_features)) for name in value_projection_names(pipe)}
    )
    assert nemo_memorization_score(pipe, "a red circle", silenced, four) != score
    guided = NeMoScorerConfig(seeds=4, num_inference_steps=2, guidance_scale=5.0)
    cfg = nemo_memorization_score(pipe, "a red circle", scorer=guided)
    assert -1.0 <= cfg <= 1.0
    with pytest.warns(FutureWarning, match="nemo_memorization_score"):  # the old name: same number, with a warning
        assert memorization_score(pipe, "a red circle", seeds=4, num_inference_steps=2, guidance_scale=5.0) == cfg

    for guidance in (0.0, 5.0):  # a stage of seeds gets the same rows as the whole batch, with and without CFG
        config = NeMoScorerConfig(seeds=4, num_inference_steps=2, guidance_scale=guidance)
        scorer = MemorizationScorer(pipe, "a red circle", config)
        whole = scorer.noise_differences()
        torch.testing.assert_close(scorer.noise_differences([2, 0]), whole[[2, 0]], atol=1e-5, rtol=0)
        assert scorer.unet_evaluations == (6 if guidance == 0 else 12)
    with pytest.raises(ValueError, match="seeds"):
        NeMoScorerConfig(seeds=1)
    with pytest.raises(TypeError, match="prompt"):
        nemo_memorization_score(pipe, ["a red circle"])


# ---------------------------------------------------------------- localization on a model with a known answer


class _Leaf(torch.nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class PlantedDenoiser(torch.nn.Module):
    """A denoiser whose prediction copies a fixed pattern, whatever the seed, when channel 3 of layer A *or*
    channel 5 of layer B fires: memorization lives in exactly those two value channels (both must be silenced)."""

    A = "down_blocks.0.attn2.to_v"
    B = "mid_block.attn2.to_v"

    def __init__(self, dim: int = 8, size: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.down_blocks = torch.nn.ModuleList([_Leaf(attn2=_Leaf(to_v=torch.nn.Linear(dim, 16, bias=False)))])
        self.mid_block = _Leaf(attn2=_Leaf(to_v=torch.nn.Linear(dim, 16, bias=False)))
        self.config = SimpleNamespace(sample_size=size, in_channels=1, encoder_hid_dim_type=None)
        self.register_buffer("pattern", torch.rand(1, 1, size, size, generator=g))

    @property
    def device(self):
        return self.pattern.device

    @property
    def dtype(self):
        return self.pattern.dtype

    def forward(self, sample, timestep, encoder_hidden_states):
        a = self.get_submodule(self.A)(encoder_hidden_states).mean(1)  # (batch, 16)
        b = self.get_submodule(self.B)(encoder_hidden_states).mean(1)
        strength = (a[:, 3].relu() + b[:, 5].relu()).view(-1, 1, 1, 1)
        # Other channels change the output a little but never make it seed-independent.
        wiggle = 0.01 * (a.sum(1) + b.sum(1)).view(-1, 1, 1, 1)
        noise = sample + 0.3 * torch.tanh(3 * sample.roll(1, -1)) + wiggle + strength * self.pattern
        return SimpleNamespace(sample=noise)


class PlantedPipeline:
    """Just what the localization needs: text embeddings per prompt, the denoiser and a scheduler."""

    def __init__(self, size: int = 16):
        self.unet = PlantedDenoiser(size=size)
        self.tokenizer, self.text_encoder, self.scheduler = object(), object(), DDIMScheduler()
        g = torch.Generator().manual_seed(1)
        self.trigger = torch.zeros(8)
        self.trigger[0] = 1.0
        with torch.no_grad():  # the trigger direction drives A[3] and B[5] (and a few decoys, weakly)
            for layer, channel in (
                (self.unet.get_submodule(PlantedDenoiser.A), 3),
                (self.unet.get_submodule(PlantedDenoiser.B), 5),
            ):
                layer.weight[:, 0] = 0.05 * torch.randn(16, generator=g)
                layer.weight[channel, 0] = 40.0
        self.generator = g

    def encode_prompt(self, prompts, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None):
        rows = []
        for prompt in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, prompt)))
            embedding = 0.1 * torch.randn(4, 8, generator=g)
            embedding[:, 0] = 0.0
            if "memorized" in prompt:
                embedding = embedding + self.trigger
            rows.append(embedding)
        cond = torch.stack(rows)
        return cond, (torch.zeros_like(cond) if do_classifier_free_guidance else None)


SIX = NeMoScorerConfig(seeds=6, num_inference_steps=10)


@pytest.fixture(scope="module")
def planted():
    pipe = PlantedPipeline()
    others = [f"ordinary prompt number {i}" for i in range(12)]
    stats = compute_activation_statistics(pipe, others, scorer=SIX, show_progress=False)
    return pipe, stats


def test_planted_memorization_is_detected(planted):
    pipe, stats = planted
    assert stats.layers == [PlantedDenoiser.A, PlantedDenoiser.B]
    assert max(stats.scores) < 0.5
    assert nemo_memorization_score(pipe, "a memorized prompt", scorer=SIX) > 0.95
    blocked = NeMoConfig({PlantedDenoiser.A: [3], PlantedDenoiser.B: [5]})
    assert nemo_memorization_score(pipe, "a memorized prompt", blocked, SIX) < stats.threshold


@pytest.mark.parametrize("refinement", ["group", "greedy"])
def test_localization_finds_the_planted_neurons(planted, refinement):
    pipe, stats = planted
    result = localize_memorization_neurons(pipe, "a memorized prompt", stats, refinement=refinement, scorer=SIX)
    assert isinstance(result, NeMoResult) and result.memorized
    assert result.refined.neurons == {PlantedDenoiser.A: [3], PlantedDenoiser.B: [5]}
    assert result.score_before > 0.95 and result.score_after < result.threshold <= result.score_before
    assert set(result.initial.neurons[PlantedDenoiser.A]) >= {3} and result.initial.num_neurons >= 2
    assert 2 * result.score_checks <= result.unet_evaluations < 6 * result.score_checks  # early exits

    whole = NeMoScorerConfig(seeds=6, num_inference_steps=10, early_exit=False)
    full = localize_memorization_neurons(pipe, "a memorized prompt", stats, refinement=refinement, scorer=whole)
    assert full.refined == result.refined and full.score_checks == result.score_checks
    assert full.unet_evaluations == 6 * full.score_checks  # every seed in every check

    with pytest.warns(FutureWarning, match="scorer=NeMoScorerConfig"):  # scorer fields passed loose: deprecated
        quiet = localize_memorization_neurons(pipe, "ordinary prompt number 3", stats, seeds=6, num_inference_steps=10)
    assert not quiet.memorized and quiet.refined.neurons == {} and quiet.unet_evaluations == 6


def test_early_exit_gives_the_full_scores_decisions(planted):
    pipe, stats = planted
    A, B = PlantedDenoiser.A, PlantedDenoiser.B
    configs = [{A: [3]}, {B: [5]}, {A: [3], B: [5]}, {A: [0, 1]}, {A: [3, 4], B: [5, 6]}, {B: [0]}]
    full = MemorizationScorer(
        pipe, "a memorized prompt", NeMoScorerConfig(seeds=6, num_inference_steps=10, cache=False)
    )
    staged = MemorizationScorer(pipe, "a memorized prompt", SIX)
    staged()  # the unhooked score orders the seeds, as localization does first
    for neurons in configs:
        before = staged.unet_evaluations
        exact = full(neurons)
        quick = staged(neurons, threshold=stats.threshold)
        assert (quick < stats.threshold) == (exact < stats.threshold)
        if exact < stats.threshold:  # "yes" needs every seed and gives the whole score
            assert staged.unet_evaluations - before == 6 and quick == pytest.approx(exact, abs=1e-4)
        else:  # "no" is settled by the first pair of seeds here: every pair of a memorized prompt is alike
            assert staged.unet_evaluations - before == 2 and stats.threshold <= quick <= exact + 1e-4
    checks = staged.checks
    staged({A: [0, 1]}, threshold=stats.threshold)  # a cached "no" settles the same question again
    assert staged.checks == checks
    assert staged({A: [0, 1]}) == pytest.approx(full({A: [0, 1]}), abs=1e-4)  # the whole score needs a new check
    assert staged.checks == checks + 1


def test_group_refinement_needs_fewer_checks_than_one_at_a_time(planted):
    pipe, stats = planted
    kwargs = {"scorer": SIX, "theta": 1.0, "min_theta": 1.0, "max_k": 16}  # start from a wide selection
    group = localize_memorization_neurons(pipe, "a memorized prompt", stats, refinement="group", **kwargs)
    greedy = localize_memorization_neurons(pipe, "a memorized prompt", stats, refinement="greedy", **kwargs)
    assert group.refined == greedy.refined
    assert group.initial.num_neurons >= 6 and group.score_checks < greedy.score_checks


def test_group_testing_needs_few_checks_when_few_atoms_matter():
    needed = {3, 17, 41}
    checks = []

    def holds(subset):
        checks.append(1)
        return needed <= set(subset)

    atoms = list(range(64))
    assert sorted(_drop_unneeded(atoms, holds)) == [3, 17, 41]
    assert len(checks) < 40  # one at a time would take 64
    checks.clear()
    ranked = [41, 3, 17] + [a for a in atoms if a not in needed]  # the needed ones ranked first
    assert _shortest_sufficient_prefix(ranked, holds) == [41, 3, 17] and len(checks) <= 6


def test_group_testing_keeps_only_needed_atoms_for_random_monotone_predicates():
    import random

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 20)
        families = [set(rng.sample(range(n), rng.randint(1, min(3, n)))) for _ in range(rng.randint(1, 3))]

        def holds(subset):
            return any(family <= set(subset) for family in families)

        order = rng.sample(range(n), n)
        prefix = _shortest_sufficient_prefix(order, holds)
        found = _drop_unneeded(prefix, holds, order=prefix[::-1])
        assert holds(prefix) and holds(found)
        assert all(not holds([a for a in found if a != b]) for b in found)  # every kept atom is needed


def test_localization_bad_input(planted, pipe):
    planted_pipe, stats = planted
    with pytest.raises(ValueError, match="refinement"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", stats, refinement="fast")
    with pytest.raises(TypeError, match="ActivationStatistics"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", {"mean": {}})
    no_threshold = ActivationStatistics(stats.mean, stats.std)
    with pytest.raises(ValueError, match="threshold"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", no_threshold)
    with pytest.raises(ValueError, match="Unknown layer"):
        localize_memorization_neurons(pipe, "a red circle", stats)  # statistics of another model
    with pytest.raises(TypeError, match="tokenizer"):
        nemo_memorization_score(SimpleNamespace(unet=tiny_unet()), "a red circle")
    with pytest.raises(TypeError, match="inside `scorer`"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", stats, scorer=SIX, seeds=4)
    with pytest.raises(TypeError, match="unexpected keyword"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", stats, thetas=2.0)
    with pytest.raises(TypeError, match="NeMoScorerConfig"):
        localize_memorization_neurons(planted_pipe, "a memorized prompt", stats, scorer={"seeds": 4})


def test_localization_runs_on_a_real_tiny_pipeline(pipe):
    three = NeMoScorerConfig(seeds=3, num_inference_steps=2)
    stats = compute_activation_statistics(
        pipe, ["a red circle", "the big dog", "a photo of a cat"], scorer=three, show_progress=False
    )
    acts = value_activations(pipe.unet, stats.layers, pipe.encode_prompt("a blue square", "cpu", 1, False)[0])
    assert [a.shape for a in acts.values()] == [(1, 8), (1, 16), (1, 16)]
    score = nemo_memorization_score(pipe, "a blue square", scorer=three)
    result = localize_memorization_neurons(pipe, "a blue square", stats, threshold=score - 1e-3, max_k=4, scorer=three)
    assert result.memorized and result.score_before == pytest.approx(score)
    if result.score_initial < result.threshold:
        assert result.score_after < result.threshold
        assert set(result.refined.neurons) <= set(result.initial.neurons)
    apply_nemo(pipe, result.refined if result.refined.neurons else NeMoConfig({LAYER: [0]}))
    remove_nemo(pipe)


# ---------------------------------------------------------------- the official setting (score="official")
# Every official quantity below is computed in the test from the official code's definition
# (utils/activation_detection.py and 3_detect_memorized_neurons.py of ml-research/localizing_memorization_in_
# diffusion_models), with direct UNet, forward-hook and torchmetrics calls, and compared with the option.

OFFICIAL_BETAS = (0.33, 0.33, 0.33)


def torchmetrics_before_1_5() -> bool:
    import torchmetrics

    return tuple(int(part) for part in torchmetrics.__version__.split(".")[:2]) < (1, 5)


def official_ms_ssim(first, second):
    """MS-SSIM as the official code computes it: torchmetrics' `multiscale_structural_similarity_index_measure(
    kernel_size=11, betas=(0.33, 0.33, 0.33))` in torchmetrics 1.3.2, the version its requirements.txt pins.

    From 1.5 (PR #2721) torchmetrics averages the SSIM term over the reflect-padded border too, so on a newer
    torchmetrics the 1.3.2 value is rebuilt from public calls: per scale, the contrast term (border-free in every
    version) and the SSIM map without its 5-pixel border, each clipped at 0, then 2 x 2 pooling; cs, cs, SSIM, each
    to the power 0.33, multiplied. (Checked against torchmetrics 1.3.2 itself: equal within 2e-8.)
    """
    import torch.nn.functional as F
    from torchmetrics.functional import multiscale_structural_similarity_index_measure as ms_ssim
    from torchmetrics.functional import structural_similarity_index_measure as ssim

    if torchmetrics_before_1_5():
        return ms_ssim(first, second, reduction="none", kernel_size=11, betas=OFFICIAL_BETAS)
    terms = []
    for scale in range(3):
        _, contrast = ssim(first, second, reduction="none", return_contrast_sensitivity=True)
        _, ssim_map = ssim(first, second, reduction="none", return_full_image=True)
        terms.append((contrast if scale < 2 else ssim_map[..., 5:-5, 5:-5].flatten(1).mean(1)).relu())
        first, second = F.avg_pool2d(first, 2), F.avg_pool2d(second, 2)
    return torch.stack([term**0.33 for term in terms]).prod(dim=0)


def min_max(diff):
    low, high = diff.amin(dim=[2, 3]), diff.amax(dim=[2, 3])
    return (diff - low.unsqueeze(-1).unsqueeze(-1)) / (high - low).unsqueeze(-1).unsqueeze(-1)


def official_latents(channels, seeds, size=64, seed=1):
    """The official draw: `torch.randn((n, c, h, w), generator=torch.manual_seed(seed))` (the same stream)."""
    return torch.randn((seeds, channels, size, size), generator=torch.Generator().manual_seed(seed))


def official_timestep(pipe, steps=50):
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps[1]  # compute_noise_diff(early_stopping=1): the output at i = 1, no scheduler.step


@torch.no_grad()
def unet_output(unet, latents, t, text, blocked=None):
    """The UNet's noise prediction with `blocked` (layer -> channels) zeroed by plain forward hooks."""
    handles = []
    for name, channels in (blocked or {}).items():
        if channels:
            index = torch.tensor(sorted(set(channels)))
            handles.append(
                unet.get_submodule(name).register_forward_hook(lambda m, a, out, i=index: out.index_fill(-1, i, 0.0))
            )
    try:
        return unet(latents, t, encoder_hidden_states=text.expand(len(latents), -1, -1)).sample
    finally:
        for handle in handles:
            handle.remove()


def official_text_embedding(pipe, prompt):
    ids = pipe.tokenizer(
        [prompt],
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def test_official_scorer_config_refuses_bad_values_before_any_work(pipe, tmp_path):
    for bad in ("Official", "ssim", "", None, 1, True, ["official"], {"score": "official"}):
        with pytest.raises(ValueError, match=r"`score` must be one of 'ours', 'official', got"):
            NeMoScorerConfig(score=bad)
    with pytest.raises(ValueError, match="`score` must be one of 'ours', 'official'"):
        NeMoScorerConfig.from_dict({"score": "OFFICIAL"})
    with pytest.raises(ValueError, match="`early_exit` must be False or None with score='official'"):
        NeMoScorerConfig(score="official", early_exit=True)
    with pytest.raises(ValueError, match=r"at least 44×44; got 43×43 \(`height`\)"):
        NeMoScorerConfig.official(height=43)
    assert NeMoScorerConfig.official(height=44).height == 44
    assert NeMoScorerConfig.official(kernel_size=7, height=28).height == 28  # 4 × the window for three scales

    # The size rule is torchmetrics' own: its MS-SSIM with the official arguments takes 44 × 44 and refuses 43 × 43.
    from torchmetrics.functional import multiscale_structural_similarity_index_measure as ms_ssim

    images = torch.rand(2, 1, 44, 44)
    assert ms_ssim(images[:1], images[1:], kernel_size=11, betas=OFFICIAL_BETAS).numel() == 1
    with pytest.raises(ValueError, match="must be larger than 40"):
        ms_ssim(images[:1, :, :43, :43], images[1:, :, :43, :43], kernel_size=11, betas=OFFICIAL_BETAS)

    # Configs written before the option load as ours, early exit on; the official preset round-trips.
    old = {"seeds": 4, "seed": 0, "num_inference_steps": 50, "guidance_scale": 0.0, "height": None}
    old.update({"kernel_size": 11, "cache": True, "early_exit": True})
    (tmp_path / "nemo_scorer_config.json").write_text(json.dumps(old))
    loaded = NeMoScorerConfig.from_pretrained(tmp_path)
    assert loaded.score == "ours" and loaded.early_exit is True and NeMoScorerConfig().early_exit is True
    official = NeMoScorerConfig.official(height=64)
    assert (official.seeds, official.seed, official.num_inference_steps, official.guidance_scale) == (10, 1, 50, 0.0)
    assert official.early_exit is False and NeMoScorerConfig.from_dict(official.to_dict()) == official

    # Latents too small for MS-SSIM (this pipeline's sample_size is 8): refused before the text encoder or the
    # UNet runs, naming `height`.
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (pipe.unet, pipe.text_encoder)]
    try:
        for run in (
            lambda: nemo_memorization_score(pipe, "a red circle", scorer=NeMoScorerConfig.official()),
            lambda: MemorizationScorer(pipe, "a red circle", NeMoScorerConfig(score="official")),
            lambda: compute_activation_statistics(
                pipe, ["a red circle", "the big dog"], scorer=NeMoScorerConfig.official(), show_progress=False
            ),
            lambda: localize_memorization_neurons(
                pipe,
                "a red circle",
                ActivationStatistics({LAYER: torch.zeros(8)}, {LAYER: torch.ones(8)}, 0.5),
                scorer=NeMoScorerConfig.official(),
            ),
        ):
            with pytest.raises(ValueError, match=r"got 8×8 \(`height`=None takes unet.config.sample_size=8\)"):
                run()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match="needs NeMoScorerConfig\\(score='official'\\)"):
        MemorizationScorer(pipe, "a red circle", NeMoScorerConfig(seeds=2, num_inference_steps=2)).memorized_seeds(0.5)


def test_official_score_is_the_ms_ssim_of_the_second_timestep_noise(pipe64):
    pipe = pipe64
    seeds, prompt = 10, "a photo of a cat"
    scorer = MemorizationScorer(pipe, prompt, NeMoScorerConfig.official(height=64))
    t = official_timestep(pipe)
    assert int(t) == 961 and int(scorer.timestep) == 961  # timesteps[1] of DDIM-50 with steps_offset 1, as SD's
    assert torch.equal(
        official_latents(4, seeds), torch.randn((seeds, 4, 64, 64), generator=torch.manual_seed(1))
    )  # the official generator call draws the same latents

    latents, text = official_latents(4, seeds), official_text_embedding(pipe, prompt)
    expected_images = min_max(unet_output(pipe.unet, latents, t, text) - latents)
    torch.testing.assert_close(scorer.noise_differences(), expected_images, atol=1e-5, rtol=0)
    pairs = torch.combinations(torch.arange(seeds), r=2)
    expected = official_ms_ssim(expected_images[pairs[:, 0]], expected_images[pairs[:, 1]])
    torch.testing.assert_close(scorer.pairwise_similarities(), expected, atol=1e-5, rtol=0)
    official = nemo_memorization_score(pipe, prompt, scorer=NeMoScorerConfig.official(height=64))
    assert official == pytest.approx(expected.max().item(), abs=1e-5)
    if not torchmetrics_before_1_5():  # why the official score does not call the installed torchmetrics
        from torchmetrics.functional import multiscale_structural_similarity_index_measure as ms_ssim

        installed = ms_ssim(
            expected_images[pairs[:, 0]],
            expected_images[pairs[:, 1]],
            reduction="none",
            kernel_size=11,
            betas=OFFICIAL_BETAS,
        )
        assert (installed - expected).abs().max() > 0.01

    # Neither the first timestep nor plain SSIM (ours) gives that number.
    first = min_max(unet_output(pipe.unet, latents, official_timestep(pipe) + 20, text) - latents)
    assert official_ms_ssim(first[pairs[:, 0]], first[pairs[:, 1]]).max().item() != pytest.approx(official, abs=1e-4)
    from torchmetrics.functional import structural_similarity_index_measure

    plain = structural_similarity_index_measure(
        expected_images[pairs[:, 0]], expected_images[pairs[:, 1]], data_range=1.0, reduction="none"
    )
    assert plain.max().item() != pytest.approx(official, abs=1e-3)
    ours = NeMoScorerConfig(height=64, seed=1)
    assert nemo_memorization_score(pipe, prompt, scorer=ours) != pytest.approx(official, abs=1e-3)

    # The seeds the official code localizes on: each seed's largest pairwise MS-SSIM over the threshold.
    per_seed = torch.stack([expected[(pairs == s).any(dim=1)].max() for s in range(seeds)])
    threshold = per_seed.median().item()
    assert scorer.memorized_seeds(threshold) == [s for s in range(seeds) if per_seed[s] > threshold]
    assert 0 < len(scorer.memorized_seeds(threshold)) < seeds


def test_official_guidance_swaps_the_halves_and_only_there(pipe64):
    pipe = pipe64
    prompt, g, seeds = "the big dog", 7.0, 4
    latents, text, uncond = official_latents(4, seeds), official_text_embedding(pipe, prompt), None
    uncond = official_text_embedding(pipe, "")
    t = official_timestep(pipe)
    text_out, uncond_out = unet_output(pipe.unet, latents, t, text), unet_output(pipe.unet, latents, t, uncond)
    swapped = min_max(text_out + g * (uncond_out - text_out) - latents)  # the official code's formula at g != 0
    standard = min_max(uncond_out + g * (text_out - uncond_out) - latents)
    assert (swapped - standard).abs().max() > 0.1

    official = MemorizationScorer(pipe, prompt, NeMoScorerConfig.official(seeds=seeds, guidance_scale=g, height=64))
    torch.testing.assert_close(official.noise_differences(), swapped, atol=1e-4, rtol=0)
    assert official.unet_evaluations == 2 * seeds

    # Ours keeps the standard formula (at its own timestep, the first).
    ours = MemorizationScorer(pipe, prompt, NeMoScorerConfig(seeds=seeds, seed=1, guidance_scale=g, height=64))
    first = ours.timestep
    text_out, uncond_out = unet_output(pipe.unet, latents, first, text), unet_output(pipe.unet, latents, first, uncond)
    torch.testing.assert_close(
        ours.noise_differences(), min_max(uncond_out + g * (text_out - uncond_out) - latents), atol=1e-4, rtol=0
    )


def test_official_scan_stops_before_theta_one_and_hands_on_its_last_score():
    from hf_memory.nemo.search import official_scan

    acts = {"a": torch.arange(20.0)}
    z = {"a": torch.linspace(0, 6, 20)}
    tested = []

    def never(neurons):  # a score that never reaches the threshold: the loop runs out
        tested.append(len(neurons["a"]))
        return 0.9 - 0.01 * len(tested)

    selection, score, k, theta, refine_at = official_scan(never, acts, z, 0.428, 5.0, 0.25, 1.0, 1280)
    # The official loop: θ = 5, 4.75, ..., 1.25 and k = 0, ..., 15 are tested; θ = 1 never is.
    assert len(tested) == 16 and (theta, k) == (1.25, 15)
    expected = (z["a"] > 1.25).nonzero().flatten().tolist() + acts["a"].topk(15).indices.tolist()
    assert selection == {"a": expected} and len(expected) > len(set(expected))  # duplicates kept, as listed there
    assert score == refine_at == pytest.approx(0.9 - 0.16)  # the refinement threshold is the last score

    calls = []

    def third(neurons):  # passes at step 2, at exactly the threshold (the official loop runs while score > it)
        calls.append(1)
        return 0.428 if len(calls) == 3 else 0.9

    selection, score, k, theta, refine_at = official_scan(third, acts, z, 0.428, 5.0, 0.25, 1.0, 1280)
    assert (len(calls), k, theta, score, refine_at) == (3, 2, 4.5, 0.428, 0.428)
    # k >= the widest layer stops it too (the official 1280 is SD-1.x's widest layer).
    assert official_scan(lambda n: 0.9, acts, z, 0.428, 5.0, 0.25, 1.0, 4)[2] == 3


@pytest.fixture(scope="module")
def planted64():
    torch.manual_seed(0)  # the decoy weights of the planted layers
    pipe = PlantedPipeline(size=64)
    others = [f"ordinary prompt number {i}" for i in range(6)]
    scorer = NeMoScorerConfig.official(seeds=6, guidance_scale=7.0)  # the official calibration's guidance
    return pipe, others, compute_activation_statistics(pipe, others, scorer=scorer, show_progress=False)


def test_official_threshold_is_mean_plus_std_of_every_pairwise_ms_ssim(planted64):
    pipe, others, stats = planted64
    t, latents = official_timestep(pipe), official_latents(1, 6)
    pairs = torch.combinations(torch.arange(6), r=2)
    values, maxima = [], []
    for prompt in others:
        text, uncond = pipe.encode_prompt([prompt], "cpu", 1, True)
        text_out = unet_output(pipe.unet, latents, t, text)
        uncond_out = unet_output(pipe.unet, latents, t, uncond)
        images = min_max(text_out + 7.0 * (uncond_out - text_out) - latents)
        pair_values = official_ms_ssim(images[pairs[:, 0]], images[pairs[:, 1]])
        values.append(pair_values)
        maxima.append(pair_values.max().item())
    values = torch.cat(values).double()
    assert stats.threshold == pytest.approx((values.mean() + values.std()).item(), abs=1e-6)
    assert stats.scores == pytest.approx(maxima, abs=1e-6)


@pytest.mark.parametrize("case", ["passes", "runs_out"])
def test_official_localization_follows_the_official_loops(planted64, case):
    pipe, _, stats = planted64
    A, B = PlantedDenoiser.A, PlantedDenoiser.B
    prompt, seeds = "a memorized prompt", 6
    scorer = NeMoScorerConfig.official(seeds=seeds)  # the official localization: guidance 0
    # "passes": the calibrated threshold (guidance 7, as the official one), which the blocked noise gets under;
    # "runs_out": one under the floor of the blocked-vs-unblocked MS-SSIM here (about 0.06), so the θ loop stops
    # at θ = 1.25 and hands its last score on to the refinement.
    threshold = stats.threshold if case == "passes" else 0.01
    result = localize_memorization_neurons(pipe, prompt, stats, threshold=threshold, scorer=scorer)

    # The official quantities, from their definitions.
    t, latents = official_timestep(pipe), official_latents(1, seeds)
    text = pipe.encode_prompt([prompt], "cpu", 1, False)[0]
    unblocked = min_max(unet_output(pipe.unet, latents, t, text) - latents)
    pairs = torch.combinations(torch.arange(seeds), r=2)
    pairwise = official_ms_ssim(unblocked[pairs[:, 0]], unblocked[pairs[:, 1]])
    memorized = [s for s in range(seeds) if pairwise[(pairs == s).any(dim=1)].max() > threshold]
    assert result.memorized and result.seeds == memorized == list(range(seeds))
    assert result.score_before == pytest.approx(pairwise.max().item(), abs=1e-6)

    # In "runs_out" the refinement threshold is a score of the same kind, and the decoy channels change the blocked
    # noise only by float rounding (their constant offset vanishes in the min-max normalization), so every
    # refinement decision there turns on the last bits: that case uses the score's own MS-SSIM (checked against the
    # torchmetrics definition above) to compare the loops bit for bit.
    from hf_memory.nemo.scoring import _ms_ssim

    similarity = official_ms_ssim if case == "passes" else lambda a, b: _ms_ssim(a, b, 11)

    def check(blocked):  # blocked against unblocked noise of the same seed, max over the memorized seeds
        noise = min_max(unet_output(pipe.unet, latents[memorized], t, text, blocked) - latents[memorized])
        return similarity(unblocked[memorized], noise).max().item()

    acts = {name: pipe.unet.get_submodule(name)(text)[0].abs().mean(0).detach() for name in (A, B)}
    z = {name: (acts[name] - stats.mean[name]).abs() / stats.std[name] for name in (A, B)}
    widest = 16
    theta, k, ssim, refine_at = 5.0, 0, 1.0, threshold
    while ssim > threshold:  # 3_detect_memorized_neurons.py, the initial selection loop
        blocked = {
            name: (z[name] > theta).nonzero().flatten().tolist() + acts[name].topk(min(k, widest)).indices.tolist()
            for name in (A, B)
        }
        ssim, tested = check(blocked), (theta, k)
        if ssim > threshold:
            theta = theta - 0.25 if theta > 1 else theta
            k += 1
        if theta == 1 or k >= widest:
            refine_at = ssim
            break
    refined = copy.deepcopy(blocked)  # neuron_refinement: layers, then neurons, last layer first
    for name in reversed(list(refined)):
        if refined[name]:
            trial = {**copy.deepcopy(refined), name: []}
            if check(trial) < refine_at:
                refined[name] = []
    for name in reversed(list(refined)):
        for neuron in list(refined[name]):
            trial = copy.deepcopy(refined)
            trial[name].remove(neuron)
            if check(trial) < refine_at:
                refined[name].remove(neuron)

    assert (result.theta, result.k) == tested
    assert result.initial == NeMoConfig(blocked) and result.score_initial == pytest.approx(ssim, abs=1e-6)
    assert result.refinement_threshold == pytest.approx(refine_at, abs=1e-6)
    assert result.refined == NeMoConfig(refined)
    assert result.score_after == pytest.approx(check(refined), abs=1e-6)
    if case == "passes":
        assert tested == (5.0, 0) and refine_at == threshold
        assert result.refined.neurons == {A: [3], B: [5]}  # the planted pair
    else:
        assert tested == (1.25, 15) and refine_at > threshold and result.score_initial > threshold
    # Every check is one UNet call over the memorized seeds (no early exit, no discarded first pass).
    assert result.unet_evaluations == seeds * result.score_checks


@pytest.mark.slow
def test_tiny_memorization_example_runs(tmp_path):
    from tests.testing_utils import load_example

    threads = torch.get_num_threads()
    try:
        example = load_example("nemo_tiny_memorization")
        results = example.main(output_dir=str(tmp_path), figure=str(tmp_path / "figure.png"), **example.SMALL)
    finally:
        torch.set_num_threads(threads)
    assert {"statistics", "detection", "localization", "value_channels"} <= set(results)
    assert results["value_channels"] > 0
    assert all(
        (tmp_path / name).exists() for name in ("pipeline", "results.json", "nemo_activation_statistics.safetensors")
    )


@pytest.mark.slow
def test_sparsity_example_runs_and_resumes(tmp_path):
    from tests.testing_utils import run_example

    command = ("--small", "--output-dir", str(tmp_path))
    out = run_example("nemo_sparsity", *command, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    widths = results["statistics"]["layers"]
    # Every cross-attention value layer is a candidate, the up blocks' too (the tiny UNet: 7 layers, 352 channels).
    assert len(widths) == 7 and sum(widths.values()) == results["value_channels"]["all"] == 352
    assert results["value_channels"]["down_mid"] == 160
    channels = {group: results["blocks"][group]["channels"] for group in ("down_mid", "up", "all")}
    assert channels == {"down_mid": 160, "up": 192, "all": 352}
    captions = list(results["baseline"])
    assert len(captions) == 2
    for caption in captions:
        # Silencing every value channel changes the first-step prediction: the hooks fire on every block.
        assert results["blocks"]["all"]["captions"][caption]["score"] != results["baseline"][caption]["score"]
        singles = results["singles"][caption]
        assert singles["screened_channels"] == 2 * len(widths)  # --small screens 2 channels per layer
        assert len(singles["confirmed_singles"]) == 2 and len(singles["confirmed_pairs"]) == 1
        screened = sorted(v for values in singles["screened"].values() for v in values)
        assert [round(e["score"], 4) for e in singles["confirmed_singles"]] == screened[:2]  # the lowest confirmed
        best = results["best_two"][caption]
        assert 1 <= best["channels"] <= 2
        for control in best["random_control"]:
            assert control["share"] in (0.0, 0.5, 1.0)  # 2 seeds
        assert best["reproduced"] == (
            best["share_before"] >= 0.5
            and best["share_after"] == 0
            and best["others_ssim"]["mean"] >= 0.9
            and best["random_control_share"] >= 0.5
        )
        for key in ("nemo_all_layers", "nemo_down_mid"):
            entry = results[key][caption]
            if key == "nemo_down_mid":
                assert entry["channels_per_block"]["up"] == 0  # the paper's candidates exclude the up blocks
            assert entry["channels"] == sum(map(len, entry["neurons"].values()))
    assert results["verdict"]["captions_reproduced"] == sum(results["best_two"][c]["reproduced"] for c in captions)
    # A rerun finds every step done and recomputes nothing.
    again = run_example("nemo_sparsity", *command, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "singles" not in again.stdout
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert {k: rerun[k] for k in ("baseline", "singles", "best_two")} == {
        k: results[k] for k in ("baseline", "singles", "best_two")
    }


def tiny_pixart(use_additional_conditions: bool = False):
    """A PixArt-style DiT: its forward takes `(hidden_states, encoder_hidden_states, timestep, ...)`, the timestep by
    keyword, and it predicts a learned variance (6 output channels for 3)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=3, out_channels=6, num_layers=1,
        cross_attention_dim=8, sample_size=8, patch_size=2, norm_num_groups=1, caption_channels=8,
        use_additional_conditions=use_additional_conditions,
    ).eval()  # fmt: skip


class PixArtLikePipeline:
    """What NeMo reads of a PixArt pipeline: tokenizer, text encoder, scheduler, a `transformer`, and PixArt's
    `encode_prompt` signature (not Stable Diffusion's)."""

    def __init__(self, transformer):
        self.tokenizer, self.text_encoder, self.scheduler = object(), object(), DDIMScheduler()
        self.transformer = transformer

    def encode_prompt(self, prompt, do_classifier_free_guidance=True, negative_prompt="", num_images_per_prompt=1):
        raise AssertionError("NeMo must not call a PixArt encode_prompt with Stable Diffusion's arguments")


@pytest.mark.parametrize("guidance_scale", [0.0, 7.0])
def test_the_scorer_calls_a_dit_denoiser_with_the_timestep_by_keyword(guidance_scale):
    """The scorer once called every denoiser UNet-style, `denoiser(x, t, encoder_hidden_states=c)`: a DiT (which
    takes `timestep` by keyword) was accepted and then called wrongly. It calls it as MemControl does now: the noise
    difference is the DiT's own ε half, at the scorer's timestep, one per row."""
    dit = tiny_pixart()
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    config = NeMoScorerConfig(seeds=3, guidance_scale=guidance_scale, num_inference_steps=10)
    scorer = MemorizationScorer(PixArtLikePipeline(dit), "a prompt", config, embeddings=(cond, uncond))
    differences = scorer.noise_differences()
    rows = scorer.model_input
    text = cond.expand(3, -1, -1)
    if guidance_scale:
        rows, text = torch.cat([rows, rows]), torch.cat([uncond.expand(3, -1, -1), text])
    with torch.no_grad():
        noise = dit(rows, encoder_hidden_states=text, timestep=scorer.timestep.expand(len(rows))).sample[:, :3]
    if guidance_scale:
        without, with_text = noise.chunk(2)
        noise = without + guidance_scale * (with_text - without)
    diff = noise - scorer.latents
    low, high = diff.amin(dim=(2, 3), keepdim=True), diff.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(differences, (diff - low) / (high - low))
    assert -1 <= scorer() <= 1 and scorer.unet_evaluations == 2 * len(rows)


def test_the_scorer_refuses_denoisers_it_cannot_call_before_any_work():
    from diffusers import DiTTransformer2DModel

    embeddings = (torch.randn(1, 5, 8), None)
    with pytest.raises(ValueError, match=r"PixArtTransformer2DModel.*NeMo's memorization scorer.*aspect-ratio"):
        MemorizationScorer(PixArtLikePipeline(tiny_pixart(use_additional_conditions=True)), "a", embeddings=embeddings)
    class_conditional = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=3, out_channels=3, num_layers=1, sample_size=8,
        patch_size=2, norm_num_groups=1, num_embeds_ada_norm=10,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"DiTTransformer2DModel.*encoder_hidden_states"):
        MemorizationScorer(PixArtLikePipeline(class_conditional), "a", embeddings=embeddings)
    # no embeddings: a PixArt `encode_prompt` is not called with Stable Diffusion's arguments
    with pytest.raises(ValueError, match=r"encode_prompt.*embeddings="):
        MemorizationScorer(PixArtLikePipeline(tiny_pixart()), "a")


def test_a_channel_id_too_large_for_any_layer_is_refused_when_the_config_is_built():
    import numpy as np

    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
    for channel in (10**25, 2**31, np.int64(2**40)):  # was: accepted, an OverflowError deep in torch later
        with pytest.raises(ValueError, match=r"`neurons\['mid_block.*'\]` must be an integer in \[0, 2147483647\]"):
            NeMoConfig({name: [3, channel]})
    assert NeMoConfig({name: [2**31 - 1]}).neurons[name] == [2**31 - 1]


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_a_single_string_is_not_a_list_of_prompts():
    from hf_memory import compute_activation_statistics

    with pytest.raises(ValueError, match="got one string"):
        compute_activation_statistics(None, "a red circle")  # was: 12 one-character prompts


def test_nemo_refuses_an_empty_config_and_foreign_statistics(tmp_path):
    from hf_memory import ActivationStatistics, NeMoConfig, apply_nemo, localize_memorization_neurons
    from tests.test_nemo import tiny_pipeline

    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="silences no channel"):
        apply_nemo(pipe, NeMoConfig({}))
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    foreign = ActivationStatistics({layer: torch.zeros(3)}, {layer: torch.ones(3)}, threshold=-1.0)
    with pytest.raises(ValueError, match="computed on another model"):
        localize_memorization_neurons(pipe, "a red circle", foreign)
    garbage = tmp_path / "nemo_activation_statistics.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file of NeMo activation statistics"):
        ActivationStatistics.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is neither a file nor a folder"):
        ActivationStatistics.from_pretrained(str(tmp_path / "missing" / "folder"))


def test_kernel_size_sets_the_ssim_window_and_small_latents_work():
    from hf_memory.nemo.scoring import _pair_ssim

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 4, 16, 16, generator=g)
    pairs = torch.tensor([[0, 1], [0, 2]])
    scores = {k: _pair_ssim(images, pairs, k).tolist() for k in (3, 7, 11)}
    assert scores[3] != scores[7] != scores[11]  # was: 11 whatever the setting
    assert _pair_ssim(images, pairs, 8).tolist() == _pair_ssim(images, pairs, 7).tolist()  # made odd
    assert _pair_ssim(images[..., :4, :4], pairs, 11).shape == (2,)  # was: a padding error under 6 x 6


def test_the_unhooked_score_refuses_a_user_hook():
    from hf_memory import NeMoConfig, NeMoScorerConfig, apply_nemo, nemo_memorization_score, remove_nemo
    from tests.test_nemo import LAYER, tiny_pipeline

    pipe = tiny_pipeline()
    apply_nemo(pipe, NeMoConfig({LAYER: [0, 1]}))
    with pytest.raises(ValueError, match="NeMo is already applied to this model"):
        nemo_memorization_score(pipe, "a red circle", scorer=NeMoScorerConfig(seeds=2, num_inference_steps=2))
    remove_nemo(pipe)


def test_statistics_with_numpy_numbers_round_trip(tmp_path):
    import numpy as np

    from hf_memory import ActivationStatistics

    base = torch.arange(8.0).reshape(2, 4)
    stats = ActivationStatistics(
        {"a.to_v": base[0]}, {"a.to_v": base[1]}, threshold=np.float64(0.5), scores=[np.float32(0.25)], num_prompts=np.int64(3)
    )  # fmt: skip
    stats.save_pretrained(tmp_path)  # views of one tensor: copied, so safetensors accepts them
    loaded = ActivationStatistics.from_pretrained(tmp_path)  # was: 'np.float64(0.5)' could not be read back
    assert loaded.threshold == 0.5 and loaded.scores == [0.25] and loaded.num_prompts == 3
    with pytest.raises(ValueError, match="without ','"):
        ActivationStatistics({"a,b": torch.zeros(2)}, {"a,b": torch.ones(2)})


def test_the_two_searches_check_their_settings():
    from hf_memory.nemo import refine_selection, search_initial_selection

    acts, z = {"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([0.5, 3.0])}
    with pytest.raises(ValueError, match="`search` must be one of 'group', 'greedy'"):
        search_initial_selection(lambda n: 0.0, acts, z, 0.5, search="GREEDY")
    for kwargs, name in (({"theta_step": -1}, "theta_step"), ({"min_theta": 6}, "theta"), ({"max_k": -3}, "max_k")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            search_initial_selection(lambda n: 0.0, acts, z, 0.5, **kwargs)
    with pytest.raises(ValueError, match="`refinement` must be one of"):
        refine_selection(lambda n: 0.0, {"a": [1]}, 0.5, z, refinement="bogus")
