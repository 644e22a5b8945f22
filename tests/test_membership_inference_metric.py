"""The `membership_inference` evaluate metric: loaded offline from its folder, the numbers of the plain function,
add / add_batch accumulation, checks before Arrow casting, and its card."""

from __future__ import annotations

import os

import evaluate
import numpy as np
import pytest

import hf_memory
from hf_memory.membership import membership_inference_scores


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(hf_memory.MEMBERSHIP_INFERENCE)


def scores_and_labels(seed=0, members=60, non_members=140):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(0.8, 1, members), rng.normal(0, 1, non_members)])
    return scores, [1] * members + [0] * non_members


def test_the_metric_returns_the_plain_functions_numbers(metric):
    scores, labels = scores_and_labels()
    kwargs = {"fprs": [0.01, 0.05], "n_bootstrap": 200, "seed": 3, "return_curve": True}
    got = metric.compute(predictions=scores.tolist(), references=labels, **kwargs)
    expected = membership_inference_scores(scores, labels, **kwargs)
    assert set(got) == set(expected)
    assert got["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert got["tpr_at_0.01_fpr"] == pytest.approx(expected["tpr_at_0.01_fpr"])
    assert got["roc_auc_interval"] == pytest.approx(expected["roc_auc_interval"])
    assert got["num_members"] == 60 and got["num_non_members"] == 140


def test_add_and_add_batch_accumulate_numpy_values(metric):
    scores, labels = scores_and_labels(1, 10, 10)
    for score, label in zip(scores[:5], labels[:5]):
        metric.add(prediction=np.float32(score), reference=np.int64(label))
    metric.add_batch(predictions=scores[5:], references=np.array(labels[5:]))
    assert metric.compute()["roc_auc"] == pytest.approx(
        membership_inference_scores(scores.astype(np.float32), labels)["roc_auc"]
    )


@pytest.mark.parametrize(
    "predictions, references, match",
    [
        ([0.1, 0.2], [1, 0.5], "references"),  # Arrow would cast 0.5 to 0
        ([0.1, float("nan")], [1, 0], "predictions"),
        ([0.1, 0.2, 0.3], [1, 0], "predictions"),
        ([0.1, 0.2], [2, 0], "references"),
    ],
)
def test_bad_batches_are_refused_before_arrow_casting(metric, predictions, references, match):
    with pytest.raises(ValueError, match=match):
        metric.add_batch(predictions=predictions, references=references)


def test_a_single_class_is_refused(metric):
    with pytest.raises(ValueError, match="single class"):
        metric.compute(predictions=[0.1, 0.2, 0.3], references=[1, 1, 1])


def test_the_card_has_the_space_front_matter_and_the_folder_its_files():
    folder = hf_memory.MEMBERSHIP_INFERENCE
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert card.startswith("---\n") and "app_file: app.py" in card and "## How to Use" in card
    assert {"app.py", "requirements.txt", "membership_inference.py"} <= set(os.listdir(folder))
