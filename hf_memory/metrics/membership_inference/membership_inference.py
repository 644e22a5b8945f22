# Copyright 2026 The hf-memory authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Membership inference: ROC AUC and TPR at low FPR of a membership attack's scores against ground truth."""

import datasets
import evaluate

import hf_memory.membership


_CITATION = """\
@inproceedings{carlini2022membership,
  title={Membership Inference Attacks From First Principles},
  author={Carlini, Nicholas and Chien, Steve and Nasr, Milad and Song, Shuang and Terzis, Andreas and Tram{\\`e}r, Florian},
  booktitle={2022 IEEE Symposium on Security and Privacy (SP)},
  pages={1897--1914},
  year={2022}
}
@inproceedings{duan2024membership,
  title={Do Membership Inference Attacks Work on Large Language Models?},
  author={Duan, Michael and Suri, Anshuman and Mireshghallah, Niloofar and Min, Sewon and Shi, Weijia and Zettlemoyer, Luke and Tsvetkov, Yulia and Choi, Yejin and Evans, David and Hajishirzi, Hannaneh},
  booktitle={Conference on Language Modeling (COLM)},
  year={2024}
}
"""

_DESCRIPTION = """\
Membership inference scores how well an attack tells a model's training documents (members) from documents it did
not train on (non-members). Each prediction is the attack's score for one document, read as higher = more likely a
member (negate a loss or a perplexity first); each reference is 1 for a member and 0 for a non-member.

It reports the ROC AUC (scikit-learn's `roc_auc_score`: the probability that a random member scores above a random
non-member, ties counting one half; 0.5 is chance) and, as Carlini et al. (S&P 2022) ask, the true-positive rate at
low false-positive rates: the highest TPR of the ROC curve among its points with FPR <= the rate (1% and 0.1% by
default). A rate is not measurable with fewer than 1 / rate non-members, since then no false positive at all is
allowed: the TPR is None and `not_measurable` says why. With `n_bootstrap` resamples, each number also gets a
stratified percentile bootstrap interval (members and non-members resampled separately).

An AUC means memorization only when the non-members are a random split of the same source as the members: use
`hf_memory.membership.membership_report` for the blind baseline that checks it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): one score per document, higher = more likely a member; finite.
    references (`list` of `int`): one label per document, 1 = member, 0 = non-member (booleans accepted).
    fprs (`list` of `float`, defaults to `[0.01, 0.001]`): the false-positive rates to report the TPR at, in (0, 1).
    n_bootstrap (`int`, defaults to `0`): stratified bootstrap resamples for the intervals; 0 reports none.
    confidence (`float`, defaults to `0.95`): the intervals' coverage.
    seed (`int`, defaults to `0`): the bootstrap's seed.
    return_curve (`bool`, defaults to `False`): also return the ROC curve (`fpr`, `tpr`, `threshold` lists).
Returns:
    roc_auc (`float`): the ROC AUC, in [0, 1].
    tpr_at_<rate>_fpr (`float` or `None`): per rate (e.g. `tpr_at_0.01_fpr`), the TPR at FPR <= rate; None when
        there are fewer than 1 / rate non-members, with the reason in `not_measurable`.
    num_members (`int`), num_non_members (`int`): the class sizes.
    With `n_bootstrap`: roc_auc_interval and tpr_at_<rate>_fpr_interval (`[low, high]`).
Raises:
    ValueError: when a label is not 0/1, the labels hold a single class, a score is NaN or infinite, the lists differ
        in length, or (with `n_bootstrap`) there are fewer than 5 members or non-members.
Examples:
    A loss-based attack (scores: minus the loss), 3 members and 3 non-members:

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.MEMBERSHIP_INFERENCE)
    >>> results = metric.compute(predictions=[-0.5, -1.2, -0.9, -2.0, -1.1, -3.0], references=[1, 1, 1, 0, 0, 0])
    >>> round(results["roc_auc"], 4), results["tpr_at_0.01_fpr"]
    (0.8889, None)
    >>> results["not_measurable"]["tpr_at_0.01_fpr"]
    'needs at least 100 non-members (one false positive at 0.01 FPR), there are 3'

    With 200 non-members the TPR at 1% FPR is measured (two false positives allowed):

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.MEMBERSHIP_INFERENCE)
    >>> members, non_members = [float(i) for i in range(100, 200)], [float(i) for i in range(200)]
    >>> results = metric.compute(predictions=members + non_members, references=[1] * 100 + [0] * 200, fprs=[0.01])
    >>> results["tpr_at_0.01_fpr"]
    0.02
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MembershipInference(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2112.03570", "https://github.com/iamgroot42/mimir"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Check the batch before Arrow casting, which would silently turn a label of 0.5 into 0.

        Args:
            predictions: One score per document (higher = member).
            references: One 0/1 label per document.
            **kwargs: Passed on to `evaluate.Metric.add_batch`.

        Raises:
            ValueError: If a label is not 0/1, a score is not a finite number, or the lists differ in length.
        """
        if predictions is not None or references is not None:
            labels = hf_memory.membership.check_labels(references, "references")
            hf_memory.membership.check_scores(predictions, "predictions", size=labels.size)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Check one document before Arrow casting, as `add_batch` does.

        Args:
            prediction: The document's score (higher = member).
            reference: Its label, 0 or 1.
            **kwargs: Passed on to `evaluate.Metric.add`.

        Raises:
            ValueError: If the label is not 0/1 or the score is not a finite number.
        """
        if prediction is not None or reference is not None:
            hf_memory.membership.check_labels([reference], "reference")
            hf_memory.membership.check_scores([prediction], "prediction")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        fprs=hf_memory.membership.DEFAULT_FPRS,
        n_bootstrap=0,
        confidence=0.95,
        seed=0,
        return_curve=False,
    ):
        return hf_memory.membership.membership_inference_scores(
            predictions,
            references,
            fprs=fprs,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
            return_curve=return_curve,
        )
