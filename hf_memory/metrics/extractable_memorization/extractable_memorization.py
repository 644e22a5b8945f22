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
"""Extractable memorization: how much of a training-data continuation a model reproduces from its prefix."""

import datasets
import evaluate
import numpy as np


_CITATION = """\
@inproceedings{carlini2023quantifying,
  title={Quantifying Memorization Across Neural Language Models},
  author={Carlini, Nicholas and Ippolito, Daphne and Jagielski, Matthew and Lee, Katherine and Tram{\\`e}r, Florian and Zhang, Chiyuan},
  booktitle={The Eleventh International Conference on Learning Representations},
  year={2023},
  note={arXiv:2202.07646 (2022)},
  url={https://arxiv.org/abs/2202.07646}
}
@inproceedings{biderman2023emergent,
  title={Emergent and Predictable Memorization in Large Language Models},
  author={Biderman, Stella and Prashanth, USVSN Sai and Sutawika, Lintang and Schoelkopf, Hailey and Anthony, Quentin and Purohit, Shivanshu and Raff, Edward},
  booktitle={Advances in Neural Information Processing Systems},
  volume={36},
  year={2023},
  url={https://arxiv.org/abs/2304.11158}
}
@inproceedings{hans2024goldfish,
  title={Be like a Goldfish, Don't Memorize! Mitigating Memorization in Generative {LLM}s},
  author={Hans, Abhimanyu and Wen, Yuxin and Jain, Neel and Kirchenbauer, John and Kazemi, Hamid and Singhania, Prajwal and Singh, Siddharth and Somepalli, Gowthami and Geiping, Jonas and Bhatele, Abhinav and Goldstein, Tom},
  booktitle={Advances in Neural Information Processing Systems},
  volume={37},
  year={2024},
  url={https://arxiv.org/abs/2406.10209}
}
"""

_DESCRIPTION = """\
Extractable memorization compares what a language model generates from a training-data prefix (the prediction)
with the tokens that really followed that prefix in the training data (the reference), both as token ids.
Four per-sample scores are averaged over the samples:

- exact_match: 1 when the first len(reference) predicted tokens equal the reference, else 0; the sample is then
  "k-extractable" in the sense of Carlini et al. (2022).
- memorization_score: the fraction of reference positions whose token the prediction reproduces at the same
  position (Biderman et al. 2023, as used for Pythia).
- longest_common_prefix: the number of leading tokens the prediction gets right before its first mistake.
- rouge_l: ROUGE-L F-measure on token ids, the F1 of the longest common subsequence of the two id sequences; it
  credits memorized spans that are shifted or interrupted. It is not the number Hans et al. (2024) report: they
  run `evaluate`'s `rouge` on the decoded text, which compares lower-cased words (hf_memory's
  `measure_extraction(..., tokenizer=...)` reports that one as `rouge_l_text`).

A prediction longer than its reference is scored on its first len(reference) tokens for exact_match (Carlini et
al.: the reference is extracted if greedy decoding produces it), memorization_score and longest_common_prefix (the
extra tokens are ignored there), while rouge_l uses the whole prediction, so extra tokens lower its precision.
Positions a shorter prediction does not reach count as mistakes. With strict_exact_match=True, exact_match is
instead equality of the whole prediction with the reference, as in the goldfish paper's evaluation: a longer
prediction is then not a match.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): generated token ids, one sequence per sample (lists, tuples, numpy
        arrays or torch tensors of integers). May be empty or of any length.
    references (`list` of `list` of `int`): the true continuation token ids, one non-empty sequence per sample.
    return_per_sample (`bool`, defaults to `False`): also return the per-sample scores.
    strict_exact_match (`bool`, defaults to `False`): exact_match requires the whole prediction to equal the
        reference (Hans et al. 2024); by default its first len(reference) tokens must (Carlini et al. 2022).
Returns:
    exact_match (`float`): fraction of samples reproduced exactly, in [0, 1].
    memorization_score (`float`): mean fraction of reference positions matched, in [0, 1].
    longest_common_prefix (`float`): mean number of leading matching tokens, in [0, max len(reference)].
    rouge_l (`float`): mean ROUGE-L F-measure over token ids, in [0, 1].
    With `return_per_sample=True` also:
    exact_match_per_sample (`list` of `bool`), memorization_score_per_sample (`list` of `float`),
    longest_common_prefix_per_sample (`list` of `int`), rouge_l_per_sample (`list` of `float`).
Raises:
    ValueError: naming the argument, when `predictions` and `references` differ in length, are empty, when a
        reference is empty, or when a sample is not a 1-D sequence of token ids, integers from 0 to 2**63 - 1
        (floats, strings, bools and negative ids such as the label mask -100 are refused).
Examples:
    One sample memorized verbatim, one reproduced only for its first half:

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> metric.compute(predictions=[[1, 2, 3, 4], [5, 6, 7, 8]], references=[[1, 2, 3, 4], [5, 6, 0, 0]])
    {'exact_match': 0.5, 'memorization_score': 0.75, 'longest_common_prefix': 3.0, 'rouge_l': 0.75}

    Per-sample scores; the second prediction is shifted by one token, which only ROUGE-L credits:

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> results = metric.compute(
    ...     predictions=[[1, 2, 3, 4], [9, 1, 2, 3]], references=[[1, 2, 3, 4], [1, 2, 3, 4]], return_per_sample=True
    ... )
    >>> for name, value in results.items():
    ...     print(name, value)
    exact_match 0.5
    memorization_score 0.5
    longest_common_prefix 2.0
    rouge_l 0.875
    exact_match_per_sample [True, False]
    memorization_score_per_sample [1.0, 0.0]
    longest_common_prefix_per_sample [4, 0]
    rouge_l_per_sample [1.0, 0.75]

    A prediction shorter than its reference (the missing positions are mistakes) and one longer than it (the
    extra tokens only lower ROUGE-L precision):

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> results = metric.compute(
    ...     predictions=[[1, 2], [1, 2, 3, 4, 5, 6]], references=[[1, 2, 3, 4], [1, 2, 3, 4]], return_per_sample=True
    ... )
    >>> results["exact_match_per_sample"], results["memorization_score_per_sample"]
    ([False, True], [0.5, 1.0])
    >>> results["longest_common_prefix_per_sample"], results["rouge_l_per_sample"]
    ([2, 4], [0.6666666666666666, 0.8])

    The goldfish paper's strict exact match: the longer prediction is no longer a match.

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> metric.compute(predictions=[[1, 2, 3, 4, 5], [1, 2, 3, 4]], references=[[1, 2, 3, 4], [1, 2, 3, 4]],
    ...     strict_exact_match=True)["exact_match"]
    0.5
"""


def _as_token_row(label, sample):
    """One sample as a 1-D int64 array; anything that is not a sequence of integer token ids is refused."""
    row = None
    if hasattr(sample, "detach"):  # a torch tensor: numpy has no bfloat16 or float8, so its dtype is looked at first
        dtype = sample.dtype
        if not (getattr(dtype, "is_floating_point", False) or getattr(dtype, "is_complex", False)):
            try:
                row = sample.detach().cpu().numpy()
            except TypeError:  # another dtype numpy lacks
                row = None
    else:
        try:
            row = np.asarray(sample)
        except (TypeError, ValueError):
            row = None
    valid = row is not None and row.ndim == 1 and (row.dtype.kind in "iu" or row.size == 0)
    if valid and row.size and isinstance(sample, (list, tuple)):
        valid = not any(isinstance(token, (bool, np.bool_)) for token in sample)
    if not valid:
        raise ValueError(f"`{label}` must be a 1-D sequence of integer token ids, got {sample!r:.100}")
    # Token ids are non-negative and fit int64: a uint64 id past 2**63 - 1 would wrap to a negative number.
    if row.size and (row.min() < 0 or (row.dtype.kind == "u" and row.max() > np.iinfo(np.int64).max)):
        raise ValueError(f"`{label}` must hold token ids from 0 to 2**63 - 1, got {sample!r:.100}")
    return row.astype(np.int64, copy=False)


def _as_token_rows(name, samples):
    """A whole column as a list of 1-D int64 arrays, refusing a missing or empty column."""
    if samples is None or isinstance(samples, (str, bytes)) or not hasattr(samples, "__len__"):
        raise ValueError(f"`{name}` must be a sequence of token-id sequences, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one sample")
    return [_as_token_row(f"{name}[{index}]", sample) for index, sample in enumerate(samples)]


def _validated(predictions, references):
    """Both columns as int64 rows after every input check, shared by `extraction_scores` and the metric."""
    preds = _as_token_rows("predictions", predictions)
    refs = _as_token_rows("references", references)
    if len(preds) != len(refs):
        raise ValueError(
            f"`predictions` and `references` must have the same number of samples, got {len(preds)} and {len(refs)}"
        )
    empty = [index for index, ref in enumerate(refs) if ref.size == 0]
    if empty:
        raise ValueError(f"`references[{empty[0]}]` is empty: every reference needs at least one token")
    return preds, refs


def _padded(rows, lengths, width):
    """Rows left-aligned in an (n, width) int64 matrix, with the mask of real (non-padding) positions."""
    mask = np.arange(width) < lengths[:, None]
    matrix = np.zeros(mask.shape, dtype=np.int64)
    matrix[mask] = np.concatenate(rows)
    return matrix, mask


def _lcs_lengths(pred, pred_mask, ref, ref_mask):
    """Longest-common-subsequence length of each (prediction, reference) row pair.

    The classic DP runs over prediction positions; each DP row is computed for all samples at once, using
    dp[i][j] = max over k <= j of max(dp[i-1][k], dp[i-1][k-1] + match(i, k)), a running maximum.
    """
    previous = np.zeros((ref.shape[0], ref.shape[1] + 1), dtype=np.int64)
    for i in range(pred.shape[1]):
        match = (pred[:, i, None] == ref) & ref_mask & pred_mask[:, i, None]
        candidate = np.maximum(previous[:, 1:], previous[:, :-1] + match)
        previous[:, 1:] = np.maximum.accumulate(candidate, axis=1)
    return previous[:, -1]


def extraction_scores(
    predictions, references, return_per_sample: bool = False, strict_exact_match: bool = False
) -> dict:
    """Exact match, memorization score, longest common prefix and ROUGE-L of token-id predictions vs references.

    The single implementation behind the `evaluate` metric, callable directly. Aggregates are means over samples
    (Python floats); per-sample lists are added with `return_per_sample=True`.

    Args:
        predictions: Generated token ids, one sequence per sample (lists, tuples, numpy arrays or torch tensors of
            integers); each may be empty or of any length.
        references: The true continuation token ids, one non-empty sequence per sample.
        return_per_sample: Also return `<metric>_per_sample` lists, one value per sample.
        strict_exact_match: Exact match requires the whole prediction to equal the reference, as in the goldfish
            paper's evaluation; False (the default, Carlini et al.) compares its first len(reference) tokens.

    Returns:
        A dict with `exact_match`, `memorization_score`, `longest_common_prefix` and `rouge_l` (means over the
        samples) and, with `return_per_sample=True`, the four per-sample lists.

    Raises:
        ValueError: If the two columns differ in length or are empty, a reference is empty, a sample is not a
            1-D sequence of integer token ids from 0 to 2**63 - 1 (negative ids such as the label mask -100 are
            refused), or a flag is not a bool.

    Examples:
        >>> extraction_scores([[1, 2, 3], [4, 0]], [[1, 2, 3], [4, 5]])
        {'exact_match': 0.5, 'memorization_score': 0.75, 'longest_common_prefix': 2.0, 'rouge_l': 0.75}
    """
    for name, flag in (("return_per_sample", return_per_sample), ("strict_exact_match", strict_exact_match)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"`{name}` must be True or False, got {flag!r}")
    preds, refs = _validated(predictions, references)
    pred_len = np.array([row.size for row in preds])
    ref_len = np.array([row.size for row in refs])
    ref, ref_mask = _padded(refs, ref_len, ref_len.max())
    longest = pred_len.max()
    pred, pred_mask = _padded(preds, pred_len, max(ref_len.max(), longest))

    width = ref.shape[1]
    matches = (pred[:, :width] == ref) & pred_mask[:, :width] & ref_mask
    memorization = matches.sum(axis=1) / ref_len
    prefix = np.logical_and.accumulate(matches, axis=1).sum(axis=1)
    exact = (prefix == ref_len) & (pred_len == ref_len) if strict_exact_match else prefix == ref_len
    lcs = _lcs_lengths(pred[:, :longest], pred_mask[:, :longest], ref, ref_mask)
    rouge_l = 2 * lcs / (pred_len + ref_len)

    scores = {
        "exact_match": float(exact.mean()),
        "memorization_score": float(memorization.mean()),
        "longest_common_prefix": float(prefix.mean()),
        "rouge_l": float(rouge_l.mean()),
    }
    if return_per_sample:
        scores["exact_match_per_sample"] = exact.tolist()
        scores["memorization_score_per_sample"] = memorization.tolist()
        scores["longest_common_prefix_per_sample"] = prefix.tolist()
        scores["rouge_l_per_sample"] = rouge_l.tolist()
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExtractableMemorization(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=[
                "https://arxiv.org/abs/2202.07646",
                "https://arxiv.org/abs/2304.11158",
                "https://arxiv.org/abs/2406.10209",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Check the batch before Arrow casting, which would silently turn 1.0 or True into a token id.

        Args:
            predictions: Generated token ids, one sequence per sample, as for `compute`.
            references: The true continuation token ids, one non-empty sequence per sample.
            **kwargs: Passed on to `evaluate.Metric.add_batch`.

        Raises:
            ValueError: On the input errors `compute` refuses (see `extraction_scores`).
        """
        if predictions is not None or references is not None:
            _validated(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Check one sample before Arrow casting, as `add_batch` does.

        Args:
            prediction: The generated token ids of one sample.
            reference: The true continuation token ids of that sample (at least one token).
            **kwargs: Passed on to `evaluate.Metric.add`.

        Raises:
            ValueError: If a sample is not a 1-D sequence of integer token ids, or `reference` is empty.
        """
        if prediction is not None or reference is not None:
            _as_token_row("prediction", prediction)
            if _as_token_row("reference", reference).size == 0:
                raise ValueError("`reference` is empty: it needs at least one token")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, return_per_sample=False, strict_exact_match=False):
        return extraction_scores(
            predictions, references, return_per_sample=return_per_sample, strict_exact_match=strict_exact_match
        )
