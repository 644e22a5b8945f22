"""The audit's HTML page: one self-contained file (inline CSS, plots as base64 PNG, every text HTML-escaped)."""

from __future__ import annotations

import base64
import io
import re

import jinja2
import markupsafe
import numpy as np

from .._utils import require_extra
from .membership import FINDING_TONES, blind_verdict, finding
from .summary import SIGNAL_COLUMNS
from .verdict import LEVEL_TONES


MODEL_COLOR = "#c0392b"
REFERENCE_COLOR = "#7f8c8d"
TONES = {  # a verdict banner's colour follows its finding: (border, background)
    "neutral": ("#5d6d7e", "#f4f6f7"),  # nothing found; not green: it is no clean bill of health
    "caution": ("#d68910", "#fef5e7"),  # a little, or a finding that needs a second look
    "alarm": (MODEL_COLOR, "#fdedec"),  # a lot: windows written out, membership leaking
}
SIGNAL_LABELS = {
    "confidence": "confidence (mean max probability over the suffix)",
    "true_prob": "probability of the true suffix tokens",
    "logit_mean": "logit mean",
    "logit_var": "logit variance",
    "entropy_prefix": "entropy before the boundary (nats)",
    "entropy_suffix": "entropy after the boundary (nats)",
    "entropy_jump": "entropy jump at the boundary (nats)",
    "unigram_suffix": "suffix token frequency, mean log(1 + count)",
    "bigram_suffix": "suffix bigram frequency, mean log(1 + count)",
}


def _png(fig) -> str:
    """The figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.0, height: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _whole_counts(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def lcp_plot(data: dict, suffix_len: int) -> str:
    """Windows per number of suffix tokens reproduced before the first mistake, model vs reference.

    Args:
        data: `figures()["lcp_histogram"]`.
        suffix_len: Tokens of each window's suffix.

    Returns:
        The plot as a PNG data URI.
    """
    fig, ax = _figure()
    tokens = np.array(data["tokens"])
    width = 0.42 if data["reference"] is not None else 0.8
    offset = width / 2 if data["reference"] is not None else 0.0
    ax.bar(tokens - offset, data["model"], width=width, color=MODEL_COLOR, label="this model")
    if data["reference"] is not None:
        ax.bar(tokens + offset, data["reference"], width=width, color=REFERENCE_COLOR, label="reference model")
        ax.legend(frameon=False)
    ax.set_xlabel(f"suffix tokens reproduced before the first mistake (of {suffix_len})")
    ax.set_ylabel("windows")
    _whole_counts(ax)
    ax.set_xlim(-0.8, suffix_len + 0.8)
    return _png(fig)


def _binned_plot(bins: list[dict], labels: list[str], xlabel: str) -> str:
    fig, ax = _figure()
    x = np.arange(len(bins))
    ax.bar(x, [100 * b["exact_match"] for b in bins], color=MODEL_COLOR, alpha=0.85, label="extracted exactly (%)")
    ax.plot(
        x,
        [100 * b["longest_common_prefix_fraction"] for b in bins],
        color="#2c3e50",
        marker="o",
        label="suffix reproduced before the first mistake (%)",
    )
    for xi, b in zip(x, bins):
        ax.annotate(f"n={b['windows']}", (xi, 101), ha="center", fontsize=7, color="#555")
    ax.set_xticks(x, labels, rotation=30 if len(bins) > 5 else 0, ha="right" if len(bins) > 5 else "center")
    ax.set_ylim(0, 108)
    ax.set_ylabel("% of windows / of suffix")
    ax.set_xlabel(xlabel)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.28 if len(bins) > 5 else -0.2))
    return _png(fig)


def position_plot(bins: list[dict]) -> str:
    """Extraction per range of window start in the document.

    Args:
        bins: `figures()["by_position"]`.

    Returns:
        The plot as a PNG data URI.
    """
    labels = [
        str(b["start_from"]) if b["start_from"] == b["start_to"] else f"{b['start_from']}-{b['start_to']}"
        for b in bins
    ]
    return _binned_plot(bins, labels, "window start (token offset in the document)")


def ngram_plot(bins: list[dict], rows: list[dict], suffix_len: int) -> str:
    """Tokens reproduced per window against the suffix's bigram frequency in the data, with the binned mean.

    Args:
        bins: `figures()["by_ngram_frequency"]`.
        rows: The per-window rows (the scatter).
        suffix_len: Tokens of each window's suffix.

    Returns:
        The plot as a PNG data URI.
    """
    fig, ax = _figure()
    x = np.array([r["bigram_suffix"] for r in rows])
    y = np.array([r["longest_common_prefix"] for r in rows], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(y))
    ax.scatter(x, y + jitter, s=18, alpha=0.55, color=MODEL_COLOR, linewidths=0, label="a window")
    centers = [(b["bigram_from"] + b["bigram_to"]) / 2 for b in bins]
    ax.plot(centers, [b["longest_common_prefix"] for b in bins], color="#2c3e50", marker="o", label="mean per bin")
    ax.set_ylim(-1, suffix_len + 1)
    ax.set_xlabel("how common the suffix's bigrams are in the data: mean log(1 + count)")
    ax.set_ylabel(f"tokens reproduced (of {suffix_len})")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def calibrated_plot(data: dict) -> str:
    """Histogram of the calibrated CE score, with 0 (as easy as for the reference) marked.

    Args:
        data: `figures()["calibrated_histogram"]`.

    Returns:
        The plot as a PNG data URI.
    """
    fig, ax = _figure()
    edges = np.array(data["edges"])
    ax.bar(edges[:-1], data["counts"], width=np.diff(edges), align="edge", color=MODEL_COLOR, alpha=0.85)
    ax.axvline(0, color="#2c3e50", linestyle="--", linewidth=1)
    low, high = ax.get_xlim()
    ax.set_xlim(min(low, -0.05 * (high - low)), max(high, 0.05 * (high - low)))
    ax.set_xlabel("calibrated CE score (nats): loss after one SGD step - reference loss")
    ax.set_ylabel("windows")
    _whole_counts(ax)
    return _png(fig)


def roc_plot(membership) -> str:
    """Every membership attack's ROC curve (and the blind baseline's) on log-log axes (`MembershipReport.plot`).

    Args:
        membership: The audit's `MembershipReport`.

    Returns:
        The plot as a PNG data URI.
    """
    import matplotlib.pyplot as plt

    fig = membership.plot(title="Membership inference ROC (log-log)")
    try:
        return _png(fig)
    finally:
        plt.close(fig)


def _inline_code(text: str) -> markupsafe.Markup:
    """The text HTML-escaped, with its `backticked` spans as <code> (the verdicts are written for Markdown too)."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENVIRONMENT.filters["code"] = _inline_code
_PAGE = _ENVIRONMENT.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Memorization audit: {{ model.name_or_path }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
  max-width: 1120px; margin: 0 auto; padding: 24px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 34px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 18px; font-size: 0.92em; }
.verdict { font-size: 1.08em; background: #f7f7f7; border-left: 5px solid #7f8c8d; padding: 10px 14px;
  margin: 14px 0 4px; }
.verdict p { margin: 0 0 6px; } .verdict p:last-child { margin-bottom: 0; }
.verdict p + p { font-size: 0.9em; color: #333; }
{% for tone, (border, background) in tones.items() %}.verdict.{{ tone }} { border-left-color: {{ border }}; background: {{ background }}; }
{% endfor %}
table { border-collapse: collapse; font-size: 0.93em; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #fafafa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why { white-space: normal; min-width: 11em; font-size: 0.88em; color: #666; text-align: left; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 0.9em; background: rgba(0, 0, 0, 0.05);
  padding: 0 3px; border-radius: 3px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 22px 28px; }
.grid > div { min-width: 0; }
.grid h3 { font-size: 1.0em; margin: 0 0 4px; }
.grid p { font-size: 0.86em; color: #555; margin: 0 0 6px; }
.grid img { width: 100%; height: auto; }
.note { color: #666; font-style: italic; font-size: 0.9em; }
.window { border: 1px solid #e2e2e2; border-radius: 6px; margin: 12px 0; }
.window .head { background: #fafafa; padding: 6px 12px; font-size: 0.86em; color: #444;
  border-bottom: 1px solid #e2e2e2; }
.window .text { padding: 8px 12px; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  font-size: 0.84em; white-space: pre-wrap; overflow-wrap: anywhere; }
.prefix { color: #777; }
mark { background: #fde2dd; color: #8e1b10; border-bottom: 2px solid {{ model_color }}; padding: 0 1px; }
.missed { color: #222; }
.diverged { color: #1a5276; text-decoration: underline dotted; }
.label { font-family: system-ui, sans-serif; font-size: 0.82em; color: #888; display: block; margin-top: 6px; }
.legend span { margin-right: 16px; font-size: 0.88em; }
dl { font-size: 0.9em; } dt { font-weight: 600; margin-top: 8px; } dd { margin: 2px 0 0 18px; color: #444; }
footer { margin-top: 40px; color: #888; font-size: 0.82em; }
@media (max-width: 800px) { .grid { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<h1>Memorization audit</h1>
<p class="sub">Model <strong>{{ model.name_or_path }}</strong>
({{ model.model_type or "?" }}, {{ "{:,}".format(model.num_parameters) }} parameters, {{ model.dtype }})
{%- if reference_model %} &middot; reference <strong>{{ reference_model.name_or_path }}</strong>{% endif %}
&middot; {{ created }}</p>

<h2>Membership inference: can the model tell its training data from unseen data?</h2>
{% for line in membership_verdict %}<div class="verdict {{ membership_tone if loop.first else 'caution' }}">{{ line | code }}</div>
{% endfor %}
{% if membership %}
<table>
<tr><th>attack (higher score = member)</th><th class="num">ROC AUC [{{ "%g" | format(100 * membership.confidence) }}% interval]</th>
{% for fpr in membership.fprs %}<th class="num">TPR at {{ "%g" | format(100 * fpr) }}% FPR</th>{% endfor %}</tr>
{% for name, entry in membership_rows %}
<tr><td>{{ name }}</td><td class="num">{{ "%.3f" | format(entry.auc) }} [{{ "%.3f" | format(entry.auc_interval[0]) }}, {{ "%.3f" | format(entry.auc_interval[1]) }}]</td>
{% for fpr in membership.fprs %}<td class="num{% if entry.tpr_at_fpr[fpr] is none %} why{% endif %}">{% if entry.tpr_at_fpr[fpr] is not none %}{{ "%.3f" | format(entry.tpr_at_fpr[fpr]) }} [{{ "%.3f" | format(entry.tpr_interval[fpr][0]) }}, {{ "%.3f" | format(entry.tpr_interval[fpr][1]) }}]{% else %}not measurable: {{ entry.not_measurable[fpr] }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="sub" style="margin-top:10px">{{ membership.num_members }} audited windows (members) against {{ membership.num_non_members }} windows
of {{ data.num_non_member_documents }} held-out documents (non-members), cut the same way; {{ membership.n_bootstrap }} bootstrap resamples.
{% if membership.ngram_overlap and membership.ngram_overlap.mean is not none %}On average {{ "%.1f%%" | format(100 * membership.ngram_overlap.mean) }} of a
non-member's word {{ membership.ngram_overlap.n }}-grams also occur in a member.{% endif %}</p>
<div class="grid">
<div><h3>ROC curves, log-log</h3>
<p>The low false-positive region is what matters: an attack that flags members with few false alarms.</p>
<img alt="membership inference ROC curves on log-log axes" src="{{ plots.roc }}"></div>
<div><h3>Is the comparison fair? The blind baseline</h3>
<p>{{ blind_verdict | code }}</p>
<p>The blind baseline is a bag-of-words classifier on the window texts alone (cross-validated); it never sees the
model. Every score of every window is in <code>membership.parquet</code>.</p></div>
</div>
{% endif %}

<h2>Extraction</h2>
<div class="verdict {{ extraction_tone }}" data-level="{{ extraction_level }}">{% for line in extraction_verdict %}<p>{{ line | code }}</p>{% endfor %}</div>

<h2>Headline</h2>
<table>
<tr><th></th><th class="num">this model</th>{% if reference_metrics %}<th class="num">reference model</th>{% endif %}</tr>
{% for label, key, kind in headline_rows %}
<tr><td>{{ label }}</td><td class="num">{{ fmt(metrics.get(key), kind) }}</td>
{%- if reference_metrics %}<td class="num">{{ fmt(reference_metrics.get(key), kind) }}</td>{% endif %}</tr>
{% endfor %}
{% if calibrated %}
<tr><td>median calibrated CE score (nats; below 0: easier than for the reference)</td>
<td class="num">{{ "%.3f" | format(calibrated.calibrated_loss_median) }}</td><td></td></tr>
<tr><td>windows with a calibrated CE score below 0</td>
<td class="num">{{ "%.1f%%" | format(100 * calibrated.calibrated_below_zero) }}</td><td></td></tr>
<tr><td>mean cross-entropy of the windows (nats)</td><td class="num">{{ "%.3f" | format(calibrated.loss_mean) }}</td>
<td class="num">{{ "%.3f" | format(calibrated.reference_loss_mean) }}</td></tr>
{% if calibrated.calibrated_non_finite %}<tr><td>windows whose loss is not finite (left out of the rows above)</td>
<td class="num">{{ calibrated.calibrated_non_finite }}</td><td></td></tr>{% endif %}
{% endif %}
</table>
<p class="sub" style="margin-top:10px">{{ data.num_windows }} windows of {{ settings.prefix_len }} + {{ settings.suffix_len }} tokens
(of {{ data.num_candidate_windows }} cut every {{ settings.stride }} tokens{% if data.num_windows < data.num_candidate_windows %}, drawn with seed {{ settings.seed }}{% endif %})
from {{ data.num_documents }} documents, {{ "{:,}".format(data.num_tokens) }} tokens;
{{ data.num_short_documents }} document(s) shorter than one window. Greedy decoding{% if "probabilistic_extraction" in metrics %}, and sampling as the verdict above says{% else %}, no sampling{% endif %}.</p>

<h2>Plots</h2>
<div class="grid">
<div><h3>How far into the suffix the model gets</h3>
<p>Windows per number of suffix tokens reproduced before the first wrong token; the rightmost bar is exact extraction.</p>
<img alt="distribution of longest common prefixes" src="{{ plots.lcp }}"></div>
<div><h3>Extraction against position in the document</h3>
{% if plots.position %}<p>Share of windows extracted, per range of window start.</p>
<img alt="extraction against position in the document" src="{{ plots.position }}">
{% else %}<p class="note">Every window starts at token {{ first_start }} (one window per document), so there is no
position to compare. Give longer documents or a smaller stride.</p>{% endif %}</div>
<div><h3>Extraction against n-gram frequency</h3>
<p>Text made of common phrases is easier to continue without having memorized it.</p>
<img alt="extraction against n-gram frequency" src="{{ plots.ngram }}"></div>
<div><h3>Calibrated CE diagnostic</h3>
{% if plots.calibrated %}<p>Per window: cross-entropy after one small SGD step on it, minus the reference model's.
Far below 0: the model knows this text much better than the reference, a membership signal.</p>
<img alt="calibrated score histogram" src="{{ plots.calibrated }}">
{% else %}<p class="note">No reference model was given: run with a reference (e.g. the checkpoint before
fine-tuning) for the calibrated membership score.</p>{% endif %}</div>
</div>

<h2>Memorization signals</h2>
<table>
<tr><th>signal (one forward pass per window)</th><th class="num">extracted windows</th><th class="num">other windows</th><th class="num">all</th></tr>
{% for name, label in signal_labels %}
<tr><td>{{ label }}</td><td class="num">{{ fmt(signals[name].extracted, "float") }}</td>
<td class="num">{{ fmt(signals[name].not_extracted, "float") }}</td><td class="num">{{ fmt(signals[name]["all"], "float") }}</td></tr>
{% endfor %}
</table>

<h2>Most extracted windows</h2>
<p class="legend"><span class="prefix">grey: the prefix given to the model</span>
<span><mark>highlighted: reproduced exactly</mark></span> <span class="missed">black: the rest of the true suffix</span>
<span class="diverged">blue: what the model wrote instead</span></p>
{% for row in top %}
<div class="window"><div class="head">#{{ loop.index }} &middot; {{ row.source }} &middot; tokens {{ row.start }}&ndash;{{ row.start + settings.prefix_len + settings.suffix_len - 1 }}
&middot; <strong>{{ row.longest_common_prefix }} of {{ settings.suffix_len }}</strong> suffix tokens reproduced
{%- if row.reference_longest_common_prefix is not none %} (reference: {{ row.reference_longest_common_prefix }}){% endif %}
{%- if row.calibrated_loss is not none %} &middot; calibrated CE {{ "%.3f" | format(row.calibrated_loss) }}{% endif %}</div>
<div class="text"><span class="prefix">{{ row.prefix_text }}</span><mark>{{ row.reproduced_text }}</mark><span class="missed">{{ row.missed_text }}</span>
{%- if not row.exact_match %}<span class="label">the model continued:</span><mark>{{ row.reproduced_text }}</mark><span class="diverged">{{ row.diverged_text }}</span>{% endif %}</div></div>
{% else %}
<p class="note">{% if settings.top_k == 0 %}Not shown (top_k=0).{% else %}No window's suffix is reproduced, not even its first token.{% endif %}</p>
{% endfor %}

<h2>What the numbers mean</h2>
<dl>
<dt>extracted exactly</dt><dd>Given the window's first {{ settings.prefix_len }} tokens, greedy decoding writes the next {{ settings.suffix_len }} tokens exactly (Carlini et al.'s extractable memorization).</dd>
<dt>tokens reproduced before the first mistake</dt><dd>The longest common prefix of the greedy continuation and the true suffix.</dd>
<dt>positional memorization score</dt><dd>The share of suffix positions where the continuation has the true token.</dd>
<dt>calibrated CE score</dt><dd>The cross-entropy of the window after one SGD step on it (lr {{ settings.ce_lr }}), minus the reference model's cross-entropy: it removes how easy a text is in itself.</dd>
<dt>membership inference</dt><dd>Each attack scores a window from the model's token probabilities (loss: mean log-likelihood; zlib: the same over the compressed size of the text; Min-K% / Min-K%++: the least likely tokens; reference: against the reference model). The ROC AUC is the chance that a random member scores above a random non-member (0.5: no signal); the TPR at a low FPR is the share of members caught when almost no non-member is.</dd>
</dl>
<p class="sub">The per-window rows are in <code>windows.parquet</code>{% if membership %}, every window's membership scores in <code>membership.parquet</code>{% endif %}, every number of this page in <code>results.json</code>.</p>
<footer>hf-memory {{ version }} &middot; config sha256 {{ model.config_sha256[:12] }}</footer>
</body>
</html>
"""
)

HEADLINE_ROWS = [
    ("windows extracted exactly", "exact_match", "percent"),
    ("windows with at least half the suffix reproduced", "half_suffix_rate", "percent"),
    ("mean suffix tokens reproduced before the first mistake", "longest_common_prefix", "float1"),
    ("positional memorization score", "memorization_score", "float"),
    ("token ROUGE-L of the continuation", "rouge_l", "float"),
]


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "float1":
        return f"{value:.1f}"
    return f"{value:.3f}"


def render_html(report) -> str:
    """The audit's page (see `AuditReport.to_html`).

    Args:
        report: The audit (an `AuditReport`).

    Returns:
        The page's HTML.
    """
    require_extra("plots", "The audit's HTML report")
    from .._utils import __version__

    figures = report.figures()
    suffix_len = report.settings["suffix_len"]
    by_window = {r["window"]: r for r in report.rows}
    membership = report.membership
    plots = {
        "roc": None if membership is None else roc_plot(membership),
        "lcp": lcp_plot(figures["lcp_histogram"], suffix_len),
        "position": position_plot(figures["by_position"]) if figures["by_position"] else None,
        "ngram": ngram_plot(figures["by_ngram_frequency"], report.rows, suffix_len),
        "calibrated": calibrated_plot(figures["calibrated_histogram"]) if figures["calibrated_histogram"] else None,
    }
    return _PAGE.render(
        model=report.model,
        reference_model=report.reference_model,
        created=report.created,
        extraction_verdict=report.extraction_verdict(),
        extraction_level=report.extraction_level,
        extraction_tone=LEVEL_TONES[report.extraction_level],
        tones=TONES,
        membership=membership,
        membership_verdict=report.membership_verdict(),
        membership_tone=FINDING_TONES[finding(membership)],
        membership_rows=[]
        if membership is None
        else list(membership.attacks.items())
        + (
            []
            if membership.blind_baseline is None
            else [("blind baseline (texts alone, no model)", membership.blind_baseline)]
        ),
        blind_verdict=None if membership is None else blind_verdict(membership),
        metrics=report.metrics,
        reference_metrics=report.reference_metrics,
        calibrated=report.calibrated,
        headline_rows=HEADLINE_ROWS,
        fmt=_fmt,
        settings=report.settings,
        data=report.data,
        plots=plots,
        first_start=report.rows[0]["start"] if report.rows else 0,
        signals=figures["signal_means"],
        signal_labels=[(name, SIGNAL_LABELS[name]) for name in SIGNAL_COLUMNS],
        top=[by_window[w] for w in figures["top_windows"]],
        model_color=MODEL_COLOR,
        version=__version__,
    )
