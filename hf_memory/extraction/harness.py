"""Extractable memorization at forward-pass cost, on inputs of any size.

Greedy decoding from a training prefix reproduces the true suffix exactly up to the first position where the
teacher-forced argmax differs from the true token, so verifying the true suffix (in chunks, from the KV cache)
gives the greedy longest common prefix and exact match, and greedy decoding is needed only where a window diverges
(`verify_and_decode`). Windows are cut from the input as it streams in and scored batch by batch; with an
`output_dir`, each batch's rows go to Parquet shards and an interrupted run resumes where it stopped. All numbers
come from the `extractable_memorization` metric.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .._utils import (
    as_sequences,
    check_progress,
    check_vocabulary,
    check_writable,
    eval_mode,
    is_prompt_learning,
    measuring,
    model_device,
    model_identity,
    require_extra,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from .._utils.store import ResultFolder, ShardWriter, finish_store, input_bytes, open_store, warn_unfinished
from .config import EXTRACTION_METHODS, ExtractionConfig  # noqa: F401 (EXTRACTION_METHODS: the callback imports it from here)
from .decoding import Regrouper, _matched_prefix, generate_suffixes, verify_and_decode
from .probabilistic import extractable_fraction, extraction_log_probs
from .scores import extraction_scores
from .store import SCORE_COLUMNS, shard_schema
from .text import decode_for_rouge, text_rouge_l
from .windows import WindowStream


if TYPE_CHECKING:
    import datasets


_IN_MEMORY = (list, tuple, torch.Tensor, Mapping)  # inputs checked whole before any work
_PREFIX_METRICS = ("exact_match", "longest_common_prefix")


@dataclass
class ExtractionResult:
    """Per-window greedy continuations and true suffixes, in input order, with the metric's aggregate numbers.

    A run with `output_dir` keeps its per-window rows on disk: the lists below are then empty, `output_dir` says
    where the rows are, and `dataset()` loads them.

    Attributes:
        predictions: The greedy continuation of each window's prefix, as token ids (with
            `measure_extraction(..., method="prefix")` it stops at the first wrong token).
        references: The true suffix of each window, as token ids.
        longest_common_prefix: Per window, how many leading suffix tokens greedy decoding reproduces.
        metrics: The `extractable_memorization` metric's means over the windows (`exact_match`,
            `memorization_score`, `longest_common_prefix`, `rouge_l`; only the first and third with
            `method="prefix"`), plus `rouge_l_text` when a tokenizer was given and `probabilistic_extraction` (the
            share of windows extracted within `queries` samples with probability >= `min_probability`) when a
            `temperature` was.
        windows: Per window, `(sequence index, start token)`: where in the input it was cut.
        num_skipped: How many sequences were shorter than `prefix_len + suffix_len` and gave no window.
        rouge_l_text: Per window, ROUGE-L of the decoded texts as `evaluate`'s `rouge` computes it (see
            `text_rouge_l`); None unless `measure_extraction` was given a tokenizer.
        output_dir: The results folder of a run with `output_dir`, else None.
        num_windows: How many windows were scored (for a run on disk: written so far).
        log_p: Per window, the log-probability that sampling (the `temperature`, `top_k`, `top_p` of the call)
            emits the suffix after the prefix; None unless `measure_extraction` was given a `temperature`. A run on
            disk keeps it in the `log_p` column of `dataset()`.
    """

    predictions: list[list[int]]
    references: list[list[int]]
    longest_common_prefix: list[int]
    metrics: dict
    windows: list[tuple[int, int]] = field(default_factory=list)  # (sequence index, start token) per window
    num_skipped: int = 0  # sequences shorter than prefix_len + suffix_len
    rouge_l_text: list[float] | None = None
    output_dir: str | None = None
    num_windows: int | None = None
    log_p: list[float] | None = None

    def __post_init__(self):
        if self.num_windows is None:
            self.num_windows = len(self.predictions)

    def per_sample(self) -> dict:
        """The metric's per-window lists (exact match, positional score, longest common prefix, ROUGE-L).

        With `method="prefix"` the predictions are cut at the first wrong token, so only `exact_match_per_sample`
        and `longest_common_prefix_per_sample` are meaningful there.

        Returns:
            The `extraction_scores(..., return_per_sample=True)` dict: the four means and, per metric, a
            `<name>_per_sample` list in window order; with text ROUGE-L also `rouge_l_text` and its list.

        Raises:
            ValueError: For a result on disk (`output_dir`): its rows are in `dataset()`.
        """
        if self.output_dir is not None:
            raise ValueError(
                f"The per-window rows of this result are on disk in {self.output_dir!r}: use `result.dataset()`."
            )
        scores = extraction_scores(self.predictions, self.references, return_per_sample=True)
        if self.rouge_l_text is not None:
            scores["rouge_l_text"] = self.metrics["rouge_l_text"]
            scores["rouge_l_text_per_sample"] = list(self.rouge_l_text)
        return scores

    def dataset(self) -> datasets.Dataset:
        """The per-window rows of a result on disk, as a `datasets.Dataset` in input order.

        Columns: `sequence`, `start`, `exact_match`, `longest_common_prefix`, `memorization_score`, `rouge_l`,
        `rouge_l_text` (None where not computed), `prediction` and `reference` (token ids). Only the shards
        (`rank*-*.parquet`) are read, whatever else the folder holds. The same rows load with
        `datasets.load_dataset("parquet", data_files=os.path.join(output_dir, "rank*-*.parquet"))` (unsorted when
        several processes wrote them).

        Raises:
            ValueError: For a result held in memory (no `output_dir`), or if a shard is damaged (naming it).
        """
        if self.output_dir is None:
            raise ValueError("This result is held in memory (no `output_dir`): read its lists directly.")
        from datasets import Dataset, Features, load_dataset

        store = ResultFolder(self.output_dir)
        shards = store.shard_paths()
        if not shards:  # a run stopped before its first shard
            features = Features.from_arrow_schema(shard_schema())
            return Dataset.from_dict({name: [] for name in features}, features=features)
        try:
            rows = load_dataset("parquet", data_files=shards, split="train")
        except Exception:
            for path in shards:  # names the damaged shard, if that is what failed
                store.read(path)
            raise
        return rows.sort(["sequence", "start"])

    @classmethod
    def from_output_dir(cls, output_dir: str | os.PathLike) -> ExtractionResult:
        """Deprecated name of `load` (a `FutureWarning`; it goes in a later release).

        Args:
            output_dir: A folder written by `measure_extraction(..., output_dir=...)`.
        """
        warnings.warn(
            "`ExtractionResult.from_output_dir` is now `ExtractionResult.load`; the old name goes in a later release.",
            FutureWarning,
            stacklevel=2,
        )
        return cls.load(output_dir)

    @classmethod
    def load(cls, output_dir: str | os.PathLike) -> ExtractionResult:
        """The aggregate numbers of the run written to `output_dir`, read from its shards' score columns.

        No prediction or reference is loaded (`dataset()` gives them); each mean is an exactly rounded sum
        (`math.fsum`) over the windows, so it does not depend on how many processes wrote the shards, and agrees
        with the in-memory means to the last bit or two. A run that has not finished gives the numbers of the
        windows written so far, with a warning.

        Args:
            output_dir: A folder written by `measure_extraction(..., output_dir=...)`.

        Returns:
            An `ExtractionResult` with `metrics`, `num_skipped`, `num_windows` and `output_dir` set and empty lists.

        Raises:
            FileNotFoundError: If the folder holds no results.
            ValueError: If its manifest or a shard is damaged (naming the file).
        """
        store = ResultFolder(output_dir)
        settings = store.manifest()["settings"]
        summary = store.check_complete()
        names = list(_PREFIX_METRICS) if settings.get("method") == "prefix" else list(SCORE_COLUMNS[:4])
        if settings.get("text_rouge"):
            names.append("rouge_l_text")
        order = [n for n in ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l") if n in names]
        columns = order + (["rouge_l_text"] if "rouge_l_text" in names else [])
        sums, count = {name: _ExactSum() for name in columns}, 0
        for table in store.iter_tables(["sequence", *columns]):  # one pass over the shards, never the token ids
            count += table.num_rows
            for name in columns:
                sums[name].add(table[name].to_numpy(zero_copy_only=False))
        metrics = {name: sums[name].value() / count if count else float("nan") for name in columns}
        if settings.get("temperature") is not None and count:
            log_p = [v for table in store.iter_tables(["log_p"]) for v in table["log_p"].to_pylist()]
            queries, probability = settings.get("queries"), settings.get("min_probability")
            metrics["probabilistic_extraction"] = extractable_fraction(log_p, queries, probability)
        if summary is None:
            warn_unfinished(store.folder, count, "measure_extraction")
        num_skipped = summary["num_skipped"] if summary else 0
        return cls([], [], [], metrics, [], num_skipped, None, output_dir=store.folder, num_windows=count)


class _ExactSum:
    """A running sum of floats with no rounding error until `value()` (Shewchuk's partials, as `math.fsum` keeps
    them), so a sum over shards read one at a time equals `math.fsum` over all the values."""

    def __init__(self):
        self.partials: list[float] = []

    def add(self, values) -> None:
        partials = self.partials
        for x in values:
            x = float(x)
            i = 0
            for y in partials:
                if abs(x) < abs(y):
                    x, y = y, x
                high = x + y
                low = y - (high - x)
                if low:
                    partials[i] = low
                    i += 1
                x = high
            partials[i:] = [x]

    def value(self) -> float:
        return math.fsum(self.partials)


def _decode_batch(
    model, batch: torch.Tensor, prefix_len: int, method: str, processors=None
) -> tuple[list, torch.Tensor]:
    """Greedy continuations and longest common prefixes of one batch of windows, by `method` ("generate", under
    `processors` if any, or "prefix"; "auto" goes through `Regrouper`)."""
    if method == "generate":
        preds = generate_suffixes(model, batch, prefix_len, logits_processor=processors)
        return preds, _matched_prefix(preds, batch[:, prefix_len:])
    preds, lcp = verify_and_decode(model, batch, prefix_len, decode=False)
    # the greedy continuation is known up to and including its first wrong token
    return [p[: n + 1] for p, n in zip(preds, lcp.tolist())], lcp


def _batches(stream: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_model(model, prefix_len: int, suffix_len: int) -> None:
    """Refuse, before any work, a model no method decodes correctly and windows longer than its learned position
    embeddings (an `IndexError` deep in torch, or a device-side assert on a GPU).

    Args:
        model: The model to measure.
        prefix_len: Tokens of each window's prefix.
        suffix_len: Tokens of each window's suffix.

    Raises:
        ValueError: If `model` is a PEFT prompt-learning model, or has learned absolute position embeddings shorter
            than `prefix_len + suffix_len`.
    """
    if is_prompt_learning(model):
        raise ValueError(
            "`model` is a PEFT prompt-learning model (prompt tuning, prefix tuning or p-tuning): PEFT rewrites the "
            "context of every forward (virtual tokens, or a replaced KV cache), so cached decoding gives silently "
            "wrong tokens, in every method. Measure the base model (`model.get_base_model()`), or an adapter "
            "merged into its weights (LoRA and the like: `model.merge_and_unload()`)."
        )
    limit = _learned_position_limit(model)
    if limit is not None and prefix_len + suffix_len > limit[1]:
        raise ValueError(
            f"prefix_len + suffix_len = {prefix_len + suffix_len} tokens is more than the model's learned position "
            f"embeddings cover (`config.{limit[0]}` = {limit[1]}): lower `prefix_len` / `suffix_len`."
        )


def _learned_position_limit(model) -> tuple[str, int] | None:
    """`(config attribute, positions)` for a model with learned absolute position embeddings (GPT-2, OPT,
    GPT-BigCode, GPT-Neo, BioGPT, ...), None for rotary, ALiBi or other unbounded positions."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    try:  # the text decoder only: a vision tower's position embedding is no limit on the window
        decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else model
    except (AttributeError, NotImplementedError, ValueError):
        decoder = model
    learned = any(
        isinstance(module, torch.nn.Embedding)
        and module is not inputs
        and ("pos" in name.rsplit(".", 1)[-1] or name.rsplit(".", 1)[-1] == "wpe")
        for name, module in (decoder if isinstance(decoder, torch.nn.Module) else model).named_modules()
    )
    if not learned:
        return None
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def _check_vocabulary(items, model, name: str) -> None:
    """Raise a `ValueError` naming the first item `(index, ...)` of `items` holding an id outside the vocabulary.

    Args:
        items: `(index, ids)` pairs, or `(index, start, ids)` triples; the ids are the last element.
        model: The model.
        name: The argument's name.
    """
    ids = [item[-1] for item in items]
    try:
        check_vocabulary(torch.cat([row.reshape(-1) for row in ids]) if ids else torch.zeros(0), model, name)
    except ValueError:
        for item in items:  # only on failure: find and name the item
            check_vocabulary(item[-1], model, f"{name}[{item[0]}]")
        raise


def _rows(items, predictions, references, lcp, method, rouge_text, log_p=None) -> dict:
    """One batch's shard rows, column by column."""
    n = len(items)
    scores = extraction_scores(predictions, references, return_per_sample=True)
    whole = method != "prefix"
    return {
        "sequence": [seq for seq, _, _ in items],
        "start": [start for _, start, _ in items],
        "exact_match": scores["exact_match_per_sample"],
        "longest_common_prefix": lcp,
        "memorization_score": scores["memorization_score_per_sample"] if whole else [None] * n,
        "rouge_l": scores["rouge_l_per_sample"] if whole else [None] * n,
        "rouge_l_text": rouge_text if rouge_text is not None else [None] * n,
        "log_p": log_p if log_p is not None else [None] * n,
        "prediction": predictions,
        "reference": references,
    }


class _MemoryRows:
    """The rows of a run without `output_dir`: kept in memory, returned whole."""

    done = 0

    def __init__(self, config: ExtractionConfig, text_rouge: bool) -> None:
        self.config, self.text_rouge = config, text_rouge
        self.records: list[tuple] = []  # (window number, sequence, start, prediction, reference, lcp, text ROUGE-L,
        # log p under sampling)

    def skip(self, items) -> None:
        raise RuntimeError("an in-memory run has no rows to skip")

    def add(self, number: int, items, predictions, references, lcp: list[int], rouge_text, log_p=None) -> None:
        first = number * self.config.batch_size
        for j, ((seq, start, _), pred, ref, n) in enumerate(zip(items, predictions, references, lcp)):
            text = None if rouge_text is None else rouge_text[j]
            self.records.append((first + j, seq, start, pred, ref, n, text, None if log_p is None else log_p[j]))

    def close(self) -> None:
        pass

    def check_all_skipped(self) -> None:
        pass

    def result(self, stream: WindowStream, state) -> ExtractionResult:
        records = self.records
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            records = sorted(gather_object(records))
        _, seqs, starts, predictions, references, lcps, texts, log_p = (list(column) for column in zip(*records))
        metrics = extraction_scores(predictions, references)
        if self.config.method == "prefix":
            metrics = {k: metrics[k] for k in _PREFIX_METRICS}
        rouge_text = None
        if self.text_rouge:
            rouge_text = texts
            metrics["rouge_l_text"] = sum(rouge_text) / len(rouge_text)
        if self.config.sampling is None:
            log_p = None
        else:
            metrics["probabilistic_extraction"] = _probabilistic(log_p, self.config)
        index = list(zip(seqs, starts))
        return ExtractionResult(
            predictions, references, lcps, metrics, index, stream.num_skipped, rouge_text, log_p=log_p
        )


class _StoredRows:
    """The rows of a run with `output_dir`: written to the folder's shards as they come, read back at the end."""

    def __init__(self, output_dir: str, writer: ShardWriter, config: ExtractionConfig) -> None:
        self.output_dir, self.writer, self.config = output_dir, writer, config
        self.done = writer.done

    def skip(self, items) -> None:
        self.writer.skip([_window_input(item) for item in items])

    def add(self, number: int, items, predictions, references, lcp: list[int], rouge_text, log_p=None) -> None:
        rows = _rows(items, predictions, references, lcp, self.config.method, rouge_text, log_p)
        self.writer.add(rows, [_window_input(item) for item in items])

    def close(self) -> None:
        self.writer.close()

    def check_all_skipped(self) -> None:
        self.writer.check_all_skipped()

    def result(self, stream: WindowStream, state) -> ExtractionResult:
        state.wait_for_everyone()
        if state.is_main_process:
            finish_store(self.output_dir, {"num_skipped": stream.num_skipped, "num_sequences": stream.num_sequences})
        state.wait_for_everyone()
        return ExtractionResult.load(self.output_dir)


def _probabilistic(log_p, config: ExtractionConfig) -> float:
    """The share of windows (n, p)-extractable under the config's sampling: `queries` samples, `min_probability`."""
    return extractable_fraction(log_p, config.queries, config.min_probability)


def _window_input(item) -> bytes:
    """What identifies a window's row: its sequence, start and token ids."""
    seq, start, window = item
    return input_bytes(seq, start, window)


def _open_rows(model, config: ExtractionConfig, tokenizer, output_dir: str | None, state, processors=None):
    """Where the rows of this run go: memory, or the shards of `output_dir` (checked against the run already there,
    which is resumed)."""
    if output_dir is None:
        return _MemoryRows(config, tokenizer is not None)
    manifest = {
        "kind": "extraction",
        "settings": {
            **config.to_dict(),
            "text_rouge": tokenizer is not None,
            "logits_processor": None if processors is None else [type(p).__qualname__ for p in processors],
        },
        "model": {**model_identity(model), "weights_sha256": weights_fingerprint(model)},
        "tokenizer_sha256": None if tokenizer is None else tokenizer_fingerprint(tokenizer),
        "num_processes": state.num_processes,
    }
    open_store(output_dir, manifest, is_main=state.is_main_process)
    state.wait_for_everyone()
    writer = ShardWriter(
        output_dir, shard_schema(), state.process_index, config.flush_every, name="output_dir", data_name="sequences"
    )
    return _StoredRows(output_dir, writer, config)


class _Decoder:
    """Greedy continuations and longest common prefixes of a stream of batches, by the config's method: "auto"
    regroups the diverged rows of several batches (`Regrouper`); batches come back complete and in order."""

    def __init__(self, model, config: ExtractionConfig, processors=None) -> None:
        self.model, self.config, self.processors = model, config, processors
        self.method = "generate" if processors is not None else config.method  # a guard is applied by generate
        self.regrouper = Regrouper(model, config.prefix_len, config.batch_size) if self.method == "auto" else None

    def submit(self, key, batch: torch.Tensor) -> list[tuple]:
        if self.regrouper is not None:
            return self.regrouper.submit(key, batch)
        return [(key, *_decode_batch(self.model, batch, self.config.prefix_len, self.method, self.processors))]

    def finish(self) -> list[tuple]:
        return self.regrouper.finish() if self.regrouper is not None else []


def check_logits_processor(logits_processor):
    """`logits_processor` as a `LogitsProcessorList`, or None; anything else refused before any work.

    Args:
        logits_processor: None, a transformers `LogitsProcessor`, or a non-empty list of them.

    Raises:
        ValueError: For anything else.
    """
    if logits_processor is None:
        return None
    from transformers import LogitsProcessor, LogitsProcessorList

    items = [logits_processor] if isinstance(logits_processor, LogitsProcessor) else logits_processor
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, LogitsProcessor) for p in items):
        raise ValueError(
            "`logits_processor` must be a transformers LogitsProcessor (e.g. MemFreeLogitsProcessor) or a non-empty "
            f"list of them, got {logits_processor!r:.80}."
        )
    return LogitsProcessorList(items)


def _check_output_dir(output_dir) -> str | None:
    if output_dir is None:
        return None
    if not isinstance(output_dir, (str, os.PathLike)):
        raise ValueError(f"`output_dir` must be a folder path, got {type(output_dir).__name__}.")
    output_dir = os.fspath(output_dir)
    if not output_dir:
        raise ValueError("`output_dir` must be a folder path, got an empty string (use '.' for this folder).")
    check_writable(output_dir)
    return output_dir


def _check_tokenizer(tokenizer, method: str) -> None:
    if tokenizer is None:
        return
    if not callable(getattr(tokenizer, "batch_decode", None)):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer (with batch_decode), got {tokenizer!r:.80}.")
    if method == "prefix":
        raise ValueError(
            "`tokenizer` (text-level ROUGE-L) needs whole predictions, which method='prefix' does not produce: "
            "use method='auto' or 'generate'."
        )
    require_extra("analysis", "Text-level ROUGE-L (`tokenizer=`)")


def _check_decodable(rows, tokenizer) -> None:
    """Refuse a `tokenizer` that cannot decode the data: text-level ROUGE-L of ids it does not know is 0.0."""
    size = len(tokenizer)
    top = max((int(max(row)) for row in rows if len(row)), default=-1)
    if top >= size:
        raise ValueError(
            f"`tokenizer` has {size} tokens, but `sequences` hold token id {top}: it is not the tokenizer of this "
            "data (text-level ROUGE-L would decode nothing)."
        )


def _check_in_memory(sequences, model, config: ExtractionConfig) -> tuple:
    """An input already in memory (list, tensor, mapping), checked whole before any work: `(sequences, windows)`;
    a streamed one is returned as is with None (it is checked batch by batch)."""
    if not isinstance(sequences, _IN_MEMORY):
        return sequences, None
    sequences = as_sequences(sequences)
    length, stride = config.window_len, config.stride
    long_enough = [(i, row) for i, row in enumerate(sequences) if len(row) >= length]
    if not long_enough:
        raise ValueError(
            f"No sequence in `sequences` has prefix_len + suffix_len = {length} tokens "
            f"({len(sequences)} skipped): lower `prefix_len` / `suffix_len` or give longer sequences."
        )
    _check_vocabulary(long_enough, model, "sequences")
    total = sum(len(range(0, len(row) - length + 1, stride)) if stride else 1 for _, row in long_enough)
    return sequences, total


@torch.inference_mode()
def measure_extraction(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset | Iterable,
    prefix_len: int = ExtractionConfig.prefix_len,
    suffix_len: int = ExtractionConfig.suffix_len,
    stride: int | None = ExtractionConfig.stride,
    batch_size: int = ExtractionConfig.batch_size,
    method: str = ExtractionConfig.method,
    show_progress: bool = True,
    tokenizer=None,
    output_dir: str | os.PathLike | None = None,
    flush_every: int = ExtractionConfig.flush_every,
    *,
    config: ExtractionConfig | None = None,
    logits_processor=None,
    temperature: float | None = ExtractionConfig.temperature,
    top_k: int | None = ExtractionConfig.top_k,
    top_p: float = ExtractionConfig.top_p,
    queries: int = ExtractionConfig.queries,
    min_probability: float = ExtractionConfig.min_probability,
) -> ExtractionResult:
    """Greedy extraction of each window's suffix from its prefix, scored by the `extractable_memorization` metric.

    One window per sequence (its first prefix_len + suffix_len tokens), or one every `stride` tokens; shorter
    sequences are skipped and counted in `num_skipped`. Windows are cut as the input streams in: a generator, a
    `datasets.IterableDataset` (`load_dataset(..., streaming=True)`) or a `Dataset` read in batches are never
    turned into one list. Under `accelerate launch` / `torchrun` process r scores batches r, r + n, r + 2n, ... of
    the stream, so the rows do not depend on the number of processes. The model is put in eval mode for the call
    and given back its mode.

    The settings come as keyword arguments or as one `ExtractionConfig` (`config=`); keywords that differ from
    their defaults are laid over the config. With `output_dir`, every window's row (sequence index, window start,
    the four scores, predicted and true ids) goes to Parquet shards there, a shard every `flush_every` batches per
    process, and the result is read back from them (`ExtractionResult.load`): memory no longer grows with
    the number of windows. Rerunning the same call after a crash or a kill continues after the last complete shard;
    the final rows equal a clean run's. The folder's manifest records the settings and the model (name, config and
    a fingerprint of its weights), and every shard a running fingerprint of the windows scored so far: another
    model, other settings, or data that differ from the windows already scored (an edited, inserted or removed
    document) are refused before any row is added. A folder written by an older hf-memory still reads, but takes no
    new rows.

    Args:
        model: A causal language model (transformers `...ForCausalLM`, possibly with a LoRA-style PEFT adapter), on
            the device to run on. PEFT prompt-learning models (prompt or prefix tuning) are refused.
        sequences: Token id sequences (lists, 1-D tensors, a 2-D tensor), a `datasets.Dataset` or
            `IterableDataset` with `input_ids`, or any iterable of id sequences or row dicts with `input_ids`.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window, at its start.
        batch_size: Windows per forward pass.
        method: "auto" (the true suffix verified from the KV cache, greedy decoding where it diverges), "prefix"
            (verification only: exact match and longest common prefix are exact, predictions stop at the first wrong
            token, so only those two metrics are reported) or "generate" (plain batched greedy `generate`, the
            reference).
        show_progress: Show a progress bar in windows/s, updated every batch (on the local main process only): True
            or False; or a tqdm bar to advance instead of a new one (how `audit` shows one bar per stage).
        tokenizer: The model's tokenizer; when given, predictions and references are also decoded (special tokens
            skipped, as the goldfish paper's evaluation does) and scored by text-level ROUGE-L (`rouge_l_text`,
            the number Hans et al. report; needs the `analysis` extra). Not with `method="prefix"`.
        output_dir: A folder for the per-window rows (Parquet shards and a manifest); None keeps everything in
            memory. Files there other than the run's own are ignored.
        flush_every: With `output_dir`, batches per shard: at most this many batches are redone after a crash.
        config: All of the settings above at once (`ExtractionConfig`), e.g. loaded with
            `ExtractionConfig.from_pretrained`.
        temperature: Also measure extraction under sampling at this temperature (probabilistic extraction, Hayes
            et al. 2024): `result.log_p` holds, per window, the log-probability that sampling emits the suffix after
            the prefix (one more teacher-forced pass per batch; see `extraction_log_probs`), and
            `metrics["probabilistic_extraction"]` the share of windows extracted within `queries` samples with
            probability >= `min_probability`. None measures greedy decoding only.
        top_k: With `temperature`, sample from the `top_k` most likely tokens; None keeps all.
        top_p: With `temperature`, the nucleus sampling mass, in (0, 1].
        queries: With `temperature`, the samples an attacker draws per prefix (the n of (n, p)-extraction).
        min_probability: With `temperature`, the probability a window needs (the p of (n, p)-extraction).
        logits_processor: A decoding guard as deployed (a transformers `LogitsProcessor`, e.g.
            `MemFreeLogitsProcessor`, or a list of them), applied at every greedy step: a guarded deployment is
            measured the way an unguarded one is. Every window is then decoded with `generate` whatever `method`
            says (the cache-verified path would have to apply each processor position by position); the
            processors' class names are recorded in a results folder's manifest.

    Returns:
        An `ExtractionResult`: with the predictions, references and scores of every window, in input order; with
        `output_dir`, the aggregate numbers (the rows are in `result.dataset()`).

    Raises:
        TypeError: If `config` is not an `ExtractionConfig`.
        ValueError: If a length, `stride`, `batch_size` or `flush_every` is not a positive integer, `method` is
            unknown, `show_progress` is not a bool, `model` is a PEFT prompt-learning model or has learned position
            embeddings shorter than `prefix_len + suffix_len`, a sequence is not integer token ids or holds an id
            outside the vocabulary (naming `sequences[i]`), no sequence is long enough for one window, `tokenizer`
            cannot decode or comes with `method="prefix"`, `output_dir` is empty, a file, cannot be written or holds
            another run or other data, or a shard there is damaged or missing. An in-memory input (list, tensor,
            mapping) is checked whole before any work; a streamed one batch by batch, and rows already written are
            kept.
        ImportError: If `tokenizer` is given and rouge_score (the `analysis` extra) is missing.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = measure_extraction(model, [list(range(20)), [1, 2, 3]], prefix_len=8, suffix_len=8, show_progress=False)
        >>> len(result.predictions), result.num_skipped, sorted(result.metrics)
        (1, 1, ['exact_match', 'longest_common_prefix', 'memorization_score', 'rouge_l'])
        >>> same = measure_extraction(model, [list(range(20))], config=ExtractionConfig(prefix_len=8, suffix_len=8),
        ...     show_progress=False)
        >>> same.predictions == result.predictions
        True
    """
    settings = {
        "prefix_len": prefix_len,
        "suffix_len": suffix_len,
        "stride": stride,
        "batch_size": batch_size,
        "method": method,
        "flush_every": flush_every,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "queries": queries,
        "min_probability": min_probability,
    }
    config = ExtractionConfig.from_arguments(config, settings, "`measure_extraction`")
    show_progress = check_progress(show_progress, "show_progress")
    processors = check_logits_processor(logits_processor)
    check_model(model, config.prefix_len, config.suffix_len)
    _check_tokenizer(tokenizer, config.method)
    output_dir = _check_output_dir(output_dir)
    sequences, total = _check_in_memory(sequences, model, config)
    if tokenizer is not None and total is not None:
        _check_decodable(sequences, tokenizer)
    stream = WindowStream(sequences, config.prefix_len, config.suffix_len, config.stride)

    from accelerate import PartialState

    device = model_device(model)
    state = PartialState(cpu=device.type == "cpu")  # a CPU model under torchrun / accelerate launch: gloo
    rank, world, size = state.process_index, state.num_processes, config.batch_size
    rows = _open_rows(model, config, tokenizer, output_dir, state, processors)
    sampling = config.sampling
    seen = 0  # windows of this process's share met so far
    number = -1

    def record(number: int, items, preds, lcp: torch.Tensor) -> None:
        """Score one completed batch and hand its rows on."""
        predictions = [p.tolist() for p in preds]
        references = [window[config.prefix_len :].tolist() for _, _, window in items]
        rouge_text = None
        if tokenizer is not None:
            rouge_text = text_rouge_l(
                decode_for_rouge(tokenizer, predictions), decode_for_rouge(tokenizer, references)
            )
        log_p = None
        if sampling is not None:  # one teacher-forced pass: the probability that sampling emits each suffix
            windows = torch.stack([window for _, _, window in items]).to(device)
            log_p = extraction_log_probs(model, windows, config.prefix_len, config=sampling, batch_size=size).tolist()
        rows.add(number, items, predictions, references, lcp.tolist(), rouge_text, log_p)
        bar.update(len(items))

    bar = None
    try:  # from here on the rows are closed (the folder's lock let go, every scored batch kept) whatever happens
        mine = None if total is None else sum(min(size, total - b) for b in range(rank * size, total, world * size))
        bar = show_progress  # the caller's own bar (one stage of an audit), advanced as is
        if isinstance(show_progress, bool):
            bar = tqdm(
                total=mine,
                unit="window",
                desc="extraction",
                disable=not show_progress or not state.is_local_main_process,
            )
        decoder = _Decoder(model, config, processors)
        with eval_mode(model, "measure_extraction"), measuring(model):  # the model as trained: no FastMem wrapper
            for number, items in enumerate(_batches(stream, size)):
                if number % world != rank:
                    continue
                if seen < rows.done:  # written by an earlier, interrupted run of the same call
                    written = items[: rows.done - seen]  # all of the batch, or the start of the one it ended in
                    rows.skip(written)
                    seen += len(written)
                    bar.update(len(written))
                    items = items[len(written) :]
                    if not items:
                        continue
                if total is None:  # streamed: checked batch by batch
                    _check_vocabulary(items, model, "sequences")
                    if tokenizer is not None:
                        _check_decodable([window for _, _, window in items], tokenizer)
                batch = torch.stack([window for _, _, window in items]).to(device)
                for key, preds, lcp in decoder.submit((number, items), batch):
                    record(*key, preds, lcp)
            for key, preds, lcp in decoder.finish():
                record(*key, preds, lcp)
    finally:
        if bar is not None and bar is not show_progress:
            bar.close()
        rows.close()
    rows.check_all_skipped()
    if stream.num_sequences == 0:
        raise ValueError("`sequences` is empty: give at least one sequence of token ids.")
    if number < 0:
        raise ValueError(
            f"No sequence in `sequences` has prefix_len + suffix_len = {config.window_len} tokens "
            f"({stream.num_skipped} skipped): lower `prefix_len` / `suffix_len` or give longer sequences."
        )
    return rows.result(stream, state)
