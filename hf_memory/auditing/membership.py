"""The audit's membership-inference section: every audited window (a member) and every window of the held-out
documents (a non-member) scored by the attacks of `hf_memory.membership`, their error rates, and the verdict in
plain words."""

from __future__ import annotations

import hashlib
import math
import os

import torch

from .._utils.store import ResultFolder, ShardWriter, input_bytes, open_store
from ..membership import (
    MIN_PER_CLASS,
    ONE_PASS_ATTACKS,
    MembershipConfig,
    MembershipReport,
    membership_report,
    membership_scores,
)
from .config import AuditConfig


MEMBERSHIP_FILE = "membership.parquet"
PARTIAL_SUBDIR = "membership"  # inside the audit's `.partial` folder: the membership rows of an audit in progress
MEMBER, NON_MEMBER = "member", "non-member"
BLIND_COLUMN = "blind_baseline"

NOT_MEASURED = (
    "Membership inference was not measured: no held-out documents were given (`non_members=` / `--held-out`). "
    "Without documents of the same kind that the model did not train on, the audit cannot say whether the model's "
    "scores tell its training data from unseen data, which is the first question a privacy audit asks. The "
    "extraction numbers below can show verbatim memorization, but few extracted windows do not rule out a "
    "membership leak: a model leaks membership long before it writes text out. Give documents held out of training "
    "by a random split of the same source."
)


def chosen_attacks(config: AuditConfig, has_reference: bool) -> list[str]:
    """The membership attacks an audit scores, checked before any work.

    Args:
        config: The audit settings (`membership_attacks`).
        has_reference: Whether a reference model was given.

    Raises:
        ValueError: If `reference` is asked without a reference model.
    """
    if config.membership_attacks is None:
        return [*ONE_PASS_ATTACKS, *(["reference"] if has_reference else [])]
    if "reference" in config.membership_attacks and not has_reference:
        raise ValueError(
            "`membership_attacks` asks for 'reference', which needs a `reference_model` (e.g. the base model)."
        )
    return list(config.membership_attacks)


def check_samples(member_texts: list[str], non_member_texts: list[str]) -> None:
    """Refuse, before any scoring, too few samples in a set and windows found in both sets.

    Exact duplicates follow `membership_report`'s rule: the same text is a member and a non-member (here, the text
    of a window, decoded).

    Args:
        member_texts: The audited windows' texts.
        non_member_texts: The held-out windows' texts.

    Raises:
        ValueError: If either set has fewer than `MIN_PER_CLASS` windows, or a window text is in both.
    """
    for texts, what in ((member_texts, "`data`"), (non_member_texts, "`non_members`")):
        if len(texts) < MIN_PER_CLASS:
            raise ValueError(
                f"Membership inference needs at least {MIN_PER_CLASS} windows of {what}, got {len(texts)}: give more "
                "(or longer) documents, or raise `max_windows`."
            )
    members = set(member_texts)
    shared = [i for i, text in enumerate(non_member_texts) if text in members]
    if shared:
        raise ValueError(
            f"{len(shared)} window(s) of `non_members` are also windows of `data` (the first: non-member window "
            f"{shared[0]}, {non_member_texts[shared[0]][:60]!r}): the same text cannot be both a member and a "
            "non-member. Remove the shared documents from one set (or deduplicate boilerplate)."
        )


def _schema(attacks: list[str]):
    import pyarrow as pa

    columns = [
        ("sample", pa.int64()),
        ("is_member", pa.bool_()),
        ("window", pa.int64()),
        ("document", pa.int64()),
        ("start", pa.int64()),
        ("num_tokens", pa.int64()),
    ]
    extraction = [("exact_match", pa.bool_()), ("longest_common_prefix", pa.int64())]
    return pa.schema(columns + [(name, pa.float64()) for name in attacks] + extraction)


def score_samples(
    model,
    tokenizer,
    reference_model,
    config: AuditConfig,
    attacks: list[str],
    windows: torch.Tensor,
    is_member: list[bool],
    positions: list[tuple[int, int]],
    window_index: list[int],
    folder: str | None,
    manifest: dict,
    name: str,
    bars,
    processors=None,
) -> list[dict]:
    """Score every sample (members, then non-members) with the membership attacks, and the non-members' greedy
    extraction (the control; the members' is the audit's own), in chunks of `batch_size * flush_every` windows; with
    `folder`, each chunk goes to disk as it finishes and a rerun skips the chunks there (checking that their inputs
    are the same). `bars["membership"]` and `bars["control extraction"]` advance every batch.

    Returns:
        One dict per sample: the columns of `_schema(attacks)` (`exact_match` and `longest_common_prefix` None for
        the members).
    """
    from ..extraction import measure_extraction

    settings = MembershipConfig(
        attacks=attacks,
        k=config.membership_k,
        max_tokens=windows.shape[1],
        batch_size=config.batch_size,
        read_ahead=config.batch_size,  # the windows are all one length: nothing to gain from reading further ahead
        ce_lr=config.ce_lr,
    )
    chunk = config.batch_size * config.flush_every
    inputs = [
        input_bytes(int(member), doc, start, window)
        for member, (doc, start), window in zip(is_member, positions, windows)
    ]

    def score(begin: int) -> dict:
        end = min(begin + chunk, len(windows))
        result = membership_scores(
            model, windows[begin:end], tokenizer, reference_model, config=settings, show_progress=bars["membership"]
        )
        exact = [None] * (end - begin)
        lcp = [None] * (end - begin)
        controls = [i for i in range(begin, end) if not is_member[i]]
        if controls:
            extraction = measure_extraction(
                model,
                windows[controls],
                config.prefix_len,
                config.suffix_len,
                batch_size=config.batch_size,
                method="prefix",  # exact match and longest common prefix: all the control needs
                show_progress=bars["control extraction"],
                logits_processor=processors,
            )
            for i, n in zip(controls, extraction.longest_common_prefix):
                exact[i - begin], lcp[i - begin] = int(n) == config.suffix_len, int(n)
        return {
            "sample": list(range(begin, end)),
            "is_member": is_member[begin:end],
            "window": window_index[begin:end],
            "document": [doc for doc, _ in positions[begin:end]],
            "start": [start for _, start in positions[begin:end]],
            "num_tokens": result.num_tokens.tolist(),
            **{attack: result.scores[attack].tolist() for attack in attacks},
            "exact_match": exact,
            "longest_common_prefix": lcp,
        }

    starts = range(0, len(windows), chunk)
    if folder is None:
        columns = [score(begin) for begin in starts]
        return [dict(zip(part, values)) for part in columns for values in zip(*part.values())]
    schema = _schema(attacks)
    open_store(folder, manifest, name=name)
    with ShardWriter(folder, schema, name=name, data_name="non_members") as writer:
        for begin in starts:
            mine = inputs[begin : begin + chunk]
            if begin < writer.done:
                writer.skip(mine)
                bars.update(len(mine), ["membership"])
                bars.update(sum(not member for member in is_member[begin : begin + chunk]), ["control extraction"])
            else:
                writer.add(score(begin), mine)
        writer.check_all_skipped()
    return [row for table in ResultFolder(folder, name).iter_tables() for row in table.to_pylist()]


def samples_fingerprint(windows: torch.Tensor, is_member: list[bool], positions) -> str:
    """sha256 of the scored windows, their sets and where they were cut: a resumed audit must score the same."""
    digest = hashlib.sha256(windows.numpy().tobytes())
    digest.update(bytes(int(m) for m in is_member))
    digest.update(repr(list(positions)).encode())
    return digest.hexdigest()


def evaluate(rows: list[dict], texts: list[str], attacks: list[str], config: AuditConfig) -> tuple:
    """`membership_report` of the scored rows (with the texts: the blind baseline and the n-gram overlap); each row
    gets its blind-baseline score. A window with a non-finite score (a model whose loss overflows on it) is left out
    of the evaluation and counted.

    Args:
        rows: The scored samples (`score_samples`), in sample order.
        texts: Per sample, its window's text.
        attacks: The attack columns.
        config: The audit settings (`membership_bootstrap`, `seed`).

    Returns:
        `(MembershipReport, windows left out for a non-finite score)`.

    Raises:
        ValueError: If fewer than 5 members or non-members have finite scores.
    """
    import math

    from ..membership import blind_baseline_scores

    kept = [i for i, row in enumerate(rows) if all(math.isfinite(row[attack]) for attack in attacks)]
    left_out = len(rows) - len(kept)
    labels = [bool(rows[i]["is_member"]) for i in kept]
    kept_texts = [texts[i] for i in kept]
    for what, count in (("members", sum(labels)), ("non-members", len(labels) - sum(labels))):
        if count < MIN_PER_CLASS:
            raise ValueError(
                f"Only {count} {what} have finite membership scores ({left_out} windows scored NaN or infinite): "
                f"at least {MIN_PER_CLASS} are needed. The model's loss is not finite on most windows."
            )
    report = membership_report(
        {attack: [rows[i][attack] for i in kept] for attack in attacks},
        labels,
        texts=kept_texts,
        n_bootstrap=config.membership_bootstrap,
        seed=config.seed,
    )
    blind = {}
    if report.blind_baseline is not None:  # the same folds and seed as the report's row: the same scores
        blind = dict(zip(kept, blind_baseline_scores(kept_texts, labels, seed=config.seed).tolist()))
    for i, row in enumerate(rows):
        row[BLIND_COLUMN] = blind.get(i)
    return report, left_out


def table(rows: list[dict], attacks: list[str]):
    """The per-sample rows as a `pyarrow.Table` (the content of `membership.parquet`)."""
    import pyarrow as pa

    schema = _schema(attacks)
    schema = schema.insert(2, pa.field("set", pa.string()))
    for field in (
        pa.field("source", pa.string()),
        pa.field("text", pa.string()),
        pa.field(BLIND_COLUMN, pa.float64()),
    ):
        schema = schema.append(field)
    return pa.table({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


def contrast(rows: list[dict] | None) -> dict | None:
    """The audited text (the suspect) against the held-out text (the control), set by set: how much of each the
    model writes out, and how well it knows it.

    Args:
        rows: The membership rows (`membership.parquet`), or None without non-members.

    Returns:
        `{"suspect": {...}, "control": {...}}`, each with `windows`, `exact_match` (the share extracted exactly),
        `longest_common_prefix` (mean tokens reproduced before the first mistake) and `loss` (mean negative
        log-likelihood per token, from the `loss` attack; None when it was not scored); None without rows.
    """
    if not rows:
        return None

    def mean(values) -> float | None:
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        return math.fsum(values) / len(values) if values else None

    out = {}
    for key, member in (("suspect", True), ("control", False)):
        group = [row for row in rows if bool(row["is_member"]) == member]
        loss = mean(row.get("loss") for row in group)
        out[key] = {
            "windows": len(group),
            "exact_match": mean(row.get("exact_match") for row in group),
            "longest_common_prefix": mean(row.get("longest_common_prefix") for row in group),
            "loss": None if loss is None else -loss,
        }
    return out


def contrast_line(numbers: dict | None, suffix_len: int) -> str | None:
    """`contrast` in one sentence, or None when the extraction of the control was not measured.

    Args:
        numbers: What `contrast` returns.
        suffix_len: Tokens of each window's suffix.
    """
    if numbers is None or numbers["control"]["exact_match"] is None or numbers["suspect"]["exact_match"] is None:
        return None
    suspect, control = numbers["suspect"], numbers["control"]
    line = (
        f"Suspect against control: the model writes out {100 * suspect['exact_match']:.1f}% of the "
        f"{suspect['windows']} audited windows and {100 * control['exact_match']:.1f}% of the {control['windows']} "
        f"held-out (control) windows, reproducing {suspect['longest_common_prefix']:.1f} and "
        f"{control['longest_common_prefix']:.1f} of {suffix_len} suffix tokens on average before its first mistake"
    )
    if suspect["loss"] is not None and control["loss"] is not None:
        line += (
            f"; its loss is {suspect['loss']:.2f} nats per token on the audited text and {control['loss']:.2f} on "
            "the control"
        )
    return line + (
        ". The control's share is what the model writes out without having trained on it (boilerplate, famous "
        "text): only extraction above it points to the audited text."
    )


def auc_text(entry: dict) -> str:
    low, high = entry["auc_interval"]
    return f"AUC {entry['auc']:.3f} [{low:.3f}, {high:.3f}]"


NOT_MEASURED_FINDING, NOT_CONCLUSIVE, LEAK, NO_LEAK = "not measured", "not conclusive", "leak", "no leak detected"
FINDING_TONES = {NOT_MEASURED_FINDING: "neutral", NOT_CONCLUSIVE: "caution", LEAK: "alarm", NO_LEAK: "neutral"}


def strongest_attack(report: MembershipReport) -> tuple[str, dict]:
    """The attack with the highest AUC: `(name, entry)`."""
    return max(report.attacks.items(), key=lambda item: item[1]["auc"])


def finding(report: MembershipReport | None) -> str:
    """What the membership section found, in one of four words (the rules of `verdict`).

    Args:
        report: The membership report, or None when no non-members were given.

    Returns:
        "not measured", "not conclusive" (the blind baseline tells the sets apart), "leak" (the strongest attack's
        AUC interval is above 0.5) or "no leak detected".
    """
    if report is None:
        return NOT_MEASURED_FINDING
    blind = report.blind_baseline
    if blind is not None and blind["distinguishable"]:
        return NOT_CONCLUSIVE
    return LEAK if strongest_attack(report)[1]["above_chance"] else NO_LEAK


def verdict(report: MembershipReport | None, has_reference: bool = False, left_out: int = 0) -> list[str]:
    """The membership section's verdict in plain words: what was found, what it rules out and what not.

    Rules, in order: without non-members, what cannot be concluded; when the blind baseline (texts alone) is above
    chance, nothing about memorization (the sets differ without the model); else when the strongest attack's AUC
    interval is above 0.5, a leak; else no leak detected, which bounds the attacks' AUC by their intervals but does
    not rule out a weaker leak. An attack whose whole interval is below 0.5 is flagged as a sign or distribution
    problem.

    Args:
        report: The membership report, or None when no non-members were given.
        has_reference: Whether a reference model was given (the strongest attack on a fine-tune).
        left_out: Windows left out of the evaluation for a non-finite score.

    Returns:
        One sentence or short paragraph per finding.
    """
    found = finding(report)
    if found == NOT_MEASURED_FINDING:
        return [NOT_MEASURED]
    n, m = report.num_members, report.num_non_members
    best_name, best = strongest_attack(report)
    tpr = best["tpr_at_fpr"].get(0.01)
    tpr_text = "" if tpr is None else f", and flags {100 * tpr:.1f}% of the members at 1% false positives"
    blind = report.blind_baseline
    lines = []
    if found == NOT_CONCLUSIVE:
        lines.append(
            f"Not conclusive: the {n} audited windows and the {m} held-out windows can be told apart without the "
            f"model (the blind baseline, a bag-of-words classifier on the texts alone, reaches {auc_text(blind)}). The "
            f"attacks' AUCs (best: `{best_name}`, {auc_text(best)}) may measure that difference rather than memorization. "
            "Hold out documents drawn at random from the same source as the training data."
        )
    elif found == LEAK:
        lines.append(
            f"Membership leaks: the model's own scores tell the {n} audited windows from {m} held-out windows of the "
            f"same kind. `{best_name}` reaches {auc_text(best)}{tpr_text}. This is evidence that the model was trained on "
            "this data, even where the extraction numbers below find nothing. It does not say which documents can be "
            "written out word for word (extraction does), nor how far a stronger attacker could go."
        )
    else:
        lines.append(
            f"No membership leak detected: no attack tells the {n} audited windows from the {m} held-out ones clearly "
            f"better than chance (best: `{best_name}`, {auc_text(best)}). This rules out a leak these attacks would see at "
            "this sample size (each attack's AUC is at most the top of its interval), not a weaker one, nor one that "
            "more samples"
            + ("" if has_reference else ", a reference model (the checkpoint before fine-tuning)")
            + " or a stronger attack would reveal."
        )
    if left_out:
        lines.append(
            f"{left_out} window(s) were left out: the model's scores on them are not finite (NaN or infinite loss); "
            "their rows in membership.parquet hold the raw scores."
        )
    below = [name for name, entry in report.attacks.items() if entry["below_chance"]]
    if below:
        lines.append(
            f"{', '.join(f'`{name}`' for name in below)} clearly below chance: a sign or distribution problem (members "
            "and non-members of different lengths or sources?), not evidence of no leak."
        )
    return lines


def blind_verdict(report: MembershipReport) -> str:
    """The blind baseline's verdict in one sentence.

    Args:
        report: The membership report.
    """
    blind = report.blind_baseline
    if blind is None:
        return (
            f"The blind baseline was not run ({report.blind_baseline_skipped}): without it, an AUC above 0.5 may come "
            "from a difference between the two sets rather than from the model."
        )
    if blind["distinguishable"]:
        return (
            f"The blind baseline fires ({auc_text(blind)}): a classifier that never sees the model tells the two sets "
            "apart, so they differ in content or style. The attacks' AUCs are not evidence of memorization."
        )
    return (
        f"The blind baseline is at chance ({auc_text(blind)}): without the model the two sets look alike, so an attack "
        "AUC above 0.5 comes from the model."
    )


def partial_folder(output_dir: str, partial: str) -> str:
    """The membership rows' resume folder inside the audit's `.partial` folder."""
    return os.path.join(output_dir, partial, PARTIAL_SUBDIR)
