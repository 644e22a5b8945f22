"""Probabilistic extraction: the sampling distribution's probability of a true suffix, from one teacher-forced pass,
checked against transformers' own logits warpers, Monte Carlo sampling with `generate`, and greedy exact match."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from hf_memory.extraction import (
    SamplingConfig,
    extractable_fraction,
    extraction_curve,
    extraction_log_probs,
    extraction_probability,
    measure_extraction,
    queries_to_extract,
    suffix_log_probs,
)
from tests.testing_utils import tiny_causal_lm


SETTINGS = [  # (temperature, top_k, top_p)
    (1.0, None, 1.0),
    (0.7, 5, 1.0),
    (1.3, None, 0.9),
    (1.0, 3, 0.8),
]


def reference_log_probs(logits, targets, temperature, top_k, top_p):
    """Per-position log P(target) through transformers' warpers, in generate's order, on float32 logits."""
    vocab = logits.shape[-1]
    x = logits.reshape(-1, vocab).float()
    warpers = [TemperatureLogitsWarper(float(temperature))] if temperature != 1.0 else []
    warpers += [TopKLogitsWarper(top_k)] if top_k else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    for warper in warpers:
        x = warper(None, x)
    return torch.log_softmax(x, -1).gather(-1, targets.reshape(-1, 1)).reshape(targets.shape).double()


@pytest.mark.parametrize("vocab", [7, 100, 3000])
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "scale"),
    [
        *((*s, 3.0) for s in SETTINGS),
        (0.5, 5, 0.8, 3.0),
        (1.0, None, 0.999, 0.3),
        (2.0, 50, 0.95, 0.3),
        (0.1, 1, 0.5, 3.0),
    ],
)
def test_log_probs_match_transformers_warpers(vocab, temperature, top_k, top_p, scale):
    """The kept set and the renormalized probability equal those of TemperatureLogitsWarper -> TopKLogitsWarper ->
    TopPLogitsWarper: flat logits (scale 0.3) keep hundreds of tokens under top-p, past the first candidates."""
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, 4, vocab, generator=g) * scale
    targets = torch.randint(0, vocab, (5, 4), generator=g)
    targets[:, ::2] = logits[:, ::2].topk(min(3, vocab), -1).indices[..., -1]  # likely tokens too
    targets[:, 1] = logits[:, 1].argmax(-1)
    ours = suffix_log_probs(logits, targets, temperature=temperature, top_k=top_k, top_p=top_p, per_token=True)
    reference = reference_log_probs(logits, targets, temperature, top_k, top_p)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(reference))
    finite = ~torch.isneginf(ours)
    assert finite.any()
    assert torch.allclose(ours[finite], reference[finite], atol=1e-5)
    whole = suffix_log_probs(logits, targets, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.allclose(whole, ours.sum(-1), atol=1e-9, equal_nan=False) or torch.equal(
        torch.isneginf(whole), torch.isneginf(ours).any(-1)
    )


def test_top_k_keeps_tokens_tied_with_the_kth_as_transformers_does():
    logits = torch.tensor([[[5.0, 3.0, 3.0, 3.0, 1.0]]])
    for target in range(5):
        ours = suffix_log_probs(logits, [[target]], top_k=2).item()
        reference = reference_log_probs(logits, torch.tensor([[target]]), 1.0, 2, 1.0).item()
        assert ours == pytest.approx(reference) or (math.isinf(ours) and math.isinf(reference))
    assert math.isinf(suffix_log_probs(logits, [[4]], top_k=2).item())  # below the tie: filtered
    assert math.isfinite(suffix_log_probs(logits, [[3]], top_k=2).item())  # the third of the tied tokens: kept


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.3, 0.97)])
def test_rows_tied_at_the_kth_token_and_rows_not_tied_in_one_call_match_transformers(temperature, top_p):
    """Top-k's values serve as top-p's candidates where no token ties with the k-th; a tied row takes the slower
    path (every tied token kept). Both kinds in one call, each position's every target against the warpers. (The
    top-p boundary itself must not fall among the tied tokens: there transformers keeps some of them by its sort
    order and we keep all, the documented difference at exact ties.)"""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 40, generator=g)
    logits[0, ::2, 10:14] = logits[0, ::2].max(-1, keepdim=True).values - 0.5  # rows 0, 2, 4: four tied at k = 3
    for target in range(40):
        targets = torch.full((1, 6), target)
        ours = suffix_log_probs(logits, targets, temperature=temperature, top_k=3, top_p=top_p, per_token=True)
        reference = reference_log_probs(logits, targets, temperature, 3, top_p)
        assert torch.equal(torch.isneginf(ours), torch.isneginf(reference)), target
        finite = ~torch.isneginf(ours)
        assert torch.allclose(ours[finite], reference[finite], atol=1e-5), target


def test_greedy_is_first_argmax_and_tiny_temperatures_approach_it():
    logits = torch.tensor([[[1.0, 4.0, 4.0], [0.0, 0.0, 9.0]]])
    assert suffix_log_probs(logits, [[1, 2]], temperature=None).item() == 0.0
    assert suffix_log_probs(logits, [[2, 2]], temperature=None).item() == -math.inf  # argmax takes the first tie
    clear = torch.tensor([[[1.0, 4.0, 2.0], [0.0, 0.0, 9.0]]])
    assert suffix_log_probs(clear, [[1, 2]], temperature=1e-3).exp().item() == pytest.approx(1.0)
    assert suffix_log_probs(clear, [[2, 2]], temperature=1e-3).exp().item() == pytest.approx(0.0, abs=1e-300)
    tiny = suffix_log_probs(clear, [[1, 2]], temperature=1e-30)  # no overflow to NaN at absurd temperatures
    assert tiny.item() == 0.0


def test_half_precision_logits_and_numpy_settings():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 50, generator=g)
    targets = torch.randint(0, 50, (2, 3), generator=g)
    full = suffix_log_probs(logits, targets, temperature=np.float32(0.8), top_k=np.int64(10), top_p=np.float64(0.9))
    half = suffix_log_probs(logits.bfloat16(), targets.numpy(), temperature=0.8, top_k=10, top_p=0.9)
    finite = torch.isfinite(full)
    assert torch.equal(finite, torch.isfinite(half)) and torch.allclose(full[finite], half[finite], atol=0.1)
    assert full.dtype == torch.float64 and full.device.type == "cpu"


def test_config_or_keywords_give_the_same_numbers_and_bad_calls_fail_first():
    logits = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(2, 3, dtype=torch.long)
    config = SamplingConfig(temperature=0.7, top_k=5)
    assert torch.equal(
        suffix_log_probs(logits, targets, config), suffix_log_probs(logits, targets, temperature=0.7, top_k=5)
    )
    # keywords laid over a config
    assert torch.equal(
        suffix_log_probs(logits, targets, config, top_p=0.5),
        suffix_log_probs(logits, targets, temperature=0.7, top_k=5, top_p=0.5),
    )
    with pytest.raises(TypeError, match="SamplingConfig"):
        suffix_log_probs(logits, targets, config={"temperature": 0.7})
    for bad_logits, bad_targets, match in [
        (logits[0], targets, "shape"),
        (logits.long(), targets, "floating-point"),
        ([[[0.0]]], [[0]], "floating-point"),
        (logits, targets[:, :2], "suffix_ids"),
        (logits, targets + 20, "outside"),
        (logits, targets - 1, ">= 0"),
        (logits, targets.float(), "integer"),
        (logits[:0], targets[:0], "no suffix token"),
        (logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), float("nan")), targets, "NaN"),
        (logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), -math.inf), targets, "-inf everywhere"),
    ]:
        with pytest.raises(ValueError, match=match):
            suffix_log_probs(bad_logits, bad_targets)
    with pytest.raises(ValueError, match="per_token"):
        suffix_log_probs(logits, targets, per_token=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "use greedy"),
        ({"temperature": -0.5}, "use greedy"),
        ({"temperature": np.float64(0.0)}, "use greedy"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "0.7"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"temperature": None, "top_k": 5}, "Greedy"),
        ({"temperature": None, "top_p": 0.9}, "Greedy"),
    ],
)
def test_sampling_config_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_sampling_config_round_trips_and_names_generate_arguments(tmp_path):
    config = SamplingConfig(temperature=np.float32(0.5), top_k=np.int64(0), top_p=0.9)
    assert config.top_k is None and isinstance(config.temperature, float)
    config.save_pretrained(tmp_path)
    assert SamplingConfig.from_pretrained(tmp_path) == config
    assert config.generate_kwargs() == {"do_sample": True, "temperature": 0.5, "top_k": 0, "top_p": 0.9}
    greedy = SamplingConfig(temperature=None)
    assert greedy.greedy and SamplingConfig.from_dict(greedy.to_dict()) == greedy
    with pytest.raises(ValueError, match="Unknown"):
        SamplingConfig.from_dict({"temprature": 0.5})


# ---------------------------------------------------------------- on a model


def planted_model(steps: int = 12):
    """A tiny Llama trained a few steps on 6 of 8 windows (prefix 3, suffix 3), so that sampling reproduces their
    suffixes with probabilities spread between 0.05 and 0.95; the last 2 it never saw."""
    model = tiny_causal_lm(vocab_size=24, hidden=32, seed=0)
    windows = torch.randint(3, 24, (8, 6), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=windows[:6], labels=windows[:6]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = None  # sample exactly suffix_len tokens, nothing stops early
    model.generation_config.pad_token_id = 0
    return model, windows


@pytest.mark.slow  # 32 x 3,000 samples
@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_probability_matches_monte_carlo_sampling_with_generate(temperature, top_k, top_p):
    """p from one pass lies in the 99.9% Clopper-Pearson interval of 3,000 `generate(do_sample=True)` draws, per
    window; a window with p = 0 (a true token outside the kept set) is never sampled."""
    from scipy.stats import binomtest

    model, windows = planted_model()
    config = SamplingConfig(temperature, top_k, top_p)
    log_p = extraction_log_probs(model, windows, prefix_len=3, config=config)
    samples = 3000
    moderate = 0
    for i, window in enumerate(windows):
        torch.manual_seed(100 + i)
        prefix = window[:3].expand(samples, -1)
        out = model.generate(
            input_ids=prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=3, **config.generate_kwargs()
        )
        hits = int((out[:, 3:] == window[3:]).all(-1).sum())
        p = math.exp(log_p[i].item())
        if p == 0:
            assert hits == 0, (i, hits)
            continue
        interval = binomtest(hits, samples).proportion_ci(0.999)
        assert interval.low <= p <= interval.high, (i, p, hits / samples)
        moderate += 0.05 < p < 0.95
    assert moderate >= 3  # the check has teeth: several windows are neither certain nor impossible


def test_greedy_agrees_with_greedy_exact_match_on_every_window():
    """temperature=None gives p = 1 exactly on the windows `measure_extraction(method="generate")` extracts and 0
    elsewhere; a tiny temperature gives p near those values wherever the top two logits are clearly apart."""
    for steps in (8, 14, 30):  # few, some and all training windows extracted
        model, windows = planted_model(steps)
        exact = measure_extraction(model, windows, 3, 3, method="generate", show_progress=False)
        matched = exact.per_sample()["exact_match_per_sample"]
        greedy = extraction_log_probs(model, windows, 3, temperature=None)
        assert greedy.exp().tolist() == [float(m) for m in matched]
        cold = extraction_log_probs(model, windows, 3, temperature=1e-4).exp()
        with torch.no_grad():
            logits = model(windows).logits[:, 2:5].float()
        gaps = logits.topk(2, -1).values.diff(dim=-1).abs().min(-1).values.min(-1).values
        clear = gaps > 1e-2
        assert clear.sum() >= 6
        assert torch.allclose(cold[clear], torch.tensor(matched, dtype=torch.float64)[clear], atol=1e-3)
    assert 0 < sum(matched) <= len(matched)


def test_one_pass_equals_the_logits_of_a_full_forward_and_batching_does_not_matter():
    model, windows = planted_model()
    mode = [m.training for m in model.modules()]
    model.train()  # given back its mode
    by_one = extraction_log_probs(model, windows, 3, temperature=0.9, top_p=0.95, batch_size=1)
    by_five = extraction_log_probs(model, windows.tolist(), np.int64(3), temperature=0.9, top_p=0.95, batch_size=5)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(windows).logits[:, 2:5]
    direct = suffix_log_probs(logits, windows[:, 3:], temperature=0.9, top_p=0.95)
    for got in (by_one, by_five):
        assert torch.equal(torch.isinf(got), torch.isinf(direct))
        finite = torch.isfinite(direct)
        assert torch.allclose(got[finite], direct[finite], atol=1e-5)
    per_token = extraction_log_probs(copy.deepcopy(model), windows, 3, temperature=0.9, top_p=0.95, per_token=True)
    assert per_token.shape == (8, 3)
    assert torch.allclose(per_token.sum(-1)[torch.isfinite(direct)], direct[torch.isfinite(direct)], atol=1e-5)
    assert mode  # silence: the model's flags were read


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "opt"])
def test_other_architectures(arch):
    model = tiny_causal_lm(arch, vocab_size=64).eval()
    windows = torch.randint(3, 64, (4, 10), generator=torch.Generator().manual_seed(0))
    got = extraction_log_probs(model, windows, 6, temperature=1.0)
    with torch.no_grad():
        logits = model(windows).logits[:, 5:9]
    assert torch.allclose(got, suffix_log_probs(logits, windows[:, 6:]), atol=1e-5)


def test_extraction_log_probs_refuses_bad_input_before_work():
    model, windows = planted_model(0)
    for kwargs, match in [
        ({"windows": windows[:0]}, "no window"),
        ({"windows": windows[0]}, "2-D"),
        ({"windows": windows + 30}, "vocabulary"),
        ({"prefix_len": 6}, "prefix_len"),
        ({"prefix_len": 0}, "prefix_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"temperature": 0.0}, "use greedy"),
    ]:
        call = {"windows": windows, "prefix_len": 3, **kwargs}
        with pytest.raises(ValueError, match=match):
            extraction_log_probs(model, **call)
    with pytest.raises(TypeError, match="SamplingConfig"):
        extraction_log_probs(model, windows, 3, config=0.7)


# ---------------------------------------------------------------- statistics of log p


def test_probability_within_n_queries_is_stable_at_both_ends():
    p = np.array([0.3, 0.02, 1e-30, 1 - 1e-12])
    got = extraction_probability(np.log(p), 50)
    assert np.allclose(got[:2], 1 - (1 - p[:2]) ** 50)
    assert extraction_probability(math.log(1e-30), 10**20)[0] == pytest.approx(-math.expm1(-1e-10), rel=1e-9)
    assert got[3] == 1.0
    assert extraction_probability(np.log1p(-1e-12), 1)[0] == pytest.approx(1 - 1e-12, abs=1e-20)
    assert extraction_probability(-math.inf, 10**9).tolist() == [0.0]
    assert extraction_probability(torch.tensor([0.0, -1.0]), 1).tolist() == pytest.approx([1.0, math.exp(-1)])


def test_queries_to_extract_is_the_fewest_that_reach_the_probability():
    rng = np.random.default_rng(0)
    log_p = np.log(rng.uniform(1e-6, 1, 500))
    for q in (0.1, 0.5, 0.99):
        n = queries_to_extract(log_p, q)
        assert np.all(n >= 1) and np.all(n == np.round(n))
        reach = np.array([extraction_probability(lp, int(k))[0] for lp, k in zip(log_p, n)])
        before = np.array([extraction_probability(lp, int(k) - 1)[0] if k > 1 else 0.0 for lp, k in zip(log_p, n)])
        assert np.all(reach >= q) and np.all(before < q)
    assert queries_to_extract([0.0, -math.inf, math.log(0.5)], 0.75).tolist() == [1.0, math.inf, 2.0]
    assert queries_to_extract(math.log(1e-40), 0.5)[0] == pytest.approx(math.log(2) * 1e40, rel=1e-6)


def test_fraction_and_curve():
    log_p = np.log([0.9, 0.02, 1e-5, 1e-9]).tolist() + [-math.inf]
    assert extractable_fraction(log_p, 1, 0.5) == 0.2
    assert extractable_fraction(log_p, 100, 0.5) == 0.4
    curve = extraction_curve(log_p, 0.5)
    assert curve["n"][0] == 1 and curve["n"][-1] == 10**6
    assert curve["fraction"] == sorted(curve["fraction"]) and curve["fraction"][-1] == 0.6
    assert curve["mean_probability"] == sorted(curve["mean_probability"])
    assert extraction_curve(log_p, 0.5, n_values=[100, np.int64(1), 100])["n"] == [1, 100]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: extraction_probability([-1.0], 0), "`n`"),
        (lambda: extraction_probability([-1.0], 2.5), "`n`"),
        (lambda: extraction_probability([0.5], 2), "in \\[-inf, 0\\]"),
        (lambda: extraction_probability([float("nan")], 2), "in \\[-inf, 0\\]"),
        (lambda: extraction_probability([], 2), "empty"),
        (lambda: extraction_probability([[-1.0]], 2), "1-D"),
        (lambda: extraction_probability("abc", 2), "log-probabilities"),
        (lambda: queries_to_extract([-1.0], 0), "probability"),
        (lambda: queries_to_extract([-1.0], 1), "probability"),
        (lambda: queries_to_extract([-1.0], 1.5), "probability"),
        (lambda: extractable_fraction([-1.0], 0, 0.5), "`n`"),
        (lambda: extractable_fraction([-1.0], 10, 0.0), "probability"),
        (lambda: extraction_curve([-1.0], 0.5, n_values=[]), "empty"),
        (lambda: extraction_curve([-1.0], 0.5, n_values=[0, 10]), "n_values\\[0\\]"),
        (lambda: extraction_curve([-1.0], 0.5, n_values=5), "n_values"),
    ],
)
def test_statistics_refuse_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- the evidence script


@pytest.mark.slow  # loads the embedded SmolLM2 for its tokenizer; about a minute on an idle machine
def test_evidence_script_small_mode_runs(tmp_path):
    """`examples/probabilistic_extraction.py --small` writes its results: the Monte Carlo check passes on the tiny
    models it trains (p inside the draws' interval, greedy equal to greedy exact match), the plain-softmax control
    fails where the sampling scheme changes the distribution, and a rerun resumes from the stored runs."""
    import json

    from tests.testing_utils import run_example

    command = ["--small", "--output-dir", str(tmp_path)]
    out = run_example("probabilistic_extraction", *command)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    pooled = results["monte_carlo"]["pooled"]
    assert pooled["greedy"]["agree_with_greedy_exact_match"] == pooled["greedy"]["windows"]
    for name in ("temperature 0.7", "temperature 1.0, top-k 5", "temperature 0.7, top-k 10, top-p 0.95"):
        cell = pooled[name]
        assert cell["ours_inside_ci99"] >= cell["windows"] - 2, (name, cell)
        assert cell["control_inside_ci99"] < cell["windows"] // 2, (name, cell)
        assert cell["p_zero_windows_ever_sampled"] == 0
    arms = results["fine_tuning"]
    assert set(arms) == {"standard", "goldfish"}
    for arm in arms.values():
        cell = arm["epoch 30"]["train"]
        assert set(cell) == {"greedy_exact_match", "temperature 0.7", "temperature 1.0"}
        shares = [cell["temperature 1.0"][f"n={n}"]["mean"] for n in (1, 10, 100, 1000)]
        assert shares == sorted(shares)  # more queries never extract less
    stored = sorted(os.listdir(tmp_path / "runs"))
    assert stored == ["goldfish_seed0.json", "goldfish_seed1.json", "monte_carlo.json", "standard_seed0.json",
                      "standard_seed1.json"]  # fmt: skip
    again = run_example("probabilistic_extraction", *command, "--skip-fine-tuning")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Monte Carlo check, seed 1: done" in again.stdout
