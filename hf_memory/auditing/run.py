"""`audit`: "did my fine-tune memorize my data?" in one call, from the extraction harness, the memorization signals
and, with a reference model, the calibrated CE diagnostic."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._utils import (
    as_sequences,
    check_integer,
    check_number,
    check_vocabulary,
    model_identity,
    require_extra,
    vocabulary_size,
)
from .report import AuditReport
from .windows import candidate_windows, cut_windows, sample_windows


if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_WINDOWS = 512
BOUNDARY_WINDOW = 8  # positions averaged on each side of the prefix/suffix boundary (as MemorizationPredictor)


def _describe_model(model, name: str | None = None) -> dict:
    """`model_identity` plus what a reader of `results.json` wants to see: type, size and dtype."""
    config = getattr(model, "config", None)
    first = next(model.parameters(), None)
    return {
        **model_identity(model, name),
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": None if first is None else str(first.dtype).removeprefix("torch."),
    }


def _documents(data, tokenizer, sources) -> tuple[list[torch.Tensor], list[str]]:
    """The documents as token id tensors and a label for each; texts are tokenized without special tokens."""
    if isinstance(data, (str, bytes)):
        raise ValueError("`data` must be a list of documents (texts or token ids), not one string.")
    if hasattr(data, "column_names") and "input_ids" not in (data.column_names or ()):
        if "text" not in (data.column_names or ()):
            raise ValueError(
                f"`data` is a dataset with neither `input_ids` nor `text` (columns: {data.column_names})."
            )
        data = list(data["text"])
    items = list(data) if not isinstance(data, torch.Tensor) and not hasattr(data, "column_names") else data
    if isinstance(items, list) and not items:
        raise ValueError("`data` is empty: give at least one document.")
    if isinstance(items, list) and all(isinstance(x, str) for x in items):
        empty = [i for i, text in enumerate(items) if not text.strip()]
        if empty:
            raise ValueError(f"`data[{empty[0]}]` is an empty text: every document must hold some text.")
        documents = [
            torch.tensor(ids, dtype=torch.long) for ids in tokenizer(items, add_special_tokens=False)["input_ids"]
        ]
    elif isinstance(items, list) and any(isinstance(x, str) for x in items):
        raise ValueError("`data` mixes texts and token ids: give one kind.")
    else:
        documents = as_sequences(items, "data")
    if sources is None:
        sources = [f"document {i}" for i in range(len(documents))]
    else:
        sources = [str(s) for s in sources]
        if len(sources) != len(documents):
            raise ValueError(f"`sources` has {len(sources)} labels for {len(documents)} documents.")
    return documents, sources


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


def _check_out(out) -> str | None:
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"`out` must be a folder path, got {type(out).__name__}.")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`out` {out!r} is a file: give a folder for the report.")
    return out


def _log_count_mean(counts: np.ndarray) -> np.ndarray:
    """Per row, the mean of log(1 + count) over its columns, NaN entries left out."""
    logs = np.log1p(counts)
    valid = ~np.isnan(logs)
    return np.where(valid, logs, 0.0).sum(1) / np.maximum(valid.sum(1), 1)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def audit(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[str] | Sequence[Sequence[int]] | datasets.Dataset,
    reference_model: torch.nn.Module | None = None,
    prefix_len: int = 32,
    suffix_len: int = 32,
    stride: int | None = None,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    out: str | os.PathLike | None = None,
    reference_tokenizer: PreTrainedTokenizerBase | None = None,
    sources: Sequence[str] | None = None,
    batch_size: int = 16,
    ce_lr: float = 1e-5,
    seed: int = 0,
    top_k: int = 10,
    model_name: str | None = None,
    reference_name: str | None = None,
    show_progress: bool = True,
) -> AuditReport:
    """Audit a model for memorization of `data`: extraction, signals and (with a reference) the calibrated CE score.

    Every document is cut into windows of `prefix_len + suffix_len` tokens, one every `stride` tokens; at most
    `max_windows` of them are drawn (seeded, uniformly). Per window: greedy extraction of the suffix from the prefix
    (`measure_extraction`), the memorization signals of one forward pass (`memorization_signals`, with the n-gram
    counts of all of `data`), and with `reference_model` (e.g. the checkpoint before fine-tuning) its extraction of
    the same windows and the calibrated CE diagnostic (`ce_diagnostic(..., reference_model=...)`:
    `loss_after - reference_loss`, lower = more likely trained on). Every argument is checked before any work.

    Args:
        model: The causal language model to audit (a transformers `...ForCausalLM`), on the device to run on.
        tokenizer: The model's tokenizer: it tokenizes texts and decodes the windows shown in the report.
        data: The documents the model may have memorized (usually its fine-tuning data): texts, token id
            sequences, or a `datasets.Dataset` with `input_ids` or `text`.
        reference_model: A model that did not train on `data`, with the same tokenizer (e.g. the base model); None
            skips the reference columns and the calibrated CE diagnostic.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Tokens between consecutive windows of a document; None tiles each document with non-overlapping
            windows (`prefix_len + suffix_len`).
        max_windows: Most windows scored, drawn uniformly with `seed`; None scores them all.
        out: A folder to write the report to (`results.json`, `windows.parquet`, `index.html`); None writes
            nothing (`report.save(folder)` later).
        reference_tokenizer: The reference model's tokenizer, if loaded separately: checked to map tokens to the
            same ids.
        sources: A label per document (a file name, `file:line`), shown in the report; None numbers them.
        batch_size: Windows per forward pass.
        ce_lr: Learning rate of the CE diagnostic's SGD step (> 0).
        seed: Seed of the window draw.
        top_k: How many of the most extracted windows the report shows with their text.
        model_name: The model's name in the report; None uses its config's `_name_or_path`.
        reference_name: The reference model's name in the report; None uses its config's `_name_or_path`.
        show_progress: Show progress bars.

    Returns:
        The `AuditReport` (written to `out` when given).

    Raises:
        ValueError: If `data` is empty, holds an empty text or ids outside the vocabulary, no document has
            `prefix_len + suffix_len` tokens, a number is out of range, `out` is a file, or `reference_model` has
            another vocabulary.
        ImportError: If `out` is given without matplotlib (the `plots` extra), or `reference_model` without the
            `analysis` extra.

    Example:
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
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
    length = prefix_len + suffix_len
    stride = check_integer(stride, "stride", minimum=1, allow_none=True) or length
    max_windows = check_integer(max_windows, "max_windows", minimum=1, allow_none=True)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    ce_lr = check_number(ce_lr, "ce_lr", minimum=0, exclusive_minimum=True)
    seed = check_integer(seed, "seed", minimum=0)
    top_k = check_integer(top_k, "top_k", minimum=0)
    if not callable(getattr(tokenizer, "decode", None)):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer (with decode), got {tokenizer!r:.80}.")
    out = _check_out(out)
    _check_reference(model, tokenizer, reference_model, reference_tokenizer)
    if out is not None:
        require_extra("plots", "The audit's HTML report")
    if reference_model is not None:
        require_extra("analysis", "The audit's calibrated CE diagnostic (`reference_model`)")
    documents, sources = _documents(data, tokenizer, sources)
    for i, doc in enumerate(documents):
        check_vocabulary(doc, model, f"data[{i}]")
    candidates = candidate_windows([len(d) for d in documents], length, stride)
    if not candidates:
        longest = max(len(d) for d in documents)
        raise ValueError(
            f"No document of `data` has prefix_len + suffix_len = {length} tokens (the longest has {longest}): "
            "lower `prefix_len` / `suffix_len` or give longer documents."
        )
    positions = sample_windows(candidates, max_windows, seed)
    windows = cut_windows(documents, positions, length)
    if out is not None:
        os.makedirs(out, exist_ok=True)

    from ..analysis import memorization_signals, ngram_counts
    from ..extraction import measure_extraction

    result = measure_extraction(
        model, windows, prefix_len, suffix_len, batch_size=batch_size, show_progress=show_progress
    )
    per_window = result.per_sample()
    reference = None
    if reference_model is not None:
        reference = measure_extraction(
            reference_model, windows, prefix_len, suffix_len, batch_size=batch_size, show_progress=show_progress
        )
    counts = ngram_counts(documents, n=(1, 2))
    signals = memorization_signals(
        model,
        windows,
        prefix_len,
        suffix_len,
        ngram_counts=counts,
        hidden_states=False,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    _, entropy = signals.boundary("entropy", BOUNDARY_WINDOW)
    offsets, _ = signals.boundary("entropy", BOUNDARY_WINDOW)
    entropy_prefix, entropy_suffix = entropy[:, offsets < 0].mean(1), entropy[:, offsets >= 0].mean(1)
    suffix_columns = signals.ngram_offsets >= 0
    unigram_suffix = _log_count_mean(signals.unigram[:, suffix_columns])
    bigram_suffix = _log_count_mean(signals.bigram[:, suffix_columns])
    diagnostic = None
    if reference_model is not None:
        from ..analysis import ce_diagnostic

        diagnostic = ce_diagnostic(
            model, windows, lr=ce_lr, reference_model=reference_model, show_progress=show_progress
        )

    rows = []
    for i, (doc, start) in enumerate(positions):
        ids = windows[i].tolist()
        prefix, suffix = ids[:prefix_len], ids[prefix_len:]
        prediction = result.predictions[i]
        lcp = int(result.longest_common_prefix[i])
        row = {
            "window": i,
            "document": doc,
            "source": sources[doc],
            "start": start,
            "exact_match": bool(per_window["exact_match_per_sample"][i]),
            "longest_common_prefix": lcp,
            "memorization_score": float(per_window["memorization_score_per_sample"][i]),
            "rouge_l": float(per_window["rouge_l_per_sample"][i]),
            "reference_exact_match": None if reference is None else reference.longest_common_prefix[i] == suffix_len,
            "reference_longest_common_prefix": None if reference is None else int(reference.longest_common_prefix[i]),
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
            "prefix_text": _decode(tokenizer, prefix),
            "suffix_text": _decode(tokenizer, suffix),
            "prediction_text": _decode(tokenizer, prediction),
            "reproduced_text": _decode(tokenizer, suffix[:lcp]),
            "missed_text": _decode(tokenizer, suffix[lcp:]),
            "diverged_text": _decode(tokenizer, prediction[lcp:]),
        }
        rows.append(row)
    settings = {
        "prefix_len": prefix_len,
        "suffix_len": suffix_len,
        "stride": stride,
        "max_windows": max_windows,
        "seed": seed,
        "batch_size": batch_size,
        "extraction_method": "auto",
        "ce_lr": ce_lr if reference_model is not None else None,
        "ce_steps": 1 if reference_model is not None else None,
        "boundary_window": BOUNDARY_WINDOW,
        "top_k": top_k,
    }
    data_summary = {
        "num_documents": len(documents),
        "num_tokens": int(sum(len(d) for d in documents)),
        "num_short_documents": sum(len(d) < length for d in documents),
        "num_candidate_windows": len(candidates),
        "num_windows": len(positions),
        "sources": list(dict.fromkeys(sources)) if len(set(sources)) <= 50 else None,
    }
    report = AuditReport(
        rows=rows,
        settings=settings,
        model=_describe_model(model, model_name),
        reference_model=None if reference_model is None else _describe_model(reference_model, reference_name),
        data=data_summary,
    )
    if out is not None:
        report.save(out)
    return report
