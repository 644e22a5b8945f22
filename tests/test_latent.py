"""latent_memorization_scan and ce_diagnostic: right numbers, reproducible noise, weights restored on every exit path;
the official setting checked against the official code's algorithm (sunnyddelight/latent_memorization, re-written
here independently)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_memory.analysis.latent import _add_noise, _greedy_suffixes, ce_diagnostic, latent_memorization_scan
from hf_memory.extraction import measure_extraction
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


PREFIX, SUFFIX = 6, 10


def random_windows(n=6, length=PREFIX + SUFFIX, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {
        n: p.requires_grad for n, p in model.named_parameters()
    }


def assert_restored(model, saved):
    state, requires_grad = saved
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad


def test_scan_on_every_tiny_architecture(tiny_arch):
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    windows = random_windows()
    saved = snapshot(model)
    scan = latent_memorization_scan(
        model, windows, PREFIX, SUFFIX, sigma=0.05, n_perturbations=3, batch_size=4, show_progress=False
    )
    assert_restored(model, saved)
    assert not model.training
    # the unperturbed continuation is plain greedy generation
    reference = measure_extraction(model, windows, PREFIX, SUFFIX, method="generate", show_progress=False)
    assert scan.unperturbed_predictions == reference.predictions
    assert len(scan.distances) == 3 and all(len(d) == len(windows) for d in scan.distances)
    for i in range(len(windows)):
        column = [d[i] for d in scan.distances]
        assert scan.best_distance[i] == min(column)
        assert scan.best_perturbation[i] == column.index(min(column))
        assert 0 <= scan.best_distance[i] <= SUFFIX


def test_scan_is_reproducible_and_independent_of_batch_size():
    model = tiny_causal_lm("llama", hidden=32)
    model.train()
    windows = random_windows(n=5)
    kwargs = {"prefix_len": PREFIX, "suffix_len": SUFFIX, "sigma": 0.05, "n_perturbations": 3, "show_progress": False}
    a = latent_memorization_scan(model, windows, seed=7, batch_size=5, **kwargs)
    b = latent_memorization_scan(model, windows, seed=7, batch_size=2, **kwargs)
    c = latent_memorization_scan(model, windows, seed=8, batch_size=5, **kwargs)
    assert model.training  # mode restored
    assert a.distances == b.distances and a.best_predictions == b.best_predictions
    assert a.unperturbed_distance == c.unperturbed_distance
    assert a.distances != c.distances  # another seed, other noise


def test_scan_recovers_what_a_perturbation_produces():
    """Plant as true suffixes what perturbation 2 of seed 3 decodes: the scan must find them at distance 0."""
    model = tiny_causal_lm("llama", hidden=32).eval()
    prefixes = random_windows(n=6, length=PREFIX)
    perturbed = tiny_causal_lm("llama", hidden=32).eval()
    params = dict(perturbed.named_parameters())
    _add_noise(params, {n: p.detach().clone() for n, p in params.items()}, 0.05, 3 + 2)
    with torch.no_grad():
        suffixes = _greedy_suffixes(perturbed, prefixes, SUFFIX)
    windows = torch.cat([prefixes, suffixes], 1)
    scan = latent_memorization_scan(
        model, windows, PREFIX, SUFFIX, sigma=0.05, n_perturbations=3, seed=3, show_progress=False
    )
    assert scan.best_distance == [0] * 6
    assert all(k <= 2 for k in scan.best_perturbation)
    assert scan.distances[2] == [0] * 6
    assert scan.best_predictions == suffixes.tolist()
    assert scan.recovered() == [u > 0 for u in scan.unperturbed_distance]
    assert any(scan.recovered())  # sigma 0.05 changes the greedy text of a random tiny model


def test_scan_of_memorized_text_with_tiny_noise_is_exact():
    model = tiny_causal_lm("gpt2", hidden=32).eval()
    prefixes = random_windows(n=4, length=PREFIX)
    with torch.no_grad():
        windows = torch.cat([prefixes, _greedy_suffixes(model, prefixes, SUFFIX)], 1)
    dataset = Dataset.from_dict({"input_ids": windows.tolist()})
    scan = latent_memorization_scan(model, dataset, PREFIX, SUFFIX, sigma=1e-7, n_perturbations=2, show_progress=False)
    assert scan.unperturbed_distance == [0] * 4 and scan.best_distance == [0] * 4 and scan.recovered() == [False] * 4


class Interrupt:
    """A forward hook that raises KeyboardInterrupt on its n-th call (inside a perturbation / an SGD step)."""

    def __init__(self, at):
        self.calls, self.at = 0, at

    def __call__(self, *_):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("run", ["scan", "ce", "scan_official", "ce_official"])
def test_weights_restored_after_keyboard_interrupt(run):
    model = tiny_causal_lm("opt", hidden=32).train()
    first = next(model.parameters())
    first.requires_grad_(False)
    saved = snapshot(model)
    handle = model.register_forward_hook(Interrupt(at=14 if run.startswith("scan") else 4))
    official = run.endswith("official")
    with pytest.raises(KeyboardInterrupt):
        if run.startswith("scan"):
            extra = {"min_new_tokens": SUFFIX, "noise_dtype": "model"} if official else {}
            latent_memorization_scan(
                model, random_windows(n=2), PREFIX, SUFFIX, sigma=0.1, n_perturbations=4, show_progress=False, **extra
            )
        else:
            extra = {"mode": "official"} if official else {}
            ce_diagnostic(model, random_windows(n=3), lr=0.5, show_progress=False, **extra)
    handle.remove()
    assert_restored(model, saved)
    assert model.training and all(p.grad is None for p in model.parameters())


def manual_ce(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
    return F.cross_entropy(logits, ids[1:]).item()


def test_ce_diagnostic_matches_one_sgd_step_and_restores(tiny_arch):
    model = tiny_causal_lm(tiny_arch, hidden=32).train()
    grad = torch.full_like(next(model.parameters()), 0.5)
    next(model.parameters()).grad = grad
    saved = snapshot(model)
    rows = [random_windows(n=1, length=12, seed=1)[0], random_windows(n=1, length=9, seed=2)[0]]  # any lengths
    result = ce_diagnostic(model, rows, lr=0.1, show_progress=False)
    assert_restored(model, saved)
    assert model.training and next(model.parameters()).grad is grad
    model.eval()
    for i, ids in enumerate(rows):
        assert result.loss[i] == pytest.approx(manual_ce(model, ids), abs=1e-5)
        # the same step by hand: SGD on this sequence alone from the original weights
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids[None]).logits[0, :-1]
        F.cross_entropy(logits, ids[1:]).backward()
        params = dict(model.named_parameters())
        norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params.values())).item()
        assert result.weight_change[i] == pytest.approx(0.1 * norm, rel=1e-4)
        with torch.no_grad():
            for p in params.values():
                p -= 0.1 * p.grad
        assert result.loss_after[i] == pytest.approx(manual_ce(model, ids), abs=1e-5)
        assert result.loss_after[i] < result.loss[i]
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[0][name])
    model.zero_grad(set_to_none=True)
    # each sequence starts from the original weights: its result does not depend on the others
    alone = ce_diagnostic(model, [rows[1]], lr=0.1, show_progress=False)
    assert alone.loss_after[0] == result.loss_after[1] and alone.weight_change[0] == result.weight_change[1]


def test_ce_diagnostic_more_steps_lower_the_loss_more():
    model = tiny_causal_lm("llama", hidden=32)
    windows = random_windows(n=2)
    one = ce_diagnostic(model, windows, lr=0.05, steps=1, show_progress=False)
    three = ce_diagnostic(model, windows, lr=0.05, steps=3, show_progress=False)
    assert one.loss == three.loss
    assert all(t < o for t, o in zip(three.loss_after, one.loss_after))
    assert all(t > o for t, o in zip(three.weight_change, one.weight_change))


def test_ce_diagnostic_reference_model_calibrates():
    model = tiny_causal_lm("llama", hidden=32)
    reference = tiny_causal_lm("llama", hidden=32).train()
    with torch.no_grad():  # another model: perturb the weights
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    saved, saved_ref = snapshot(model), snapshot(reference)
    windows = random_windows(n=3)
    plain = ce_diagnostic(model, windows, lr=0.05, show_progress=False)
    result = ce_diagnostic(model, windows, lr=0.05, show_progress=False, reference_model=reference)
    assert plain.reference_loss is None and plain.calibrated_loss is None
    assert result.loss == plain.loss and result.loss_after == plain.loss_after  # the diagnostic itself is unchanged
    assert_restored(model, saved)
    assert_restored(reference, saved_ref)
    assert reference.training  # mode restored
    reference.eval()
    for i, ids in enumerate(windows):
        assert result.reference_loss[i] == pytest.approx(manual_ce(reference, ids), abs=1e-5)
        assert result.calibrated_loss[i] == pytest.approx(result.loss_after[i] - result.reference_loss[i])
    # the model as its own reference: the calibrated loss is the drop from one step, negative
    own = ce_diagnostic(model, windows, lr=0.05, show_progress=False, reference_model=model)
    assert own.reference_loss == pytest.approx(own.loss, abs=1e-6)
    assert all(c < 0 for c in own.calibrated_loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "`sigma` must be a finite number > 0"),
        ({"sigma": -1e-3}, "`sigma` must be a finite number > 0"),
        ({"sigma": float("nan")}, "`sigma` must be a finite number > 0"),
        (
            {"prefix_len": 10, "suffix_len": 10},
            r"`sequences\[0\]` has 16 tokens, fewer than prefix_len \+ suffix_len = 20",
        ),
        ({"n_perturbations": 0}, "`n_perturbations` must be an integer >= 1"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
        ({"sequences": []}, "`sequences` is empty"),
        ({"sequences": [[0.5] * 20]}, "integer token ids"),
    ],
)
def test_scan_bad_input(kwargs, match):
    model = tiny_causal_lm("llama")
    args = {
        "sequences": random_windows(n=2),
        "prefix_len": PREFIX,
        "suffix_len": SUFFIX,
        "show_progress": False,
    } | kwargs
    saved = snapshot(model)
    with pytest.raises(ValueError, match=match):
        latent_memorization_scan(model, **args)
    assert_restored(model, saved)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0}, "`lr` must be a finite number > 0"),
        ({"steps": 0}, "`steps` must be an integer >= 1"),
        ({"sequences": []}, "`sequences` is empty"),
        ({"sequences": [[5]]}, r"`sequences\[0\]` has 1 token"),
    ],
)
def test_ce_diagnostic_bad_input(kwargs, match):
    model = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match=match):
        ce_diagnostic(model, **({"sequences": random_windows(n=2), "show_progress": False} | kwargs))


# ---------------------------------------------------------------- the official setting
# The official code, GitHub sunnyddelight/latent_memorization (commit aa35a92), re-written here from its text:
# scripts/perturbation.py (fp16 model; `generate(ctx, max_length=96, min_length=96)` greedy; every parameter
# `p2.copy_(param1[k] + torch.randn_like(p2) * 2e-3)`) and scripts/grad_steps.py (`compute_dist`, below).


def boost_eos(model, eos, by):
    """Add `by` to the EOS logit of every output, so that EOS is the argmax (a model that wants to stop)."""

    def hook(module, args, output):
        output = output.clone()
        output[..., eos] += by
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def official_greedy(model, prefixes, suffix_len, eos, min_new_tokens):
    """`generate(..., min_length=prefix + min_new_tokens)` as the official code runs it (`use_cache=False`): a full
    forward per token, the EOS logit -inf while the text is too short, argmax."""
    ids = prefixes
    with torch.no_grad():
        for step in range(suffix_len):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
            if step < min_new_tokens:
                logits[:, eos] = -float("inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids[:, prefixes.shape[1] :]


def official_perturbation(model, sigma, seed):
    """A copy of `model` with the official noise, `param + torch.randn_like(param) * sigma` in the parameter's dtype,
    drawn from one generator seeded `seed` in `named_parameters` order (the official code's is unseeded)."""
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (_, p2), p1 in zip(perturbed.named_parameters(), model.parameters()):
            p2.copy_(p1 + torch.randn(p2.shape, generator=generator, dtype=p2.dtype) * sigma)
    return perturbed


def official_grad_steps(model_orig, sequence, lr, dtype=torch.float16):
    """scripts/grad_steps.py's `compute_dist`: a fresh copy, plain SGD at `lr`, autocast, `for i in range(2)`,
    `starting_loss` at i == 0, `if loss < 0.5: break` after backward and before the step; it returns `i`, the last
    loss and the summed squared parameter change. The steps taken and the starting loss are returned too."""
    model = copy.deepcopy(model_orig)
    batch = sequence[None, :96]
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.SGD(params=model.parameters(), lr=lr)
    with torch.autocast(device_type="cpu", dtype=dtype, enabled=dtype is not None):
        for i in range(2):
            opt.zero_grad()
            z = model(x).logits
            y = y.reshape(-1)
            z = z.view(-1, z.shape[-1])
            loss = F.cross_entropy(z, y)
            if i == 0:
                starting_loss = loss.item()
            loss.backward()
            if loss < 0.5:
                break
            opt.step()
    param1 = dict(model.named_parameters())
    total_dist = 0
    for k, p2 in model_orig.named_parameters():
        total_dist += torch.sum(torch.square(p2 - param1[k]))
    steps_taken = i + int(loss.item() >= 0.5)
    return i, loss.item(), total_dist.item(), starting_loss, steps_taken


@pytest.mark.parametrize("tiny_arch", ["llama", "gpt2", "gpt_neox", "opt"])
def test_min_new_tokens_never_decodes_eos_and_matches_generate(tiny_arch):
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    eos = model.generation_config.eos_token_id
    windows = random_windows(n=4)
    prefixes = windows[:, :PREFIX]
    handle = boost_eos(model, eos, by=100.0)
    kwargs = {"prefix_len": PREFIX, "suffix_len": SUFFIX, "sigma": 0.05, "n_perturbations": 2, "show_progress": False}
    plain = latent_memorization_scan(model, windows, **kwargs)
    assert plain.unperturbed_predictions == [[eos] * SUFFIX] * 4  # plain argmax: EOS everywhere
    full = latent_memorization_scan(model, windows, min_new_tokens=SUFFIX, **kwargs)
    for rows in (full.unperturbed_predictions, full.best_predictions):
        assert all(eos not in row for row in rows)
    generated = model.generate(
        input_ids=prefixes,
        attention_mask=torch.ones_like(prefixes),
        max_new_tokens=SUFFIX,
        min_new_tokens=SUFFIX,
        do_sample=False,
        num_beams=1,
        pad_token_id=0,
    )
    assert full.unperturbed_predictions == generated[:, PREFIX:].tolist()
    assert full.unperturbed_predictions == official_greedy(model, prefixes, SUFFIX, eos, SUFFIX).tolist()
    # EOS suppressed in the first 4 tokens only: then it comes back (and plain argmax does not stop at it)
    part = latent_memorization_scan(model, windows, min_new_tokens=np.int64(4), **kwargs)
    assert part.unperturbed_predictions == official_greedy(model, prefixes, SUFFIX, eos, 4).tolist()
    assert all(eos not in row[:4] and row[4:] == [eos] * (SUFFIX - 4) for row in part.unperturbed_predictions)
    assert part.config["min_new_tokens"] == 4 and type(part.config["min_new_tokens"]) is int
    handle.remove()


def test_official_setting_recovers_what_an_official_perturbation_decodes():
    """fp16 GPT-NeoX (Pythia's architecture), noise in fp16, EOS suppressed: plant as true suffixes what the official
    algorithm decodes under perturbation 2 of seed 3; the scan in the official setting finds them at distance 0."""
    model = tiny_causal_lm("gpt_neox", hidden=32).half().eval()
    eos = model.generation_config.eos_token_id
    prefixes = random_windows(n=6, length=PREFIX)
    perturbed = official_perturbation(model, 0.05, 3 + 2)
    handles = [boost_eos(m, eos, by=2.0) for m in (model, perturbed)]  # EOS often the argmax: suppression matters
    suffixes = official_greedy(perturbed, prefixes, SUFFIX, eos, SUFFIX)
    assert (official_greedy(perturbed, prefixes, SUFFIX, eos, 0) == eos).any()
    windows = torch.cat([prefixes, suffixes], 1)
    saved = snapshot(model)
    kwargs = {"sigma": 0.05, "n_perturbations": 3, "seed": 3, "show_progress": False}
    scan = latent_memorization_scan(
        model, windows, PREFIX, SUFFIX, min_new_tokens=SUFFIX, noise_dtype="model", **kwargs
    )
    assert_restored(model, saved)
    assert scan.distances[2] == [0] * 6 and scan.best_predictions == suffixes.tolist()
    assert scan.config["noise_dtype"] == "model" and scan.config["min_new_tokens"] == SUFFIX
    for handle in handles:
        handle.remove()


def test_noise_in_the_model_dtype_is_the_official_formula():
    sigma, seed = 2e-3, 7
    model = tiny_causal_lm("gpt_neox", hidden=32).half()
    params = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    _add_noise(params, saved, sigma, seed, "model")
    official = dict(
        official_perturbation(tiny_causal_lm("gpt_neox", hidden=32).half(), sigma, seed).named_parameters()
    )
    assert all(torch.equal(params[n], official[n]) for n in params)
    # the default, noise in float32 rounded once: against the official formula on the same draws (rounded to fp16
    # first, as CUDA's fp16 randn_like does), apart by the rounding of the noise and of the sum only, and rarely
    _add_noise(params, saved, sigma, seed, "float32")
    generator = torch.Generator().manual_seed(seed)
    differ = total = 0
    for name, p in params.items():
        draws = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        noise = draws * sigma
        same_draws = saved[name] + draws.half() * sigma
        gap = (p.float() - same_draws.float()).abs()
        rounding = torch.finfo(torch.float16).eps * (noise.abs() + same_draws.float().abs()) + 2.0**-24
        assert (gap <= rounding).all(), name
        differ, total = differ + int((gap > 0).sum()), total + gap.numel()
    assert 0 < differ < total / 4
    # a float32 model: the two are the same noise
    model32 = tiny_causal_lm("llama", hidden=32)
    a, b = dict(model32.named_parameters()), dict(copy.deepcopy(model32).named_parameters())
    saved32 = {n: p.detach().clone() for n, p in a.items()}
    _add_noise(a, saved32, sigma, seed, "float32")
    _add_noise(b, saved32, sigma, seed, "model")
    assert all(torch.equal(a[n], b[n]) for n in a)


def fitted_llama(sequence):
    """A tiny Llama fitted on `sequence` just above the official early-stop loss (0.5), and a copy fitted below it."""
    model = tiny_causal_lm("llama", hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    models = []
    for below in (0.51, 0.45):
        while True:
            opt.zero_grad()
            loss = F.cross_entropy(model(input_ids=sequence[None, :-1]).logits[0], sequence[1:])
            if loss.item() < below:
                break
            loss.backward()
            opt.step()
        models.append(copy.deepcopy(model).eval())
    return models


def test_official_ce_diagnostic_is_the_official_loop():
    rows = random_windows(n=3, length=40, seed=5)
    just_above, below = fitted_llama(rows[0])
    cases = [(just_above, 0.3, [1, 2, 2]), (below, 0.3, [0, 2, 2]), (just_above, 1e-5, [2, 2, 2])]
    for model, lr, expected_steps in cases:
        saved = snapshot(model)
        result = ce_diagnostic(model, rows, lr=lr, mode="official", show_progress=False)
        assert_restored(model, saved)
        assert result.mode == "official" and result.steps == 2 and result.autocast_dtype == "float16"
        assert result.steps_taken == expected_steps
        for k, row in enumerate(rows):
            i, loss, total_dist, starting_loss, steps_taken = official_grad_steps(model, row, lr)
            assert result.steps_taken[k] == steps_taken and i == min(steps_taken, 1)
            assert result.loss[k] == pytest.approx(starting_loss, abs=1e-6)
            assert result.loss_after[k] == pytest.approx(loss, abs=1e-6)  # the loss after the first step
            assert result.squared_weight_change[k] == pytest.approx(total_dist, rel=1e-4, abs=1e-30)
            assert result.weight_change[k] == pytest.approx(result.squared_weight_change[k] ** 0.5)
        assert (result.squared_weight_change[0] == 0) == (expected_steps[0] == 0)
    # 1e-5 and two steps: the change is lr^2 * (|g1|^2 + ...), tiny but not zero, and the loss after one step moves
    assert 0 < result.squared_weight_change[1] < 1e-6


def test_official_ce_diagnostic_reads_96_tokens_and_takes_the_dtype():
    model = tiny_causal_lm("llama", hidden=32).eval()
    rows = random_windows(n=2, length=120, seed=3)
    result = ce_diagnostic(model, rows, lr=0.05, mode="official", show_progress=False)
    cut = ce_diagnostic(model, rows[:, :96], lr=0.05, mode="official", show_progress=False)
    assert result.loss == cut.loss and result.loss_after == cut.loss_after
    assert result.squared_weight_change == cut.squared_weight_change
    for dtype, name in [(torch.float32, "float32"), (torch.bfloat16, torch.bfloat16)]:
        other = ce_diagnostic(model, rows, lr=0.05, mode="official", autocast_dtype=name, show_progress=False)
        assert other.autocast_dtype == (None if dtype == torch.float32 else "bfloat16")
        for k, row in enumerate(rows):
            _, loss, total_dist, starting_loss, _ = official_grad_steps(
                model, row, 0.05, None if dtype == torch.float32 else dtype
            )
            assert other.loss[k] == pytest.approx(starting_loss, abs=1e-6)
            assert other.loss_after[k] == pytest.approx(loss, abs=1e-6)
            assert other.squared_weight_change[k] == pytest.approx(total_dist, rel=1e-4)
    # the reference model sees the same 96 tokens under the same autocast
    own = ce_diagnostic(model, rows, lr=0.05, mode="official", reference_model=model, show_progress=False)
    assert own.reference_loss == pytest.approx(own.loss, abs=1e-6)


def test_default_ce_diagnostic_unchanged_by_the_new_options():
    model = tiny_causal_lm("llama", hidden=32)
    rows = random_windows(n=2)
    plain = ce_diagnostic(model, rows, lr=0.05, show_progress=False)
    same = ce_diagnostic(model, rows, lr=0.05, steps=1, mode="default", autocast_dtype="float32", show_progress=False)
    assert plain == same and plain.steps == 1 and plain.steps_taken == [1, 1] and plain.autocast_dtype is None
    assert plain.squared_weight_change == pytest.approx([w**2 for w in plain.weight_change])
    half = ce_diagnostic(model, rows, lr=0.05, autocast_dtype=torch.float16, show_progress=False)
    assert half.autocast_dtype == "float16" and half.loss != plain.loss
    assert half.loss == pytest.approx(plain.loss, abs=1e-2)


def forbid_forward(model):
    def hook(*_):
        raise AssertionError("a forward pass ran before the arguments were checked")

    return model.register_forward_hook(hook)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_new_tokens": -1}, r"`min_new_tokens` must be an integer in \[0, suffix_len\] = \[0, 10\]"),
        ({"min_new_tokens": SUFFIX + 1}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"min_new_tokens": 2.0}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"min_new_tokens": np.float64(2)}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"min_new_tokens": "3"}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"min_new_tokens": True}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"min_new_tokens": None}, r"`min_new_tokens` must be an integer in \[0, suffix_len\]"),
        ({"noise_dtype": "float16"}, "`noise_dtype` must be one of 'float32', 'model', got 'float16'"),
        ({"noise_dtype": "Model"}, "`noise_dtype` must be one of 'float32', 'model'"),
        ({"noise_dtype": torch.float32}, "`noise_dtype` must be one of 'float32', 'model'"),
        ({"noise_dtype": None}, "`noise_dtype` must be one of 'float32', 'model'"),
        ({"noise_dtype": ["model"]}, "`noise_dtype` must be one of 'float32', 'model'"),
    ],
)
def test_scan_bad_official_options(kwargs, match):
    model = tiny_causal_lm("llama")
    saved = snapshot(model)
    handle = forbid_forward(model)
    with pytest.raises(ValueError, match=match):
        latent_memorization_scan(model, random_windows(n=2), PREFIX, SUFFIX, show_progress=False, **kwargs)
    handle.remove()
    assert_restored(model, saved)


def test_scan_min_new_tokens_needs_an_eos():
    model = tiny_causal_lm("llama")
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    handle = forbid_forward(model)
    with pytest.raises(ValueError, match="`min_new_tokens` = 3 suppresses EOS, but the model has no eos_token_id"):
        latent_memorization_scan(model, random_windows(n=2), PREFIX, SUFFIX, min_new_tokens=3, show_progress=False)
    handle.remove()
    scan = latent_memorization_scan(model, random_windows(n=2), PREFIX, SUFFIX, n_perturbations=1, show_progress=False)
    assert scan.config["min_new_tokens"] == 0
    model.generation_config.eos_token_id = [2, 500]
    with pytest.raises(ValueError, match=r"eos_token_id \[2, 500\] is not a token id of its vocabulary"):
        latent_memorization_scan(model, random_windows(n=2), PREFIX, SUFFIX, min_new_tokens=3, show_progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "Official"}, "`mode` must be one of 'default', 'official', got 'Official'"),
        ({"mode": "paper"}, "`mode` must be one of 'default', 'official'"),
        ({"mode": None}, "`mode` must be one of 'default', 'official'"),
        ({"mode": 1}, "`mode` must be one of 'default', 'official'"),
        ({"mode": ["official"]}, "`mode` must be one of 'default', 'official'"),
        ({"mode": "official", "steps": 1}, "`steps` must be None or 2 with mode='official'"),
        ({"mode": "official", "steps": 3}, "`steps` must be None or 2 with mode='official'"),
        ({"steps": 1.0}, "`steps` must be an integer >= 1"),
        ({"steps": np.float32(1)}, "`steps` must be an integer >= 1"),
        ({"autocast_dtype": "fp16"}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
        ({"autocast_dtype": "float64"}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
        ({"autocast_dtype": torch.float64}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
        ({"autocast_dtype": np.float16}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
        ({"autocast_dtype": 16}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
        ({"autocast_dtype": ["float16"]}, "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32'"),
    ],
)
def test_ce_diagnostic_bad_official_options(kwargs, match):
    model, reference = tiny_causal_lm("llama"), tiny_causal_lm("llama", seed=1)
    saved = snapshot(model)
    handles = [forbid_forward(model), forbid_forward(reference)]
    with pytest.raises(ValueError, match=match):
        ce_diagnostic(model, random_windows(n=2), show_progress=False, reference_model=reference, **kwargs)
    for handle in handles:
        handle.remove()
    assert_restored(model, saved)


def test_autocast_a_torch_lacks_is_refused(monkeypatch):
    """Where torch has no autocast for the dtype on the device it warns and runs in float32: refuse instead."""
    model = tiny_causal_lm("llama")
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *_: False)
    with pytest.raises(ValueError, match="`autocast_dtype` = 'float16': torch .* has no float16 autocast on cpu"):
        ce_diagnostic(model, random_windows(n=2), mode="official", show_progress=False)
    assert ce_diagnostic(model, random_windows(n=2), mode="official", autocast_dtype="float32", show_progress=False)


def test_official_options_take_numpy_scalars():
    model = tiny_causal_lm("llama", hidden=32)
    rows = random_windows(n=2)
    result = ce_diagnostic(model, rows, lr=np.float32(0.05), steps=np.int64(2), mode=np.str_("official"))
    assert result.mode == "official" and type(result.mode) is str and result.steps == 2 and type(result.steps) is int
    scan = latent_memorization_scan(
        model, rows, PREFIX, SUFFIX, n_perturbations=1, min_new_tokens=np.int64(SUFFIX), noise_dtype=np.str_("model")
    )
    assert scan.config["noise_dtype"] == "model" and type(scan.config["noise_dtype"]) is str


@pytest.mark.slow
def test_latent_and_signals_example_runs():
    from tests.testing_utils import load_example

    summary = load_example("latent_and_signals").main(
        n_repeated=8,
        n_once=16,
        n_never=16,
        hidden=32,
        layers=1,
        pretrain_epochs=1,
        n_perturbations=2,
        max_background=64,
        plot=None,
    )
    assert {"exact_match", "ce_diagnostic", "perturbation_scan", "entropy_boundary", "predictor"} <= set(summary)


def test_ce_diagnostic_runs_under_a_callers_inference_mode():
    """Its SGD steps raised "element 0 of tensors does not require grad" under `torch.inference_mode()`."""
    from hf_memory import ce_diagnostic
    from tests.testing_utils import tiny_causal_lm

    model = tiny_causal_lm("llama")
    rows = torch.arange(4, 20)[None].repeat(2, 1)
    plain = ce_diagnostic(model, rows, show_progress=False)
    with torch.inference_mode():
        inside = ce_diagnostic(model, torch.arange(4, 20)[None].repeat(2, 1), show_progress=False)
    assert inside.loss == plain.loss and inside.loss_after == plain.loss_after
    assert inside.weight_change == plain.weight_change
