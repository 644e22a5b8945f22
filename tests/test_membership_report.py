"""membership_report and the evaluation underneath: AUC and TPR at low FPR against scikit-learn's ROC, the bootstrap
against explicit resamples, what cannot be measured, the blind baseline, duplicates, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from hf_memory.data import stdlib_docstrings
from hf_memory.membership import (
    BLIND_BASELINE,
    MembershipResult,
    blind_baseline_scores,
    blind_baseline_test,
    membership_inference_scores,
    membership_report,
    ngram_overlap,
)
from hf_memory.membership.evaluation import _counts, _Sorted, tpr_at_fpr


def gaussian_scores(seed: int, members: int, non_members: int, shift: float = 1.0, ties: bool = False):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, members), rng.normal(0, 1, non_members)])
    if ties:
        scores = np.round(scores, 1)
    return scores, np.array([True] * members + [False] * non_members)


def roc_tpr(scores, labels, fpr):
    """TPR at FPR <= fpr read off scikit-learn's full ROC curve."""
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return tprs[fprs <= fpr + 1e-12].max()


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_tpr_at_fpr_agree_with_scikit_learns_roc_curve(seed):
    scores, labels = gaussian_scores(seed, 40 + 7 * seed, 150 + 30 * seed, ties=seed % 2 == 1)
    result = membership_inference_scores(scores, labels, fprs=[0.01, 0.05, 0.2])
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
    for fpr in (0.01, 0.05, 0.2):
        assert result[f"tpr_at_{fpr:g}_fpr"] == pytest.approx(roc_tpr(scores, labels, fpr)), fpr


def test_the_bootstrap_equals_the_statistics_of_explicit_resamples():
    scores, labels = gaussian_scores(0, 30, 120, ties=True)
    column = _Sorted(scores, labels)
    rng = np.random.default_rng(5)
    member_counts, non_member_counts = _counts(rng, 8, 30), _counts(rng, 8, 120)
    aucs = column.auc(member_counts, non_member_counts)
    tprs = column.tpr(member_counts, non_member_counts, 0.02)
    members, non_members = scores[labels], scores[~labels]
    for b in range(8):
        resampled = np.concatenate(
            [
                np.repeat(members, member_counts[b].astype(int)),
                np.repeat(non_members, non_member_counts[b].astype(int)),
            ]
        )
        resampled_labels = np.array([True] * 30 + [False] * 120)
        assert aucs[b] == pytest.approx(roc_auc_score(resampled_labels, resampled))
        assert tprs[b] == pytest.approx(tpr_at_fpr(resampled, resampled_labels, 0.02))
    assert (member_counts.sum(1) == 30).all() and (non_member_counts.sum(1) == 120).all()


def test_intervals_are_seeded_and_cover_the_estimate():
    scores, labels = gaussian_scores(1, 60, 200)
    first = membership_inference_scores(scores, labels, n_bootstrap=300, seed=3)
    again = membership_inference_scores(scores, labels, n_bootstrap=300, seed=3)
    other = membership_inference_scores(scores, labels, n_bootstrap=300, seed=4)
    assert first == again and first["roc_auc_interval"] != other["roc_auc_interval"]
    low, high = first["roc_auc_interval"]
    assert low < first["roc_auc"] < high and high - low < 0.2
    low, high = first["tpr_at_0.01_fpr_interval"]
    assert low <= first["tpr_at_0.01_fpr"] <= high
    assert first["tpr_at_0.001_fpr"] is None and first["tpr_at_0.001_fpr_interval"] is None


def test_a_low_fpr_is_not_measurable_with_too_few_non_members():
    scores, labels = gaussian_scores(2, 50, 99)
    result = membership_inference_scores(scores, labels)
    assert result["tpr_at_0.01_fpr"] is None and result["tpr_at_0.001_fpr"] is None
    assert "at least 100 non-members" in result["not_measurable"]["tpr_at_0.01_fpr"]
    assert "there are 99" in result["not_measurable"]["tpr_at_0.01_fpr"]
    scores, labels = gaussian_scores(2, 50, 100)
    result = membership_inference_scores(scores, labels)
    assert result["tpr_at_0.01_fpr"] is not None and "tpr_at_0.01_fpr" not in result["not_measurable"]
    report = membership_report({"loss": scores}, labels, n_bootstrap=100)
    assert report.attacks["loss"]["tpr_at_fpr"][0.001] is None
    assert "1000 non-members" in report.attacks["loss"]["not_measurable"][0.001]
    assert "not measurable" in report.to_markdown()


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2, 0.3], [0, 1, 2], "only 0 and 1"),
        ([0.1, 0.2, 0.3], [0, 1, 0.5], "only 0 and 1"),
        ([0.1, 0.2, 0.3], ["a", "b", "c"], "0 and 1"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "single class"),
        ([0.1, float("nan"), 0.3], [0, 1, 0], r"non-finite.*index 1"),
        ([0.1, float("inf"), 0.3], [0, 1, 0], "non-finite"),
        ([0.1, 0.2], [0, 1, 0], "2 scores, but there are 3 labels"),
        ([[0.1], [0.2]], [0, 1], "flat list"),
        ("0.1", [0, 1], "list of numbers"),
        ([0.1, 0.2, 0.3], 3, "list of 0/1"),
        ([], [], "non-empty"),
    ],
)
def test_bad_evaluation_input_is_refused_by_name(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        membership_inference_scores(scores, labels)


def test_the_report_refuses_bad_input_before_any_work():
    scores, labels = gaussian_scores(0, 20, 20)
    texts = [f"text {i}" for i in range(40)]
    for kwargs, match in [
        ({"is_member": labels[:10]}, "there are 10 labels"),
        ({"scores": {"loss": scores[16:24]}, "is_member": labels[16:24]}, "at least 5"),
        ({"scores": {}}, "empty mapping"),
        ({"scores": {1: scores}}, "attack names"),
        ({"texts": texts[:-1]}, "39 texts"),
        ({"texts": [*texts[:-1], 3]}, r"texts\[39\]"),
        ({"n_bootstrap": 10}, "n_bootstrap"),
        ({"confidence": 1.0}, "confidence"),
        ({"fprs": [0.0]}, "fprs"),
        ({"fprs": [0.01, 0.01]}, "twice"),
        ({"drop_duplicates": "yes"}, "drop_duplicates"),
    ]:
        arguments = {"scores": {"loss": scores}, "is_member": labels, **kwargs}
        with pytest.raises(ValueError, match=match):
            membership_report(**arguments)


def test_duplicates_across_the_sets_are_refused_or_dropped_with_a_count():
    scores, labels = gaussian_scores(3, 20, 30)
    texts = [f"document number {i}" for i in range(50)]
    texts[25] = texts[3]  # non-member 25 is member 3
    texts[26] = texts[3]
    with pytest.raises(ValueError, match=r"3 samples have an exact copy in the other set \(e.g. sample 3"):
        membership_report({"loss": scores}, labels, texts, n_bootstrap=100)
    report = membership_report({"loss": scores}, labels, texts, n_bootstrap=100, drop_duplicates=True)
    assert report.duplicates_dropped == 3 and (report.num_members, report.num_non_members) == (19, 28)
    keep = np.ones(50, bool)
    keep[[3, 25, 26]] = False
    assert report.attacks["loss"]["auc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
    assert "3 samples had an exact copy" in " ".join(report.findings)
    # within one set, copies are no labelling error
    texts = [f"document number {i}" for i in range(50)]
    texts[5], texts[26] = texts[4], texts[25]
    assert membership_report({"loss": scores}, labels, texts, n_bootstrap=100).duplicates_dropped == 0


def test_the_digests_of_a_membership_result_find_duplicates_without_texts():
    scores, labels = gaussian_scores(4, 10, 10)
    digests = [f"{i:032x}" for i in range(20)]
    digests[15] = digests[2]
    result = MembershipResult({"loss": scores}, np.full(20, 8), digests)
    with pytest.raises(ValueError, match="exact copy"):
        membership_report(result, labels, n_bootstrap=100)
    assert membership_report(result, labels, n_bootstrap=100, drop_duplicates=True).duplicates_dropped == 2


def test_wrong_orientation_is_flagged_below_chance_and_a_leak_above():
    scores, labels = gaussian_scores(5, 100, 150, shift=1.5)
    report = membership_report({"log_likelihood": scores, "raw_loss": -scores}, labels, n_bootstrap=200)
    assert report.attacks["log_likelihood"]["above_chance"] and not report.attacks["log_likelihood"]["below_chance"]
    assert report.attacks["raw_loss"]["below_chance"]
    text = " ".join(report.findings)
    assert "`raw_loss` is clearly below chance" in text and "strongest attack, `log_likelihood`" in text
    assert "No blind baseline (no texts given)" in text
    noise = membership_report({"noise": gaussian_scores(6, 100, 150, shift=0.0)[0]}, labels, n_bootstrap=200)
    assert "No attack is clearly above chance" in " ".join(noise.findings)


@pytest.fixture(scope="module")
def docstrings():
    return [text[:600] for text in stdlib_docstrings(min_chars=300)][:160]


def reference_manual(n: int) -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = [p for name in sorted(topics) for p in topics[name].split("\n\n") if len(p) > 200]
    return [p[:600] for p in paragraphs[:n]]


def test_the_blind_baseline_sits_near_chance_on_a_random_split_and_fires_on_two_sources(docstrings):
    rng = np.random.default_rng(0)
    labels = rng.permutation([True] * 80 + [False] * 80)
    fair = membership_report({"noise": rng.normal(size=160)}, labels, docstrings, n_bootstrap=300)
    blind = fair.blind_baseline
    assert blind["auc_interval"][0] < 0.5 < blind["auc_interval"][1] and not blind["distinguishable"]
    assert "not clearly above chance" in " ".join(fair.findings)
    others = reference_manual(80)
    texts = docstrings[:80] + others
    biased_labels = [1] * 80 + [0] * 80
    biased = membership_report({"noise": rng.normal(size=160)}, biased_labels, texts, n_bootstrap=300)
    assert biased.blind_baseline["distinguishable"] and biased.blind_baseline["auc"] > 0.8
    assert "distinguishable without the model" in " ".join(biased.findings)
    assert BLIND_BASELINE in biased.to_markdown()
    # the baseline never sees the scores: the same texts give the same baseline whatever the attack says
    again = membership_report({"other": rng.normal(size=160)}, biased_labels, texts, n_bootstrap=300)
    assert again.blind_baseline["auc"] == biased.blind_baseline["auc"]
    off = membership_report(
        {"noise": rng.normal(size=160)}, biased_labels, texts, n_bootstrap=100, blind_baseline=False
    )
    assert off.blind_baseline is None and "turned off" in off.blind_baseline_skipped


def test_the_blind_verdict_fires_at_its_nominal_rate_on_random_splits_and_on_a_biased_one(docstrings):
    """Regression: the verdict was "the bootstrap interval of the out-of-fold AUC is above 0.5", which does not see
    the classifier's fits vary and fired about twice as often as its level on random splits (37 of these 200). It is now a
    permutation test: on random splits of one source (exchangeable labels) it fires at its level."""
    level = 0.1  # confidence 0.8: the verdict's one-sided level is (1 - 0.8) / 2
    rng = np.random.default_rng(0)
    fired, p_values = 0, []
    for split in range(200):
        texts = [docstrings[i] for i in rng.choice(len(docstrings), 40, replace=False)]
        labels = [1] * 15 + [0] * 25
        report = membership_report({"noise": rng.normal(size=40)}, labels, texts, n_bootstrap=100,
                                   confidence=0.8, seed=split)  # fmt: skip
        fired += report.blind_baseline["distinguishable"]
        p_values.append(report.blind_baseline["p_value"])
    assert fired <= 30  # Binomial(200, 0.1): mean 20, P(> 30) ~ 1%; the interval verdict fired 37 times here
    assert 0.4 < np.mean(p_values) < 0.6 and 0.35 < np.mean(np.array(p_values) <= 0.5) < 0.65  # about uniform
    biased = membership_report({"noise": rng.normal(size=40)}, [1] * 15 + [0] * 25,
                               docstrings[:15] + reference_manual(25), n_bootstrap=100)  # fmt: skip
    assert biased.blind_baseline["distinguishable"] and biased.blind_baseline["p_value"] <= 0.01


def test_blind_baseline_test_is_checked_and_subsamples_large_sets():
    texts = [f"alpha beta {i}" for i in range(12)] + [f"gamma delta {i}" for i in range(12)]
    labels = [1] * 12 + [0] * 12
    test = blind_baseline_test(texts, np.array(labels), permutations=np.int64(19), seed=np.int64(3))
    assert test["auc"] == 1.0 and test["p_value"] == 0.05 and len(test["null_aucs"]) == 19
    assert np.array_equal(test["scores"], blind_baseline_scores(texts, labels, seed=3, repeats=3))
    for bad in ({"permutations": 18}, {"repeats": 0}, {"folds": 1}, {"permutations": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            blind_baseline_test(texts, labels, **bad)
    with pytest.raises(ValueError, match="permutations"):
        membership_report({"s": np.arange(24.0)}, labels, texts, permutations=5)
    many = [f"word{i % 50} other{i % 7} x{i}" for i in range(2100)]
    big = blind_baseline_test(many, [1] * 300 + [0] * 1800, permutations=19)
    assert len(big["indices"]) == len(big["scores"]) == 2000 and len(set(big["indices"].tolist())) == 2000
    with pytest.raises(ValueError, match="more than the blind baseline takes"):
        blind_baseline_scores(many, [1] * 300 + [0] * 1800)


def test_blind_baseline_scores_are_out_of_fold_and_checked():
    texts = [f"alpha beta {i}" for i in range(10)] + [f"gamma delta {i}" for i in range(10)]
    labels = [1] * 10 + [0] * 10
    scores = blind_baseline_scores(texts, labels, folds=5)
    assert scores[:10].min() > scores[10:].max()
    with pytest.raises(ValueError, match="at least 2 members"):
        blind_baseline_scores(texts[:11], [1] + [0] * 10)
    with pytest.raises(ValueError, match="no word"):
        blind_baseline_scores(["!!", "??", "..", ",,"], [1, 1, 0, 0])
    skipped = membership_report(
        {"s": np.arange(10.0)}, [1] * 5 + [0] * 5, ["!" * n for n in range(1, 11)], n_bootstrap=100
    )  # the report goes on without it
    assert skipped.blind_baseline is None and "no word" in skipped.blind_baseline_skipped


def test_ngram_overlap_counts_shared_word_ngrams():
    members = ["the quick brown fox jumps", "lorem ipsum dolor"]
    non_members = ["The quick brown fox sleeps", "a b", "lorem ipsum dolor sit"]
    overlap = ngram_overlap(members, non_members, n=3)
    # "the quick brown" and "quick brown fox" of 3 trigrams; "a b" has none; 1 of 2 for the last
    assert overlap == {"n": 3, "mean": pytest.approx((2 / 3 + 1 / 2) / 2), "median": pytest.approx((2 / 3 + 1 / 2) / 2),
                       "max": pytest.approx(2 / 3), "too_short": 1}  # fmt: skip
    assert ngram_overlap(members, ["x"], n=3)["mean"] is None


def test_the_report_serializes_renders_and_plots(tmp_path, docstrings):
    scores, labels = gaussian_scores(7, 80, 80)
    report = membership_report({"loss": scores, "zlib": scores / 10}, labels, docstrings, n_bootstrap=100)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert set(as_json["attacks"]) == {"loss", "zlib"} and as_json["attacks"]["loss"]["roc"]["fpr"][0] == 0.0
    assert "roc" not in report.to_dict(curves=False)["attacks"]["loss"]
    assert as_json["ngram_overlap"]["n"] == 13 and as_json["blind_baseline"]["distinguishable"] in (True, False)
    table = report.to_markdown()
    assert table.count("\n| ") >= 3 and "TPR@1.00%FPR" in table
    path = tmp_path / "roc.png"
    figure = report.plot(path)
    assert path.stat().st_size > 1000 and figure.axes[0].get_xscale() == "log"


# ---------------------------------------------------------------- the evidence script


@pytest.mark.slow
def test_the_evidence_script_runs_small_resumes_and_summarizes(tmp_path):

    from tests.testing_utils import run_example

    output = tmp_path / "small.json"

    def run(*extra):
        return run_example("membership_evidence", "--small", "--output", str(output), *extra)

    out = run()
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(output.read_text())
    arms = ("standard", "goldfish", "last_ffn_lora")
    assert set(results["runs"]) == {f"seed0/{arm}" for arm in arms}
    assert all(run["finished"] and set(run["checkpoints"]) == {"1", "2"} for run in results["runs"].values())
    last = results["runs"]["seed0/standard"]["checkpoints"]["2"]
    assert set(last["report"]["attacks"]) == {"loss", "zlib", "min_k", "min_k_plus_plus", "reference"}
    assert last["extraction_non_members"] is not None and results["base"]["seed0"]["report"]["blind_baseline"]
    assert results["biased"]["report"]["blind_baseline"]["auc"] is not None
    assert len(results["blind_null"]["runs"]) == 2 and "random splits" in out.stdout
    assert "| standard | 2 |" in out.stdout
    # a run that was cut off is redone whole; the finished ones are kept as they are
    results["runs"]["seed0/goldfish"] = {"checkpoints": {}, "finished": False}
    kept = results["runs"]["seed0/standard"]
    output.write_text(json.dumps(results))
    out = run()
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads(output.read_text())
    assert again["runs"]["seed0/goldfish"]["finished"] and again["runs"]["seed0/standard"] == kept
    assert "[seed0/standard]" not in out.stdout and "[seed0/goldfish]" in out.stdout
    # results of other settings are never mixed in
    again["settings"]["members"] += 1
    output.write_text(json.dumps(again))
    assert "other settings" in run().stderr


def test_numpy_scalars_huge_scores_and_numpy_labels_are_read_as_plain_values():
    scores, labels = gaussian_scores(11, 30, 120)
    plain = membership_report({"loss": scores}, labels.astype(int).tolist(), n_bootstrap=100, fprs=[0.01])
    huge = membership_report(
        {"loss": scores * 1e300},  # finite, ordered as before: the same ranks
        np.asarray(labels, dtype=np.bool_),
        n_bootstrap=np.int64(100),
        confidence=np.float64(0.95),
        fprs=[np.float64(0.01)],
        seed=np.int32(0),
    )
    assert huge.attacks["loss"]["auc"] == plain.attacks["loss"]["auc"]
    assert huge.attacks["loss"]["auc_interval"] == plain.attacks["loss"]["auc_interval"]
    assert huge.attacks["loss"]["tpr_at_fpr"] == plain.attacks["loss"]["tpr_at_fpr"]
    with pytest.raises(ValueError, match="NaN or infinite|finite"):
        membership_report({"loss": scores * 1e310}, labels, n_bootstrap=100)
