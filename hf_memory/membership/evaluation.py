"""Error rates of membership scores against ground truth: ROC AUC, TPR at a low FPR, their bootstrap intervals.

Scores are read with the package's one convention, **higher = more likely a member**, and labels are 1 for a member,
0 for a non-member. AUC and the ROC curve come from scikit-learn; TPR at FPR <= alpha is read off the ROC curve:
the highest TPR among its points whose FPR does not exceed alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .._utils import check_integer, check_number, metric_folder, require_extra


# `evaluate.load(MEMBERSHIP_INFERENCE)`: the metric over `membership_inference_scores`, loaded offline from its folder.
MEMBERSHIP_INFERENCE = metric_folder("membership_inference")


DEFAULT_FPRS = (0.01, 0.001)  # Carlini et al. (S&P 2022): report the TPR at 1% and 0.1% FPR
MIN_PER_CLASS = 5  # fewer members or non-members leave the bootstrap too few distinct resamples to mean anything
_BOOTSTRAP_BLOCK = 64  # resamples computed at a time (memory: block x samples)


def check_labels(values, name: str = "is_member") -> np.ndarray:
    """Membership labels as a 1-D bool array (True = member).

    Args:
        values: Per sample, 1 or True for a member, 0 or False for a non-member (numpy and torch arrays too).
        name: The argument name shown in error messages.

    Raises:
        ValueError: If `values` is not a flat, non-empty list of 0/1 or bools.
    """
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ValueError(f"`{name}` must be a list of 0/1 labels (1 = member), got {type(values).__name__}.")
    try:
        array = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype == object or array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a flat, non-empty list of 0/1 labels (1 = member).")
    if array.dtype != bool and not (array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all()):
        bad = array[~np.isin(array, (0, 1))][0] if array.dtype.kind in "iuf" else array[0]
        raise ValueError(f"`{name}` must hold only 0 and 1 (1 = member) or booleans, got {bad!r}.")
    return array.astype(bool)


def check_scores(values, name: str, size: int | None = None) -> np.ndarray:
    """Scores as a 1-D float64 array of finite numbers.

    Args:
        values: Per sample, a number (higher = more likely a member).
        name: The argument name shown in error messages.
        size: The length it must have, or None.

    Raises:
        ValueError: If `values` is not a flat list of finite numbers (NaN and infinities are named), or has another
            length than `size`.
    """
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ValueError(f"`{name}` must be a list of numbers (one score per sample), got {type(values).__name__}.")
    try:
        array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or array.dtype.kind not in "iuf" or array.dtype == bool:
        raise ValueError(f"`{name}` must be a flat list of numbers (one score per sample).")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        where = int(np.flatnonzero(~np.isfinite(array))[0])
        count = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"`{name}` holds {count} non-finite score(s) (NaN or infinite), the first at index {where} "
            f"({array[where]!r}): every sample needs a finite score."
        )
    if size is not None and array.size != size:
        raise ValueError(f"`{name}` has {array.size} scores, but there are {size} labels.")
    return array


def check_fprs(fprs) -> tuple[float, ...]:
    """The false-positive rates to report TPR at, each in (0, 1).

    Args:
        fprs: A list of rates, e.g. (0.01, 0.001).
    """
    if isinstance(fprs, (str, bytes)) or not hasattr(fprs, "__iter__"):
        raise ValueError(f"`fprs` must be a list of false-positive rates in (0, 1), got {fprs!r}.")
    rates = tuple(
        check_number(rate, "fprs", minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
        for rate in fprs
    )
    if len(set(rates)) != len(rates):
        raise ValueError(f"`fprs` lists a rate twice: {list(rates)}.")
    return rates


def allowed_false_positives(fpr: float, num_non_members: int) -> int:
    """How many non-members may score above the threshold at FPR <= `fpr`: floor(fpr * non-members).

    Args:
        fpr: The rate.
        num_non_members: The number of non-members.
    """
    return math.floor(fpr * num_non_members + 1e-9)  # + 1e-9: 0.01 * 300 is 2.9999999999999996 in floats


def unmeasurable_reason(fpr: float, num_non_members: int) -> str | None:
    """Why the TPR at `fpr` cannot be measured with `num_non_members` non-members, or None when it can.

    With fewer than 1 / fpr non-members, FPR <= fpr allows no false positive at all, so the number would be the TPR
    at 0 FPR, whatever `fpr` says.

    Args:
        fpr: The rate.
        num_non_members: The number of non-members.
    """
    if allowed_false_positives(fpr, num_non_members) >= 1:
        return None
    needed = math.ceil(1 / fpr - 1e-9)
    return f"needs at least {needed} non-members (one false positive at {fpr:.2g} FPR), there are {num_non_members}"


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The highest TPR of the ROC curve among its points with FPR <= `fpr`.

    With m = floor(fpr * non-members) false positives allowed, the threshold sits just above the (m+1)-th highest
    non-member score, and the TPR is the share of members scoring above it.

    Args:
        scores: Per sample, the score (higher = member).
        labels: Per sample, True for a member.
        fpr: The rate.
    """
    members, non_members = scores[labels], np.sort(scores[~labels])[::-1]
    allowed = allowed_false_positives(fpr, len(non_members))
    if allowed >= len(non_members):
        return 1.0
    return float(np.mean(members > non_members[allowed]))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (scikit-learn's `roc_auc_score`; ties count one half).

    Args:
        scores: Per sample, the score (higher = member).
        labels: Per sample, True for a member.
    """
    require_extra("analysis", "Membership inference evaluation")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def roc_points(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (scikit-learn's `roc_curve`, collinear points dropped): `fpr`, `tpr`, `threshold` lists.

    Args:
        scores: Per sample, the score (higher = member).
        labels: Per sample, True for a member.
    """
    require_extra("analysis", "Membership inference evaluation")
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thresholds.tolist()}


def check_classes(labels: np.ndarray, minimum: int = MIN_PER_CLASS) -> None:
    """Refuse labels with fewer than `minimum` members or non-members.

    Args:
        labels: Per sample, True for a member.
        minimum: The fewest of each class.

    Raises:
        ValueError: Naming both counts.
    """
    members, non_members = int(labels.sum()), int((~labels).sum())
    if members == 0 or non_members == 0:
        raise ValueError(
            f"The labels hold a single class ({members} members, {non_members} non-members): membership inference "
            "is measured against both."
        )
    if min(members, non_members) < minimum:
        raise ValueError(
            f"There are {members} members and {non_members} non-members: the bootstrap interval needs at least "
            f"{minimum} of each."
        )


class _Sorted:
    """One score column, sorted per class, for AUC and TPR of weighted resamples."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        member_order = np.argsort(scores[labels], kind="stable")
        non_member_order = np.argsort(scores[~labels], kind="stable")
        self.members = scores[labels][member_order]  # ascending
        self.non_members = scores[~labels][non_member_order]  # ascending
        self.member_order, self.non_member_order = member_order, non_member_order
        # for each member: non-members strictly below it, and up to and including its score
        self.below = np.searchsorted(self.non_members, self.members, side="left")
        self.up_to = np.searchsorted(self.non_members, self.members, side="right")

    def auc(self, member_counts: np.ndarray, non_member_counts: np.ndarray) -> np.ndarray:
        """AUC per resample (rows of the count matrices, in the original class orders)."""
        cm = member_counts[:, self.member_order]
        cumulative = np.zeros((len(cm), len(self.non_members) + 1))
        np.cumsum(non_member_counts[:, self.non_member_order], axis=1, out=cumulative[:, 1:])
        wins = cumulative[:, self.below] + 0.5 * (cumulative[:, self.up_to] - cumulative[:, self.below])
        return (cm * wins).sum(1) / (cm.sum(1) * cumulative[:, -1])

    def tpr(self, member_counts: np.ndarray, non_member_counts: np.ndarray, fpr: float) -> np.ndarray:
        """TPR at FPR <= `fpr` per resample."""
        n0 = len(self.non_members)
        allowed = allowed_false_positives(fpr, n0)
        # the (allowed+1)-th highest resampled non-member: count from the top
        from_top = np.cumsum(non_member_counts[:, self.non_member_order][:, ::-1], axis=1)
        position = n0 - 1 - np.argmax(from_top >= allowed + 1, axis=1)
        threshold = self.non_members[position]
        cm = member_counts[:, self.member_order]
        cumulative = np.zeros((len(cm), len(self.members) + 1))
        np.cumsum(cm, axis=1, out=cumulative[:, 1:])
        at_or_below = cumulative[np.arange(len(cm)), np.searchsorted(self.members, threshold, side="right")]
        return (cumulative[:, -1] - at_or_below) / cumulative[:, -1]


def _counts(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """How often each of `size` samples is drawn in each of `rows` resamples of `size` draws with replacement."""
    draws = rng.integers(0, size, (rows, size)) + size * np.arange(rows)[:, None]
    return np.bincount(draws.ravel(), minlength=rows * size).reshape(rows, size).astype(np.float64)


def bootstrap_intervals(
    columns: Mapping[str, np.ndarray],
    labels: np.ndarray,
    fprs: Sequence[float],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict[str, dict]:
    """Percentile bootstrap intervals of the AUC and of the TPR at each FPR, for every score column.

    Members and non-members are resampled separately (a stratified bootstrap: every resample keeps both class
    sizes, so every resample has an AUC, and the TPR at an FPR keeps its resolution); every column is evaluated on
    the same resamples.

    Args:
        columns: Name -> scores.
        labels: Per sample, True for a member.
        fprs: The false-positive rates.
        n_bootstrap: Resamples (>= 1).
        confidence: The interval's coverage, in (0, 1).
        seed: Seed of the resampling.

    Returns:
        Name -> `{"auc": (low, high), "tpr": {fpr: (low, high)}}`.
    """
    rng = np.random.default_rng(seed)
    prepared = {name: _Sorted(scores, labels) for name, scores in columns.items()}
    n1, n0 = int(labels.sum()), int((~labels).sum())
    aucs = {name: [] for name in columns}
    tprs = {name: {fpr: [] for fpr in fprs} for name in columns}
    for start in range(0, n_bootstrap, _BOOTSTRAP_BLOCK):
        rows = min(_BOOTSTRAP_BLOCK, n_bootstrap - start)
        member_counts, non_member_counts = _counts(rng, rows, n1), _counts(rng, rows, n0)
        for name, column in prepared.items():
            aucs[name].append(column.auc(member_counts, non_member_counts))
            for fpr in fprs:
                tprs[name][fpr].append(column.tpr(member_counts, non_member_counts, fpr))
    tail = 100 * (1 - confidence) / 2

    def interval(values: list) -> tuple[float, float]:
        low, high = np.percentile(np.concatenate(values), [tail, 100 - tail])
        return float(low), float(high)

    return {
        name: {"auc": interval(aucs[name]), "tpr": {fpr: interval(tprs[name][fpr]) for fpr in fprs}}
        for name in columns
    }


def membership_inference_scores(
    predictions,
    references,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    return_curve: bool = False,
) -> dict:
    """ROC AUC and TPR at low FPRs of membership scores against ground truth (the `membership_inference` metric).

    Args:
        predictions: Per sample, the attack's score, **higher = more likely a member** (negate a loss first).
        references: Per sample, 1 (or True) for a member, 0 (or False) for a non-member.
        fprs: The false-positive rates to report the TPR at, each in (0, 1).
        n_bootstrap: Stratified bootstrap resamples for the intervals; 0 reports none.
        confidence: The intervals' coverage, in (0, 1).
        seed: Seed of the bootstrap.
        return_curve: Also return the ROC curve (`fpr`, `tpr`, `threshold` lists).

    Returns:
        `roc_auc`; per rate, `tpr_at_<rate>_fpr` (None when too few non-members allow no false positive at that rate,
        with the reason under `not_measurable`); `num_members`, `num_non_members`; with `n_bootstrap`,
        `roc_auc_interval` and `tpr_at_<rate>_fpr_interval` (`[low, high]`).

    Raises:
        ValueError: If the labels are not 0/1, hold a single class, or the two lists differ in length; a score is
            NaN or infinite; with `n_bootstrap`, fewer than 5 members or non-members.

    Examples:
        >>> membership_inference_scores([0.9, 0.4, 0.3, 0.1, 0.7], [1, 1, 0, 0, 0], fprs=[0.01])
        {'roc_auc': 0.8333333333333334, 'tpr_at_0.01_fpr': None, 'num_members': 2, 'num_non_members': 3, 'not_measurable': {'tpr_at_0.01_fpr': 'needs at least 100 non-members (one false positive at 0.01 FPR), there are 3'}}
    """
    labels = check_labels(references, "references")
    scores = check_scores(predictions, "predictions", size=labels.size)
    fprs = check_fprs(fprs)
    n_bootstrap = check_integer(n_bootstrap, "n_bootstrap", minimum=0)
    confidence = check_number(confidence, "confidence", minimum=0, maximum=1, exclusive_minimum=True,
                              exclusive_maximum=True)  # fmt: skip
    seed = check_integer(seed, "seed", minimum=0)
    check_classes(labels, MIN_PER_CLASS if n_bootstrap else 1)
    n0 = int((~labels).sum())
    result = {"roc_auc": roc_auc(scores, labels)}
    reasons = {}
    for fpr in fprs:
        key = f"tpr_at_{fpr:g}_fpr"
        reason = unmeasurable_reason(fpr, n0)
        result[key] = None if reason else tpr_at_fpr(scores, labels, fpr)
        if reason:
            reasons[key] = reason
    result["num_members"], result["num_non_members"] = int(labels.sum()), n0
    if n_bootstrap:
        intervals = bootstrap_intervals({"score": scores}, labels, fprs, n_bootstrap, confidence, seed)["score"]
        result["roc_auc_interval"] = list(intervals["auc"])
        for fpr in fprs:
            key = f"tpr_at_{fpr:g}_fpr"
            result[f"{key}_interval"] = None if key in reasons else list(intervals["tpr"][fpr])
    if reasons:
        result["not_measurable"] = reasons
    if return_curve:
        result.update(roc_points(scores, labels))
    return result
