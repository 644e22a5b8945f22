"""memorization_signals, representation_similarity and MemorizationPredictor on tiny models (and once on SmolLM2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_memory.analysis import (
    MemorizationPredictor,
    MemorizationSignals,
    NgramCounts,
    extraction_labels,
    memorization_signals,
    ngram_counts,
    representation_similarity,
    token_entropy,
)
from hf_memory.analysis.latent import _greedy_suffixes
from hf_memory.extraction import measure_extraction
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


PREFIX, SUFFIX = 6, 10


def random_windows(n=6, length=PREFIX + SUFFIX, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def greedy_windows(model, n=6, seed=0):
    """Windows whose suffix is the model's own greedy continuation: memorized by construction."""
    prefixes = random_windows(n, PREFIX, seed)
    with torch.no_grad():
        return torch.cat([prefixes, _greedy_suffixes(model, prefixes, SUFFIX)], 1)


def test_entropy_of_uniform_and_one_hot():
    assert token_entropy(torch.zeros(TINY_VOCAB)).item() == pytest.approx(math.log(TINY_VOCAB), rel=1e-6)
    one_hot = torch.full((3, 5, 7), -float("inf"))
    one_hot[..., 2] = 0.0
    assert torch.equal(token_entropy(one_hot), torch.zeros(3, 5))
    peaked = torch.zeros(7)
    peaked[0] = 100.0
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([0.0, 0.0, -float("inf")])
    assert token_entropy(half.to(torch.bfloat16)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_signals_match_a_manual_forward(tiny_arch):
    model = tiny_causal_lm(tiny_arch, hidden=32).train()
    windows = random_windows(n=5)
    signals = memorization_signals(model, windows, PREFIX, SUFFIX, batch_size=2, pool="suffix", show_progress=False)
    assert model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=windows, output_hidden_states=True)
    logits = out.logits[:, :-1]
    np.testing.assert_allclose(signals.entropy, token_entropy(logits).numpy(), rtol=1e-4, atol=1e-5)
    suffix = logits[:, PREFIX - 1 :]
    probs = suffix.softmax(-1)
    np.testing.assert_allclose(signals.confidence, probs.amax(-1).mean(-1).numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        signals.true_prob, probs.gather(-1, windows[:, PREFIX:, None])[..., 0].mean(-1).numpy(), rtol=1e-4
    )
    np.testing.assert_allclose(signals.logit_mean, suffix.mean((1, 2)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(signals.logit_var, suffix.var(-1, unbiased=False).mean(-1).numpy(), rtol=1e-4)
    assert signals.hidden.shape == (3, 5, 32)  # embeddings + 2 layers
    np.testing.assert_allclose(
        signals.hidden[-1], out.hidden_states[-1][:, PREFIX:].mean(1).numpy(), rtol=1e-4, atol=1e-6
    )
    # offsets: 0 = the first suffix token (predicted from the last prefix position)
    assert signals.entropy_offsets.tolist() == list(range(1 - PREFIX, SUFFIX))
    assert signals.ngram_offsets.tolist() == list(range(-PREFIX, SUFFIX))
    assert signals.unigram is None and signals.bigram is None


def test_memorized_windows_have_true_token_as_most_likely():
    model = tiny_causal_lm("llama", hidden=32).eval()
    memorized = memorization_signals(model, greedy_windows(model), PREFIX, SUFFIX, show_progress=False)
    unmemorized = memorization_signals(
        model, random_windows(seed=1), PREFIX, SUFFIX, hidden_states=False, show_progress=False
    )
    np.testing.assert_allclose(memorized.true_prob, memorized.confidence, rtol=1e-5)
    assert (unmemorized.true_prob < unmemorized.confidence).all()
    assert unmemorized.hidden is None


def test_ngram_counts_across_the_boundary():
    corpus = [[5, 6, 7, 5, 6], [6, 7]]
    counts = ngram_counts(corpus)
    assert counts.counts[1] == {(5,): 2, (6,): 3, (7,): 2} and counts.total == {1: 7, 2: 5}
    assert counts.counts[2] == {(5, 6): 2, (6, 7): 2, (7, 5): 1}
    assert ngram_counts(corpus, n=3).counts[3][(5, 6, 7)] == 1
    model = tiny_causal_lm("gpt2")
    windows = [[5, 6, 7, 9], [9, 5, 6, 7]]
    signals = memorization_signals(model, windows, 2, 2, ngram_counts=counts, show_progress=False)
    np.testing.assert_array_equal(signals.unigram, [[2, 3, 2, 0], [0, 2, 3, 2]])
    np.testing.assert_array_equal(signals.bigram, [[np.nan, 2, 2, 0], [np.nan, 0, 2, 2]])
    offsets, values = signals.boundary("unigram", 1)
    assert offsets.tolist() == [-1, 0] and values.tolist() == [[3, 2], [2, 3]]
    with pytest.raises(ValueError, match="`n` must be"):
        ngram_counts(corpus, n=0)
    with pytest.raises(ValueError, match="orders 1 and 2"):
        memorization_signals(model, windows, 2, 2, ngram_counts=ngram_counts(corpus, n=3), show_progress=False)
    with pytest.raises(ValueError, match="pass `ngram_counts`"):
        memorization_signals(model, windows, 2, 2, show_progress=False).boundary("bigram", 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"prefix_len": 10, "suffix_len": 7},
            r"`sequences\[0\]` has 16 tokens, fewer than prefix_len \+ suffix_len = 17",
        ),
        ({"sequences": []}, "`sequences` is empty"),
        ({"pool": "mean"}, "`pool` must be one of 'all', 'prefix', 'suffix'"),
        ({"prefix_len": 0}, "`prefix_len` must be an integer >= 1"),
    ],
)
def test_signals_bad_input(kwargs, match):
    model = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match=match):
        memorization_signals(
            model, **({"sequences": random_windows(n=2), "prefix_len": PREFIX, "suffix_len": SUFFIX} | kwargs)
        )


def test_representation_similarity_from_token_spans():
    model = tiny_causal_lm("llama", hidden=32)
    same = [([1, 2, 40, 41, 3], (2, 4))] * 3  # identical contexts: similarity 1 everywhere
    varied = [([1, 2, 40, 41, 3], (2, 4)), ([9, 9, 9, 40, 41], (3, 5)), ([40, 41], (0, 2))]
    sim = representation_similarity(model, {"same": same, "varied": varied})
    np.testing.assert_allclose(sim.per_concept["same"], np.ones(3), atol=1e-6)
    varied_sim = sim.per_concept["varied"]
    assert varied_sim.shape == (3,) and varied_sim[0] == pytest.approx(1.0)  # llama's embeddings carry no position
    assert (varied_sim[1:] < 1 - 1e-4).all() and (varied_sim >= -1).all()
    np.testing.assert_allclose(sim.mean, (sim.per_concept["same"] + varied_sim) / 2)


def test_representation_similarity_from_text(tokenizer):
    model = tiny_causal_lm("gpt2", vocab_size=len(tokenizer), hidden=32)
    contexts = {"dictionary": ["Return a new dictionary.", "The dictionary is empty", "dictionary keys"]}
    sim = representation_similarity(model, contexts, tokenizer=tokenizer)
    assert sim.per_concept["dictionary"].shape == (3,) and np.isfinite(sim.mean).all()
    with pytest.raises(ValueError, match="does not occur in its context 1"):
        representation_similarity(model, {"list": ["a list", "a tuple"]}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="at least 2"):
        representation_similarity(model, {"list": ["a list"]}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="non-empty mapping"):
        representation_similarity(model, {})
    with pytest.raises(ValueError, match=r"\(token ids, \(start, end\)\)"):
        representation_similarity(model, {"x": [[1, 2], [3, 4]]})
    with pytest.raises(ValueError, match="outside the context"):
        representation_similarity(model, {"x": [([1, 2], (1, 3)), ([1, 2], (0, 1))]})


def synthetic_signals(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    entropy = rng.normal(2.0, 0.1, (n, 7)) - labels[:, None] * (np.arange(7) >= 3)  # memorized: entropy drops at 0
    signals = MemorizationSignals(
        confidence=rng.normal(0.5, 0.1, n) + 0.4 * labels,
        true_prob=rng.normal(0.3, 0.1, n),
        logit_mean=rng.normal(size=n),
        logit_var=rng.normal(size=n),
        entropy=entropy,
        entropy_offsets=np.arange(-3, 4),
        ngram_offsets=np.arange(-4, 4),
        hidden=rng.normal(size=(2, n, 4)),
        prefix_len=4,
        suffix_len=4,
    )
    return signals, labels


def test_predictor_separates_synthetic_signals():
    signals, labels = synthetic_signals(80)
    predictor = MemorizationPredictor(boundary_window=3, hidden_layer=-1)
    report = predictor.fit(signals, labels, test_size=0.25, seed=0)
    assert report.n_test == 20 and report.n_train == 60
    assert report.accuracy >= 0.9 and report.auc >= 0.95
    assert report.features[-1] == "hidden[-1]"
    assert predictor.predict_proba(signals).shape == (80,)
    jump = MemorizationPredictor(features=["entropy_jump"], boundary_window=3).feature_matrix(signals)[:, 0]
    assert jump[labels == 1].max() < jump[labels == 0].min()


def test_predictor_bad_input():
    signals, labels = synthetic_signals(20)
    with pytest.raises(ValueError, match="at least 2 memorized and 2 non-memorized"):
        MemorizationPredictor().fit(signals, np.zeros(20))
    with pytest.raises(ValueError, match="one label per window"):
        MemorizationPredictor().fit(signals, labels[:10])
    with pytest.raises(ValueError, match="`features` must be a subset"):
        MemorizationPredictor(features=["loss"])
    with pytest.raises(ValueError, match="not fitted"):
        MemorizationPredictor().predict_proba(signals)
    with pytest.raises(ValueError, match="pass `ngram_counts`"):
        MemorizationPredictor(features=["unigram_suffix"]).feature_matrix(signals)
    with pytest.raises(ValueError, match="`test_size` must be in"):
        MemorizationPredictor().fit(signals, labels, test_size=1.5)


def test_predictor_on_extraction_labels():
    """Labels from the extraction harness: greedy continuations (extractable) vs random text (not)."""
    model = tiny_causal_lm("llama", hidden=32).eval()
    windows = torch.cat([greedy_windows(model, n=12), random_windows(n=12, seed=3)])
    extraction = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    assert extraction_labels(extraction) == [1] * 12 + [0] * 12
    assert extraction_labels(extraction, min_score=0.0) == [1] * 24
    signals = memorization_signals(model, windows, PREFIX, SUFFIX, show_progress=False)
    report = MemorizationPredictor(features=["true_prob", "entropy_suffix"]).fit(signals, extraction, test_size=0.5)
    assert report.auc == 1.0 and report.accuracy >= 0.9


def test_signals_on_smollm2(smollm2):
    """The real model is more confident on the text of the Zen of Python than on the same tokens shuffled."""
    import this

    model, tok = smollm2
    text = "".join(this.d.get(c, c) for c in this.s)
    ids = tok(text, add_special_tokens=False)["input_ids"][:48]
    shuffled = [ids[i] for i in torch.randperm(len(ids), generator=torch.Generator().manual_seed(0)).tolist()]
    signals = memorization_signals(model, [ids, shuffled], 16, 32, hidden_states=False, show_progress=False)
    assert signals.confidence[0] > signals.confidence[1] and signals.true_prob[0] > 2 * signals.true_prob[1]
    _, entropy = signals.boundary("entropy", 8)
    assert entropy[0].mean() < entropy[1].mean()
    sim = representation_similarity(
        model, {"Python": ["I write Python code.", "Python is a language", "Learn Python"]}, tok
    )
    assert sim.mean.shape == (model.config.num_hidden_layers + 1,) and (sim.mean[1:] > 0).all()


def test_ngram_counts_stream_a_generator_and_count_as_added():
    corpus = [[1, 2, 1, 2], [2, 1], [3]]
    whole = ngram_counts(corpus)
    streamed = ngram_counts(iter(corpus))
    added = NgramCounts.empty((1, 2))
    for seq in corpus:
        added.add(torch.tensor(seq))
    for counts in (streamed, added):
        assert counts.counts == whole.counts and counts.total == whole.total and counts.num_sequences == 3
    with pytest.raises(ValueError, match="`sequences` is empty"):
        ngram_counts(iter([]))
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        NgramCounts.empty((1, 0))


def test_ngram_orders_numpy_scalars_and_bad_spans_and_predictor_settings_are_checked_up_front():
    import numpy as np

    from hf_memory.analysis import MemorizationPredictor, NgramCounts, ngram_counts, representation_similarity

    assert NgramCounts.empty(np.int64(2)).total == {2: 0}
    assert ngram_counts([[1, 2, 1]], n=np.int64(2)).counts[2][(1, 2)] == 1
    model = tiny_causal_lm("llama", vocab_size=32)
    with pytest.raises(ValueError, match="vocabulary"):
        representation_similarity(model, {"x": [([1, 40], (0, 2)), ([1, 2], (0, 2))]})
    with pytest.raises(ValueError, match="span"):
        representation_similarity(model, {"x": [([1, 2], (0.5, 2)), ([1, 2], (0, 2))]})
    for kwargs, match in (({"hidden_layer": True}, "hidden_layer"), ({"C": -1}, "`C`"), ({"max_iter": 0}, "max_iter")):
        with pytest.raises(ValueError, match=match):
            MemorizationPredictor(**kwargs)


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_float_labels_are_refused_not_truncated():
    from hf_memory import MemorizationPredictor, memorization_signals

    model = tiny_causal_lm("llama")
    signals = memorization_signals(model, [list(range(4, 20))] * 8, 8, 8, show_progress=False)
    with pytest.raises(ValueError, match="must be 0/1"):
        MemorizationPredictor().fit(signals, [1.0, 0.95, 0.9, 0.0, 1.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="must be 0/1"):
        MemorizationPredictor().fit(signals, ["1", "0"] * 4)
