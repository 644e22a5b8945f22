"""The extractable-memorization scores of token-id predictions against references: the one implementation, which
the `evaluate` metric (`hf_memory/metrics/extractable_memorization`) wraps."""

from __future__ import annotations

import numpy as np

from .._utils import check_bool


def as_token_row(label: str, sample) -> np.ndarray:
    """One sample as a 1-D int64 array; anything that is not a sequence of integer token ids is refused.

    Args:
        label: The name shown in the error message (e.g. "predictions[3]").
        sample: Token ids: a list, tuple, numpy array or torch tensor of integers.

    Raises:
        ValueError: If `sample` is not a 1-D sequence of integer token ids from 0 to 2**63 - 1 (floats, strings,
            bools and negative ids such as the label mask -100 are refused).
    """
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
    return [as_token_row(f"{name}[{index}]", sample) for index, sample in enumerate(samples)]


def check_token_columns(predictions, references) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Both columns as int64 rows after every input check, shared by `extraction_scores` and the metric.

    Args:
        predictions: Generated token ids, one sequence per sample (each may be empty).
        references: The true continuation token ids, one non-empty sequence per sample.

    Raises:
        ValueError: If the columns are missing, empty or differ in length, a reference is empty, or a sample is
            not a 1-D sequence of token ids (see `as_token_row`).
    """
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
    return_per_sample = check_bool(return_per_sample, "return_per_sample")
    strict_exact_match = check_bool(strict_exact_match, "strict_exact_match")
    preds, refs = check_token_columns(predictions, references)
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
