"""membership_scores: each attack against its published definition computed independently, padding / sorting /
streaming invariance, tokenizers of two families, and hostile input."""

from __future__ import annotations

import copy
import itertools
import threading
import zlib

import numpy as np
import pytest
import torch
from datasets import Dataset

import hf_memory
from hf_memory.data import stdlib_docstrings, word_level_tokenizer
from hf_memory.membership import (
    MEMBERSHIP_ATTACKS,
    MembershipConfig,
    MembershipResult,
    attack_scores,
    membership_scores,
    token_statistics,
)
from tests.testing_utils import tiny_causal_lm


VOCAB = 512  # the docstring BPE's size


@pytest.fixture(scope="module")
def texts():
    return stdlib_docstrings(min_chars=200, max_docs=12)


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(vocab_size=VOCAB, hidden=32, seed=0).eval()


@pytest.fixture(scope="module")
def reference():
    return tiny_causal_lm(vocab_size=VOCAB, hidden=32, seed=1).eval()


def ids_of(tokenizer, texts, length=40):
    return [tokenizer(text)["input_ids"][:length] for text in texts]


# ---------------------------------------------------------------- the definitions, computed independently


def _definition_scores(model, ids, k, text=None, reference=None, reference_ids=None) -> dict:
    """Every attack from its paper's definition, in float64 and plain numpy, one document at a time."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    log_p = torch.log_softmax(logits, -1).numpy()
    p = np.exp(log_p)
    targets = np.array(ids[1:])
    token = log_p[np.arange(len(targets)), targets]
    mu = (p * log_p).sum(-1)
    sigma = np.sqrt((p * log_p**2).sum(-1) - mu**2)  # the Min-K%++ authors' E[log p^2] - mu^2
    z = (token - mu) / sigma
    count = max(1, int(len(token) * k))
    out = {
        "loss": token.mean(),
        "min_k": np.sort(token)[:count].mean(),
        "min_k_plus_plus": np.sort(z)[:count].mean(),
    }
    if text is not None:
        out["zlib"] = token.mean() / len(zlib.compress(bytes(text, "utf-8")))
    if reference is not None:
        with torch.no_grad():
            reference_logits = reference(torch.tensor([reference_ids])).logits[0, :-1].double()
        reference_log_p = torch.log_softmax(reference_logits, -1).numpy()
        reference_nll = -reference_log_p[np.arange(len(reference_ids) - 1), reference_ids[1:]].mean()
        out["reference"] = reference_nll - (-token.mean())
    return out


def test_token_statistics_equal_the_min_k_plus_plus_standardization_on_fixed_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 50, generator=generator, dtype=torch.float64) * 4
    targets = torch.randint(0, 50, (30,), generator=generator)
    log_probs, z = token_statistics(logits, targets)
    log_p = torch.log_softmax(logits, -1)
    p = log_p.exp()
    mu = (p * log_p).sum(-1)
    sigma = ((p * log_p**2).sum(-1) - mu**2).sqrt()
    true = log_p[torch.arange(30), targets]
    torch.testing.assert_close(log_probs.double(), true, atol=1e-5, rtol=0)
    torch.testing.assert_close(z.double(), (true - mu) / sigma, atol=1e-4, rtol=1e-5)


def test_attack_scores_are_the_published_definitions_on_fixed_values():
    log_probs = torch.tensor([-0.5, -3.0, -1.0, -7.0, -2.0, -0.1, -4.0, -0.2, -0.3, -6.0])
    z = torch.tensor([0.3, -1.0, 0.0, -2.5, -0.4, 0.9, -1.5, 0.8, 0.7, -2.0])
    scores = attack_scores(log_probs, z, k=0.2, compressed=50)
    assert scores["loss"] == pytest.approx(-24.1 / 10)
    assert scores["zlib"] == pytest.approx(-24.1 / 10 / 50)
    assert scores["min_k"] == pytest.approx((-7.0 - 6.0) / 2)  # the lowest int(10 * 0.2) = 2
    assert scores["min_k_plus_plus"] == pytest.approx((-2.5 - 2.0) / 2)
    # n * k < 1: the reference codes average an empty list (NaN); one token is taken
    assert attack_scores(log_probs[:3], z[:3], k=0.2, compressed=None) == {
        "loss": pytest.approx(-4.5 / 3),
        "min_k": pytest.approx(-3.0),
        "min_k_plus_plus": pytest.approx(-1.0),
    }


def test_one_hot_and_masked_distributions_give_finite_scores():
    logits = torch.full((3, 8), -1e4)
    logits[:, 2] = 50.0  # one-hot: sigma = 0
    logits[1, 5] = -float("inf")  # a masked logit
    log_probs, z = token_statistics(logits, torch.tensor([2, 2, 3]))
    assert torch.isfinite(z).all()
    assert z[0] == pytest.approx(0.0, abs=1e-3) and z[2] < -1e6  # the top token: no surprise; another: a huge one


def test_every_attack_equals_its_definition_on_text(model, reference, tokenizer, texts):
    result = membership_scores(
        model, texts, tokenizer=tokenizer, reference_model=reference, max_tokens=64, k=0.3, show_progress=False
    )
    assert result.attacks == ["loss", "zlib", "min_k", "min_k_plus_plus", "reference"]
    for i, text in enumerate(texts):
        ids = tokenizer(text)["input_ids"]
        kept = ids[:64]
        end = max(end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"][:64])
        expected = _definition_scores(model, kept, 0.3, text[:end] if len(ids) > 64 else text, reference, kept)
        for name, value in expected.items():
            assert result.scores[name][i] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, i)
    assert result.num_truncated == sum(len(tokenizer(t)["input_ids"]) > 64 for t in texts) > 0
    assert list(result.num_tokens) == [min(len(tokenizer(t)["input_ids"]), 64) - 1 for t in texts]


def test_higher_means_member_for_every_attack(tokenizer, texts):
    """A model trained on half the documents scores that half higher under every attack (the one convention)."""
    model = tiny_causal_lm(vocab_size=VOCAB, hidden=32, seed=0)
    base = copy.deepcopy(model).eval()
    rows = ids_of(tokenizer, texts, 32)
    members = torch.tensor(rows[:6])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=members, labels=members).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    result = membership_scores(model, rows, tokenizer=tokenizer, reference_model=base, show_progress=False)
    for name, values in result.scores.items():
        assert values[:6].min() > values[6:].max(), name


# ---------------------------------------------------------------- batching, padding, order, windows


def test_same_scores_with_batch_sizes_1_and_7_and_any_input_order(model, tokenizer, texts):
    rows = [ids[: 10 + 3 * i] for i, ids in enumerate(ids_of(tokenizer, texts, 60))]  # mixed lengths
    one = membership_scores(model, rows, tokenizer=tokenizer, batch_size=1, show_progress=False)
    seven = membership_scores(model, rows, tokenizer=tokenizer, batch_size=7, read_ahead=5, show_progress=False)
    backwards = membership_scores(model, rows[::-1], tokenizer=tokenizer, batch_size=7, show_progress=False)
    for name in one.attacks:
        np.testing.assert_allclose(one.scores[name], seven.scores[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.scores[name], backwards.scores[name][::-1], rtol=1e-5, atol=1e-6)
    assert one.digests == seven.digests == backwards.digests[::-1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_score_as_unpadded_rows(model, tokenizer, texts, side):
    padded_tokenizer = copy.deepcopy(tokenizer)
    padded_tokenizer.padding_side = side
    batch = padded_tokenizer([t[: 40 + 30 * i] for i, t in enumerate(texts[:5])], padding=True, return_tensors="pt")
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert len({len(r) for r in rows}) > 1  # the batch really is padded
    from_batch = membership_scores(model, batch, show_progress=False)
    plain = membership_scores(model, rows, show_progress=False)
    for name in plain.attacks:
        np.testing.assert_allclose(from_batch.scores[name], plain.scores[name], rtol=1e-5, atol=1e-6)


def test_windows_score_every_token_once_with_its_windows_context(model, tokenizer, texts):
    ids = tokenizer(texts[0])["input_ids"][:50]
    whole = membership_scores(model, [ids], windows=True, max_tokens=20, k=0.25, show_progress=False)
    assert whole.num_tokens[0] == 49 and whole.num_truncated == 0
    windows = [ids[0:20], ids[19:39], ids[38:50]]  # each starts on the last token of the one before
    token = []
    with torch.no_grad():
        for window in windows:
            log_p = torch.log_softmax(model(torch.tensor([window])).logits[0, :-1].double(), -1)
            token.append(log_p[torch.arange(len(window) - 1), torch.tensor(window[1:])].numpy())
    token = np.concatenate(token)
    assert whole.scores["loss"][0] == pytest.approx(token.mean(), rel=1e-5)
    assert whole.scores["min_k"][0] == pytest.approx(np.sort(token)[: int(49 * 0.25)].mean(), rel=1e-5)
    cut = membership_scores(model, [ids], max_tokens=20, show_progress=False)
    assert cut.num_tokens[0] == 19 and cut.num_truncated == 1
    same = membership_scores(model, [ids], windows=True, max_tokens=64, show_progress=False)  # one window
    plain = membership_scores(model, [ids], show_progress=False)
    assert same.scores["loss"][0] == pytest.approx(plain.scores["loss"][0], rel=1e-6)


# ---------------------------------------------------------------- tokenizers and vocabularies


def test_a_reference_of_another_vocabulary_reads_the_text_with_its_own_tokenizer(model, tokenizer, texts):
    words = sorted({w for text in texts for w in __import__("re").findall(r"\w+|[^\w\s]+", text)})
    other = word_level_tokenizer(words, max_length=4096)
    reference = tiny_causal_lm(vocab_size=len(other), hidden=16, seed=3).eval()
    result = membership_scores(
        model, texts[:4], tokenizer=tokenizer, reference_model=reference, reference_tokenizer=other,
        max_tokens=400, show_progress=False,
    )  # fmt: skip
    for i, text in enumerate(texts[:4]):
        target_ids = tokenizer(text)["input_ids"][:400]
        end = max(end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"][:400])
        scored = text[:end] if len(tokenizer(text)["input_ids"]) > 400 else text
        expected = _definition_scores(model, target_ids, 0.2, None, reference, other(scored)["input_ids"][:400])
        assert result.scores["reference"][i] == pytest.approx(expected["reference"], rel=1e-4)
    with pytest.raises(ValueError, match="shared vocabulary"):
        membership_scores(model, ids_of(tokenizer, texts[:2]), reference_model=reference, show_progress=False)
    with pytest.raises(ValueError, match="shared vocabulary"):
        membership_scores(
            model, ids_of(tokenizer, texts[:2]), tokenizer=tokenizer, reference_model=reference,
            reference_tokenizer=other, show_progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="reference_tokenizer"):  # text, but the reference would read wrong ids
        membership_scores(model, texts[:2], tokenizer=tokenizer, reference_model=reference, show_progress=False)


def test_token_ids_with_a_tokenizer_get_zlib_of_the_decoded_text(model, tokenizer, texts):
    rows = ids_of(tokenizer, texts[:3])
    with_text = membership_scores(model, rows, tokenizer=tokenizer, show_progress=False)
    without = membership_scores(model, rows, show_progress=False)
    assert "zlib" in with_text.attacks and "zlib" not in without.attacks
    for i, row in enumerate(rows):
        size = len(zlib.compress(tokenizer.decode(row, skip_special_tokens=True).encode("utf-8")))
        assert with_text.scores["zlib"][i] == pytest.approx(with_text.scores["loss"][i] / size)
    np.testing.assert_allclose(with_text.scores["loss"], without.scores["loss"])
    with pytest.raises(ValueError, match="zlib.*needs the text"):
        membership_scores(model, rows, attacks=["zlib"], show_progress=False)


# ---------------------------------------------------------------- streaming


def test_streams_give_the_scores_of_a_list_and_are_read_as_they_go(model, tokenizer, texts):
    listed = membership_scores(model, texts, tokenizer=tokenizer, max_tokens=32, show_progress=False)
    pulled, seen_at_forward = [0], []

    def stream():
        for text in texts:
            pulled[0] += 1
            yield text

    hook = model.register_forward_pre_hook(lambda module, args: seen_at_forward.append(pulled[0]))
    try:
        streamed = membership_scores(
            model, stream(), tokenizer=tokenizer, max_tokens=32, batch_size=2, read_ahead=3, show_progress=False
        )
    finally:
        hook.remove()
    np.testing.assert_allclose(streamed.scores["loss"], listed.scores["loss"], rtol=1e-6)
    # never more than one chunk (3 documents) and the next document ahead of what was scored
    assert seen_at_forward[0] <= 4 and max(seen_at_forward) == len(texts)
    dataset = Dataset.from_dict({"text": texts})
    for data in (dataset, dataset.to_iterable_dataset(), [{"text": t} for t in texts], {"text": texts}):
        got = membership_scores(model, data, tokenizer=tokenizer, max_tokens=32, show_progress=False)
        np.testing.assert_allclose(got.scores["loss"], listed.scores["loss"], rtol=1e-6)
    rows = ids_of(tokenizer, texts, 32)
    from_ids = membership_scores(
        model, Dataset.from_dict({"input_ids": rows}).to_iterable_dataset(), show_progress=False
    )
    np.testing.assert_allclose(
        from_ids.scores["loss"], membership_scores(model, rows, show_progress=False).scores["loss"]
    )


def test_in_memory_data_is_checked_whole_before_any_forward_pass(model, tokenizer, texts):
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for data, match in [
            (texts[:5] + [""], r"data\[5\]. has 0 token"),
            (ids_of(tokenizer, texts[:3]) + [[1, 2, VOCAB + 5]], rf"data\[3\].*token id {VOCAB + 5}"),
            (texts[:2] + [[1, 2, 3]], r"data\[2\]. is token ids, but `data\[0\]` was text"),
            (texts[:2] + [None], r"data\[2\]"),
            (ids_of(tokenizer, texts[:2]) + [[7]], r"data\[2\]. has 1 token"),
        ]:
            with pytest.raises(ValueError, match=match):
                membership_scores(model, data, tokenizer=tokenizer, show_progress=False)
    finally:
        hook.remove()
    assert calls == []


# ---------------------------------------------------------------- hostile calls


def test_bad_calls_fail_first_with_clear_errors(model, tokenizer, texts):
    rows = ids_of(tokenizer, texts[:2])
    for kwargs, error, match in [
        ({"k": 0}, ValueError, "`k`"),
        ({"k": 1.5}, ValueError, "`k`"),
        ({"k": True}, ValueError, "`k`"),
        ({"max_tokens": 1}, ValueError, "`max_tokens`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"windows": 1}, ValueError, "`windows`"),
        ({"attacks": ["loss", "gradnorm"]}, ValueError, "`attacks`"),
        ({"attacks": "loss"}, ValueError, "`attacks`"),
        ({"attacks": []}, ValueError, "`attacks`"),
        ({"attacks": ["loss", "loss"]}, ValueError, "twice"),
        ({"attacks": ["reference"]}, ValueError, "reference_model"),
        ({"show_progress": "no"}, ValueError, "show_progress"),
        ({"config": {"k": 0.2}}, TypeError, "MembershipConfig"),
        ({"kk": 0.2}, TypeError, "kk"),
    ]:
        with pytest.raises(error, match=match):
            membership_scores(model, rows, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        membership_scores(model, [], show_progress=False)
    with pytest.raises(ValueError, match="empty"):
        membership_scores(model, iter([]), show_progress=False)
    with pytest.raises(ValueError, match="must be documents"):
        membership_scores(model, "one text", tokenizer=tokenizer, show_progress=False)
    with pytest.raises(ValueError, match="give the target model's `tokenizer`"):
        membership_scores(model, texts[:2], show_progress=False)
    with pytest.raises(ValueError, match="is `model` itself"):
        membership_scores(model, rows, reference_model=model, show_progress=False)
    with pytest.raises(ValueError, match="causal language model"):
        membership_scores(object(), rows, show_progress=False)
    gpt2 = tiny_causal_lm("gpt2", vocab_size=VOCAB)  # 256 learned positions
    with pytest.raises(ValueError, match="256 learned positions"):
        membership_scores(gpt2, rows, show_progress=False)
    assert len(membership_scores(gpt2, rows, max_tokens=256, show_progress=False)) == 2
    with pytest.raises(ValueError, match="text_column"):
        membership_scores(model, Dataset.from_dict({"body": texts[:2]}), tokenizer=tokenizer, show_progress=False)


def test_numpy_scalars_and_a_config_with_keyword_overrides(model, tokenizer, texts):
    rows = ids_of(tokenizer, texts[:4])
    config = MembershipConfig(k=0.5, batch_size=2)
    by_config = membership_scores(model, rows, config=config, attacks=["min_k"], show_progress=False)
    by_keywords = membership_scores(
        model, rows, k=np.float32(0.5), batch_size=np.int64(2), attacks=("min_k",), show_progress=False
    )
    assert by_config.config == by_keywords.config and by_config.config.k == 0.5
    np.testing.assert_allclose(by_config.scores["min_k"], by_keywords.scores["min_k"])
    assert MembershipConfig.from_dict(by_config.config.to_dict()) == by_config.config


def test_prompt_learning_models_are_refused_and_lora_models_scored(model, tokenizer, texts):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    rows = ids_of(tokenizer, texts[:2])
    prompt = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ValueError, match="prompt-learning"):
        membership_scores(prompt, rows, show_progress=False)
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], r=2))
    np.testing.assert_allclose(  # LoRA B starts at 0: the adapted model scores as the base
        membership_scores(lora, rows, show_progress=False).scores["loss"],
        membership_scores(model, rows, show_progress=False).scores["loss"],
        rtol=1e-5,
    )


def test_the_model_is_left_as_it_was_on_every_exit_path(tokenizer, texts):
    model = tiny_causal_lm(vocab_size=VOCAB, hidden=32, seed=0)
    model.train()
    model.model.layers[0].training = False  # a submodule with its own mode
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    membership_scores(model, texts[:3], tokenizer=tokenizer, attacks=["loss", "ce_diagnostic"], show_progress=False)
    assert model.training and not model.model.layers[0].training

    def interrupted():
        yield texts[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        membership_scores(model, interrupted(), tokenizer=tokenizer, read_ahead=1, show_progress=False)
    assert model.training and not model.model.layers[0].training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_two_threads_and_a_deep_copy_give_the_same_scores(model, tokenizer, texts):
    expected = membership_scores(model, texts, tokenizer=tokenizer, max_tokens=32, show_progress=False).scores
    results = [None, None]

    def work(i):
        results[i] = membership_scores(model, texts, tokenizer=tokenizer, max_tokens=32, show_progress=False).scores

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    copied = membership_scores(copy.deepcopy(model), texts, tokenizer=tokenizer, max_tokens=32, show_progress=False)
    for scores in [*results, copied.scores]:
        for name in expected:
            np.testing.assert_allclose(scores[name], expected[name], rtol=1e-6)


def test_the_ce_diagnostic_column_is_the_calibrated_diagnostic(model, reference, tokenizer, texts):
    from hf_memory.analysis import ce_diagnostic

    rows = ids_of(tokenizer, texts[:4], 24)
    result = membership_scores(
        model, rows, reference_model=reference, attacks=["ce_diagnostic", "reference", "loss"], ce_lr=1e-2,
        show_progress=False,
    )  # fmt: skip
    assert result.attacks == ["loss", "reference", "ce_diagnostic"]
    diagnostic = ce_diagnostic(model, rows, lr=1e-2, reference_model=reference, show_progress=False)
    np.testing.assert_allclose(result.scores["ce_diagnostic"], -np.array(diagnostic.calibrated_loss), rtol=1e-4)
    alone = membership_scores(model, rows, attacks=["ce_diagnostic"], ce_lr=1e-2, show_progress=False)
    np.testing.assert_allclose(alone.scores["ce_diagnostic"], -np.array(diagnostic.loss_after), rtol=1e-4)


def test_the_result_round_trips_and_is_a_dataset(model, tokenizer, texts):
    result = membership_scores(model, texts[:3], tokenizer=tokenizer, show_progress=False)
    assert isinstance(result, MembershipResult) and len(result) == 3
    as_dict = result.to_dict()
    assert set(as_dict["scores"]) == set(result.attacks) and len(as_dict["digests"]) == 3
    rows = result.dataset()
    assert rows.num_rows == 3 and set(result.attacks) <= set(rows.column_names)
    assert hf_memory.membership_scores is membership_scores and set(MEMBERSHIP_ATTACKS) >= set(result.attacks)
    assert len(set(itertools.chain(result.digests))) == 3


@pytest.mark.slow  # a tiny model, a few documents, two fresh processes for the memory: ~30 s
def test_the_cost_benchmark_runs_in_its_small_mode(tmp_path):
    import json
    import os
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "cost.json"
    done = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "membership_cost.py"), "--small", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"one-pass attacks: [\d.]+x the forward", done.stdout)
    results = json.loads(out.read_text())
    assert results["timing"]["one_pass_ratio"] > 0 and results["timing"]["reference_ratio"] > 0
    for allocator in results["memory"]["allocators"].values():
        assert set(allocator["runs"]) == {"4", "400"} and allocator["peak_ratio"] > 0
    assert "CPUs" in results["machine"] and results["memory"]["peak_ratio"] > 0


@pytest.mark.slow  # two torchrun processes
def test_two_processes_give_the_one_process_scores(tmp_path):
    """Each process scores every second chunk of documents; the gathered result is the 1-process one, in order."""
    from tests.distributed_membership import score
    from tests.testing_utils import run_two_processes

    ranks = run_two_processes("distributed_membership.py", tmp_path / "ranks.json")
    single = score()
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert [r["scored"] for r in ranks] == [6, 5]  # chunks 0 and 2 (3 + 3), chunks 1 and 3 (3 + 2)
    for r in ranks:  # every rank ends with the whole result
        assert r["digests"] == single.digests and r["num_tokens"] == single.num_tokens.tolist()
        assert set(r["scores"]) == set(single.scores) >= {"loss", "reference"}
        for name, values in single.scores.items():
            np.testing.assert_allclose(r["scores"][name], values, rtol=1e-5, atol=1e-6, err_msg=name)
