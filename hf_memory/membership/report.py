"""`membership_report`: every attack's error rates against ground truth, and whether the audit itself is valid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._utils import check_bool, check_integer, check_number, require_extra
from .evaluation import (
    DEFAULT_FPRS,
    MIN_PER_CLASS,
    bootstrap_intervals,
    check_classes,
    check_fprs,
    check_labels,
    check_scores,
    roc_auc,
    roc_points,
    tpr_at_fpr,
    unmeasurable_reason,
)
from .scoring import MembershipResult
from .validity import blind_baseline_test, check_texts, cross_duplicates, ngram_overlap


BLIND_BASELINE = "blind baseline"  # the name of the text-only classifier's row


@dataclass
class MembershipReport:
    """Per attack: ROC AUC with its bootstrap interval, TPR at each low FPR, the ROC curve; and the audit's checks.

    Every score was read as **higher = more likely a member**.

    Attributes:
        attacks: Attack name -> `{"auc", "auc_interval", "tpr_at_fpr", "tpr_interval", "not_measurable", "roc",
            "above_chance", "below_chance"}`: `tpr_at_fpr` maps each FPR to the TPR (None when too few non-members
            allow no false positive there; the reason is in `not_measurable`), `roc` holds the curve's `fpr`,
            `tpr` and `threshold` lists, `above_chance` / `below_chance` say whether the whole AUC interval is above
            / below 0.5.
        blind_baseline: The same fields for the text-only classifier, plus `p_value` (its permutation test,
            `blind_baseline_test`), `permutations`, `num_samples` (the samples it read: all, up to 2000) and
            `distinguishable` (`p_value <= (1 - confidence) / 2`: the sets differ without the model); None when not
            run, with the reason in `blind_baseline_skipped`.
        num_members: Members evaluated (after dropping duplicates).
        num_non_members: Non-members evaluated (after dropping duplicates).
        duplicates_dropped: Samples dropped because an exact copy was in the other set.
        ngram_overlap: `ngram_overlap(members, non-members)` when texts were given, else None.
        findings: The verdict in plain words, one sentence each.
        fprs: The false-positive rates of `tpr_at_fpr`.
        confidence: The coverage of the intervals.
        n_bootstrap: The bootstrap resamples.
        seed: The bootstrap's (and the blind baseline's folds' and relabellings') seed.
        blind_baseline_skipped: Why the blind baseline was not run, or None.
    """

    attacks: dict[str, dict]
    blind_baseline: dict | None
    num_members: int
    num_non_members: int
    duplicates_dropped: int = 0
    ngram_overlap: dict | None = None
    findings: list[str] = field(default_factory=list)
    fprs: tuple[float, ...] = DEFAULT_FPRS
    confidence: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    blind_baseline_skipped: str | None = None

    def to_dict(self, curves: bool = True) -> dict:
        """The report as plain JSON types (FPR keys as strings).

        Args:
            curves: Include each ROC curve's points.
        """

        def row(entry: dict) -> dict:
            out = {key: value for key, value in entry.items() if key != "roc" or curves}
            out["tpr_at_fpr"] = {f"{fpr:g}": value for fpr, value in entry["tpr_at_fpr"].items()}
            out["tpr_interval"] = {f"{fpr:g}": value for fpr, value in entry["tpr_interval"].items()}
            out["not_measurable"] = {f"{fpr:g}": value for fpr, value in entry["not_measurable"].items()}
            return out

        return {
            "attacks": {name: row(entry) for name, entry in self.attacks.items()},
            "blind_baseline": None if self.blind_baseline is None else row(self.blind_baseline),
            "blind_baseline_skipped": self.blind_baseline_skipped,
            "num_members": self.num_members,
            "num_non_members": self.num_non_members,
            "duplicates_dropped": self.duplicates_dropped,
            "ngram_overlap": self.ngram_overlap,
            "findings": list(self.findings),
            "fprs": list(self.fprs),
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MembershipReport:
        """The report back from `to_dict` (FPR keys as numbers again), e.g. as an audit's `results.json` holds it.

        Args:
            data: What `to_dict` returned (with or without the curves).

        Raises:
            ValueError: If `data` is not such a dict.

        Examples:
            >>> report = membership_report({"loss": list(range(10))}, [0] * 5 + [1] * 5, n_bootstrap=100)
            >>> MembershipReport.from_dict(report.to_dict()) == report
            True
        """

        def row(entry):
            if entry is None:
                return None
            out = dict(entry)
            for key in ("tpr_at_fpr", "tpr_interval", "not_measurable"):
                out[key] = {float(fpr): value for fpr, value in entry[key].items()}
            return out

        try:
            return cls(
                attacks={name: row(entry) for name, entry in data["attacks"].items()},
                blind_baseline=row(data["blind_baseline"]),
                num_members=data["num_members"],
                num_non_members=data["num_non_members"],
                duplicates_dropped=data.get("duplicates_dropped", 0),
                ngram_overlap=data.get("ngram_overlap"),
                findings=list(data.get("findings", [])),
                fprs=tuple(data["fprs"]),
                confidence=data["confidence"],
                n_bootstrap=data["n_bootstrap"],
                seed=data["seed"],
                blind_baseline_skipped=data.get("blind_baseline_skipped"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"`data` is not a `MembershipReport.to_dict()` ({err!r} is missing or malformed)."
            ) from None

    def to_markdown(self) -> str:
        """A table of the attacks (and the blind baseline) and the findings, in Markdown."""
        level = f"{100 * self.confidence:g}%"
        header = "| attack | AUC [" + level + " interval] | " + " | ".join(f"TPR@{fpr:.2%}FPR" for fpr in self.fprs)
        lines = [header + " |", "|---|---:|" + "---:|" * len(self.fprs)]
        rows = list(self.attacks.items())
        if self.blind_baseline is not None:
            rows.append((f"{BLIND_BASELINE} (no model)", self.blind_baseline))
        for name, entry in rows:
            low, high = entry["auc_interval"]
            cells = []
            for fpr in self.fprs:
                value = entry["tpr_at_fpr"][fpr]
                if value is None:
                    cells.append("not measurable")
                else:
                    tlow, thigh = entry["tpr_interval"][fpr]
                    cells.append(f"{value:.3f} [{tlow:.3f}, {thigh:.3f}]")
            lines.append(f"| {name} | {entry['auc']:.3f} [{low:.3f}, {high:.3f}] | " + " | ".join(cells) + " |")
        lines.append("")
        lines.extend(f"- {finding}" for finding in self.findings)
        return "\n".join(lines)

    def plot(self, path: str | None = None, title: str = "Membership inference ROC (log-log)"):
        """The ROC curve of every attack (and of the blind baseline, dashed) on log-log axes, with chance marked.

        Log scales show the low-FPR region that matters for membership (Carlini et al., S&P 2022); points at FPR 0
        cannot be drawn on them, so each curve starts at its first positive FPR.

        Args:
            path: Where to save the figure (PNG); None only returns it.
            title: The figure title.

        Returns:
            The matplotlib `Figure`.

        Raises:
            ImportError: If matplotlib is missing (`pip install "hf-memory[plots]"`).
        """
        require_extra("plots", "MembershipReport.plot")
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(5.5, 5))
        low = 1 / max(self.num_non_members, 1)
        axes.plot([low, 1], [low, 1], color="grey", linestyle=":", label="chance")
        curves = [(name, entry, "-") for name, entry in self.attacks.items()]
        if self.blind_baseline is not None:
            curves.append((f"{BLIND_BASELINE} (no model)", self.blind_baseline, "--"))
        for name, entry, style in curves:
            fpr, tpr = np.array(entry["roc"]["fpr"]), np.array(entry["roc"]["tpr"])
            keep = (fpr > 0) & (tpr > 0)
            axes.plot(fpr[keep], tpr[keep], linestyle=style, label=f"{name} (AUC {entry['auc']:.3f})")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(low / 2, 1.05)
        axes.set_ylim(low / 2, 1.05)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title(title)
        axes.legend(fontsize=8, loc="lower right")
        axes.grid(alpha=0.3, which="both")
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure


def _score_columns(scores) -> tuple[dict[str, object], list[str] | None]:
    """(name -> raw scores, digests or None) from a `MembershipResult`, a mapping or one list of scores."""
    if isinstance(scores, MembershipResult):
        return dict(scores.scores), list(scores.digests) if scores.digests else None
    if isinstance(scores, Mapping):
        if not scores:
            raise ValueError("`scores` is an empty mapping: give at least one attack's scores.")
        bad = next((name for name in scores if not isinstance(name, str)), None)
        if bad is not None:
            raise ValueError(f"`scores` must map attack names (strings) to scores, got the key {bad!r}.")
        return dict(scores), None
    return {"score": scores}, None


def _entry(scores: np.ndarray, labels: np.ndarray, fprs, intervals: dict) -> dict:
    n0 = int((~labels).sum())
    not_measurable = {fpr: reason for fpr in fprs if (reason := unmeasurable_reason(fpr, n0))}
    low, high = intervals["auc"]
    return {
        "auc": roc_auc(scores, labels),
        "auc_interval": [low, high],
        "tpr_at_fpr": {fpr: None if fpr in not_measurable else tpr_at_fpr(scores, labels, fpr) for fpr in fprs},
        "tpr_interval": {fpr: None if fpr in not_measurable else list(intervals["tpr"][fpr]) for fpr in fprs},
        "not_measurable": not_measurable,
        "roc": roc_points(scores, labels),
        "above_chance": low > 0.5,
        "below_chance": high < 0.5,
    }


def _findings(report: MembershipReport) -> list[str]:
    out = []
    level = f"{100 * report.confidence:g}%"

    def auc_text(entry):
        return f"AUC {entry['auc']:.3f} [{entry['auc_interval'][0]:.3f}, {entry['auc_interval'][1]:.3f}]"

    blind = report.blind_baseline
    if report.duplicates_dropped:
        out.append(
            f"{report.duplicates_dropped} samples had an exact copy in the other set and were dropped before "
            "evaluation."
        )
    if blind is not None and blind["distinguishable"]:
        out.append(
            f"Members and non-members are distinguishable without the model: a bag-of-words classifier on the texts "
            f"alone reaches {auc_text(blind)}, p = {blind['p_value']:.3g} (permutation test). The attacks' AUCs are not evidence of memorization; build the "
            "non-members by a random split of the same source as the members."
        )
    elif blind is not None:
        out.append(
            f"The blind baseline (texts alone, no model) is not clearly above chance ({auc_text(blind)}, p = "
            f"{blind['p_value']:.3g}, permutation test): the two "
            "sets look alike without the model."
        )
    else:
        out.append(
            f"No blind baseline ({report.blind_baseline_skipped}): without it, an AUC above 0.5 may come from a "
            "difference between the two sets rather than from the model."
        )
    for name, entry in report.attacks.items():
        if entry["below_chance"]:
            out.append(
                f"`{name}` is clearly below chance ({auc_text(entry)}): a sign or distribution problem (scores "
                "oriented lower = member? members from another source?), not evidence of no leak."
            )
    best_name, best = max(report.attacks.items(), key=lambda item: item[1]["auc"])
    first_fpr = report.fprs[0] if report.fprs else None
    tpr = None if first_fpr is None else best["tpr_at_fpr"][first_fpr]
    tpr_text = "" if tpr is None else f", TPR {tpr:.3f} at {first_fpr:.2%} FPR"
    if best["above_chance"]:
        out.append(
            f"The strongest attack, `{best_name}`, is above chance ({auc_text(best)}{tpr_text}; {level} interval): "
            "the model's scores separate the members from the non-members"
            + (", but see the blind baseline above." if blind is not None and blind["distinguishable"] else ".")
        )
    else:
        out.append(
            f"No attack is clearly above chance (best: `{best_name}`, {auc_text(best)}{tpr_text}): no membership "
            "leak is detected at this sample size."
        )
    return out


def membership_report(
    scores,
    is_member,
    texts: Sequence[str] | None = None,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    blind_baseline: bool = True,
    folds: int = 5,
    permutations: int = 999,
    ngram: int = 13,
    drop_duplicates: bool = False,
) -> MembershipReport:
    """Error rates of membership scores against ground truth, and the checks that the audit is valid.

    Per attack: ROC AUC (scikit-learn) with a stratified percentile bootstrap interval (members and non-members
    resampled separately, `n_bootstrap` times, seeded; every attack on the same resamples), the TPR at each FPR in
    `fprs` with its interval (not measurable, with the reason, when fewer than 1 / FPR non-members leave no false
    positive to allow), and the ROC curve (`MembershipReport.plot` draws it log-log). Scores are read as **higher =
    more likely a member**, the convention of `membership_scores`; an AUC whose whole interval is below 0.5 is
    flagged (a sign or distribution problem, not "no leak").

    With `texts`: a blind baseline, a bag-of-words classifier on the texts alone (`blind_baseline_test`,
    cross-validated) evaluated the same way; when its permutation test rejects chance (one-sided, at level
    `(1 - confidence) / 2`, the level an interval's lower bound above 0.5 stands for), the report says that members
    and non-members are distinguishable without the model. And the share of each non-member's word `ngram`-grams found
    in a member (`ngram_overlap`).

    Exact duplicates: a sample whose text (with `texts`; else the digest a `MembershipResult` records) is both in
    the member and the non-member set is a labelling error. They are refused; with `drop_duplicates=True` every copy
    is dropped on both sides and counted in `duplicates_dropped`.

    Args:
        scores: A `MembershipResult`, a mapping of attack name -> per-sample scores, or one list of scores.
        is_member: Per sample, 1 (or True) for a member, 0 (or False) for a non-member, in the order of `scores`.
        texts: Per sample, its text, in the same order: enables the blind baseline and the n-gram overlap.
        fprs: The false-positive rates to report the TPR at, each in (0, 1).
        n_bootstrap: Bootstrap resamples for the intervals (>= 100).
        confidence: The intervals' coverage, in (0, 1).
        seed: Seed of the bootstrap and of the blind baseline's folds and relabellings.
        blind_baseline: Run the blind baseline when `texts` are given.
        folds: The blind baseline's cross-validation folds (>= 2).
        permutations: The blind baseline's permutation test: random relabellings (>= 19).
        ngram: The n-gram length (in words) of the overlap check.
        drop_duplicates: Drop exact duplicates between the sets (counted) instead of refusing them.

    Returns:
        A `MembershipReport`.

    Raises:
        ValueError: Before any work: labels that are not 0/1, a single class, fewer than 5 members or non-members
            (after dropping duplicates), a NaN or infinite score, lists of different lengths, texts that are not
            strings, exact duplicates between the sets (unless `drop_duplicates`), or a bad setting.
        ImportError: Without scikit-learn (the `analysis` extra).

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> is_member = [1] * 50 + [0] * 50
        >>> loss = np.concatenate([rng.normal(1.0, 1, 50), rng.normal(0.0, 1, 50)])
        >>> report = membership_report({"loss": loss}, is_member, n_bootstrap=200)
        >>> round(report.attacks["loss"]["auc"], 3), report.attacks["loss"]["tpr_at_fpr"][0.01]
        (0.784, None)
    """
    labels = check_labels(is_member)
    columns, digests = _score_columns(scores)
    columns = {name: check_scores(values, f"scores[{name!r}]", size=labels.size) for name, values in columns.items()}
    if texts is not None:
        texts = check_texts(texts, labels.size)
    fprs = check_fprs(fprs)
    n_bootstrap = check_integer(n_bootstrap, "n_bootstrap", minimum=100)
    confidence = check_number(confidence, "confidence", minimum=0, maximum=1, exclusive_minimum=True,
                              exclusive_maximum=True)  # fmt: skip
    seed = check_integer(seed, "seed", minimum=0)
    blind_baseline = check_bool(blind_baseline, "blind_baseline")
    folds = check_integer(folds, "folds", minimum=2)
    permutations = check_integer(permutations, "permutations", minimum=19)
    ngram = check_integer(ngram, "ngram", minimum=1)
    drop_duplicates = check_bool(drop_duplicates, "drop_duplicates")
    if digests is not None and len(digests) != labels.size:
        digests = None
    keys = texts if texts is not None else digests
    dropped = 0
    if keys is not None:
        duplicated = cross_duplicates(keys, labels)
        if duplicated.any():
            if not drop_duplicates:
                member = int(np.flatnonzero(duplicated & labels)[0])
                raise ValueError(
                    f"{int(duplicated.sum())} samples have an exact copy in the other set (e.g. sample {member}, a "
                    "member, is also a non-member): the same document cannot be both. Fix the split, or pass "
                    "`drop_duplicates=True` to drop every copy from both sets."
                )
            keep = ~duplicated
            dropped = int(duplicated.sum())
            labels = labels[keep]
            columns = {name: values[keep] for name, values in columns.items()}
            texts = None if texts is None else [text for text, k in zip(texts, keep) if k]
    check_classes(labels, MIN_PER_CLASS)
    blind_test, skipped = None, None
    if texts is None:
        skipped = "no texts given"
    elif not blind_baseline:
        skipped = "turned off (`blind_baseline=False`)"
    else:
        try:
            blind_test = blind_baseline_test(texts, labels, folds=folds, permutations=permutations, seed=seed)
        except ValueError as err:  # texts without a single word
            skipped = str(err)
    intervals = bootstrap_intervals(columns, labels, fprs, n_bootstrap, confidence, seed)
    attacks = {name: _entry(values, labels, fprs, intervals[name]) for name, values in columns.items()}
    blind = None
    if blind_test is not None:
        blind_labels = labels[blind_test["indices"]]
        blind_scores = {BLIND_BASELINE: blind_test["scores"]}
        blind_intervals = bootstrap_intervals(blind_scores, blind_labels, fprs, n_bootstrap, confidence, seed)
        blind = _entry(blind_test["scores"], blind_labels, fprs, blind_intervals[BLIND_BASELINE])
        # The verdict is the permutation test's (calibrated), not the bootstrap interval's (too narrow: it does
        # not see the classifier's fits vary); one-sided at the level the intervals' lower bound stands for.
        blind["p_value"] = blind_test["p_value"]
        blind["permutations"] = permutations
        blind["num_samples"] = int(len(blind_test["indices"]))
        blind["distinguishable"] = blind_test["p_value"] <= (1 - confidence) / 2
    overlap = None
    if texts is not None:
        overlap = ngram_overlap(
            [t for t, m in zip(texts, labels) if m], [t for t, m in zip(texts, labels) if not m], n=ngram
        )
    report = MembershipReport(
        attacks=attacks,
        blind_baseline=blind,
        num_members=int(labels.sum()),
        num_non_members=int((~labels).sum()),
        duplicates_dropped=dropped,
        ngram_overlap=overlap,
        fprs=fprs,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        seed=seed,
        blind_baseline_skipped=skipped,
    )
    report.findings = _findings(report)
    return report
