"""Transfer reports: did tuning on one pattern help on the others, significantly, and how much of the gain survived?

Each cell (train pattern -> test pattern) compares the untuned and the tuned model on the same test items. The paired
test is McNemar's exact test: only items where the two models disagree carry information, and under "tuning changed
nothing" each disagreement is equally likely to go either way, so the count of items only the tuned model gets right
is Binomial(disagreements, 1/2). It is exact for the few hundred items of a split (no chi-square approximation)
and needs no resampling, unlike a paired bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .._utils import check_number, require_extra
from .scoring import _short


def mcnemar_exact(base_correct, tuned_correct) -> dict:
    """McNemar's exact two-sided test on paired right/wrong outcomes of two models on the same items.

    Args:
        base_correct: Per item, whether the untuned model was right (bools or 0/1).
        tuned_correct: Per item, whether the tuned model was right, in the same item order.

    Returns:
        A dict with `tuned_only` (items only the tuned model gets right), `base_only` (items only the untuned model
        gets right) and `p_value`: twice the smaller binomial tail of `tuned_only` out of `tuned_only + base_only`
        at probability 1/2, capped at 1 (1 when the models never disagree).

    Raises:
        ValueError: If the lists differ in length, are empty, or hold anything but bools or 0/1.

    Examples:
        >>> mcnemar_exact([0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1])
        {'tuned_only': 5, 'base_only': 0, 'p_value': 0.0625}
    """
    base = _outcomes(base_correct, "base_correct")
    tuned = _outcomes(tuned_correct, "tuned_correct")
    if base.size != tuned.size:
        raise ValueError(
            f"`base_correct` and `tuned_correct` must score the same items, got {base.size} and {tuned.size} items."
        )
    return _mcnemar(base, tuned)


def _binomial_half_tail(total: int, low: int) -> float:
    """P(X <= low) for X ~ Binomial(total, 1/2), with low <= total / 2, to within float rounding.

    Exact integers: the terms C(total, k) are summed from k = low down, each from the one before
    (C(total, k - 1) = C(total, k) * k / (total - k + 1), an exact division), and the sum stops once the terms
    left (at most k of them, none larger than the last one added) are below 2**-64 of it. The terms fall fast away
    from low, so even 100,000 disagreements take about a tenth of a second.
    """
    term = math.comb(total, low)
    tail, k = term, low
    while k > 0 and (term * k) << 64 >= tail:
        term = term * k // (total - k + 1)
        k -= 1
        tail += term
    return tail / 2**total  # int / int: correctly rounded, 0.0 when below the smallest float


def _mcnemar(base: np.ndarray, tuned: np.ndarray) -> dict:
    tuned_only = int(np.sum(tuned & ~base))
    base_only = int(np.sum(base & ~tuned))
    tail = _binomial_half_tail(tuned_only + base_only, min(tuned_only, base_only))
    return {"tuned_only": tuned_only, "base_only": base_only, "p_value": min(1.0, 2 * tail)}


def _outcomes(values, name: str) -> np.ndarray:
    """Right/wrong outcomes as a 1-D bool array; anything but bools or 0/1 is refused."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ValueError(f"`{name}` must be a list of per-item outcomes (bools or 0/1), got {type(values).__name__}.")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting: numpy's message would not name the argument
        array = None
    if array is None or array.dtype == object:
        raise ValueError(f"`{name}` must be a flat list of per-item outcomes (bools or 0/1), got {_short(values)}.")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D list of per-item outcomes, got shape {array.shape}.")
    if array.dtype != bool and not (array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all()):
        raise ValueError(f"`{name}` must hold bools or 0/1 (one outcome per item), got {_short(values)}.")
    return array.astype(bool)


@dataclass
class TransferReport:
    """One row per (train pattern, test pattern) cell, with the thresholds that decided its verdicts.

    Attributes:
        rows: Dicts with `train`, `test`, `in_distribution` (test == train), `items`, `base_accuracy`,
            `tuned_accuracy`, `gain` (tuned minus base), `tuned_only` and `base_only` (McNemar's discordant counts),
            `p_value` (McNemar exact, two-sided), `significant_transfer` (gain > 0 and p < alpha), `recovery` (this
            cell's gain over the in-distribution gain of its train pattern; None when that gain is not positive)
            and `strong_recovery` (recovery >= threshold).
        alpha: The significance level.
        threshold: The recovery a cell needs to count as strong recovery.
    """

    rows: list[dict] = field(default_factory=list)
    alpha: float = 0.05
    threshold: float = 0.5

    def to_markdown(self) -> str:
        """The report as a Markdown table, one line per cell (in-distribution cells marked "(ID)")."""
        lines = [
            "| train | test | items | base | tuned | gain | tuned only / base only | p (McNemar) | significant "
            "transfer | recovery | strong recovery |",
            "|---|---|---:|---:|---:|---:|---:|---:|:-:|---:|:-:|",
        ]
        for row in self.rows:
            recovery = "n/a" if row["recovery"] is None else f"{row['recovery']:.2f}"
            lines.append(
                f"| {row['train']} | {row['test']}{' (ID)' if row['in_distribution'] else ''} | {row['items']} | "
                f"{row['base_accuracy']:.3f} | {row['tuned_accuracy']:.3f} | {row['gain']:+.3f} | "
                f"{row['tuned_only']} / {row['base_only']} | {row['p_value']:.3g} | "
                f"{'yes' if row['significant_transfer'] else 'no'} | {recovery} | "
                f"{'yes' if row['strong_recovery'] else 'no'} |"
            )
        return "\n".join(lines)

    def plot(self, path: str | None = None, title: str = "Accuracy gain from tuning"):
        """A heat map of the gain per cell (rows: train pattern, columns: test pattern); "*" marks significant
        transfer, "R" strong recovery.

        Args:
            path: Where to save the figure (PNG); None only returns it.
            title: The figure title.

        Returns:
            The matplotlib `Figure`.

        Raises:
            ValueError: If the report has no rows.
            ImportError: If matplotlib is missing (`pip install "hf-memory[plots]"`).
        """
        if not self.rows:
            raise ValueError("The report has no rows to plot.")
        require_extra("plots", "TransferReport.plot")
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        trains = list(dict.fromkeys(row["train"] for row in self.rows))
        tests = list(dict.fromkeys(row["test"] for row in self.rows))
        gains = np.full((len(trains), len(tests)), np.nan)
        for row in self.rows:
            gains[trains.index(row["train"]), tests.index(row["test"])] = row["gain"]
        # at least +-0.25, so that noise-sized gains are not drawn in full colour
        limit = max(0.25, float(np.nanmax(np.abs(gains))))
        figure, axes = plt.subplots(figsize=(1.4 * len(tests) + 2.5, 0.9 * len(trains) + 1.8))
        image = axes.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for row in self.rows:
            i, j = trains.index(row["train"]), tests.index(row["test"])
            marks = ("*" if row["significant_transfer"] else "") + (" R" if row["strong_recovery"] else "")
            colour = "white" if abs(row["gain"]) > 0.6 * limit else "black"
            axes.text(j, i, f"{row['gain']:+.2f}{marks}", ha="center", va="center", fontsize=9, color=colour)
        axes.set_xticks(range(len(tests)), tests, rotation=30, ha="right")
        axes.set_yticks(range(len(trains)), trains)
        axes.set_xlabel("test pattern")
        axes.set_ylabel("train pattern")
        axes.set_title(title)
        figure.colorbar(image, ax=axes, label="tuned - base accuracy")
        figure.text(0.01, 0.01, f"* p < {self.alpha:g} (McNemar exact), R recovery >= {self.threshold:g}", fontsize=8)
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure


def transfer_report(base_scores, tuned_scores, alpha: float = 0.05, threshold: float = 0.5) -> TransferReport:
    """Per (train pattern -> test pattern) cell: the accuracy gain, McNemar's exact test, significant transfer and
    strong recovery.

    Significant transfer: the tuned model is right more often than the untuned one (gain > 0) and McNemar's exact
    two-sided p-value is below `alpha`. Strong recovery: the cell's gain is at least `threshold` times the gain on
    the train pattern's own test split (NLGift: "most of" the in-distribution gain survives; the paper gives no
    number, so the default 0.5 reads "most" as at least half).

    Args:
        base_scores: Test pattern -> per-item outcomes (bools or 0/1) of the untuned model.
        tuned_scores: Train pattern -> {test pattern -> per-item outcomes of the model tuned on that pattern}, on the
            same items in the same order as `base_scores[test pattern]`. Each train pattern must also be one of its
            test patterns (its in-distribution split), which recovery is measured against.
        alpha: The significance level, in (0, 1).
        threshold: The fraction of the in-distribution gain a shifted pattern must keep for strong recovery (> 0).

    Returns:
        A `TransferReport`, with `to_markdown()` and `plot()`.

    Raises:
        ValueError: If a test pattern of `tuned_scores` has no base scores, the two score lists of a cell differ in
            length, a train pattern lacks its in-distribution split, an outcome is not a bool or 0/1, or `alpha`
            or `threshold` is out of range.

    Examples:
        >>> base = {"edge_list": [0, 0, 1, 0, 1, 0], "friendship": [0, 1, 0, 0, 1, 0]}
        >>> tuned = {"edge_list": {"edge_list": [1, 1, 1, 1, 1, 1], "friendship": [1, 1, 0, 1, 1, 0]}}
        >>> for row in transfer_report(base, tuned).rows:
        ...     print(row["test"], round(row["gain"], 3), row["p_value"], row["recovery"], row["strong_recovery"])
        edge_list 0.667 0.125 1.0 True
        friendship 0.333 0.5 0.5 True
    """
    alpha = check_number(alpha, "alpha", minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True)
    threshold = check_number(threshold, "threshold", minimum=0.0, exclusive_minimum=True)
    if not isinstance(base_scores, Mapping) or not base_scores:
        raise ValueError("`base_scores` must be a non-empty dict: test pattern -> per-item outcomes.")
    if not isinstance(tuned_scores, Mapping) or not tuned_scores:
        raise ValueError("`tuned_scores` must be a non-empty dict: train pattern -> {test pattern -> outcomes}.")
    base = {test: _outcomes(values, f"base_scores[{test!r}]") for test, values in base_scores.items()}
    rows = []
    for train, by_test in tuned_scores.items():
        if not isinstance(by_test, Mapping) or train not in by_test:
            raise ValueError(
                f"`tuned_scores[{train!r}]` must be a dict of test pattern -> outcomes that includes {train!r} "
                "itself: the in-distribution split that recovery is measured against."
            )
        cells, exact_gains = [], []
        for test, values in by_test.items():
            if test not in base:
                raise ValueError(f"`tuned_scores[{train!r}]` has test pattern {test!r}, which `base_scores` lacks.")
            tuned = _outcomes(values, f"tuned_scores[{train!r}][{test!r}]")
            if tuned.size != base[test].size:
                raise ValueError(
                    f"`tuned_scores[{train!r}][{test!r}]` has {tuned.size} items but `base_scores[{test!r}]` has "
                    f"{base[test].size}: both must score the same items, in the same order."
                )
            test_result = _mcnemar(base[test], tuned)
            # exact, so that a recovery of exactly `threshold` is not lost to rounding
            exact_gain = Fraction(test_result["tuned_only"] - test_result["base_only"], tuned.size)
            gain = float(exact_gain)
            cells.append(
                {
                    "train": train,
                    "test": test,
                    "in_distribution": test == train,
                    "items": int(tuned.size),
                    "base_accuracy": float(base[test].mean()),
                    "tuned_accuracy": float(tuned.mean()),
                    "gain": gain,
                    **test_result,
                    "significant_transfer": gain > 0 and test_result["p_value"] < alpha,
                }
            )
            exact_gains.append(exact_gain)
        own_gain = next(g for cell, g in zip(cells, exact_gains) if cell["in_distribution"])
        for cell, exact_gain in zip(cells, exact_gains):
            recovery = exact_gain / own_gain if own_gain > 0 else None
            cell["recovery"] = None if recovery is None else float(recovery)
            cell["strong_recovery"] = recovery is not None and recovery >= threshold
        rows.extend(cells)
    return TransferReport(rows=rows, alpha=alpha, threshold=threshold)
