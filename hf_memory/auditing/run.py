"""`audit`: "did my fine-tune memorize my data?" in one call, from the extraction harness, the memorization signals
and, with a reference model, the calibrated CE diagnostic."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils import (
    check_bool,
    check_vocabulary,
    check_writable,
    iter_sequences,
    model_identity,
    require_extra,
    tokenizer_fingerprint,
    vocabulary_size,
    weights_fingerprint,
)
from .._utils.store import ResultFolder, ShardWriter, input_bytes, open_store
from ..analysis import NgramCounts
from ..extraction import check_logits_processor, sample_windows
from . import membership
from .config import DEFAULT_MAX_WINDOWS, AuditConfig  # noqa: F401 (DEFAULT_MAX_WINDOWS: kept importable from here)
from .report import AuditReport, _column_types


if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

PARTIAL_DIR = ".partial"  # inside `output_dir`: the rows of an audit in progress, removed once the report is written
TOKENIZE_BATCH = 256  # texts tokenized per call: a fast tokenizer's batch speed, memory bounded
BOUNDARY_WINDOW = 8  # positions averaged on each side of the prefix/suffix boundary (as MemorizationPredictor)


def _describe_model(model, name: str | None = None) -> dict:
    """`model_identity` plus what a reader of `results.json` wants to see: type, size and dtype; and a fingerprint
    of the weights, so that a resumed audit refuses a fine-tune that kept its base model's name and config."""
    config = getattr(model, "config", None)
    first = next(model.parameters(), None)
    return {
        **model_identity(model, name),
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": None if first is None else str(first.dtype).removeprefix("torch."),
        "weights_sha256": weights_fingerprint(model),
    }


def _texts(data) -> Iterator[str]:
    """The `text` column of a `Dataset` (read in batches) or of an `IterableDataset` / iterable of row dicts."""
    if hasattr(data, "iter") and hasattr(data, "__len__"):
        for batch in data.select_columns(["text"]).iter(batch_size=TOKENIZE_BATCH):
            yield from batch["text"]
    else:
        for row in data:
            yield row["text"] if isinstance(row, Mapping) else row


def _tokenized(texts: Iterable, tokenizer, name: str = "data") -> Iterator[list[int]]:
    """Token ids of each text (no special tokens), tokenized `TOKENIZE_BATCH` texts at a time."""
    batch: list[str] = []
    for i, text in enumerate(texts):
        if text is None:
            raise ValueError(f"`{name}[{i}]` is None: every document must be a text (or every one token ids).")
        if not isinstance(text, str):
            raise ValueError(
                f"`{name}[{i}]` is not a text ({type(text).__name__}): `{name}` mixes texts and token ids."
            )
        if not text.strip():
            raise ValueError(f"`{name}[{i}]` is an empty text: every document must hold some text.")
        batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def _token_ids(items: Iterable, name: str = "data") -> Iterator:
    for i, item in enumerate(items):
        if isinstance(item, str):
            raise ValueError(f"`{name}[{i}]` is a text: `{name}` mixes texts and token ids.")
        yield item


_END = object()  # the end of an iterator (None may be an item)


def _document_stream(data, tokenizer, name: str = "data") -> Iterable:
    """`data` as an iterable of token id sequences, read lazily: texts are tokenized as they come, in batches."""
    if isinstance(data, (str, bytes)):
        raise ValueError(f"`{name}` must be a list of documents (texts or token ids), not one string.")
    if isinstance(data, (torch.Tensor, Mapping)):  # a 2-D tensor; a tokenizer's output with `input_ids`
        return data
    if hasattr(data, "column_names"):  # a datasets Dataset or IterableDataset
        columns = data.column_names
        if columns is None:  # an IterableDataset whose features are unknown until read
            first = next(iter(data), None)
            columns = [] if first is None else list(first)
        if "input_ids" in columns:
            return data
        if "text" not in columns:
            raise ValueError(f"`{name}` is a dataset with neither `input_ids` nor `text` (columns: {columns}).")
        return _tokenized(_texts(data), tokenizer, name)
    if not hasattr(data, "__iter__"):
        raise ValueError(f"`{name}` must be texts, token id sequences or a dataset, got {type(data).__name__}.")
    items = iter(data)
    first = next(items, _END)
    if first is _END:
        return []
    if first is None:
        raise ValueError(f"`{name}[0]` is None: every document must be a text or a sequence of token ids.")
    if isinstance(first, str) or (isinstance(first, Mapping) and "input_ids" not in first and "text" in first):
        return _tokenized(_texts(itertools.chain([first], items)), tokenizer, name)
    return _token_ids(itertools.chain([first], items), name)


class _Scan:
    """One pass over the documents for `sample_windows`: each is checked against the vocabulary, its n-grams are
    counted and its tokens tallied, and its label kept, as it goes by. With `members` (the digests of another scan's
    documents), a document that is an exact copy of one of them is refused: it cannot be both a member and a
    non-member."""

    def __init__(
        self, data, tokenizer, model, sources, name: str = "data", members: set | None = None, sources_name="sources"
    ) -> None:
        self.sources_name = sources_name
        if isinstance(sources, (str, bytes)) or not (sources is None or hasattr(sources, "__iter__")):
            raise ValueError(
                f"`{sources_name}` must be a list (or iterable) of labels, one per document, got {sources!r:.60}."
            )
        self.documents = _document_stream(data, tokenizer, name)
        self.model, self.sources, self.name, self.members = model, sources, name, members
        self.document_digests: set[bytes] = set()  # of each document's ids: exact copies across member sets
        self.counts = NgramCounts.empty((1, 2))
        self.labels: list[str] = []
        self.num_tokens = 0
        self.digest = hashlib.sha256()  # of every document read, so that a resumed audit must read the same data
        self.bar = None  # a progress bar advanced per document read

    def __iter__(self) -> Iterator[torch.Tensor]:
        sources = None if self.sources is None else iter(self.sources)
        for i, ids in enumerate(iter_sequences(self.documents, self.name)):
            check_vocabulary(ids, self.model, f"{self.name}[{i}]")
            document = hashlib.blake2b(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes(), digest_size=16)
            if self.members is not None and document.digest() in self.members:
                raise ValueError(
                    f"`{self.name}[{i}]` is an exact copy of a document of `data`: the same document cannot be both a "
                    "member and a non-member. Remove it from one of the two sets."
                )
            self.document_digests.add(document.digest())
            if sources is not None:
                label = next(sources, _END)
                if label is _END:
                    raise ValueError(
                        f"`{self.sources_name}` has {i} labels for more documents: give one label per document."
                    )
                if label is None:
                    raise ValueError(f"`{self.sources_name}[{i}]` is None: give each document a label.")
                self.labels.append(str(label))
            self.counts.add(ids)
            self.num_tokens += len(ids)
            self.digest.update(len(ids).to_bytes(8, "little"))
            self.digest.update(torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes())
            if self.bar is not None:
                self.bar.update(1)
            yield ids
        if sources is not None and next(sources, _END) is not _END:
            raise ValueError(
                f"`{self.sources_name}` has more labels than the {len(self.labels)} documents of `{self.name}`."
            )

    def label(self, document: int) -> str:
        return self.labels[document] if self.sources is not None else f"document {document}"

    def distinct_labels(self, count: int, limit: int = 50) -> list[str] | None:
        """The distinct labels of the `count` documents read, in order; None when there are more than `limit`."""
        if self.sources is None:
            return [self.label(i) for i in range(count)] if count <= limit else None
        distinct = list(dict.fromkeys(self.labels))
        return distinct if len(distinct) <= limit else None


def _check_reference(model, tokenizer, reference_model, reference_tokenizer) -> None:
    if reference_model is None:
        if reference_tokenizer is not None:
            raise ValueError("`reference_tokenizer` was given without a `reference_model`.")
        return
    size, reference_size = vocabulary_size(model), vocabulary_size(reference_model)
    if size is not None and reference_size is not None and size != reference_size:
        raise ValueError(
            f"`reference_model` has another vocabulary ({reference_size} token embeddings, the model {size}): the "
            "reference must share the model's tokenizer, e.g. the checkpoint the model was fine-tuned from."
        )
    if reference_tokenizer is not None and reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            "`reference_model` has another vocabulary (its tokenizer maps tokens to other ids): the reference must "
            "share the model's tokenizer, e.g. the checkpoint the model was fine-tuned from."
        )


def _check_output_dir(output_dir, name: str) -> str | None:
    """The report folder as a string, refused before any work if it cannot hold the report."""
    from .report import HTML_FILE, MEMBERSHIP_FILE, RESULTS_FILE, WINDOWS_FILE

    if output_dir is None:
        return None
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ValueError(f"`{name}` must be a folder path, got {type(output_dir).__name__}.")
    output_dir = os.fspath(output_dir)
    if not output_dir:
        raise ValueError(f"`{name}` must be a folder path, got an empty string (use '.' for this folder).")
    check_writable(output_dir, name)
    for file in (RESULTS_FILE, WINDOWS_FILE, HTML_FILE, MEMBERSHIP_FILE):
        if os.path.isdir(os.path.join(output_dir, file)):
            raise ValueError(f"`{name}` {output_dir!r} holds a folder named {file}, where the report's file goes.")
    return output_dir


def _log_count_mean(counts: np.ndarray) -> np.ndarray:
    """Per row, the mean of log(1 + count) over its columns, NaN entries left out."""
    logs = np.log1p(counts)
    valid = ~np.isnan(logs)
    return np.where(valid, logs, 0.0).sum(1) / np.maximum(valid.sum(1), 1)


def _decode(decode, ids: list[int]) -> str:
    return decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def audit(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[str] | Sequence[Sequence[int]] | datasets.Dataset,
    reference_model: torch.nn.Module | None = None,
    prefix_len: int = AuditConfig.prefix_len,
    suffix_len: int = AuditConfig.suffix_len,
    stride: int | None = AuditConfig.stride,
    max_windows: int | None = AuditConfig.max_windows,
    output_dir: str | os.PathLike | None = None,
    reference_tokenizer: PreTrainedTokenizerBase | None = None,
    sources: Sequence[str] | None = None,
    batch_size: int = AuditConfig.batch_size,
    ce_lr: float = AuditConfig.ce_lr,
    seed: int = AuditConfig.seed,
    top_k: int = AuditConfig.top_k,
    model_name: str | None = None,
    reference_name: str | None = None,
    show_progress: bool = True,
    flush_every: int = AuditConfig.flush_every,
    *,
    non_members: Sequence[str] | Sequence[Sequence[int]] | datasets.Dataset | None = None,
    non_member_sources: Sequence[str] | None = None,
    membership_attacks: Sequence[str] | None = AuditConfig.membership_attacks,
    membership_k: float = AuditConfig.membership_k,
    membership_bootstrap: int = AuditConfig.membership_bootstrap,
    sampling_temperature: float | None = AuditConfig.sampling_temperature,
    sampling_top_k: int | None = AuditConfig.sampling_top_k,
    sampling_top_p: float = AuditConfig.sampling_top_p,
    sampling_queries: int = AuditConfig.sampling_queries,
    sampling_min_probability: float = AuditConfig.sampling_min_probability,
    config: AuditConfig | None = None,
    logits_processor=None,
    out: str | os.PathLike | None = None,
) -> AuditReport:
    """Audit a model for memorization of `data`: membership inference (with held-out `non_members`), extraction,
    signals and (with a reference) the calibrated CE score.

    Every document is cut into windows of `prefix_len + suffix_len` tokens, one every `stride` tokens; at most
    `max_windows` of them are drawn (seeded, uniformly: `hf_memory.extraction.sample_windows`). `data` is read once,
    as a stream, and only the drawn windows and the n-gram table are held: a generator, a streamed `IterableDataset`
    or files larger than memory work. Per window: greedy extraction of the suffix from the prefix
    (`measure_extraction`), the memorization signals of one forward pass (`memorization_signals`, with the n-gram
    counts of all of `data`), and with `reference_model` (e.g. the checkpoint before fine-tuning) its extraction of
    the same windows and the calibrated CE diagnostic (`ce_diagnostic(..., reference_model=...)`:
    `loss_after - reference_loss`, lower = more likely trained on). Every argument, and every document, is checked
    before the model runs. The settings come as keyword arguments or as one `AuditConfig` (`config=`); keywords that
    differ from their defaults are laid over the config.

    The windows are scored in chunks of `batch_size * flush_every`. With `output_dir`, each finished chunk's rows are
    written to `output_dir/.partial/` at once (the package's resumable results folder): an audit that is interrupted
    (an exception, Ctrl-C, a killed process) and run again with the same arguments scores only the chunks that are
    missing, and its report equals an uninterrupted one's. A rerun with other settings, another model, tokenizer or
    reference, or other data into that folder is refused until `output_dir/.partial/` is deleted; the folder is
    removed once the report is written.

    With `non_members` (documents of the same source that the model did not train on, e.g. a random held-out split),
    the audit first measures membership inference: the held-out documents are cut into windows the same way (at
    most `max_windows`, same seed), and every audited window (a member) and held-out window (a non-member) is scored
    by the attacks of `hf_memory.membership` (`membership_scores`: the one-pass attacks, and `reference` with a
    reference model), evaluated by `membership_report` (AUC with a bootstrap interval, TPR at 1% and 0.1% FPR, the
    blind baseline on the window texts). The held-out documents are also the control: each held-out window's greedy
    extraction is measured (`exact_match`, `longest_common_prefix` in the membership rows), and
    `report.control_contrast` sets the audited text against them. A document of `non_members` that is an exact copy
    of one of `data`, a window text found in both sets, or fewer than 5 windows in a set is refused before any
    scoring. The scores of
    every window are in `report.membership_rows` (`membership.parquet`), the evaluation in `report.membership`.

    Args:
        model: The causal language model to audit (a transformers `...ForCausalLM`), on the device to run on.
        tokenizer: The model's tokenizer: it tokenizes texts and decodes the windows shown in the report.
        data: The documents the model may have memorized (usually its fine-tuning data): texts, token id
            sequences, a `datasets.Dataset` or `IterableDataset` with `input_ids` or `text`, or any finite iterable
            of texts or of id sequences (a generator: it is read once).
        reference_model: A model that did not train on `data`, with the same tokenizer (e.g. the base model); None
            skips the reference columns and the calibrated CE diagnostic.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Tokens between consecutive windows of a document; None tiles each document with non-overlapping
            windows (`prefix_len + suffix_len`).
        max_windows: Most windows scored, drawn uniformly with `seed`; None scores them all. A `UserWarning` names
            the documents it leaves mostly unscored.
        output_dir: A folder to write the report to (`results.json`, `windows.parquet`, `index.html`); None writes
            nothing (`report.save(folder)` later).
        reference_tokenizer: The reference model's tokenizer, if loaded separately: checked to map tokens to the
            same ids.
        sources: A label per document (a file name, `file:line`), shown in the report, read alongside `data` (a
            list or an iterable); None numbers them.
        batch_size: Windows per forward pass.
        ce_lr: Learning rate of the CE diagnostic's SGD step (> 0).
        seed: Seed of the window draw.
        top_k: How many of the most extracted windows the report shows with their text.
        model_name: The model's name in the report; None uses its config's `_name_or_path`.
        reference_name: The reference model's name in the report; None uses its config's `_name_or_path`.
        show_progress: Show one progress bar per stage (reading the data, membership and control extraction with
            `non_members`, extraction, reference extraction, signals, CE diagnostic), each in windows and updated
            every batch, with windows/s and the time left.
        flush_every: Batches per chunk: with `output_dir`, at most this many batches are scored again after an
            interruption.
        non_members: Held-out documents, in the forms `data` takes: enables the membership-inference section.
        non_member_sources: A label per held-out document (as `sources`), read alongside `non_members`; None numbers
            them ("non-member document 3").
        membership_attacks: The membership attacks scored (see `AuditConfig.membership_attacks`).
        membership_k: The Min-K% / Min-K%++ fraction (see `AuditConfig.membership_k`).
        membership_bootstrap: Bootstrap resamples of the membership intervals (see `AuditConfig`).
        sampling_temperature: Also measure extraction under sampling at this temperature (probabilistic
            extraction): `log_p` per window, `probabilistic_extraction` in the metrics, a sentence on the page.
        sampling_top_k: With `sampling_temperature`, the k most likely tokens; None keeps all.
        sampling_top_p: With `sampling_temperature`, the nucleus sampling mass, in (0, 1].
        sampling_queries: With `sampling_temperature`, the samples an attacker draws per prefix.
        sampling_min_probability: With `sampling_temperature`, the probability a window needs to count.
        config: All of the settings above at once (`AuditConfig`).
        logits_processor: The audited model's decoding guard as deployed (a transformers `LogitsProcessor`, e.g.
            `MemFreeLogitsProcessor`, or a list of them): its extraction is measured through it
            (`measure_extraction(..., logits_processor=...)`); the reference model's is not, so the two columns
            show what the guard changes. Recorded by class name in the report's settings.
        out: The former name of `output_dir` (deprecated: it warns, and goes in a later release).

    Returns:
        The `AuditReport` (written to `output_dir` when given).

    Raises:
        TypeError: If `config` is not an `AuditConfig`.
        ValueError: If `data` is empty, holds an empty text or ids outside the vocabulary, no document has
            `prefix_len + suffix_len` tokens, `sources` has another length, a number is out of range, `output_dir` is
            a file, cannot be written or holds a folder where a report file goes, `output_dir/.partial/` holds an
            unfinished audit of other settings, another model or other data, or `reference_model` has another
            vocabulary.
        ImportError: If `output_dir` is given without matplotlib (the `plots` extra), or `reference_model` without
            the `analysis` extra.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from hf_memory.data import word_level_tokenizer
        >>> tok = word_level_tokenizer([str(i) for i in range(20)])
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> report = audit(model, tok, [" ".join(map(str, range(20)))] * 3, prefix_len=4, suffix_len=4,
        ...     show_progress=False)
        >>> report.data["num_windows"], sorted(report.metrics)[:2]
        (6, ['exact_match', 'half_suffix_rate'])
    """
    for name, value in (("model", model), ("reference_model", reference_model)):
        if not isinstance(value, torch.nn.Module) and (name == "model" or value is not None):
            raise ValueError(
                f"`{name}` must be a causal language model (a torch.nn.Module), got {type(value).__name__}."
            )
    settings = {
        "prefix_len": prefix_len,
        "suffix_len": suffix_len,
        "stride": stride,
        "max_windows": max_windows,
        "batch_size": batch_size,
        "ce_lr": ce_lr,
        "seed": seed,
        "top_k": top_k,
        "flush_every": flush_every,
        "membership_attacks": membership_attacks,
        "membership_k": membership_k,
        "membership_bootstrap": membership_bootstrap,
        "sampling_temperature": sampling_temperature,
        "sampling_top_k": sampling_top_k,
        "sampling_top_p": sampling_top_p,
        "sampling_queries": sampling_queries,
        "sampling_min_probability": sampling_min_probability,
    }
    config = AuditConfig.from_arguments(config, settings, "`audit`")
    show_progress = check_bool(show_progress, "show_progress")
    processors = check_logits_processor(logits_processor)
    output_dir, name = _renamed_output_dir(output_dir, out)
    if not callable(getattr(tokenizer, "decode", None)):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer (with decode), got {tokenizer!r:.80}.")
    output_dir = _check_output_dir(output_dir, name)
    _check_reference(model, tokenizer, reference_model, reference_tokenizer)
    if output_dir is not None:
        require_extra("plots", "The audit's HTML report")
    if reference_model is not None:
        require_extra("analysis", "The audit's calibrated CE diagnostic (`reference_model`)")
    attacks = None
    if non_members is not None:
        require_extra("analysis", "The audit's membership inference (`non_members`)")
        attacks = membership.chosen_attacks(config, reference_model is not None)
    scan = _Scan(data, tokenizer, model, sources)
    prefix, suffix = config.prefix_len, config.suffix_len
    with tqdm(desc="reading data", unit="document", disable=not show_progress) as bar:
        scan.bar = bar
        sample = sample_windows(
            scan, prefix, suffix, config.window_stride, config.max_windows, config.seed, name="data"
        )
    _warn_coverage(sample, scan.label, "data")
    windows, positions = sample.windows, sample.index
    held = held_scan = None
    if non_member_sources is not None and non_members is None:
        raise ValueError("`non_member_sources` was given without `non_members`.")
    if non_members is not None:
        held_scan = _Scan(
            non_members,
            tokenizer,
            model,
            non_member_sources,
            name="non_members",
            members=scan.document_digests,
            sources_name="non_member_sources",
        )
        with tqdm(desc="reading held-out data", unit="document", disable=not show_progress) as bar:
            held_scan.bar = bar
            held = sample_windows(
                held_scan, prefix, suffix, config.window_stride, config.max_windows, config.seed, name="non_members"
            )
        _warn_coverage(held, held_scan.label, "non_members")
        member_texts = [_decode(tokenizer.decode, w.tolist()) for w in windows]
        non_member_texts = [_decode(tokenizer.decode, w.tolist()) for w in held.windows]
        membership.check_samples(member_texts, non_member_texts)
    report_settings = {
        **config.to_dict(),
        "stride": config.window_stride,
        "extraction_method": "auto",
        "ce_lr": config.ce_lr if reference_model is not None else None,
        "ce_steps": 1 if reference_model is not None else None,
        "boundary_window": BOUNDARY_WINDOW,
        "logits_processor": None if processors is None else [type(p).__qualname__ for p in processors],
    }
    model_info = _describe_model(model, model_name)
    reference_info = None if reference_model is None else _describe_model(reference_model, reference_name)
    labels = [scan.label(doc) for doc, _ in positions]
    scorer = _ChunkScorer(model, tokenizer, reference_model, config, scan.counts, processors)
    chunk = config.batch_size * config.flush_every
    starts = range(0, len(windows), chunk)

    def score(begin: int, bars) -> list[dict]:
        return scorer(windows[begin : begin + chunk], positions[begin : begin + chunk], labels, begin, bars)

    manifest = {
        "kind": "audit",
        "settings": report_settings,
        "model": model_info,
        "reference_model": reference_info,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "windows": _fingerprint(windows, positions, labels),
        "data_sha256": scan.digest.hexdigest(),
    }
    membership_report = membership_rows = None
    if held is not None:
        membership_report, membership_rows, left_out = _membership(
            model, tokenizer, reference_model, config, attacks, sample, held, labels, member_texts,
            non_member_texts, output_dir, name, manifest, held_scan, show_progress, processors,
        )  # fmt: skip
    stages = ["extraction", *(["reference extraction"] if reference_model is not None else []), "signals"]
    stages += ["CE diagnostic"] if reference_model is not None else []
    with _StageBars(stages, len(windows), show_progress) as bars:
        if output_dir is None:
            rows = [row for begin in starts for row in score(begin, bars)]
        else:
            rows = _scored_on_disk(output_dir, name, starts, chunk, windows, positions, score, bars, manifest)
    if membership_rows is not None:  # the members' extraction, next to the non-members' (the control)
        for row in membership_rows:
            if row["is_member"]:
                scored = rows[row["window"]]
                row["exact_match"] = scored["exact_match"]
                row["longest_common_prefix"] = scored["longest_common_prefix"]
    data_summary = {
        "num_documents": sample.num_sequences,
        "num_tokens": scan.num_tokens,
        "num_short_documents": sample.num_skipped,
        "num_candidate_windows": sample.num_candidates,
        "num_windows": len(positions),
        "sources": scan.distinct_labels(sample.num_sequences),
    }
    if held is not None:
        data_summary.update(
            num_non_member_documents=held.num_sequences,
            num_non_member_windows=len(held.index),
            num_non_member_candidate_windows=held.num_candidates,
            num_membership_left_out=left_out,
        )
    report = AuditReport(
        rows=rows,
        settings=report_settings,
        model=model_info,
        reference_model=reference_info,
        data=data_summary,
        membership=membership_report,
        membership_rows=membership_rows,
    )
    if output_dir is not None:
        report.save(output_dir)
        shutil.rmtree(os.path.join(output_dir, PARTIAL_DIR), ignore_errors=True)
    return report


def _membership(
    model, tokenizer, reference_model, config, attacks, sample, held, labels, member_texts, non_member_texts,
    output_dir, name, manifest, held_scan, show_progress, processors,
) -> tuple:  # fmt: skip
    """Score the member and non-member windows with the membership attacks and the non-member windows' extraction
    (the control; resumable under `.partial`), evaluate them, and return `(MembershipReport, per-sample rows,
    windows left out for a non-finite score)`."""
    windows = torch.cat([sample.windows, held.windows])
    is_member = [True] * len(sample.index) + [False] * len(held.index)
    positions = list(sample.index) + list(held.index)
    window_index = list(range(len(sample.index))) + list(range(len(held.index)))
    folder = None if output_dir is None else membership.partial_folder(output_dir, PARTIAL_DIR)
    store_manifest = {
        **manifest,
        "kind": "audit-membership",
        "membership_attacks": attacks,
        "windows": membership.samples_fingerprint(windows, is_member, positions),
        "non_members_sha256": held_scan.digest.hexdigest(),
    }
    with _StageBars(["membership"], len(windows), show_progress) as bars:
        bars.add("control extraction", len(held.index))
        rows = membership.score_samples(
            model, tokenizer, reference_model, config, attacks, windows, is_member, positions, window_index,
            folder, store_manifest, name, bars, processors,
        )  # fmt: skip
    texts = member_texts + non_member_texts
    for row, text in zip(rows, texts):
        member = bool(row["is_member"])
        row["set"] = membership.MEMBER if member else membership.NON_MEMBER
        if member:
            row["source"] = labels[row["window"]]
        elif held_scan.sources is not None:
            row["source"] = held_scan.label(row["document"])
        else:
            row["source"] = f"non-member document {row['document']}"
        row["text"] = text
    report, left_out = membership.evaluate(rows, texts, attacks, config)
    return report, rows, left_out


def _renamed_output_dir(output_dir, out) -> tuple:
    """`output_dir`, or the deprecated `out` with a `FutureWarning`; and the name to use in messages."""
    if out is None:
        return output_dir, "output_dir"
    if output_dir is not None:
        raise TypeError("`audit` got both `output_dir` and its former name `out`: give `output_dir` only.")
    warnings.warn(
        "`audit(out=...)` is now `audit(output_dir=...)`; `out` goes in a later release.", FutureWarning, stacklevel=3
    )
    return out, "out"


def _warn_coverage(sample, label, name: str) -> None:
    """Warn, in one line, when `max_windows` leaves most of some documents unscored."""
    message = sample.coverage_warning(label, "max_windows")
    if message is not None:
        warnings.warn(f"`{name}`: {message}", UserWarning, stacklevel=3)


class _StageBars:
    """One progress bar per stage of the audit, each counting windows and updated every batch of its stage. The
    stages take turns on each chunk of windows, so a bar's rate is averaged over the whole run (`smoothing=0`): its
    windows per second, and its estimate of the time left, include the time the other stages take."""

    def __init__(self, stages: list[str], total: int, show: bool) -> None:
        self.show = show
        self.bars = {}
        for stage in stages:
            self.add(stage, total)

    def add(self, stage: str, total: int) -> None:
        self.bars[stage] = tqdm(total=total, desc=stage, unit="window", smoothing=0, disable=not self.show)

    def __getitem__(self, stage: str):
        return self.bars[stage]

    def update(self, count: int, stages=None) -> None:
        """Advance every stage (or those named) by `count` windows: a chunk read back from an interrupted run."""
        for stage, bar in self.bars.items():
            if stages is None or stage in stages:
                bar.update(count)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.close()


def _scored_on_disk(output_dir, name, starts, chunk, windows, positions, score, bars, manifest) -> list[dict]:
    """Score the chunks an earlier, interrupted run of this audit left unscored, each written to
    `output_dir/.partial/` as it finishes; return every chunk's rows in order."""
    import pyarrow as pa

    folder = os.path.join(output_dir, PARTIAL_DIR)
    open_store(folder, manifest, name=name)
    schema = pa.schema(list(_column_types().items()))
    inputs = [input_bytes(doc, start, window) for (doc, start), window in zip(positions, windows)]
    with ShardWriter(folder, schema, name=name, data_name="data") as writer:
        for begin in starts:
            mine = inputs[begin : begin + chunk]
            if begin < writer.done:
                writer.skip(mine)
                bars.update(len(mine))
            else:
                rows = score(begin, bars)
                writer.add({key: [row.get(key) for row in rows] for key in schema.names}, mine)
        writer.check_all_skipped()
    return [row for table in ResultFolder(folder, name).iter_tables() for row in table.to_pylist()]


def _fingerprint(windows: torch.Tensor, positions: list[tuple[int, int]], labels: list[str]) -> str:
    """sha256 of the sampled windows, where they were cut and their documents' labels: a resumed audit must score
    the same windows."""
    digest = hashlib.sha256(windows.numpy().tobytes())
    digest.update(json.dumps([positions, labels]).encode())
    return digest.hexdigest()


class _ChunkScorer:
    """Every per-window number of the report for a chunk of windows: extraction (and the reference's), the signals
    and, with a reference, the CE diagnostic. A chunk is a whole number of batches, so the numbers do not depend on
    how the windows were chunked."""

    def __init__(self, model, tokenizer, reference_model, config: AuditConfig, counts, processors=None) -> None:
        self.model, self.tokenizer, self.reference_model = model, tokenizer, reference_model
        self.processors = processors
        self.sampling = config.sampling
        self.prefix_len, self.suffix_len = config.prefix_len, config.suffix_len
        self.batch_size, self.ce_lr = config.batch_size, config.ce_lr
        self.counts = counts

    def __call__(self, windows: torch.Tensor, positions, labels: list[str], offset: int, bars) -> list[dict]:
        from ..analysis import memorization_signals
        from ..extraction import measure_extraction

        prefix_len, suffix_len, batch_size = self.prefix_len, self.suffix_len, self.batch_size
        result = measure_extraction(
            self.model,
            windows,
            prefix_len,
            suffix_len,
            batch_size=batch_size,
            show_progress=bars["extraction"],
            logits_processor=self.processors,
            **self.sampling,
        )
        per_window = result.per_sample()
        reference = None
        if self.reference_model is not None:
            reference = measure_extraction(
                self.reference_model,
                windows,
                prefix_len,
                suffix_len,
                batch_size=batch_size,
                show_progress=bars["reference extraction"],
            )
        signals = memorization_signals(
            self.model,
            windows,
            prefix_len,
            suffix_len,
            ngram_counts=self.counts,
            hidden_states=False,
            batch_size=batch_size,
            show_progress=bars["signals"],
        )
        offsets, entropy = signals.boundary("entropy", BOUNDARY_WINDOW)
        entropy_prefix, entropy_suffix = entropy[:, offsets < 0].mean(1), entropy[:, offsets >= 0].mean(1)
        suffix_columns = signals.ngram_offsets >= 0
        unigram_suffix = _log_count_mean(signals.unigram[:, suffix_columns])
        bigram_suffix = _log_count_mean(signals.bigram[:, suffix_columns])
        diagnostic = None
        if self.reference_model is not None:
            from ..analysis import ce_diagnostic

            diagnostic = ce_diagnostic(
                self.model,
                windows,
                lr=self.ce_lr,
                reference_model=self.reference_model,
                show_progress=bars["CE diagnostic"],
            )

        decode = self.tokenizer.decode
        rows = []
        for i, (doc, start) in enumerate(positions):
            ids = windows[i].tolist()
            prefix, suffix = ids[:prefix_len], ids[prefix_len:]
            prediction = result.predictions[i]
            lcp = int(result.longest_common_prefix[i])
            rows.append(
                {
                    "window": offset + i,
                    "document": doc,
                    "source": labels[offset + i],
                    "start": start,
                    "exact_match": bool(per_window["exact_match_per_sample"][i]),
                    "longest_common_prefix": lcp,
                    "memorization_score": float(per_window["memorization_score_per_sample"][i]),
                    "rouge_l": float(per_window["rouge_l_per_sample"][i]),
                    "log_p": None if result.log_p is None else float(result.log_p[i]),
                    "reference_exact_match": None
                    if reference is None
                    else reference.longest_common_prefix[i] == suffix_len,
                    "reference_longest_common_prefix": None
                    if reference is None
                    else int(reference.longest_common_prefix[i]),
                    "confidence": float(signals.confidence[i]),
                    "true_prob": float(signals.true_prob[i]),
                    "logit_mean": float(signals.logit_mean[i]),
                    "logit_var": float(signals.logit_var[i]),
                    "entropy_prefix": float(entropy_prefix[i]),
                    "entropy_suffix": float(entropy_suffix[i]),
                    "entropy_jump": float(entropy_suffix[i] - entropy_prefix[i]),
                    "unigram_suffix": float(unigram_suffix[i]),
                    "bigram_suffix": float(bigram_suffix[i]),
                    "loss": None if diagnostic is None else diagnostic.loss[i],
                    "loss_after": None if diagnostic is None else diagnostic.loss_after[i],
                    "reference_loss": None if diagnostic is None else diagnostic.reference_loss[i],
                    "calibrated_loss": None if diagnostic is None else diagnostic.calibrated_loss[i],
                    "prefix_ids": prefix,
                    "suffix_ids": suffix,
                    "prediction_ids": prediction,
                    "prefix_text": _decode(decode, prefix),
                    "suffix_text": _decode(decode, suffix),
                    "prediction_text": _decode(decode, prediction),
                    "reproduced_text": _decode(decode, suffix[:lcp]),
                    "missed_text": _decode(decode, suffix[lcp:]),
                    "diverged_text": _decode(decode, prediction[lcp:]),
                }
            )
        return rows
