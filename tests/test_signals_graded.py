"""`examples/signals_graded.py --small`: graded repetitions, a prefix-only predictor, the own-continuation entropy and
the word-length test run end to end; the stratified permutation test behaves."""

import json

import numpy as np

from tests.testing_utils import run_example


def test_signals_graded_runs_small_and_resumes(tmp_path):
    output = tmp_path / "small.json"
    out = run_example("signals_graded", "--small", "--output", str(output), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(output.read_text())["seeds"]["0"]
    counts, memorized = np.array(run["counts"]), np.array(run["memorized"])
    assert sorted(set(counts.tolist())) == [0, 1, 2, 4, 8, 16] and len(memorized) == len(counts)
    # never-seen windows are never reproduced; the most repeated ones are the most often
    assert memorized[counts == 0].sum() == 0
    assert run["memorized_by_count"]["16"] >= max(run["memorized_by_count"][str(c)] for c in (0, 1, 2))
    assert len(run["own_continuation_entropy"]["after"]) == len(counts) == len(run["word_length"])
    assert len(run["context_similarity"]) == len(counts) and all(-1 <= s <= 1 for s in run["context_similarity"])
    assert "| predictor (split by document) | AUC |" in out.stdout
    assert "seed 0: memorized" in out.stdout
    again = run_example("signals_graded", "--small", "--output", str(output), timeout=600)
    assert again.returncode == 0 and "seed 0: memorized" not in again.stdout  # read, not trained again


def test_stratified_permutation_keeps_the_strata():
    from tests.testing_utils import load_example

    example = load_example("signals_graded")
    strata = np.repeat([1, 2], 20)
    labels = np.tile([0, 1], 20)
    # a difference that lives only between strata is not one within them
    values = strata * 10.0 + np.random.default_rng(0).normal(0, 0.1, 40)
    result = example.stratified_permutation(values, labels, strata, n=500, seed=0)
    assert abs(result["difference"]) < 0.2 and result["p"] > 0.05 and result["strata_used"] == 2
    # a real within-stratum difference is found
    result = example.stratified_permutation(values + labels, labels, strata, n=500, seed=0)
    assert result["difference"] > 0.8 and result["p"] < 0.01
    # no stratum holds both labels: nothing to test
    assert example.stratified_permutation(values, (strata == 2).astype(int), strata, n=10, seed=0)["p"] is None
