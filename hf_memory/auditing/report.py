"""`AuditReport`: the per-window rows of an audit, their summary, and the three files and the model card made from
them."""

from __future__ import annotations

import datetime
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from .._utils import atomic_write, require_extra
from . import membership as membership_section
from . import summary, verdict
from .membership import MEMBERSHIP_FILE


if TYPE_CHECKING:
    import pyarrow
    from huggingface_hub import EvalResult, ModelCard

    from ..membership import MembershipReport

RESULTS_FORMAT = "hf-memory-audit/1"
RESULTS_FILE = "results.json"
WINDOWS_FILE = "windows.parquet"
HTML_FILE = "index.html"
MODEL_CARD_TEMPLATE = "memorization_model_card.md"
CARD_SECTION_START = "<!-- hf-memory audit: start -->"
CARD_SECTION_END = "<!-- hf-memory audit: end -->"
CARD_TASK = ("text-generation", "Memorization audit (hf-memory)")
CARD_METRICS = {  # results key -> (metric type, readable name)
    "exact_match": ("exact_match", "Exact extraction rate"),
    "memorization_score": ("memorization_score", "Positional memorization score"),
    "longest_common_prefix": ("longest_common_prefix", "Mean longest common prefix (tokens)"),
    "rouge_l": ("rouge_l", "Token ROUGE-L of greedy continuations"),
    "calibrated_loss_median": ("calibrated_ce", "Median calibrated CE diagnostic (vs reference)"),
    "probabilistic_extraction": ("probabilistic_extraction", "(n, p)-extraction rate under sampling"),
}


def _column_types() -> dict:
    import pyarrow as pa

    ids = pa.list_(pa.int64())
    types = {
        "window": pa.int64(),
        "document": pa.int64(),
        "source": pa.string(),
        "start": pa.int64(),
        "exact_match": pa.bool_(),
        "longest_common_prefix": pa.int64(),
        "memorization_score": pa.float64(),
        "rouge_l": pa.float64(),
        "log_p": pa.float64(),
        "reference_exact_match": pa.bool_(),
        "reference_longest_common_prefix": pa.int64(),
    }
    types.update({name: pa.float64() for name in summary.SIGNAL_COLUMNS})
    types.update({name: pa.float64() for name in ("loss", "loss_after", "reference_loss", "calibrated_loss")})
    types.update({"prefix_ids": ids, "suffix_ids": ids, "prediction_ids": ids})
    text = ("prefix_text", "suffix_text", "prediction_text", "reproduced_text", "missed_text", "diverged_text")
    types.update({name: pa.string() for name in text})
    return types


def _finite(value):
    """NaN and infinities as None, so that `results.json` is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass
class AuditReport:
    """What `audit` measured: one row per window, the settings and the identities of the models.

    The summary numbers (`metrics`, `reference_metrics`, `calibrated`) and the data of every plot are computed from
    the rows; `save` writes `results.json`, `windows.parquet` and `index.html`.

    Attributes:
        rows: One dict per window, in the order of `windows.parquet` (its columns: `window`, `document`, `source`,
            `start`, the extraction scores, the reference's, the signals, the CE diagnostic's losses, the token ids
            and decoded texts).
        settings: The audit settings (`prefix_len`, `suffix_len`, `stride`, `max_windows`, `seed`, ...).
        model: The audited model's identity (`name_or_path`, `model_type`, `num_parameters`, `dtype`,
            `config_sha256`).
        reference_model: The reference model's identity, or None without one.
        data: What was audited: `num_documents`, `num_tokens`, `num_short_documents`, `num_candidate_windows`,
            `num_windows`, `sources`.
        created: When the audit ran (UTC, ISO 8601).
        membership: The membership-inference evaluation of the audited windows (members) against held-out windows
            (non-members), a `hf_memory.membership.MembershipReport`; None without non-members.
        membership_rows: One dict per member and non-member window, in the order of `membership.parquet` (`sample`,
            `is_member`, `set`, `window`, `document`, `start`, `num_tokens`, one score per attack, `source`, `text`,
            `blind_baseline`); None without non-members.
    """

    rows: list[dict]
    settings: dict
    model: dict
    reference_model: dict | None = None
    data: dict = field(default_factory=dict)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    membership: MembershipReport | None = None
    membership_rows: list[dict] | None = None

    @property
    def membership_attacks(self) -> list[str]:
        """The membership attacks scored (empty without non-members)."""
        return [] if self.membership is None else list(self.membership.attacks)

    def membership_verdict(self) -> list[str]:
        """The membership section's verdict in plain words (what cannot be concluded, without non-members).

        Returns:
            One sentence or short paragraph per finding.
        """
        left_out = self.data.get("num_membership_left_out", 0)
        lines = membership_section.verdict(self.membership, self.reference_model is not None, left_out)
        contrast = membership_section.contrast_line(self.control_contrast, self.settings["suffix_len"])
        return lines + ([contrast] if contrast else [])

    @property
    def control_contrast(self) -> dict | None:
        """The audited text (the suspect) against the held-out text (the control, `non_members` / `--held-out`):
        per set, the windows, the share extracted exactly, the mean longest common prefix and the mean loss per
        token; None without held-out documents."""
        return membership_section.contrast(self.membership_rows)

    def extraction_verdict(self) -> list[str]:
        """The extraction section's verdict in plain words: what was found, what it rules out and what it does not
        (sampling, other or shorter prompts, partial copies, membership), and what the membership section found.

        Returns:
            Three paragraphs (the page's extraction banner and the card's "Extraction" section).
        """
        return verdict.extraction_verdict(self)

    @property
    def extraction_level(self) -> str:
        """How much was extracted, which sets the colour of the page's extraction banner: "none" (no window),
        "some" (under 10% of the windows) or "many" (10% or more). The share is greedy exact extraction, or the
        (n, p)-extraction rate under sampling when measured and higher."""
        return verdict.extraction_level(self.metrics)

    @property
    def metrics(self) -> dict:
        """The audited model's headline numbers: the extraction means, `half_suffix_rate`, with a reference model the
        calibrated CE diagnostic's summary, and with a sampling temperature `probabilistic_extraction` (the share of
        windows extracted within `sampling_queries` samples with probability >= `sampling_min_probability`)."""
        out = summary.headline_metrics(self.rows, self.settings["suffix_len"])
        out.update(self.calibrated or {})
        if self.settings.get("sampling_temperature") is not None and self.rows:
            from ..extraction import extractable_fraction

            log_p = [r["log_p"] for r in self.rows]
            queries, probability = self.settings["sampling_queries"], self.settings["sampling_min_probability"]
            out["probabilistic_extraction"] = extractable_fraction(log_p, queries, probability)
        return out

    @property
    def reference_metrics(self) -> dict | None:
        """The reference model's extraction of the same windows, or None without a reference model."""
        if self.reference_model is None:
            return None
        return summary.headline_metrics(self.rows, self.settings["suffix_len"], prefix="reference_")

    @property
    def calibrated(self) -> dict | None:
        """Summary of the calibrated CE diagnostic, or None without a reference model."""
        return summary.calibrated_summary(self.rows)

    def figures(self) -> dict:
        """The data of every plot and table of the page: LCP histogram, extraction by position and by n-gram
        frequency, calibrated-score histogram, signal means and the top windows.

        Returns:
            A dict of plain lists and numbers (None for a plot that has no data).
        """
        suffix_len = self.settings["suffix_len"]
        return {
            "lcp_histogram": summary.lcp_histogram(self.rows, suffix_len),
            "by_position": summary.by_position(self.rows, suffix_len),
            "by_ngram_frequency": summary.by_ngram_frequency(self.rows, suffix_len),
            "calibrated_histogram": summary.calibrated_histogram(self.rows),
            "signal_means": summary.signal_means(self.rows),
            "top_windows": summary.top_windows(self.rows, self.settings.get("top_k", 10)),
        }

    def to_dict(self) -> dict:
        """The content of `results.json`: every number of the report, the settings and the model identities.

        Returns:
            A JSON-ready dict (NaN written as null).
        """
        from .._utils import __version__

        return _finite(
            {
                "format": RESULTS_FORMAT,
                "hf_memory_version": __version__,
                "created": self.created,
                "model": self.model,
                "reference_model": self.reference_model,
                "settings": self.settings,
                "data": self.data,
                "metrics": self.metrics,
                "reference_metrics": self.reference_metrics,
                "membership": None if self.membership is None else self.membership.to_dict(curves=True),
                "membership_verdict": self.membership_verdict(),
                "extraction_level": self.extraction_level,
                "extraction_verdict": self.extraction_verdict(),
                "control_contrast": self.control_contrast,
                **self.figures(),
            }
        )

    def table(self) -> pyarrow.Table:
        """The per-window rows as a `pyarrow.Table` (the content of `windows.parquet`).

        Returns:
            One row per window, typed columns (nulls where a column does not apply, e.g. no reference model).
        """
        import pyarrow as pa

        types = _column_types()
        schema = pa.schema([(name, kind) for name, kind in types.items()])
        columns = {name: [row.get(name) for row in self.rows] for name in types}
        return pa.table(columns, schema=schema)

    def membership_table(self) -> pyarrow.Table | None:
        """The member and non-member windows with every membership score (the content of `membership.parquet`).

        Returns:
            One row per window, members first; None without non-members.
        """
        if self.membership_rows is None:
            return None
        return membership_section.table(self.membership_rows, self.membership_attacks)

    def to_html(self) -> str:
        """The report as one self-contained HTML page (inline CSS, plots as embedded PNG, no external resource).

        Returns:
            The page's HTML.

        Raises:
            ImportError: If matplotlib (the `plots` extra) is not installed.
        """
        from .html import render_html

        return render_html(self)

    def save(self, output_dir: str | os.PathLike | None = None, *, out: str | os.PathLike | None = None) -> None:
        """Write `results.json`, `windows.parquet` and `index.html` to the folder `output_dir` (created if missing),
        each file atomically, and with non-members `membership.parquet` (without them, an earlier audit's
        `membership.parquet` there is removed, so the folder never mixes two audits).

        Args:
            output_dir: The report folder.
            out: The earlier name of `output_dir` (a `FutureWarning`; it goes in a later release).

        Raises:
            ValueError: If `output_dir` is an existing file.
            ImportError: If matplotlib (the `plots` extra) is not installed.
        """
        if out is not None:
            warnings.warn(
                "`AuditReport.save(out=...)` is now `save(output_dir=...)`; `out` goes in a later release.",
                FutureWarning,
                stacklevel=2,
            )
            output_dir = out if output_dir is None else output_dir
        if output_dir is None:
            raise TypeError("AuditReport.save() missing 1 required argument: 'output_dir'")
        out = os.fspath(output_dir)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"`output_dir` {out!r} is a file: give a folder for the report.")
        require_extra("plots", "The audit's HTML report")
        page = self.to_html()  # the slowest part, before any file is written
        os.makedirs(out, exist_ok=True)
        import pyarrow.parquet as pq

        results = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        table = self.table()

        def write_text(text):
            def write(path):
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)

            return write

        atomic_write(os.path.join(out, RESULTS_FILE), write_text(results + "\n"))
        atomic_write(os.path.join(out, WINDOWS_FILE), lambda path: pq.write_table(table, path))
        membership_table = self.membership_table()
        membership_path = os.path.join(out, MEMBERSHIP_FILE)
        if membership_table is not None:
            atomic_write(membership_path, lambda path: pq.write_table(membership_table, path))
        elif os.path.isfile(membership_path):
            os.remove(membership_path)
        atomic_write(os.path.join(out, HTML_FILE), write_text(page))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AuditReport:
        """Read back a report written by `save` (its `results.json` and `windows.parquet`).

        Args:
            folder: The report folder.

        Returns:
            The `AuditReport`, as it was saved.

        Raises:
            FileNotFoundError: If the folder lacks one of the two files.
            ValueError: If `results.json` is not an audit's results.
        """
        import pyarrow.parquet as pq

        folder = os.fspath(folder)
        with open(os.path.join(folder, RESULTS_FILE), encoding="utf-8") as f:
            results = json.load(f)
        if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{os.path.join(folder, RESULTS_FILE)} is not the results of an hf-memory audit.")
        rows = pq.read_table(os.path.join(folder, WINDOWS_FILE)).to_pylist()
        membership, membership_rows = results.get("membership"), None
        if membership is not None:
            from ..membership import MembershipReport

            membership = MembershipReport.from_dict(membership)
            membership_rows = pq.read_table(os.path.join(folder, MEMBERSHIP_FILE)).to_pylist()
        return cls(
            rows=rows,
            settings=results["settings"],
            model=results["model"],
            reference_model=results["reference_model"],
            data=results["data"],
            created=results["created"],
            membership=membership,
            membership_rows=membership_rows,
        )

    def eval_results(self, dataset_name: str = "fine-tuning data", dataset_type: str = "custom") -> list[EvalResult]:
        """The headline numbers as `huggingface_hub.EvalResult`s for the model card's `model-index`.

        Args:
            dataset_name: The audited data's name on the card.
            dataset_type: The audited data's Hub dataset id, or a short type such as "custom".

        Returns:
            One `EvalResult` per headline number (exact match, memorization score, longest common prefix, ROUGE-L
            and, with a reference model, the median calibrated CE score), each with the window settings in
            `metric_config`; with non-members, per membership attack its ROC AUC and its TPR at 1% FPR (where
            measurable), and the blind baseline's AUC, with the sample counts in `metric_config`.
        """
        from huggingface_hub import EvalResult

        metrics = self.metrics
        config = f"prefix={self.settings['prefix_len']},suffix={self.settings['suffix_len']}"
        config += f",windows={self.data['num_windows']}"
        results = []
        for key, (metric_type, metric_name) in CARD_METRICS.items():
            if metrics.get(key) is None or not math.isfinite(metrics[key]):
                continue
            results.append(
                EvalResult(
                    task_type=CARD_TASK[0],
                    task_name=CARD_TASK[1],
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(metrics[key]), 6),
                    metric_config=config,
                )
            )
        if self.membership is not None:
            report = self.membership
            counts = f"{config},members={report.num_members},non_members={report.num_non_members}"
            rows = [(name, entry) for name, entry in report.attacks.items()]
            rows += [] if report.blind_baseline is None else [(membership_section.BLIND_COLUMN, report.blind_baseline)]
            for name, entry in rows:
                readable = "blind baseline, texts alone" if name == membership_section.BLIND_COLUMN else name
                numbers = [("roc_auc", f"Membership inference ROC AUC ({readable})", entry["auc"])]
                if name != membership_section.BLIND_COLUMN and entry["tpr_at_fpr"].get(0.01) is not None:
                    numbers.append(
                        ("tpr_at_1%_fpr", f"Membership inference TPR at 1% FPR ({name})", entry["tpr_at_fpr"][0.01])
                    )
                for metric_type, metric_name, value in numbers:
                    results.append(
                        EvalResult(
                            task_type=CARD_TASK[0],
                            task_name=CARD_TASK[1],
                            dataset_type=dataset_type,
                            dataset_name=dataset_name,
                            metric_type=metric_type,
                            metric_name=metric_name,
                            metric_value=round(float(value), 6),
                            metric_config=counts,
                        )
                    )
        return results

    def card_section(self) -> str:
        """The "Memorization" section of the model card, rendered from `model_cards/memorization_model_card.md`.

        Returns:
            The section's Markdown, between two HTML comments that mark it so a later audit replaces it.
        """
        from huggingface_hub import ModelCard, ModelCardData

        template = resources.files("hf_memory.templates").joinpath(MODEL_CARD_TEMPLATE)
        with resources.as_file(template) as template_path:
            card = ModelCard.from_template(
                ModelCardData(),
                template_path=str(template_path),
                metrics=self.metrics,
                reference_metrics=self.reference_metrics,
                settings=self.settings,
                data=self.data,
                model=self.model,
                reference_model=self.reference_model,
                created=self.created[:10],
                membership=None if self.membership is None else self.membership.to_dict(curves=False),
                membership_verdict=self.membership_verdict(),
                extraction_verdict=self.extraction_verdict(),
            )
        return f"{CARD_SECTION_START}\n{card.text.strip()}\n{CARD_SECTION_END}"

    def to_model_card(
        self,
        card: ModelCard | None = None,
        model_name: str | None = None,
        dataset_name: str = "fine-tuning data",
        dataset_type: str = "custom",
    ) -> ModelCard:
        """Add the audit to a model card: `model-index` evaluation results, the `memorization-audit` tag and the
        "Memorization" section.

        Every result of an earlier audit of the same data (same task and dataset, whatever its window settings, with
        or without a reference model) is replaced; other results are kept. An earlier audit
        section is replaced in place; otherwise the section goes at the end of the card.

        Args:
            card: The card to update, in place; None starts an empty one.
            model_name: The model's name in `model-index`; None keeps the card's, else the audited model's name.
            dataset_name: The audited data's name on the card.
            dataset_type: The audited data's Hub dataset id, or a short type such as "custom".

        Returns:
            The updated card.
        """
        from huggingface_hub import ModelCard

        if card is None:
            card = ModelCard("---\n---\n")
        new = self.eval_results(dataset_name, dataset_type)
        earlier = (CARD_TASK[1], dataset_name, dataset_type)  # an earlier audit of this data, whatever its settings
        kept = [
            old
            for old in card.data.eval_results or []
            if (old.task_name, old.dataset_name, old.dataset_type) != earlier
        ]
        card.data.eval_results = kept + new
        card.data.model_name = (
            model_name or card.data.model_name or os.path.basename(self.model["name_or_path"].rstrip("/"))
        )
        tags = list(card.data.tags or [])
        card.data.tags = tags + [t for t in ("memorization-audit", "hf-memory") if t not in tags]
        section = self.card_section()
        text = card.text or ""
        if CARD_SECTION_START in text and CARD_SECTION_END in text:
            before, rest = text.split(CARD_SECTION_START, 1)
            after = rest.split(CARD_SECTION_END, 1)[1]
            card.text = before + section + after
        else:
            card.text = (text.rstrip() + "\n\n" if text.strip() else "\n") + section + "\n"
        return card

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        dataset_name: str = "fine-tuning data",
        dataset_type: str = "custom",
        commit_message: str = "Add a memorization audit (hf-memory)",
    ) -> str:
        """Write the audit into the model card of `repo_id` on the Hub, in one commit (see `to_model_card`).

        The card is read from the repo (a repo without one gets a new card), updated, validated by the Hub and
        uploaded as `README.md`.

        Args:
            repo_id: The model repo, "user/name".
            token: A Hub token with write access; None uses the stored login.
            dataset_name: The audited data's name on the card.
            dataset_type: The audited data's Hub dataset id, or a short type such as "custom".
            commit_message: The commit's title.

        Returns:
            The URL of the commit.
        """
        from huggingface_hub import ModelCard
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            card = ModelCard.load(repo_id, token=token)
        except EntryNotFoundError as err:
            if isinstance(err, LocalEntryNotFoundError):  # the Hub could not be reached: never overwrite its card
                raise
            card = None  # a repo without a README.md yet
        card = self.to_model_card(card, dataset_name=dataset_name, dataset_type=dataset_type)
        return card.push_to_hub(repo_id, token=token, commit_message=commit_message)
