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


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    unet = tiny_unet(seed)
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
        assert json.load(f) == {"neurons": {LAYER: [0, 3], MID: [7]}, "scale": 0.25}  # plain JSON, no pickle
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

    def __init__(self, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.down_blocks = torch.nn.ModuleList([_Leaf(attn2=_Leaf(to_v=torch.nn.Linear(dim, 16, bias=False)))])
        self.mid_block = _Leaf(attn2=_Leaf(to_v=torch.nn.Linear(dim, 16, bias=False)))
        self.config = SimpleNamespace(sample_size=16, in_channels=1, encoder_hid_dim_type=None)
        self.register_buffer("pattern", torch.rand(1, 1, 16, 16, generator=g))

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

    def __init__(self):
        self.unet = PlantedDenoiser()
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


@pytest.mark.slow
def test_tiny_memorization_example_runs(tmp_path):
    from tests.conftest import load_example

    threads = torch.get_num_threads()
    try:
        results = load_example("nemo_tiny_memorization").main(
            output_dir=str(tmp_path), train_steps=3, seeds=2, figure=str(tmp_path / "figure.png"), noise_offset=0.1
        )
    finally:
        torch.set_num_threads(threads)
    assert {"statistics", "detection", "localization", "value_channels"} <= set(results)
    assert results["value_channels"] > 0
    assert all(
        (tmp_path / name).exists() for name in ("pipeline", "results.json", "nemo_activation_statistics.safetensors")
    )
