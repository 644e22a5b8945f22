"""The extraction section's verdict in plain words: what the audit found, what that rules out and what it does not,
and a tone for its colour that follows the finding (`docs/audit.md`, "The verdict and its colour")."""

from __future__ import annotations

from . import membership as membership_section


NONE, SOME, MANY = "none", "some", "many"
MANY_EXTRACTED = 0.10  # this share of windows extracted or more: "many" (red); any window below it: "some" (amber)
LEVEL_TONES = {NONE: "neutral", SOME: "caution", MANY: "alarm"}


def extracted_share(metrics: dict) -> float:
    """The share of windows the level is decided on: greedy exact extraction, or the (n, p)-extraction rate under
    sampling when the audit measured it and it is higher.

    Args:
        metrics: `AuditReport.metrics`.
    """
    share = metrics.get("exact_match") or 0.0
    sampled = metrics.get("probabilistic_extraction")
    return max(share, sampled) if sampled is not None else share


def extraction_level(metrics: dict) -> str:
    """ "none" when no window is extracted, "many" when at least `MANY_EXTRACTED` of them are, else "some".

    Args:
        metrics: `AuditReport.metrics`.
    """
    share = extracted_share(metrics)
    if share <= 0:
        return NONE
    return MANY if share >= MANY_EXTRACTED else SOME


def _percent(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "0.0%"


def _sampling_sentence(metrics: dict, settings: dict) -> str:
    kept = "".join(
        f", {name} {settings[f'sampling_{name}']}"
        for name in ("top_k", "top_p")
        if settings.get(f"sampling_{name}") not in (None, 1.0)
    )
    return (
        f"Sampled at temperature {settings['sampling_temperature']:g}{kept}, with {settings['sampling_queries']} "
        f"queries per prefix, {100 * metrics['probabilistic_extraction']:.1f}% of windows are extracted with "
        f"probability at least {settings['sampling_min_probability']:g}."
    )


def _membership_sentence(report) -> str:
    membership = report.membership
    found = membership_section.finding(membership)
    if found == membership_section.NOT_MEASURED_FINDING:
        return (
            "Whether the model was trained on this text (a model can know a text it does not write out) is membership "
            "inference's question: not measured here (no held-out documents: `non_members=` / `--held-out`)."
        )
    name, best = membership_section.strongest_attack(membership)
    auc = membership_section.auc_text(best)
    if found == membership_section.NOT_CONCLUSIVE:
        return (
            "Membership inference (above) is not conclusive: the held-out documents can be told from these without "
            "the model."
        )
    if found == membership_section.LEAK:
        return (
            f"Membership inference (above) finds a leak: `{name}` tells these windows from held-out ones ({auc}), so "
            "the model was likely trained on them, whether or not it writes them out."
        )
    return (
        f"Membership inference (above) detects no leak at this sample size (best: `{name}`, {auc}); that does not "
        "rule out a weaker one."
    )


def extraction_verdict(report) -> list[str]:
    """The extraction section's verdict, in plain words: what was found (greedy extraction, the reference's, sampling
    when measured), what that rules out and what it does not (sampling when not measured, other or shorter prompts,
    partial copies, membership), and what the audit's membership section found.

    Args:
        report: The audit (an `AuditReport`).

    Returns:
        Three paragraphs: the finding, what it rules out (or shows) and does not, the membership sentence.
    """
    metrics, settings, rows = report.metrics, report.settings, report.rows
    prefix, suffix, n = settings["prefix_len"], settings["suffix_len"], len(rows)
    extracted = sum(bool(r["exact_match"]) for r in rows)
    partial = sum(r["longest_common_prefix"] >= suffix / 2 and not r["exact_match"] for r in rows)
    longest = max((r["longest_common_prefix"] for r in rows), default=0)
    sampled = "probabilistic_extraction" in metrics
    level = extraction_level(metrics)

    reference = ""
    if report.reference_metrics is not None:
        by_reference = [bool(r["reference_exact_match"]) for r in rows]
        both = sum(mine and theirs for mine, theirs in zip((bool(r["exact_match"]) for r in rows), by_reference))
        if not any(by_reference):
            reference = "; the reference model extracts none" if extracted else "; nor does the reference model"
        else:
            reference = f"; the reference model extracts {sum(by_reference)} ({_percent(sum(by_reference), n)})"
            if extracted:
                reference += (
                    f", {both} of these among them (a window the reference writes too is formulaic or widely known "
                    "text, not this training's doing)"
                )
    if extracted:
        whose = "its" if extracted == 1 else "each one's"
        found = (
            f"{extracted} of {n} windows ({_percent(extracted, n)}) {'is' if extracted == 1 else 'are'} extracted: "
            f"from {whose} first {prefix} tokens, greedy decoding writes the "
            f"next {suffix} exactly{reference}."
        )
    else:
        which = (
            "greedy decoding does not write the one window's"
            if n == 1
            else f"for none of the {n} windows does greedy decoding write the"
        )
        found = (
            f"No window is extracted: {which} {suffix} tokens that follow its first {prefix} (the most it gets right "
            f"before a mistake: {longest} token{'' if longest == 1 else 's'}){reference}."
        )
    if sampled:
        found += " " + _sampling_sentence(metrics, settings)

    sampling = "" if sampled else " (not measured: `sampling_temperature=` / `--sampling-temperature`)"
    shorter = f"from other prompts or from prefixes shorter than {prefix} tokens"
    if extracted:
        more = f"when the model samples, as a deployment does{sampling}, {shorter}"
        if partial:
            more += (
                f", or in part ({partial} more {'window has' if partial == 1 else 'windows have'} at least half of "
                f"{'its' if partial == 1 else 'their'} suffix reproduced)"
            )
        whose = "its" if extracted == 1 else "a window's"
        meaning = (
            f"This shows that {'this window is' if extracted == 1 else 'these windows are'} stored word for word: "
            f"prompted with {whose} first {prefix} tokens, the model writes the "
            f"next {suffix}. It is a lower bound: more windows may come out {more}."
        )
    elif level != NONE:  # nothing greedily, some under sampling
        meaning = (
            "Greedy decoding writes none of them out, but sampling does (the sentence above): a deployment that "
            f"samples can leak these windows. More may come out {shorter}."
        )
    else:
        gaps = [] if sampled else [f"extraction when the model samples, as a deployment does{sampling}"]
        gaps.append(f"extraction {shorter}")
        if partial:
            gaps.append(
                f"partial copies ({partial} {'window has' if partial == 1 else 'windows have'} at least half of "
                f"{'its' if partial == 1 else 'their'} suffix reproduced)"
            )
        listed = gaps[0] if len(gaps) == 1 else f"{', '.join(gaps[:-1])}, nor {gaps[-1]}"
        meaning = (
            f"This rules out that these windows come back word for word when the model is prompted with their first "
            f"{prefix} tokens and decodes greedily{' or samples as measured' if sampled else ''}. It does not rule "
            f"out {listed}."
        )
    return [found, meaning, _membership_sentence(report)]
