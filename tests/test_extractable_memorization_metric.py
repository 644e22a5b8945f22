"""The extractable-memorization metric: hand-computed scores, brute-force references, `evaluate` parity, bad input."""

from __future__ import annotations

import functools
import os
import re

import evaluate
import numpy as np
import pytest
import torch

import hf_memory
from hf_memory.metrics.extractable_memorization.extractable_memorization import extraction_scores


AGGREGATES = ["exact_match", "memorization_score", "longest_common_prefix", "rouge_l"]
PER_SAMPLE = [f"{name}_per_sample" for name in AGGREGATES]

# (prediction, reference, exact_match, memorization_score, longest_common_prefix, rouge_l), computed by hand.
HAND_CASES = {
    "verbatim": ([1, 2, 3, 4], [1, 2, 3, 4], True, 1.0, 4, 1.0),
    "partial": ([1, 9, 3, 9], [1, 2, 3, 4], False, 0.5, 1, 0.5),
    "first_token_wrong": ([9, 2, 3, 4], [1, 2, 3, 4], False, 0.75, 0, 0.75),
    "shorter": ([1, 2], [1, 2, 3, 4], False, 0.5, 2, 2 * 2 / (2 + 4)),
    "shorter_diverging": ([1, 7, 3], [1, 2, 3, 4, 5], False, 0.4, 1, 2 * 2 / (3 + 5)),
    "longer": ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4], True, 1.0, 4, 2 * 4 / (6 + 4)),
    "longer_wrong": ([1, 2, 0, 3, 4, 5], [1, 2, 3, 4], False, 0.5, 2, 2 * 4 / (6 + 4)),
    "shifted_lcs": ([9, 1, 2, 3], [1, 2, 3, 4], False, 0.0, 0, 0.75),
    "interleaved_lcs": ([5, 1, 6, 2, 7, 3], [1, 2, 3, 8, 8, 8], False, 0.0, 0, 0.5),
    "empty_prediction": ([], [1, 2, 3], False, 0.0, 0, 0.0),
    "single_token": ([4], [4], True, 1.0, 1, 1.0),
}


@pytest.fixture
def metric():
    return evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)


def _python_lcs(a, b):
    """Reference LCS length by plain recursion with memoisation."""

    @functools.cache
    def lcs(i, j):
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + lcs(i + 1, j + 1)
        return max(lcs(i + 1, j), lcs(i, j + 1))

    return lcs(0, 0)


def _python_scores(prediction, reference):
    """Reference per-sample scores straight from the definitions, one token at a time."""
    head = prediction[: len(reference)]
    matched = sum(1 for i, token in enumerate(reference) if i < len(head) and head[i] == token)
    prefix = 0
    while prefix < len(head) and head[prefix] == reference[prefix]:
        prefix += 1
    lcs = _python_lcs(tuple(prediction), tuple(reference))
    if lcs == 0:
        rouge = 0.0
    else:
        precision, recall = lcs / len(prediction), lcs / len(reference)
        rouge = 2 * precision * recall / (precision + recall)
    return list(head) == list(reference), matched / len(reference), prefix, rouge


def _random_samples(rng, n, vocab, max_len, min_ref_len=1):
    """Seeded random (predictions, references) of mixed lengths, about a third exact copies of the reference."""
    predictions, references = [], []
    for _ in range(n):
        reference = rng.integers(0, vocab, rng.integers(min_ref_len, max_len + 1)).tolist()
        if rng.random() < 0.3:
            prediction = reference + rng.integers(0, vocab, rng.integers(0, 3)).tolist()
        else:
            prediction = rng.integers(0, vocab, rng.integers(0, max_len + 1)).tolist()
        predictions.append(prediction)
        references.append(reference)
    return predictions, references


def _assert_scores_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("case", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_computed_sample(case):
    prediction, reference, exact, memorization, prefix, rouge = case
    scores = extraction_scores([prediction], [reference], return_per_sample=True)
    assert scores["exact_match_per_sample"] == [exact]
    assert scores["memorization_score_per_sample"] == pytest.approx([memorization])
    assert scores["longest_common_prefix_per_sample"] == [prefix]
    assert scores["rouge_l_per_sample"] == pytest.approx([rouge])
    assert scores["exact_match"] == float(exact)
    assert scores["memorization_score"] == pytest.approx(memorization)
    assert scores["longest_common_prefix"] == prefix
    assert scores["rouge_l"] == pytest.approx(rouge)


def test_aggregates_are_means_of_per_sample_scores_with_documented_types():
    predictions = [case[0] for case in HAND_CASES.values()]
    references = [case[1] for case in HAND_CASES.values()]
    scores = extraction_scores(predictions, references, return_per_sample=True)
    assert list(scores) == AGGREGATES + PER_SAMPLE
    for column, name in enumerate(AGGREGATES, start=2):
        assert type(scores[name]) is float
        assert scores[name] == pytest.approx(np.mean([case[column] for case in HAND_CASES.values()]))
    assert all(type(value) is bool for value in scores["exact_match_per_sample"])
    assert all(type(value) is int for value in scores["longest_common_prefix_per_sample"])
    assert all(type(value) is float for value in scores["memorization_score_per_sample"])
    assert all(type(value) is float for value in scores["rouge_l_per_sample"])
    assert all(len(scores[name]) == len(HAND_CASES) for name in PER_SAMPLE)


def test_aggregates_only_by_default():
    scores = extraction_scores([[1, 2, 3], [4, 5]], [[1, 2, 0], [4, 5]])
    assert scores == pytest.approx(
        {
            "exact_match": 0.5,
            "memorization_score": (2 / 3 + 1) / 2,
            "longest_common_prefix": 2.0,
            "rouge_l": (2 / 3 + 1) / 2,
        }
    )
    assert list(scores) == AGGREGATES


def test_matches_brute_force_definitions_on_random_short_sequences():
    rng = np.random.default_rng(1234)
    predictions, references = _random_samples(rng, n=400, vocab=3, max_len=8)
    scores = extraction_scores(predictions, references, return_per_sample=True)
    expected = [_python_scores(p, r) for p, r in zip(predictions, references)]
    exact, memorization, prefix, rouge = (list(column) for column in zip(*expected))
    assert scores["exact_match_per_sample"] == exact
    assert scores["longest_common_prefix_per_sample"] == prefix
    assert scores["memorization_score_per_sample"] == pytest.approx(memorization)
    assert scores["rouge_l_per_sample"] == pytest.approx(rouge)
    assert any(e < r for e, r in zip(memorization, rouge)), "random data should include LCS beyond position matches"


def test_accepts_tuples_numpy_and_torch_samples():
    predictions, references = [[1, 2, 3, 4], [9, 1, 2]], [[1, 2, 3, 4], [1, 2, 3]]
    expected = extraction_scores(predictions, references, return_per_sample=True)
    variants = [
        ([tuple(p) for p in predictions], [tuple(r) for r in references]),
        ([np.array(p, dtype=np.int32) for p in predictions], [np.array(r, dtype=np.uint16) for r in references]),
        ([torch.tensor(p) for p in predictions], [torch.tensor(r, dtype=torch.int32) for r in references]),
        ([[np.int64(t) for t in p] for p in predictions], [[np.int16(t) for t in r] for r in references]),
    ]
    for variant_predictions, variant_references in variants:
        _assert_scores_equal(
            extraction_scores(variant_predictions, variant_references, return_per_sample=True), expected
        )


def test_accepts_2d_numpy_and_torch_batches():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 50, (16, 32))
    predictions = np.where(rng.random(references.shape) < 0.1, 0, references)
    expected = extraction_scores(predictions.tolist(), references.tolist(), return_per_sample=True)
    _assert_scores_equal(extraction_scores(predictions, references, return_per_sample=True), expected)
    _assert_scores_equal(
        extraction_scores(torch.from_numpy(predictions), torch.from_numpy(references), return_per_sample=True),
        expected,
    )


def test_large_token_ids_compare_exactly():
    big = 2**62
    scores = extraction_scores([[big, big + 1]], [[big, big + 2]], return_per_sample=True)
    assert scores["longest_common_prefix_per_sample"] == [1]
    assert scores["memorization_score_per_sample"] == [0.5]


def test_thousands_of_samples_in_one_call():
    # Speed lives in benchmarks, not here (a shared machine is noisy): this checks the batched path's numbers.
    rng = np.random.default_rng(7)
    references = rng.integers(0, 1000, (4000, 64)).tolist()
    predictions = [r[:32] + rng.integers(0, 1000, 32).tolist() for r in references]
    scores = extraction_scores(predictions, references, return_per_sample=True)
    assert scores["memorization_score"] == pytest.approx(0.5, abs=0.01)
    assert min(scores["longest_common_prefix_per_sample"]) >= 32 and scores["exact_match"] < 0.01


def _padded_scheme():
    """The scores as computed before the cost fix (every sample padded to the longest prediction), kept in the
    benchmark that measures the two side by side."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "extraction_scores_cost.py")
    spec = importlib.util.spec_from_file_location("extraction_scores_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    ("n", "vocab", "max_len", "long"),
    [(300, 3, 12, None), (200, 50, 40, None), (60, 4, 10, 700), (40, 2, 6, 300), (1, 3, 5, 200)],
)
def test_ragged_scores_equal_the_padded_scheme_per_sample(n, vocab, max_len, long, strict):
    """Cost grows with the total length now (no sample padded to the longest); every per-sample number is still
    exactly the old scheme's, on random inputs with empty predictions, long references, a long prediction, few
    distinct ids (many partial matches)."""
    rng = np.random.default_rng(n + vocab + (long or 0))
    predictions, references = _random_samples(rng, n, vocab, max_len)
    if long is not None:  # skewed lengths: one long prediction and one long reference
        predictions[0] = references[0] + rng.integers(0, vocab, long).tolist()
        references[-1] = rng.integers(0, vocab, long // 2 + 1).tolist()
        predictions[-1] = references[-1][: long // 3] + rng.integers(0, vocab, 5).tolist()
    predictions[n // 2] = []
    new = extraction_scores(predictions, references, return_per_sample=True, strict_exact_match=strict)
    old = _padded_scheme().padded_scheme_scores(predictions, references, strict_exact_match=strict)
    for key, value in old.items():
        assert new[key] == value, key  # exactly, not approximately
    assert new["memorization_score"] == float(np.mean(old["memorization_score_per_sample"]))
    assert new["rouge_l"] == float(np.mean(old["rouge_l_per_sample"]))


@pytest.mark.slow  # a few seconds in a subprocess
def test_the_cost_benchmark_runs_in_its_small_mode():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(__file__))
    done = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "extraction_scores_cost.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"skewed: [\d.]+x faster", done.stdout) and "control:" in done.stdout


def test_evaluate_load_works_offline(metric):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert type(metric).__name__ == "ExtractableMemorization"
    assert set(metric.info.features) == {"predictions", "references"}
    assert (
        "Carlini" in metric.info.citation and "Biderman" in metric.info.citation and "Goldfish" in metric.info.citation
    )


def test_evaluate_compute_agrees_with_extraction_scores(metric):
    rng = np.random.default_rng(2024)
    predictions, references = _random_samples(rng, n=200, vocab=20, max_len=48)
    expected = extraction_scores(predictions, references, return_per_sample=True)
    via_evaluate = metric.compute(predictions=predictions, references=references, return_per_sample=True)
    _assert_scores_equal(via_evaluate, expected)
    assert 0 < expected["exact_match"] < 1


def test_evaluate_add_batch_accumulates(metric):
    rng = np.random.default_rng(5)
    predictions, references = _random_samples(rng, n=60, vocab=10, max_len=16)
    for start in range(0, 60, 25):
        metric.add_batch(predictions=predictions[start : start + 25], references=references[start : start + 25])
    _assert_scores_equal(metric.compute(), extraction_scores(predictions, references))


BAD_INPUTS = {
    "different_lengths": ([[1, 2]], [[1, 2], [3]], ["predictions", "references"]),
    "empty_both": ([], [], ["predictions"]),
    "empty_references": ([[1]], [], ["references"]),
    "none_predictions": (None, [[1]], ["predictions"]),
    "empty_reference_sample": ([[1], [2]], [[1], []], ["references[1]"]),
    "float_prediction": ([[1.0, 2.0]], [[1, 2]], ["predictions[0]"]),
    "fractional_prediction": ([[1.5, 2]], [[1, 2]], ["predictions[0]"]),
    "float_reference": ([[1, 2]], [[1, 2.0]], ["references[0]"]),
    "string_tokens": ([["1", "2"]], [[1, 2]], ["predictions[0]"]),
    "string_sample": (["abc"], [[1, 2]], ["predictions[0]"]),
    "bool_tokens": ([[True, False]], [[1, 0]], ["predictions[0]"]),
    "mixed_bool_tokens": ([[1, 2]], [[True, 2]], ["references[0]"]),
    "flat_token_list": ([1, 2, 3], [[1], [2], [3]], ["predictions[0]"]),
    "ragged_nested_sample": ([[[1, 2], [3]]], [[1, 2]], ["predictions[0]"]),
    "numpy_float_sample": ([np.array([1.0, 2.0])], [[1, 2]], ["predictions[0]"]),
    "numpy_bool_sample": ([[1, 2]], [np.array([True, False])], ["references[0]"]),
    "torch_float_sample": ([torch.tensor([1.0, 2.0])], [[1, 2]], ["predictions[0]"]),
    "torch_bool_sample": ([[1, 2]], [torch.tensor([True, False])], ["references[0]"]),
    # numpy has no bfloat16 or float8: the tensor's dtype must be refused before it is converted
    "torch_bfloat16_sample": ([torch.tensor([1, 2], dtype=torch.bfloat16)], [[1, 2]], ["predictions[0]"]),
    "torch_float8_sample": ([[1, 2]], [torch.tensor([1, 2]).to(torch.float8_e4m3fn)], ["references[0]"]),
    "torch_complex_sample": ([torch.tensor([1, 2], dtype=torch.complex64)], [[1, 2]], ["predictions[0]"]),
    "negative_label_mask_id": ([[5, -100]], [[5, 6]], ["predictions[0]"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_value_error_naming_the_argument(case):
    predictions, references, names = case
    with pytest.raises(ValueError) as info:
        extraction_scores(predictions, references)
    for name in names:
        assert f"`{name}`" in str(info.value)


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_through_evaluate_raises_value_error_naming_the_argument(metric, case):
    predictions, references, names = case
    with pytest.raises(ValueError) as info:
        metric.compute(predictions=predictions, references=references)
    for name in names:
        assert f"`{name}`" in str(info.value)


def test_evaluate_add_checks_one_sample_before_arrow_casts_it(metric):
    with pytest.raises(ValueError, match=re.escape("`prediction`")):
        metric.add(prediction=[1.5, 2], reference=[1, 2])
    with pytest.raises(ValueError, match=re.escape("`reference`")):
        metric.add(prediction=[1, 2], reference=[])
    metric.add(prediction=[1, 2], reference=[1, 3])
    assert metric.compute() == pytest.approx(
        {"exact_match": 0.0, "memorization_score": 0.5, "longest_common_prefix": 1.0, "rouge_l": 0.5}
    )


def test_strict_exact_match_is_whole_list_equality(metric):
    """The goldfish paper's evaluation counts `gen_output_ids == gt_output_ids`: a longer prediction is no match."""
    rng = np.random.default_rng(7)
    predictions, references = _random_samples(rng, n=300, vocab=2, max_len=5)
    predictions += [[1, 2, 3, 4, 5], [1, 2, 3], [1, 2, 3, 4]]
    references += [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]
    strict = extraction_scores(predictions, references, return_per_sample=True, strict_exact_match=True)
    loose = extraction_scores(predictions, references, return_per_sample=True)
    expected = [list(p) == list(r) for p, r in zip(predictions, references)]
    assert strict["exact_match_per_sample"] == expected
    assert strict["exact_match_per_sample"][-3:] == [False, False, True]
    assert loose["exact_match_per_sample"][-3:] == [True, False, True]
    assert sum(loose["exact_match_per_sample"]) > sum(expected)  # longer predictions matched only by Carlini's rule
    for name in ("memorization_score", "longest_common_prefix", "rouge_l"):
        assert strict[f"{name}_per_sample"] == loose[f"{name}_per_sample"]
    via_evaluate = metric.compute(predictions=predictions, references=references, strict_exact_match=True)
    assert via_evaluate["exact_match"] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("flag", ["return_per_sample", "strict_exact_match"])
def test_flags_must_be_booleans(flag):
    with pytest.raises(ValueError, match=f"`{flag}` must be True or False"):
        extraction_scores([[1]], [[1]], **{flag: "yes"})


def test_card_says_negative_ids_are_refused(metric):
    """Every sentence of the metric card that mentions -100 says it is refused, as the metric does."""
    with open(os.path.join(hf_memory.EXTRACTABLE_MEMORIZATION, "README.md"), encoding="utf-8") as f:
        card = " ".join(f.read().split())
    sentences = [sentence for sentence in re.split(r"(?<=\.) ", card) if "-100" in sentence]
    assert sentences and all("refused" in sentence for sentence in sentences), sentences
    with pytest.raises(ValueError, match=re.escape("`predictions[0]` must hold token ids from 0")):
        metric.compute(predictions=[[5, -100]], references=[[5, -100]])


def test_integer_tensors_of_any_width_are_accepted():
    samples = [torch.tensor([1, 2], dtype=dtype) for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)]
    scores = extraction_scores(samples, [[1, 2]] * len(samples))
    assert scores["exact_match"] == 1.0


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_unsigned_ids_that_do_not_fit_are_refused():
    from hf_memory import extraction_scores

    with pytest.raises(ValueError, match=r"token ids from 0 to 2\*\*63 - 1"):
        extraction_scores([np.array([2**64 - 1], dtype=np.uint64)], [[-1]])
    with pytest.raises(ValueError, match=r"token ids from 0 to 2\*\*63 - 1"):
        extraction_scores([[1, 2]], [[-1, 2]])
