"""latent_memorization_scan and ce_diagnostic: right numbers, reproducible noise, weights restored on every exit path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_memory.analysis.latent import _add_noise, _greedy_suffixes, ce_diagnostic, latent_memorization_scan
from hf_memory.extraction import measure_extraction
from tests.conftest import TINY_VOCAB, tiny_causal_lm


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


@pytest.mark.parametrize("run", ["scan", "ce"])
def test_weights_restored_after_keyboard_interrupt(run):
    model = tiny_causal_lm("opt", hidden=32).train()
    first = next(model.parameters())
    first.requires_grad_(False)
    saved = snapshot(model)
    handle = model.register_forward_hook(Interrupt(at=14 if run == "scan" else 4))
    with pytest.raises(KeyboardInterrupt):
        if run == "scan":
            latent_memorization_scan(
                model, random_windows(n=2), PREFIX, SUFFIX, sigma=0.1, n_perturbations=4, show_progress=False
            )
        else:
            ce_diagnostic(model, random_windows(n=3), lr=0.5, show_progress=False)
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


@pytest.mark.slow
def test_latent_and_signals_example_runs():
    from tests.conftest import load_example

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
