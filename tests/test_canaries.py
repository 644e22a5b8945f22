"""Canaries: a seeded draw from a template and an alphabet, insertion at chosen repetitions, and exposure by
enumeration (equal to a brute-force rank) or by the paper's skew-normal estimate."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_memory.canaries import (
    CanaryConfig,
    ExposureResult,
    canary_exposure,
    canary_log_perplexity,
    check_tokenization,
    insert_canaries,
    make_canaries,
)
from tests.snippets import snippet_tokenizer
from tests.testing_utils import tiny_causal_lm


DIGITS = CanaryConfig("my PIN is:{secret}.", alphabet="0123456789", length=3)  # digits cut one by one after ':'


@pytest.fixture(scope="module")
def tokenizer():
    return snippet_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_causal_lm(vocab_size=len(tokenizer), hidden=32, seed=0).eval()


def brute_force_rank(model, tokenizer, config, secret):
    """Each candidate scored alone (no batch, no padding), sorted; the canary's place (ties share the best)."""
    scores = {}
    for candidate in config.secrets():
        ids = torch.tensor([tokenizer(config.text(candidate))["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        scores[candidate] = -log_probs.gather(-1, ids[0, 1:, None]).sum().item() / math.log(2)
    return 1 + sum(score < scores[secret] - 1e-9 for score in scores.values()), scores


def test_config_checks_and_round_trips(tmp_path):
    assert DIGITS.space_size == 1000 and DIGITS.text("042") == "my PIN is:042."
    assert DIGITS.index("000") == 0 and DIGITS.index("042") == 42 and list(DIGITS.secrets())[42] == "042"
    DIGITS.save_pretrained(tmp_path)
    assert CanaryConfig.from_pretrained(tmp_path) == DIGITS
    assert CanaryConfig(length=np.int64(2)).length == 2
    for kwargs, match in [
        ({"template": "my PIN is ______"}, "slot"),
        ({"template": "{secret} and {secret}"}, "2 slots"),
        ({"template": 3}, "template"),
        ({"alphabet": ""}, "alphabet"),
        ({"alphabet": "0120"}, "repeats"),
        ({"alphabet": ["0", "1"]}, "alphabet"),
        ({"length": 0}, "length"),
        ({"length": 2.5}, "length"),
    ]:
        with pytest.raises(ValueError, match=match):
            CanaryConfig(**kwargs)
    for bad in ("04", "0a2", 42, None):
        with pytest.raises(ValueError, match="secret"):
            DIGITS.check_secret(bad)


def test_make_canaries_is_seeded_distinct_and_uniform():
    first = make_canaries(DIGITS, 50, seed=3)
    assert first == make_canaries(DIGITS, 50, seed=np.int64(3)) and first != make_canaries(DIGITS, 50, seed=4)
    assert len(set(first)) == 50 and all(DIGITS.check_secret(s) for s in first)
    whole = make_canaries(CanaryConfig("{secret}", alphabet="ab", length=3), 8)
    assert sorted(whole) == ["aaa", "aab", "aba", "abb", "baa", "bab", "bba", "bbb"]
    counts = np.bincount([int(s[0]) for s in make_canaries(DIGITS, 1000, seed=1)], minlength=10)
    assert counts.tolist() == [100] * 10  # the whole space: each first digit 100 times
    huge = CanaryConfig(alphabet="0123456789abcdef", length=40)  # 16^40 candidates: drawn without building them
    assert len(make_canaries(huge, 3)[0]) == 40
    with pytest.raises(ValueError, match="num_canaries"):
        make_canaries(CanaryConfig("{secret}", alphabet="ab", length=3), 9)
    with pytest.raises(ValueError, match="num_canaries"):
        make_canaries(DIGITS, 0)
    with pytest.raises(TypeError, match="CanaryConfig"):
        make_canaries({"length": 3}, 2)


def test_insert_canaries_at_the_repetitions_asked():
    texts = [f"doc {i}" for i in range(20)]
    canaries = [DIGITS.text(s) for s in make_canaries(DIGITS, 3)]
    out = insert_canaries(texts, canaries, repetitions=[1, 4, 16], seed=0)
    assert [out.count(c) for c in canaries] == [1, 4, 16]
    assert [t for t in out if t not in canaries] == texts  # the corpus keeps its order
    assert (
        out == insert_canaries(texts, canaries, [1, 4, 16], seed=0) != insert_canaries(texts, canaries, [1, 4, 16], 1)
    )
    assert texts == [f"doc {i}" for i in range(20)]  # not changed in place
    dataset = Dataset.from_dict({"text": texts, "source": ["a"] * 20})
    rows = insert_canaries(dataset, canaries, 2)
    assert isinstance(rows, Dataset) and len(rows) == 26 and rows["text"].count(canaries[0]) == 2
    assert rows["source"].count(None) == 6
    for call, match in [
        (lambda: insert_canaries(texts, canaries, [1, 4]), "one per canary"),
        (lambda: insert_canaries(texts, canaries, 0), "repetitions"),
        (lambda: insert_canaries(texts, "my PIN is 1", 1), "canaries"),
        (lambda: insert_canaries("doc", canaries, 1), "texts"),
        (lambda: insert_canaries([1, 2], canaries, 1), "texts\\[0\\]"),
        (lambda: insert_canaries(dataset, canaries, 1, column="body"), "column"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_enumeration_equals_a_brute_force_rank(model, tokenizer):
    config = CanaryConfig("my PIN is:{secret}.", alphabet="0123456789", length=2)
    secrets = ["00", "42", "99", "17"]
    result = canary_exposure(model, tokenizer, secrets, config, method="enumerate", batch_size=7)
    assert result.method == "enumerate" and result.candidates_scored == 100
    for secret, rank, exposure, lp in zip(secrets, result.rank, result.exposure, result.log_perplexity):
        expected, scores = brute_force_rank(model, tokenizer, config, secret)
        assert rank == expected
        assert exposure == pytest.approx(math.log2(100) - math.log2(expected))
        assert lp == pytest.approx(scores[secret], abs=1e-4)
    best = min(scores, key=scores.get)
    top = canary_exposure(model, tokenizer, [best], config, batch_size=64)  # batching does not change the ranks
    assert top.rank == [1] and top.exposure == [pytest.approx(math.log2(100))]


def test_a_trained_canary_gains_exposure_and_its_untrained_siblings_do_not(tokenizer):
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden=32, seed=1)
    secrets = make_canaries(DIGITS, 2, seed=0)
    ids = torch.tensor([tokenizer(DIGITS.text(secrets[0]))["input_ids"]])
    before = canary_exposure(model, tokenizer, secrets, DIGITS, batch_size=250)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = canary_exposure(model, tokenizer, secrets, DIGITS, batch_size=250)
    assert after.exposure[0] == pytest.approx(math.log2(1000)) and after.rank[0] == 1
    assert before.exposure[0] < 8 and after.exposure[1] < 8


def test_estimate_is_close_to_enumeration_where_both_run(model, tokenizer):
    """On 10^3 candidates: the skew-normal estimate from 500 draws lies within 1 bit of the exact exposure for
    canaries from the bottom to the top decile of the space (the fit is a tail model: errors grow at the very top)."""
    exact = canary_exposure(model, tokenizer, list(DIGITS.secrets()), DIGITS, batch_size=250)
    order = np.argsort(exact.log_perplexity)
    picked = [exact.secrets[i] for i in order[[100, 300, 500, 700, 900]]]
    estimate = canary_exposure(model, tokenizer, picked, DIGITS, method="estimate", num_samples=500, batch_size=250)
    truth = [exact.exposure[exact.secrets.index(s)] for s in picked]
    assert estimate.method == "estimate" and estimate.rank is None and set(estimate.fit) == {"shape", "loc", "scale"}
    assert np.allclose(estimate.exposure, truth, atol=1.0), (estimate.exposure, truth)
    assert np.allclose(estimate.sampled_exposure, truth, atol=1.0)


def test_bad_input_is_refused_before_work_and_ambiguous_alphabets_warn(model, tokenizer):
    calls = []
    counting = copy.deepcopy(model)
    counting.register_forward_hook(lambda *a: calls.append(1))
    for kwargs, match in [
        ({"secrets": []}, "secrets"),
        ({"secrets": "042"}, "secrets"),
        ({"secrets": ["04"]}, "secrets\\[0\\]"),
        ({"method": "exact"}, "method"),
        ({"num_samples": 5, "method": "estimate"}, "num_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"config": CanaryConfig(length=7), "secrets": ["0000000"], "method": "enumerate"}, "estimate"),
    ]:
        call = {"secrets": ["042"], "config": DIGITS, **kwargs}
        with pytest.raises(ValueError, match=match):
            canary_exposure(counting, tokenizer, **call)
    with pytest.raises(TypeError, match="CanaryConfig"):
        canary_exposure(counting, tokenizer, ["042"], {"length": 3})
    assert calls == []
    merging = CanaryConfig("my PIN is {secret}", alphabet="0123456789", length=2)  # 'Ġ1' merges, 'Ġ0' does not
    assert check_tokenization(tokenizer, DIGITS, list(DIGITS.secrets()))
    with pytest.warns(UserWarning, match="mixes tokenizations"):
        canary_exposure(model, tokenizer, ["10"], merging, batch_size=100)


def test_log_perplexity_is_batch_independent(model, tokenizer):
    texts = ["my PIN is:042.", "a longer text, with more tokens in it than the other", "x y"]
    one = np.concatenate([canary_log_perplexity(model, tokenizer, [t]) for t in texts])
    assert np.allclose(canary_log_perplexity(model, tokenizer, texts, batch_size=3), one, atol=1e-4)
    assert isinstance(canary_exposure(model, tokenizer, ["042"], DIGITS, batch_size=500), ExposureResult)
    with pytest.raises(ValueError, match="texts"):
        canary_log_perplexity(model, tokenizer, "my PIN")


@pytest.mark.slow  # trains a tiny model and enumerates 10^4 candidates: about a minute
def test_evidence_script_small_mode_runs(tmp_path):
    """`examples/canary_exposure.py --small` writes its summary: the canary inserted 16 times is more exposed than
    the fresh ones (the control), and the rerun reads the stored runs instead of training again."""
    import json

    from tests.testing_utils import run_example

    command = ["--small", "--output-dir", str(tmp_path)]
    out = run_example("canary_exposure", *command)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        summary = json.load(f)["summary"]
    assert set(summary) == {"standard", "goldfish"}
    for arm in summary.values():
        exposure = arm["mean_exposure_bits"]
        assert exposure["inserted x16"]["mean"] > exposure["fresh (control)"]["mean"] + 2
        assert 0 <= arm["membership_auc_exposure"]["mean"] <= 1
        assert arm["estimate_abs_error_bits"]["canaries"] == 18
        pooled = arm["membership_pooled"]["all inserted"]  # one seed: 9 inserted against 9 fresh, too few for 10% FPR
        assert pooled["roc_auc"] == pytest.approx(arm["membership_auc_exposure"]["mean"])
        assert pooled["num_non_members"] == 9 and len(pooled["roc_auc_interval"]) == 2
        assert set(pooled["not_measurable"]) == {"tpr_at_0.1_fpr", "tpr_at_0.01_fpr", "tpr_at_0.001_fpr"}
        space = arm["membership_whole_space"]["inserted x16"]["tpr_at_0.001_fpr"]
        assert space["members"] == 3 and 0 <= space["interval"][0] <= space["tpr"] <= space["interval"][1] <= 1
    plot = tmp_path / "exposure.png"
    again = run_example("canary_exposure", *command, "--plot", str(plot))
    assert again.returncode == 0 and "seed 0: exposure" not in again.stdout  # nothing trained twice
    assert plot.stat().st_size > 10_000  # the figure of exposure against insertions, from the stored runs
    with open(tmp_path / "results.json") as f:
        rerun = json.load(f)
    assert rerun["runs_trained_now"] == 0 and rerun["summary"] == {**summary}  # the same numbers, aggregated again


def test_training_mode_is_given_back_numpy_settings_and_two_threads(model, tokenizer):
    import threading

    trained = copy.deepcopy(model).train()
    config = CanaryConfig("my PIN is:{secret}.", alphabet="0123", length=np.int64(2))
    first = canary_exposure(trained, tokenizer, ["01", "32"], config, batch_size=np.int64(5))
    assert trained.training and all(m.training for m in trained.modules())
    results = [None, None]

    def work(i):
        results[i] = canary_exposure(trained, tokenizer, ["01", "32"], config, batch_size=3 + i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.rank for r in results] == [first.rank, first.rank] and trained.training
    estimate = canary_exposure(trained, tokenizer, ["01"], config, method="estimate", num_samples=np.int64(50))
    assert len(estimate.exposure) == 1 and estimate.candidates_scored == 51


# ---------------------------------------------------------------- the callback


def canary_trainer(tmp_path, tokenizer, model, callbacks, max_steps=12, seed=0, **overrides):
    """A Trainer on a few docstrings with two canaries inserted 2 and 8 times."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_memory.data import stdlib_docstrings

    inserted = make_canaries(DIGITS, 2, seed=0)
    docs = stdlib_docstrings(min_chars=200, max_docs=16)
    texts = insert_canaries(docs, [DIGITS.text(s) for s in inserted], [2, 8], seed=0)
    ids = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 8,
        "max_steps": max_steps,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": seed,
        **overrides,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=Dataset.from_dict({"input_ids": ids}),
        eval_dataset=Dataset.from_dict({"input_ids": ids[:8]}) if "eval_strategy" in overrides else None,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks,
    )


def test_callback_logs_exposure_rising_over_training_and_gives_training_mode_back(tmp_path, tokenizer):
    from transformers import TrainerCallback

    from hf_memory import CanaryExposureCallback as top_level
    from hf_memory.canaries import CANARY_LOG_PREFIX, CanaryExposureCallback
    from hf_memory.membership import membership_inference_scores

    class Probe(TrainerCallback):  # after the canary callback: the model's mode and gradients at every step end
        def __init__(self):
            self.modes = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.modes.append(all(m.training for m in model.modules()))

    assert top_level is CanaryExposureCallback
    inserted, fresh = make_canaries(DIGITS, 2, seed=0), make_canaries(DIGITS, 12, seed=99)[2:]
    fresh = [s for s in fresh if s not in inserted]
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden=32, seed=2)
    before = canary_exposure(model, tokenizer, inserted + fresh, DIGITS, batch_size=250)
    callback = CanaryExposureCallback(
        tokenizer, DIGITS, inserted, repetitions=[np.int64(2), 8], fresh_secrets=fresh, every=6, batch_size=250
    )
    probe = Probe()
    trainer = canary_trainer(tmp_path, tokenizer, model, [callback, probe])
    trainer.train()

    logged = [e for e in trainer.state.log_history if any(k.startswith(CANARY_LOG_PREFIX) for k in e)]
    names = ["exposure_mean", "exposure_x2", "exposure_x8", "exposure_fresh", "auc"]
    assert [e["step"] for e in logged] == [6, 12] and callback.metric_names() == names
    assert all(set(e) == {*(CANARY_LOG_PREFIX + n for n in names), "step", "epoch"} for e in logged)
    assert probe.modes == [True] * 12 and model.training  # training mode given back after each measurement
    # the last measurement is what a direct call on the trained model gives
    after = canary_exposure(model, tokenizer, inserted + fresh, DIGITS, batch_size=250)
    assert callback.results[-1].exposure == pytest.approx(after.exposure)
    last = logged[-1]
    assert last["canaries/exposure_x8"] == pytest.approx(after.exposure[1])
    assert last["canaries/exposure_mean"] == pytest.approx(np.mean(after.exposure[:2]))
    assert last["canaries/exposure_fresh"] == pytest.approx(np.mean(after.exposure[2:]))
    labels = [1, 1] + [0] * len(fresh)
    assert last["canaries/auc"] == pytest.approx(membership_inference_scores(after.exposure, labels)["roc_auc"])
    # exposure of the canary inserted 8 times rises with training, far above its fresh siblings
    assert before.exposure[1] < 6 and last["canaries/exposure_x8"] > before.exposure[1] + 2
    assert last["canaries/exposure_x8"] > last["canaries/exposure_fresh"] + 2 and last["canaries/auc"] > 0.5
    assert logged[0]["canaries/exposure_mean"] < last["canaries/exposure_mean"]  # still rising (x2) after step 6


def test_callback_leaves_training_bit_identical(tmp_path, tokenizer):
    """The base gives the global random states back: training with dropout is the same with and without it."""
    from transformers import TrainerCallback

    from hf_memory.canaries import CanaryExposureCallback

    class DrawsFromTheGlobalRNG(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.rand(1)

    def weights(folder, callbacks):
        model = tiny_causal_lm("gpt2", vocab_size=len(tokenizer), seed=3)  # dropout 0.1 draws at every step
        canary_trainer(tmp_path / folder, tokenizer, model, callbacks, max_steps=4, seed=7).train()
        return model.state_dict()

    config = CanaryConfig("my PIN is:{secret}.", alphabet="0123456789", length=2)
    estimate = CanaryExposureCallback(tokenizer, config, ["04", "51"], every=1, method="estimate", num_samples=20)
    without, with_callback = weights("a", []), weights("b", [estimate])
    assert len(estimate.history) == 4
    assert all(torch.equal(without[name], with_callback[name]) for name in without)
    careless = weights("c", [DrawsFromTheGlobalRNG()])  # the comparison can fail
    assert not all(torch.equal(without[name], careless[name]) for name in without)


def test_callback_refuses_bad_settings_at_construction(tokenizer):
    from hf_memory.canaries import CanaryExposureCallback

    good = {"tokenizer": tokenizer, "config": DIGITS, "secrets": ["042", "117"]}
    for kwargs, match in [
        ({"secrets": []}, "secrets"),
        ({"secrets": "042"}, "secrets"),
        ({"secrets": ["42"]}, "secrets\\[0\\]"),
        ({"secrets": ["042", "042"]}, "repeats"),
        ({"fresh_secrets": ["117", "300"]}, "never have been inserted"),
        ({"fresh_secrets": ["30"]}, "fresh_secrets\\[0\\]"),
        ({"repetitions": [1]}, "one per secret"),
        ({"repetitions": [1, 0]}, "repetitions\\[1\\]"),
        ({"repetitions": "4"}, "repetitions"),
        ({"repetitions": 2.5}, "repetitions"),
        ({"fprs": (rate for rate in [0.01, 0.01]), "fresh_secrets": ["300"]}, "twice"),
        ({"method": "exact"}, "method"),
        ({"config": CanaryConfig(length=7), "secrets": ["0000000"], "method": "enumerate"}, "estimate"),
        ({"num_samples": 5}, "num_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"every": 0}, "every"),
        ({"fresh_secrets": ["300"], "fprs": [1.5]}, "fprs"),
        ({"tokenizer": None}, "tokenizer"),
        ({"config": CanaryConfig("{secret}", alphabet="0123456789", length=1), "secrets": ["4"]}, "fewer than 2"),
    ]:
        with pytest.raises(ValueError, match=match):
            CanaryExposureCallback(**{**good, **kwargs})
    with pytest.raises(TypeError, match="CanaryConfig"):
        CanaryExposureCallback(tokenizer, {"length": 3}, ["042"])
    merging = CanaryConfig("my PIN is {secret}", alphabet="0123456789", length=2)
    with pytest.warns(UserWarning, match="mixes tokenizations"):
        CanaryExposureCallback(tokenizer, merging, ["10"])
    fresh = [f"{i:03d}" for i in range(100, 250)]
    many = CanaryExposureCallback(tokenizer, DIGITS, ["042"], fresh_secrets=fresh, fprs=iter([0.01, np.float64(1e-3)]))
    assert many.metric_names()[-1] == "tpr_at_0.01_fpr" and list(many.not_measurable) == ["tpr_at_0.001_fpr"]
    assert many.fprs == (0.01, 0.001)  # a one-pass iterable is kept for every measurement
    one_count = CanaryExposureCallback(tokenizer, DIGITS, ["042", "117"], repetitions=np.int64(4))
    assert one_count.repetitions == [4, 4] and one_count.metric_names() == ["exposure_mean", "exposure_x4"]


def test_callback_refuses_at_train_begin_before_the_first_step(tmp_path, tokenizer):
    from hf_memory.canaries import CanaryExposureCallback

    small_vocabulary = tiny_causal_lm(vocab_size=64, seed=0)  # the canaries' BPE ids reach past 64
    for model, callback, overrides, match in [
        (small_vocabulary, CanaryExposureCallback(tokenizer, DIGITS, ["042"], every=1), {}, "vocabulary"),
        (None, CanaryExposureCallback(tokenizer, DIGITS, ["042"]), {}, "never evaluates"),
        (
            None,
            CanaryExposureCallback(tokenizer, DIGITS, ["042"], every=1),
            {"metric_for_best_model": "canaries/auc", "eval_strategy": "steps", "eval_steps": 1},
            "reports",
        ),
    ]:
        model = model or tiny_causal_lm(vocab_size=len(tokenizer), seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = canary_trainer(tmp_path, tokenizer, model, [callback], max_steps=2, **overrides)
        with pytest.raises(ValueError, match=match):
            trainer.train()
        assert trainer.state.global_step == 0 and callback.history == []
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
