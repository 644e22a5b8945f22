"""The numbers an audit reports beyond its per-window rows: headline metrics and the data behind every plot.

Every number the HTML page shows comes from here and is written to `results.json` as well.
"""

from __future__ import annotations

import math

import numpy as np


SIGNAL_COLUMNS = (
    "confidence",
    "true_prob",
    "logit_mean",
    "logit_var",
    "entropy_prefix",
    "entropy_suffix",
    "entropy_jump",
    "unigram_suffix",
    "bigram_suffix",
)
EXTRACTION_METRICS = ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l")
MAX_POSITION_BINS = 10
MAX_NGRAM_BINS = 6
CALIBRATED_BINS = 30


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(values) / len(values) if values else None


def _rate_and_lcp(rows: list[dict], suffix_len: int) -> dict:
    return {
        "windows": len(rows),
        "exact_match": _mean(r["exact_match"] for r in rows),
        "longest_common_prefix": _mean(r["longest_common_prefix"] for r in rows),
        "longest_common_prefix_fraction": _mean(r["longest_common_prefix"] / suffix_len for r in rows),
    }


def headline_metrics(rows: list[dict], suffix_len: int, prefix: str = "") -> dict:
    """The extraction numbers over all windows, for the model (`prefix=""`) or the reference (`"reference_"`).

    Args:
        rows: The per-window rows.
        suffix_len: Tokens of each window's suffix.
        prefix: Column prefix of the model whose numbers are wanted: "" or "reference_".

    Returns:
        `exact_match`, `memorization_score`, `longest_common_prefix`, `rouge_l` (means over the windows; the
        reference has only the first and third) and `half_suffix_rate`, the share of windows whose first half of
        the suffix or more is reproduced.
    """
    out = {}
    for name in EXTRACTION_METRICS:
        column = prefix + name
        if rows and column in rows[0] and rows[0][column] is not None:
            out[name] = _mean(r[column] for r in rows)
    lcp = [r[prefix + "longest_common_prefix"] for r in rows]
    out["half_suffix_rate"] = _mean(n >= suffix_len / 2 for n in lcp)
    return out


def calibrated_summary(rows: list[dict]) -> dict | None:
    """Summary of the calibrated CE diagnostic (`loss_after - reference_loss`; below 0: easier than for the
    reference model even after accounting for how hard the text is), or None without a reference model.

    The mean, median and share below zero are over the windows whose score is finite; `calibrated_non_finite`
    counts the others.

    Args:
        rows: The per-window rows.
    """
    values = np.array([r["calibrated_loss"] for r in rows if r.get("calibrated_loss") is not None], dtype=float)
    if not len(values):
        return None
    finite = values[np.isfinite(values)]  # a diverged model can give some windows a NaN or infinite loss
    nan = float("nan")
    return {
        "calibrated_loss_mean": float(finite.mean()) if len(finite) else nan,
        "calibrated_loss_median": float(np.median(finite)) if len(finite) else nan,
        "calibrated_below_zero": float((finite < 0).mean()) if len(finite) else nan,
        "calibrated_non_finite": int(len(values) - len(finite)),
        "loss_mean": _mean(r["loss"] for r in rows),
        "loss_after_mean": _mean(r["loss_after"] for r in rows),
        "reference_loss_mean": _mean(r["reference_loss"] for r in rows),
    }


def signal_means(rows: list[dict]) -> dict:
    """Mean of every memorization signal over the windows extracted exactly, the others, and all of them.

    Args:
        rows: The per-window rows.

    Returns:
        `{signal: {"extracted": ..., "not_extracted": ..., "all": ...}}` (None where a group is empty).
    """
    extracted = [r for r in rows if r["exact_match"]]
    others = [r for r in rows if not r["exact_match"]]
    return {
        name: {
            "extracted": _mean(r[name] for r in extracted),
            "not_extracted": _mean(r[name] for r in others),
            "all": _mean(r[name] for r in rows),
        }
        for name in SIGNAL_COLUMNS
    }


def lcp_histogram(rows: list[dict], suffix_len: int) -> dict:
    """Windows per longest common prefix (0 .. suffix_len), for the model and, when measured, the reference.

    Args:
        rows: The per-window rows.
        suffix_len: Tokens of each window's suffix.
    """
    counts = np.bincount([r["longest_common_prefix"] for r in rows], minlength=suffix_len + 1)
    reference = None
    if rows and rows[0].get("reference_longest_common_prefix") is not None:
        reference = np.bincount(
            [r["reference_longest_common_prefix"] for r in rows], minlength=suffix_len + 1
        ).tolist()
    return {"tokens": list(range(suffix_len + 1)), "model": counts.tolist(), "reference": reference}


def by_position(rows: list[dict], suffix_len: int) -> list[dict] | None:
    """Extraction per range of window start (token offset in the document), or None if every window starts at the
    same offset.

    Args:
        rows: The per-window rows.
        suffix_len: Tokens of each window's suffix.
    """
    starts = sorted({r["start"] for r in rows})
    if len(starts) < 2:
        return None
    if len(starts) <= MAX_POSITION_BINS:
        groups = [(s, s) for s in starts]
    else:
        edges = np.linspace(starts[0], starts[-1] + 1, MAX_POSITION_BINS + 1)
        groups = [(int(math.ceil(lo)), int(math.ceil(hi)) - 1) for lo, hi in zip(edges[:-1], edges[1:])]
    out = []
    for lo, hi in groups:
        members = [r for r in rows if lo <= r["start"] <= hi]
        if members:
            out.append({"start_from": lo, "start_to": hi, **_rate_and_lcp(members, suffix_len)})
    return out


def by_ngram_frequency(rows: list[dict], suffix_len: int) -> list[dict]:
    """Extraction per quantile bin of `bigram_suffix` (mean log(1 + corpus count) of the suffix's bigrams).

    Args:
        rows: The per-window rows.
        suffix_len: Tokens of each window's suffix.
    """
    values = np.array([r["bigram_suffix"] for r in rows], dtype=float)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, min(MAX_NGRAM_BINS, len(values)) + 1)))
    if len(edges) < 2:
        edges = np.array([values.min(), values.max()])
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        members = [r for r, v in zip(rows, values) if lo <= v and (v <= hi if last else v < hi)]
        if members:
            out.append({"bigram_from": float(lo), "bigram_to": float(hi), **_rate_and_lcp(members, suffix_len)})
    return out


def calibrated_histogram(rows: list[dict]) -> dict | None:
    """Histogram of the calibrated CE score (`CALIBRATED_BINS` equal bins), or None without a reference model.

    Args:
        rows: The per-window rows.
    """
    values = [r["calibrated_loss"] for r in rows if r.get("calibrated_loss") is not None]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    counts, edges = np.histogram(values, bins=CALIBRATED_BINS)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def top_windows(rows: list[dict], count: int) -> list[int]:
    """The `window` numbers of the `count` windows with the longest reproduced suffix (ties: lower calibrated score
    first, then input order); windows that reproduce nothing are left out.

    Args:
        rows: The per-window rows.
        count: How many to return at most.
    """

    def key(r):
        calibrated = r.get("calibrated_loss")
        return (-r["longest_common_prefix"], calibrated if calibrated is not None else 0.0, r["window"])

    return [r["window"] for r in sorted(rows, key=key) if r["longest_common_prefix"] > 0][:count]
