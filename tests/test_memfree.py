"""MemFree: the n-gram index against ground truth (Python sets of tuples), the guard in generate / pipelines, files,
and hostile input."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import LogitsProcessorList, PreTrainedTokenizerFast, pipeline

from hf_memory import MemFreeLogitsProcessor, NgramIndex, NgramIndexConfig
from hf_memory.memfree.hashing import context_hashes
from hf_memory.memfree.index import _facts_digest
from tests.testing_utils import TINY_VOCAB, docstring_bpe, tiny_causal_lm


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 4


def random_corpus(seed=0, docs=40, length=60, vocab=TINY_VOCAB):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, length).tolist() for _ in range(docs)]


def ngram_set(corpus, n=N):
    return {tuple(row[i : i + n]) for row in corpus for i in range(len(row) - n + 1)}


def build(corpus, mode="exact", n=N, **kwargs):
    kwargs.setdefault("vocab_size", TINY_VOCAB)
    return NgramIndex.build(corpus, n=n, mode=mode, show_progress=False, **kwargs)


def generated_ngrams(sequences, n=N):
    return {tuple(row[i : i + n]) for row in sequences.tolist() for i in range(len(row) - n + 1)}


# ---------------------------------------------------------------- config and hashing


def test_config_round_trip_and_numpy_scalars():
    config = NgramIndexConfig(n=np.int64(6), mode="exact", false_positive_rate=np.float32(0.05), hash_seed=np.int32(3))
    assert (config.n, config.hash_seed) == (6, 3) and type(config.n) is int
    assert config.false_positive_rate == pytest.approx(0.05)
    assert NgramIndexConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 1), ("n", 0), ("n", -3), ("n", 2.5), ("n", True), ("n", "4"), ("n", None),
        ("false_positive_rate", 0), ("false_positive_rate", 1), ("false_positive_rate", -0.1),
        ("false_positive_rate", 1.5), ("false_positive_rate", float("nan")), ("false_positive_rate", float("inf")),
        ("false_positive_rate", True), ("hash_seed", -1), ("hash_seed", 2**63), ("hash_seed", 1.0),
        ("capacity", 0), ("capacity", 2.0), ("mode", "bogus"), ("mode", ["bloom"]),
    ],
)  # fmt: skip
def test_bad_settings_are_value_errors_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        NgramIndexConfig(**{field: value})
    with pytest.raises(ValueError, match=f"`{field}`"):  # the same through build, before reading the corpus
        NgramIndex.build(_never_read(), vocab_size=8, show_progress=False, **{field: value})


def _never_read():
    raise AssertionError("the corpus was read before the settings were checked")
    yield  # pragma: no cover


def test_malformed_calls_are_type_errors():
    with pytest.raises(TypeError, match="unexpected keyword"):
        NgramIndex.build([[1, 2, 3]], vocab_size=8, ngram=3)
    with pytest.raises(TypeError, match="NgramIndexConfig"):
        NgramIndex.build([[1, 2, 3]], vocab_size=8, config={"n": 3})
    with pytest.raises(TypeError, match="NgramIndex"):
        MemFreeLogitsProcessor("a folder")


@pytest.mark.slow  # a fresh interpreter
def test_hashes_are_the_same_in_another_process_and_depend_on_the_seed():
    contexts = np.array([[1, 2, 3], [3, 2, 1], [0, 0, 0], [2**40, 7, 9]])
    here = context_hashes(contexts, seed=5).tolist()
    code = (
        "import numpy as np; from hf_memory.memfree.hashing import context_hashes; "
        f"print(context_hashes(np.array({contexts.tolist()}), seed=5).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == here
    assert len(set(here)) == 4  # order matters: [1, 2, 3] and [3, 2, 1] differ
    assert set(context_hashes(contexts, seed=6).tolist()).isdisjoint(here)


# ---------------------------------------------------------------- the index against ground truth


def test_exact_index_is_the_set_of_ngrams():
    corpus = random_corpus()
    truth = ngram_set(corpus)
    index = build(corpus)
    assert index.num_ngrams == len(truth)
    assert index.num_ngram_occurrences == sum(len(row) - N + 1 for row in corpus)
    members = np.array(sorted(truth))
    assert index.contains(members).all()
    rng = np.random.default_rng(1)
    probes = rng.integers(0, TINY_VOCAB, (5000, N))
    expected = [tuple(p) in truth for p in probes.tolist()]
    assert index.contains(probes).tolist() == expected


def test_exact_forbidden_tokens_are_the_successors_of_each_context():
    corpus = random_corpus(docs=20)
    index = build(corpus)
    successors = {}
    for gram in ngram_set(corpus):
        successors.setdefault(gram[:-1], set()).add(gram[-1])
    contexts = [list(c) for c in list(successors)[:200]] + [[1, 2, 3], [127, 127, 127]]
    rows, tokens = index.forbidden_tokens(contexts)
    got = {}
    for row, token in zip(rows.tolist(), tokens.tolist()):
        got.setdefault(row, set()).add(token)
    assert got == {i: successors[tuple(c)] for i, c in enumerate(contexts) if tuple(c) in successors}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bloom_never_misses_and_its_false_positives_stay_near_the_stated_rate(seed):
    corpus = random_corpus(docs=200, length=100)
    truth = ngram_set(corpus)
    exact, bloom = build(corpus), build(corpus, mode="bloom", false_positive_rate=0.02, hash_seed=seed)
    assert bloom.num_ngrams == len(truth) and bloom.false_positive_rate <= 0.021
    assert bloom.contains(np.array(sorted(truth))).all()  # no false negative
    # the hard case: the prefix is in the corpus (so its two lower-order keys are present), the last token not
    rng = np.random.default_rng(seed)
    grams = np.array(sorted(truth))[rng.integers(0, len(truth), 20000)]
    grams[:, -1] = rng.integers(0, TINY_VOCAB, len(grams))
    negatives = grams[~exact.contains(grams)]
    rate = bloom.contains(negatives).mean()
    assert 0 < rate <= 0.02 + 4 * np.sqrt(0.02 / len(negatives))  # binomial: 4 standard deviations
    # forbidden tokens: a superset of the exact ones, with few extra
    contexts = grams[:2000, :-1]
    exact_pairs = set(zip(*(a.tolist() for a in exact.forbidden_tokens(contexts))))
    bloom_pairs = set(zip(*(a.tolist() for a in bloom.forbidden_tokens(contexts))))
    assert exact_pairs <= bloom_pairs
    assert len(bloom_pairs - exact_pairs) <= 0.02 * TINY_VOCAB * len(contexts)


def test_hash_seeds_give_independent_false_positives():
    corpus = random_corpus(docs=200, length=100)
    exact = build(corpus)
    rng = np.random.default_rng(0)
    grams = np.array(sorted(ngram_set(corpus)))[rng.integers(0, 19000, 20000)]
    grams[:, -1] = rng.integers(0, TINY_VOCAB, len(grams))
    negatives = grams[~exact.contains(grams)]
    flagged = [set(np.flatnonzero(build(corpus, "bloom", hash_seed=s).contains(negatives))) for s in (0, 1)]
    assert flagged[0] and flagged[1] and len(flagged[0] & flagged[1]) < 0.2 * min(map(len, flagged))


def test_every_input_form_gives_the_same_index():
    corpus = random_corpus(docs=6, length=30)
    padded = [[0] * 5 + row for row in corpus]
    forms = {  # made afresh for each build: a generator is read once
        "lists": lambda: corpus,
        "tensor": lambda: torch.tensor(corpus),
        "generator": lambda: (row for row in corpus),
        "dataset": lambda: Dataset.from_dict({"input_ids": corpus}),
        "iterable dataset": lambda: IterableDataset.from_generator(lambda: ({"input_ids": row} for row in corpus)),
        "padded mapping": lambda: {"input_ids": padded, "attention_mask": [[0] * 5 + [1] * 30] * 6},
        "row dicts": lambda: [{"input_ids": np.array(row)} for row in corpus],
    }
    probes = np.array(sorted(ngram_set(corpus)) + [[0, 0, 0, 0], [5, 6, 7, 8]])
    reference = build(corpus).contains(probes)
    for name, form in forms.items():
        for mode in ("exact", "bloom"):
            index = build(form(), mode=mode)
            assert index.num_ngrams == len(ngram_set(corpus)), (name, mode)
            assert (index.contains(probes) >= reference).all() and index.contains(probes)[:-2].all(), (name, mode)


def test_ngrams_never_cross_sequence_boundaries_and_short_sequences_are_skipped():
    index = build([[1, 2, 3], [4, 5, 6, 7], [8]], mode="exact")
    assert index.num_ngrams == 1
    assert index.contains([[2, 3, 4, 5], [4, 5, 6, 7], [3, 4, 5, 6]]).tolist() == [False, True, False]


def test_streamed_build_with_capacity_matches_and_warns_when_overfull():
    corpus = random_corpus(docs=50)
    truth = np.array(sorted(ngram_set(corpus)))
    sized = build(iter(corpus), mode="bloom", capacity=len(truth))
    assert sized.num_ngrams is None and sized.contains(truth).all()
    assert sized.num_keys > 0 and sized.false_positive_rate < 0.02
    with pytest.warns(UserWarning, match="false-positive rate is about"):
        small = build(iter(corpus), mode="bloom", capacity=10)
    assert small.contains(truth).all() and small.false_positive_rate > 0.5


def test_only_the_last_n_minus_1_tokens_of_a_row_are_read():
    index = build(random_corpus())
    guard = MemFreeLogitsProcessor(index)
    context = torch.tensor(random_corpus()[3][10:13])
    short = guard(context[None], torch.zeros(1, TINY_VOCAB))
    history = torch.cat([torch.full((5000,), 10**9), context])[None]  # ids no vocabulary has, never read
    assert torch.equal(guard(history, torch.zeros(1, TINY_VOCAB)), short)
    assert torch.isinf(short).any()


# ---------------------------------------------------------------- the guard in generate


def greedy(model, prompts, guard=None, **kwargs):
    """Greedy (or, with `kwargs`, any other decoding) of 12 new tokens, with the guard when given."""
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0, "eos_token_id": None, **kwargs}
    with torch.inference_mode():
        return model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            logits_processor=LogitsProcessorList([guard]) if guard is not None else None,
            **kwargs,
        )


@pytest.mark.parametrize("mode", ["exact", "bloom"])
def test_greedy_guarded_output_holds_no_indexed_ngram(mode):
    model = tiny_causal_lm(hidden=32).eval()
    prompts = torch.randint(0, TINY_VOCAB, (6, 8), generator=torch.Generator().manual_seed(0))
    plain = greedy(model, prompts)  # the "training data": what the model says unguarded
    index = build(plain, mode=mode)
    guard = MemFreeLogitsProcessor(index)
    guarded = greedy(model, prompts, guard)
    assert not index.contains(np.array(sorted(generated_ngrams(guarded[:, 8 - N + 1 :])))).any()
    assert not torch.equal(guarded, plain)
    assert guard.num_masked > 0 and guard.num_steps == 12 and guard.num_fallbacks == 0


def test_an_index_of_other_text_changes_nothing():
    model = tiny_causal_lm(hidden=32).eval()
    prompts = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    plain = greedy(model, prompts)
    unrelated = [list(range(100, 128)) * 2]  # n-grams of ids the outputs do not hold in that order
    assert generated_ngrams(plain).isdisjoint(ngram_set(unrelated))
    guard = MemFreeLogitsProcessor(build(unrelated))
    assert torch.equal(greedy(model, prompts, guard), plain)
    assert guard.num_masked == 0


def test_sampling_and_beam_search_never_complete_an_indexed_ngram():
    model = tiny_causal_lm(hidden=32).eval()
    prompts = torch.randint(0, TINY_VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    settings = {
        "sampling": {"do_sample": True, "top_k": 0, "temperature": 0.3, "num_return_sequences": 2},
        "beam search": {"num_beams": 3, "num_return_sequences": 2},
        "beam sampling": {"num_beams": 2, "do_sample": True, "top_k": 5},
    }
    for name, kwargs in settings.items():
        torch.manual_seed(0)
        plain = greedy(model, prompts, **kwargs)
        index = build(plain)
        guard = MemFreeLogitsProcessor(index)
        torch.manual_seed(0)
        guarded = greedy(model, prompts, guard, **kwargs)
        assert not index.contains(np.array(sorted(generated_ngrams(guarded[:, 8 - N + 1 :])))).any(), name
        assert guard.num_masked > 0, name


def test_batch_rows_are_independent():
    model = tiny_causal_lm(hidden=32).eval()
    prompts = torch.randint(0, TINY_VOCAB, (5, 8), generator=torch.Generator().manual_seed(2))
    index = build(greedy(model, prompts[:3]), mode="bloom")
    together = greedy(model, prompts, MemFreeLogitsProcessor(index))
    alone = torch.cat([greedy(model, prompts[i : i + 1], MemFreeLogitsProcessor(index)) for i in range(5)])
    assert torch.equal(together, alone)


def test_left_padded_batch_is_guarded_on_its_real_tokens():
    model = tiny_causal_lm(hidden=32).eval()
    gen = torch.Generator().manual_seed(3)
    long, short = (
        torch.randint(3, TINY_VOCAB, (1, 10), generator=gen),
        torch.randint(3, TINY_VOCAB, (1, 6), generator=gen),
    )
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.cat([torch.ones(1, 10), torch.cat([torch.zeros(1, 4), torch.ones(1, 6)], 1)]).long()
    kwargs = {
        "attention_mask": mask,
        "max_new_tokens": 10,
        "do_sample": False,
        "pad_token_id": 0,
        "eos_token_id": None,
    }
    with torch.inference_mode():
        plain = model.generate(batch, **kwargs)
        index = build([plain[0].tolist(), plain[1, 4:].tolist()])
        guarded = model.generate(batch, logits_processor=[MemFreeLogitsProcessor(index)], **kwargs)
    for row, start in ((guarded[0], 10 - N + 1), (guarded[1], 4 + 6 - N + 1)):
        assert not index.contains(np.array(sorted(generated_ngrams(row[None, start:])))).any()


def test_text_generation_pipeline_takes_the_guard(tokenizer):
    model = tiny_causal_lm(vocab_size=len(tokenizer), hidden=32).eval()
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    prompt = "Return the number of items"
    settings = {"max_new_tokens": 12, "do_sample": False, "return_tensors": True}
    plain = pipe(prompt, **settings)[0]["generated_token_ids"]  # the prompt's ids, then the new ones
    index = NgramIndex.build([plain], tokenizer, n=N, mode="exact", show_progress=False)
    guard = MemFreeLogitsProcessor(index, tokenizer)
    guarded = pipe(prompt, logits_processor=LogitsProcessorList([guard]), **settings)[0]["generated_token_ids"]
    assert guarded != plain and guard.num_masked > 0
    start = len(tokenizer(prompt)["input_ids"]) - N + 1
    assert not index.contains([guarded[i : i + N] for i in range(start, len(guarded) - N + 1)]).any()


# ---------------------------------------------------------------- fallback


def test_every_token_forbidden_falls_back_to_the_unchanged_row():
    vocab = 3
    corpus = [[a, b, c] for a in range(vocab) for b in range(vocab) for c in range(vocab)]
    index = build(corpus, n=3, vocab_size=vocab)
    scores = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.1, 0.0]])
    guard = MemFreeLogitsProcessor(index)
    with pytest.warns(UserWarning, match="left unchanged"):
        out = guard(torch.tensor([[0, 1], [2, 2]]), scores)
    assert torch.equal(out, scores) and guard.num_fallbacks == 2 and guard.num_masked == 0
    strict = MemFreeLogitsProcessor(index, fallback="error")
    with pytest.raises(RuntimeError, match="completes an indexed n-gram"):
        strict(torch.tensor([[0, 1]]), scores[:1])
    with pytest.raises(ValueError, match="`fallback`"):
        MemFreeLogitsProcessor(index, fallback="least_bad")


def test_a_row_whose_only_open_tokens_are_forbidden_falls_back_other_rows_are_guarded():
    index = build([[0, 1, 2], [0, 1, 1]], n=3, vocab_size=4)
    scores = torch.tensor([[0.0, 0.0, 0.0, float("-inf")], [0.0, 0.0, 0.0, 0.0]])
    scores[0, 0] = float("-inf")  # another processor closed tokens 0 and 3: only 1 and 2 are open, both forbidden
    guard = MemFreeLogitsProcessor(index)
    with pytest.warns(UserWarning):
        out = guard(torch.tensor([[0, 1], [0, 1]]), scores)
    assert torch.equal(out[0], scores[0])
    assert torch.isinf(out[1]).tolist() == [False, True, True, False]
    assert (guard.num_masked, guard.num_fallbacks) == (2, 1)  # the row left unchanged masks nothing


def test_the_guard_never_writes_into_the_scores_it_is_given():
    index = build([[0, 1, 2]], n=3, vocab_size=4)
    scores = torch.zeros(2, 4)
    out = MemFreeLogitsProcessor(index)(torch.tensor([[0, 1], [1, 1]]), scores)
    assert torch.equal(scores, torch.zeros(2, 4)) and torch.isinf(out).nonzero().tolist() == [[0, 2]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_are_guarded_and_keep_their_dtype(dtype):
    vocab = 3
    index = build(
        [[a, b, c] for a in range(vocab) for b in range(vocab) for c in range(vocab)][:-1], n=3, vocab_size=3
    )
    guard = MemFreeLogitsProcessor(index)
    with pytest.warns(UserWarning, match="left unchanged"):
        out = guard(torch.tensor([[2, 2], [0, 0]]), torch.zeros(2, vocab, dtype=dtype))
    # row 0 keeps token 2 (the n-gram 2 2 2 is the one left out); row 1 (context 0 0) has every token forbidden
    assert out.dtype == dtype and torch.isinf(out[0]).tolist() == [True, True, False]
    assert not torch.isinf(out[1]).any() and guard.num_fallbacks == 1


def test_ids_outside_the_index_vocabulary_are_never_an_error():
    """A model's output layer is often wider than its tokenizer (padded to a multiple of 64): contexts may hold ids
    the index never saw, and the scores may be wider or narrower than the index's vocabulary."""
    index = build([[1, 2, 3, 7]], n=3, vocab_size=8)
    guard = MemFreeLogitsProcessor(index)
    wide = guard(torch.tensor([[1, 2], [2, 3], [50, 60], [3, 2**40]]), torch.zeros(4, 64))
    assert torch.isinf(wide).nonzero().tolist() == [[0, 3], [1, 7]]
    narrow = guard(torch.tensor([[1, 2], [2, 3]]), torch.zeros(2, 5))  # token 7 is beyond these scores
    assert torch.isinf(narrow).nonzero().tolist() == [[0, 3]]


# ---------------------------------------------------------------- tokenizers


def test_another_tokenizer_is_refused(tokenizer):
    index = NgramIndex.build([[1, 2, 3, 4]], tokenizer, n=3, mode="exact", show_progress=False)
    assert index.vocab_size == len(tokenizer)
    MemFreeLogitsProcessor(index, tokenizer)  # its own
    other = PreTrainedTokenizerFast(tokenizer_object=docstring_bpe(), pad_token="<pad>")
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="not the tokenizer this n-gram index was built with"):
        MemFreeLogitsProcessor(index, other)
    with pytest.raises(ValueError, match="pass the model's tokenizer"):
        MemFreeLogitsProcessor(index)
    with pytest.raises(ValueError, match="`tokenizer` must be a transformers tokenizer"):
        MemFreeLogitsProcessor(index, "gpt2")
    anonymous = build([[1, 2, 3, 4]])  # built from vocab_size alone: cannot check, takes any
    MemFreeLogitsProcessor(anonymous, other)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("mode", ["exact", "bloom"])
def test_save_and_load_round_trip_without_pickle(mode, tmp_path, tokenizer):
    corpus = random_corpus()
    index = NgramIndex.build(corpus, tokenizer, n=N, mode=mode, hash_seed=7, show_progress=False)
    index.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    data = "memfree_bloom.bin" if mode == "bloom" else "memfree_ngrams.npz"
    assert files == sorted(["memfree_config.json", "memfree_index.json", data])
    if mode == "exact":
        np.load(tmp_path / data, allow_pickle=False).close()
    loaded = NgramIndex.from_pretrained(tmp_path)
    assert loaded.config == index.config and loaded.tokenizer_fingerprint == index.tokenizer_fingerprint
    assert (loaded.num_ngrams, loaded.vocab_size, loaded.nbytes) == (index.num_ngrams, index.vocab_size, index.nbytes)
    probes = np.random.default_rng(0).integers(0, TINY_VOCAB, (3000, N))
    probes[:1000] = np.array(sorted(ngram_set(corpus)))[:1000]
    assert np.array_equal(loaded.contains(probes), index.contains(probes))
    contexts = probes[:, :-1]
    for a, b in zip(loaded.forbidden_tokens(contexts), index.forbidden_tokens(contexts)):
        assert np.array_equal(a, b)
    MemFreeLogitsProcessor(loaded, tokenizer)
    # a loaded index saves the same bytes again
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / data).read_bytes() == (tmp_path / data).read_bytes()


@pytest.mark.parametrize("mode", ["exact", "bloom"])
def test_damaged_or_mixed_files_are_refused_by_name(mode, tmp_path):
    index = build(random_corpus(), mode=mode)
    data = "memfree_bloom.bin" if mode == "bloom" else "memfree_ngrams.npz"
    index.save_pretrained(tmp_path)
    raw = (tmp_path / data).read_bytes()
    (tmp_path / data).write_bytes(raw[:-8])  # cut short
    with pytest.raises(ValueError, match="is not the file this index saved"):
        NgramIndex.from_pretrained(tmp_path)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF  # same size, one byte edited
    (tmp_path / data).write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="sha256"):
        NgramIndex.from_pretrained(tmp_path)
    (tmp_path / data).write_bytes(raw)
    build(random_corpus(seed=1), mode=mode).save_pretrained(tmp_path / "other")
    (tmp_path / data).write_bytes((tmp_path / "other" / data).read_bytes())  # a data file of another save
    with pytest.raises(ValueError, match="is not the file this index saved"):
        NgramIndex.from_pretrained(tmp_path)
    (tmp_path / data).write_bytes(raw)
    NgramIndexConfig(n=5, mode=mode).save_pretrained(tmp_path)  # settings of another save
    with pytest.raises(ValueError, match="disagree"):
        NgramIndex.from_pretrained(tmp_path)
    (tmp_path / "memfree_config.json").unlink()
    with pytest.raises(ValueError, match="No memfree_config.json"):
        NgramIndex.from_pretrained(tmp_path)
    (tmp_path / "memfree_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="memfree_index.json is not valid JSON"):
        NgramIndex.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_hashes", 1), ("num_hashes", -1), ("num_hashes", None), ("canaries", []), ("vocab_size", 10),
     ("vocab_size", -5), ("num_keys", "many"), ("tokenizer_fingerprint", 5)],
)  # fmt: skip
def test_an_edited_index_json_is_refused(key, value, tmp_path):
    """Regression: with `num_hashes` edited down to 1 the filter loaded and forbade tokens it never held; a negative
    or missing one raised a bare OverflowError / TypeError; dropped canaries skipped the check."""
    index = build(random_corpus(), mode="bloom")
    index.save_pretrained(tmp_path)
    path = tmp_path / "memfree_index.json"
    facts = json.loads(path.read_text())
    if key == "num_hashes":
        facts["library"][key] = value
    else:
        facts[key] = value
    path.write_text(json.dumps(facts))
    with pytest.raises(ValueError, match="memfree_index.json .* was edited or damaged"):
        NgramIndex.from_pretrained(tmp_path)


def test_push_to_hub_and_back_through_a_stubbed_hub(tmp_path, monkeypatch):
    import huggingface_hub

    hub = tmp_path / "hub"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            import shutil

            shutil.copytree(folder_path, hub / repo_id)
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path)), commit_message))
            return "commit"

    def fake_download(repo_id, filename, revision=None, token=None):
        path = hub / repo_id / filename
        if not path.exists():
            raise FileNotFoundError(filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    corpus = random_corpus()
    index = build(corpus, mode="bloom")
    assert index.push_to_hub("me/index", token="t") == "commit"
    files = ["memfree_bloom.bin", "memfree_config.json", "memfree_index.json"]
    assert calls == [("token", "t"), ("create", "me/index", True), ("upload", "me/index", files, "Upload NgramIndex")]
    loaded = NgramIndex.from_pretrained("me/index")
    probes = np.array(sorted(ngram_set(corpus)))
    assert loaded.contains(probes).all() and loaded.config == index.config
    with pytest.raises(ValueError, match="memfree_index.json could not be fetched"):
        NgramIndex.from_pretrained("me/other-index")


def test_loading_from_nowhere_says_where_it_looked(tmp_path):
    with pytest.raises(ValueError, match="No memfree_index.json"):
        NgramIndex.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        NgramIndex.from_pretrained(tmp_path / "missing" / "deeper")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        NgramIndex.from_pretrained(tmp_path / "file")
    with pytest.raises(ValueError, match="could not be fetched from the Hub"):
        NgramIndex.from_pretrained("nobody-here/no-such-index")  # offline in the tests
    with pytest.raises(ValueError, match="`save_directory`"):
        build(random_corpus()).save_pretrained(tmp_path / "file")


def test_a_filter_that_no_longer_finds_its_keys_is_refused(tmp_path):
    index = build(random_corpus(), mode="bloom")
    index.save_pretrained(tmp_path)
    facts = json.loads((tmp_path / "memfree_index.json").read_text())
    facts["canaries"] = [int(k) ^ 0x5A5A5A5A for k in facts["canaries"]]  # as if the library hashed differently
    facts["facts_sha256"] = _facts_digest(facts)  # an intact file: only the filter disagrees
    (tmp_path / "memfree_index.json").write_text(json.dumps(facts))
    with pytest.raises(ValueError, match="does not find the keys it was saved with"):
        NgramIndex.from_pretrained(tmp_path)


@pytest.mark.parametrize("mode", ["exact", "bloom"])
def test_copies_pickles_and_two_threads(mode):
    corpus = random_corpus()
    index = build(corpus, mode=mode)
    guard = MemFreeLogitsProcessor(index)
    probes = np.array(sorted(ngram_set(corpus)))[:500, :-1]
    expected = guard(torch.tensor(probes), torch.zeros(len(probes), TINY_VOCAB))
    for other in (copy.deepcopy(guard), pickle.loads(pickle.dumps(guard)), MemFreeLogitsProcessor(copy.copy(index))):
        assert torch.equal(other(torch.tensor(probes), torch.zeros(len(probes), TINY_VOCAB)), expected)
    results = [None] * 4

    def run(i):
        results[i] = [guard(torch.tensor(probes), torch.zeros(len(probes), TINY_VOCAB)) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(out, expected) for outs in results for out in outs)
    assert guard.num_steps == 1 + 80


# ---------------------------------------------------------------- hostile corpora and queries


@pytest.mark.parametrize("mode", ["exact", "bloom"])
def test_empty_and_too_short_corpora_are_refused(mode):
    for empty in ([], iter([]), Dataset.from_dict({"input_ids": []}), torch.zeros(0, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match="empty"):
            build(empty, mode=mode)
    for short in ([[1, 2, 3]], iter([[1, 2], [3]])):
        with pytest.raises(ValueError, match="has n = 4 tokens"):
            build(short, mode=mode)


def test_bad_corpora_are_named():
    with pytest.raises(ValueError, match=r"`sequences\[1\]` holds token id 128"):
        build([[1, 2, 3, 4], [5, 128, 1, 2]])
    with pytest.raises(ValueError, match=r"`sequences\[2\]` holds token id 500"):  # streamed: found as read
        build(iter([[1, 2, 3, 4], [1, 2, 3, 4], [500, 1, 2, 3]]))
    with pytest.raises(ValueError, match=">= 0"):
        build([[1, 2, -3, 4]])
    with pytest.raises(ValueError, match="integer token ids"):
        build([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="must be token id sequences"):
        build("a text, not token ids")
    with pytest.raises(ValueError, match="`tokenizer` or `vocab_size`"):
        NgramIndex.build([[1, 2, 3, 4]], n=3, show_progress=False)
    with pytest.raises(ValueError, match="`tokenizer` must be a transformers tokenizer"):
        NgramIndex.build([[1, 2, 3, 4]], "gpt2", n=3, show_progress=False)
    with pytest.raises(ValueError, match="`vocab_size`"):
        NgramIndex.build([[1, 2, 3, 4]], vocab_size=0, n=3)
    with pytest.raises(ValueError, match="`show_progress`"):
        NgramIndex.build([[1, 2, 3, 4]], vocab_size=8, n=3, show_progress="yes")


def test_an_interrupted_build_leaves_nothing_behind():
    def corpus():
        yield [1, 2, 3, 4, 5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(corpus())


def test_queries_are_checked():
    index = build(random_corpus())
    with pytest.raises(ValueError, match="`ngrams` must have 4 columns"):
        index.contains([[1, 2, 3]])
    with pytest.raises(ValueError, match="`contexts` must have 3 columns"):
        index.forbidden_tokens([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="2-D"):
        index.contains([1, 2, 3, 4])
    assert index.contains(np.zeros((0, 4), dtype=np.int64)).tolist() == []
    assert index.contains([[1, 2, 3, 10**6]]).tolist() == [False]  # beyond the vocabulary: never indexed
    assert "mode='exact'" in repr(index)


@pytest.mark.slow  # a fresh interpreter
def test_a_missing_extra_names_the_install_command_and_exact_mode_still_works():
    code = (
        "import sys; sys.modules['fastbloom_rs'] = None\n"
        "from hf_memory import NgramIndex, MemFreeLogitsProcessor\n"
        "index = NgramIndex.build([[1, 2, 3, 4]], n=3, mode='exact', vocab_size=8, show_progress=False)\n"
        "print(index.num_ngrams)\n"
        "try:\n    NgramIndex.build([[1, 2, 3, 4]], n=3, vocab_size=8, show_progress=False)\n"
        "except ImportError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2\n") and 'pip install "hf-memory[memfree]"' in done.stdout


# ---------------------------------------------------------------- the evidence script and the benchmark


@pytest.mark.slow  # a fresh interpreter; the tiny model (SmolLM2's --small costs 4x the CPU time for the same checks)
def test_evidence_example_small_mode(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "examples/memfree_evidence.py", "--small", "--model", "tiny", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["check"]["generate_equals_measure_extraction"]
    guarded = [name for name in results["train"] if name.startswith("n=")]
    assert len(guarded) == 8  # two values of n, exact and three Bloom seeds each
    for name in guarded:  # by construction: nothing indexed comes out, so no window is extracted exactly
        assert results["train"][name]["indexed_ngrams_in_output"] == 0, name
        assert results["train"][name]["exact_match"] == 0.0, name
    assert set(results["held_out"]) >= {*guarded, "teacher_forced"}


@pytest.mark.slow  # a fresh interpreter, a tiny model
def test_overhead_benchmark_small_mode(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "benchmarks/memfree_overhead.py", "--small", "--output", str(tmp_path / "out.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "out.json") as f:
        results = json.load(f)
    assert results["libraries"]["fastbloom-rs"]["no_false_negative"]
    assert results["build"]["exact"]["distinct_ngrams"] == results["build"]["bloom"]["distinct_ngrams"]
    assert all("ratio" in row for key, row in results["generate"].items() if not key.endswith("unguarded"))
