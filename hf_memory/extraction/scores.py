"""The extractable-memorization scores of token-id predictions against references: the one implementation, which
the `evaluate` metric (`hf_memory/metrics/extractable_memorization`) wraps."""

from __future__ import annotations

import numpy as np

from .._utils import check_bool, metric_folder


# `evaluate.load(EXTRACTABLE_MEMORIZATION)` loads the metric over `extraction_scores` offline from its folder.
EXTRACTABLE_MEMORIZATION = metric_folder("extractable_memorization")


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


def _ragged_index(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indexes into a flat array of the first `lengths[r]` items from `offsets[r]` of every row r, row after row."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) + np.repeat(offsets - starts, lengths)


def _padded(flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of `flat` left-aligned in a (rows, longest) matrix, padded with -1 (which matches no token id)."""
    width = int(lengths.max()) if lengths.size else 0
    matrix = np.full((lengths.size, width), -1, dtype=np.int64)
    matrix[np.arange(width) < lengths[:, None]] = flat[_ragged_index(offsets, lengths)]
    return matrix


def _lcs_lengths(flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Longest-common-subsequence length of each pair of rows of `flat`: `offsets` and `lengths` have shape (n, 2).

    The classic DP runs over the positions of the shorter row of each pair, with dp[i][j] = max over k <= j of
    max(dp[i-1][k], dp[i-1][k-1] + match(i, k)) (a running maximum), each DP row computed for many pairs at once.
    Pairs go in groups whose longer rows are within a factor of two in length, each group's pairs sorted by their
    shorter row, longest first, so step i only touches the pairs that still have a position i: the work is at
    most about twice the sum over pairs of len(a) * len(b), and no pair is padded to another group's length.
    """
    short = lengths.argmin(axis=1)
    outer_len, inner_len = lengths.min(axis=1), lengths.max(axis=1)
    pairs = np.arange(len(lengths))
    outer_off, inner_off = offsets[pairs, short], offsets[pairs, 1 - short]
    lcs = np.zeros(len(lengths), dtype=np.int64)
    live = np.flatnonzero(outer_len > 0)
    groups = np.frexp(inner_len[live])[1]  # 2**(g - 1) <= inner length < 2**g
    for group in np.unique(groups):
        rows = live[groups == group]
        rows = rows[np.argsort(-outer_len[rows], kind="stable")]
        outer = _padded(flat, outer_off[rows], outer_len[rows])
        inner = _padded(flat, inner_off[rows], inner_len[rows])
        active = np.searchsorted(-outer_len[rows], -np.arange(outer.shape[1]), side="left")  # rows longer than i
        previous = np.zeros((len(rows), inner.shape[1] + 1), dtype=np.int64)
        for i, count in enumerate(active):
            candidate = previous[:count, :-1] + (outer[:count, i, None] == inner[:count])
            np.maximum(candidate, previous[:count, 1:], out=candidate)
            np.maximum.accumulate(candidate, axis=1, out=previous[:count, 1:])
        lcs[rows] = previous[:, -1]
    return lcs


def extraction_scores(
    predictions, references, return_per_sample: bool = False, strict_exact_match: bool = False
) -> dict:
    """Exact match, memorization score, longest common prefix and ROUGE-L of token-id predictions vs references.

    The single implementation behind the `evaluate` metric, callable directly. Aggregates are means over samples
    (Python floats); per-sample lists are added with `return_per_sample=True`. The cost grows with the total
    length (ROUGE-L's with the sum over samples of len(prediction) * len(reference)): one very long prediction
    does not pad the other samples to its length.

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
    # Every sample's tokens in one flat array (predictions, then references): the cost grows with the total length,
    # never with the number of samples times the longest one.
    rows = preds + refs
    lengths = np.array([row.size for row in rows], dtype=np.int64)
    flat = np.concatenate(rows)
    offsets = np.cumsum(lengths) - lengths
    n = len(preds)
    pred_len, ref_len = lengths[:n], lengths[n:]

    lcs = _lcs_lengths(flat, np.stack([offsets[:n], offsets[n:]], axis=1), np.stack([pred_len, ref_len], axis=1))
    rouge_l = 2 * lcs / (pred_len + ref_len)
    # The first min(len(prediction), len(reference)) positions of each pair, compared position by position.
    compared = np.minimum(pred_len, ref_len)
    sample = np.repeat(np.arange(n), compared)
    position = np.arange(int(compared.sum())) - np.repeat(np.cumsum(compared) - compared, compared)
    matches = flat[offsets[:n][sample] + position] == flat[offsets[n:][sample] + position]
    memorization = np.bincount(sample[matches], minlength=n) / ref_len
    prefix = compared.copy()  # leading matches: up to the first mismatch, else every compared position
    np.minimum.at(prefix, sample[~matches], position[~matches])
    exact = (prefix == ref_len) & (pred_len == ref_len) if strict_exact_match else prefix == ref_len

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
