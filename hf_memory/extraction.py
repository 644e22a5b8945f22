"""Extractable memorization at forward-pass cost.

Greedy decoding from a training prefix reproduces the true suffix exactly up to the first position where the
teacher-forced argmax differs from the true token. One forward pass over prefix + suffix therefore gives the greedy
longest common prefix and exact match of a whole batch. For the position-wise score, greedy decoding resumes at the
divergence point from that forward's KV cache (positions past the divergence are masked out), only for the windows
that diverged. All numbers come from the `extractable_memorization` metric.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._token_ids import as_token_ids
from .metrics.extractable_memorization.extractable_memorization import extraction_scores

EXTRACTION_METHODS = ("auto", "prefix", "generate")


@dataclass
class ExtractionResult:
    """Per-window greedy continuations and true suffixes, in input order, with the metric's aggregate numbers."""

    predictions: list[list[int]]
    references: list[list[int]]
    longest_common_prefix: list[int]
    metrics: dict
    windows: list[tuple[int, int]] = field(default_factory=list)  # (sequence index, start token) per window
    num_skipped: int = 0  # sequences shorter than prefix_len + suffix_len

    def per_sample(self) -> dict:
        """The metric's per-window lists (exact match, positional score, longest common prefix, ROUGE-L)."""
        return extraction_scores(self.predictions, self.references, return_per_sample=True)


def _check_positive(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


def _as_sequences(sequences) -> list[torch.Tensor]:
    if hasattr(sequences, "column_names"):  # datasets.Dataset
        if "input_ids" not in sequences.column_names:
            raise ValueError(f"`sequences` is a Dataset without an `input_ids` column (columns: {sequences.column_names}).")
        sequences = sequences["input_ids"]
    if isinstance(sequences, torch.Tensor):
        sequences = list(sequences) if sequences.dim() == 2 else [sequences]
    out = [as_token_ids(seq, f"sequences[{i}]", dims=(1,)) for i, seq in enumerate(sequences)]
    if not out:
        raise ValueError("`sequences` is empty: give at least one sequence of token ids.")
    return out


def extraction_windows(sequences, prefix_len: int, suffix_len: int, stride: int | None = None):
    """Cut fixed-length windows (prefix + suffix) every `stride` tokens; returns (windows, index, num_skipped)."""
    length = prefix_len + suffix_len
    windows, index, skipped = [], [], 0
    for i, seq in enumerate(_as_sequences(sequences)):
        if len(seq) < length:
            skipped += 1
            continue
        starts = range(0, len(seq) - length + 1, stride) if stride else [0]
        for start in starts:
            windows.append(seq[start : start + length])
            index.append((i, start))
    return windows, index, skipped


def _cache_io(model):
    """transformers renamed `past_key_values` to `cache` (forward kwarg and output field): support both."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return name, lambda out: getattr(out, name)


def _supports_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _teacher_forced(model, windows: torch.Tensor, prefix_len: int, use_cache: bool):
    """Greedy token at every suffix position given the true history, and the forward's output."""
    suffix_len = windows.shape[1] - prefix_len
    kwargs = {"logits_to_keep": suffix_len + 1} if _supports_logits_to_keep(model) else {}
    out = model(input_ids=windows, use_cache=use_cache, **kwargs)
    logits = out.logits[:, -(suffix_len + 1) : -1]
    return logits.argmax(-1), out


def _resume_greedy(model, out, windows, greedy, lcp, prefix_len):
    """Continue greedy decoding of the diverged rows from their divergence point, reusing the forward's cache."""
    batch, length = windows.shape
    suffix_len = length - prefix_len
    predictions = windows[:, prefix_len:].clone()
    rows = torch.nonzero(lcp < suffix_len).flatten()
    if rows.numel() == 0:
        return predictions
    rows = rows[torch.argsort(lcp[rows], stable=True)]  # earliest divergence first: finished rows leave at the end
    start = lcp[rows]
    predictions[rows, start] = greedy[rows, start]
    cache_name, get_cache = _cache_io(model)
    cache = get_cache(out)
    cache.batch_select_indices(rows)
    token, seen = greedy[rows, start], (torch.arange(length, device=windows.device) < (prefix_len + start)[:, None])
    active = rows.numel()
    for step in range(int(suffix_len - 1 - start[0])):
        still = int((start + 1 + step < suffix_len).sum())  # rows that still have suffix positions to fill
        if still < active:
            active = still
            cache.batch_select_indices(torch.arange(active, device=windows.device))
            token, seen = token[:active], seen[:active]
        mask = torch.cat([seen, torch.ones(active, step + 1, dtype=torch.bool, device=windows.device)], dim=1)
        position = (prefix_len + start[:active] + step)[:, None]
        out = model(input_ids=token[:, None], attention_mask=mask.long(), position_ids=position, use_cache=True, **{cache_name: cache})
        cache = get_cache(out)
        token = out.logits[:, -1].argmax(-1)
        predictions[rows[:active], start[:active] + 1 + step] = token
    return predictions


def _generate(model, windows, prefix_len):
    prefix = windows[:, :prefix_len]
    suffix_len = windows.shape[1] - prefix_len
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    out = model.generate(
        input_ids=prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=suffix_len, min_new_tokens=0,
        do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=pad,
    )
    return out[:, prefix_len:]


@torch.inference_mode()
def measure_extraction(
    model,
    sequences,
    prefix_len: int = 32,
    suffix_len: int = 32,
    stride: int | None = None,
    batch_size: int = 64,
    method: str = "auto",
    show_progress: bool = True,
) -> ExtractionResult:
    """Greedy extraction of each window's suffix from its prefix, scored by the `extractable_memorization` metric.

    `sequences`: token id sequences (lists, 1-D tensors, a 2-D tensor) or a `datasets.Dataset` with `input_ids`.
    One window per sequence (its first prefix_len + suffix_len tokens), or one every `stride` tokens; shorter
    sequences are skipped and counted in `num_skipped`. `method`: "auto" (teacher-forced shortcut, greedy resumed
    from the KV cache where it diverges), "prefix" (shortcut only: exact match and longest common prefix are exact,
    predictions stop at the first wrong token, so only those two metrics are reported) or "generate" (plain
    batched greedy `generate`, the reference). Under `accelerate launch` each process scores a share and the
    results are gathered in input order.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = measure_extraction(model, [list(range(20)), [1, 2, 3]], prefix_len=8, suffix_len=8, show_progress=False)
        >>> len(result.predictions), result.num_skipped, sorted(result.metrics)
        (1, 1, ['exact_match', 'longest_common_prefix', 'memorization_score', 'rouge_l'])
    """
    _check_positive("prefix_len", prefix_len)
    _check_positive("suffix_len", suffix_len)
    _check_positive("stride", stride, allow_none=True)
    _check_positive("batch_size", batch_size)
    if method not in EXTRACTION_METHODS:
        raise ValueError(f"`method` must be one of {', '.join(map(repr, EXTRACTION_METHODS))}, got {method!r}.")
    windows, index, skipped = extraction_windows(sequences, prefix_len, suffix_len, stride)
    if not windows:
        raise ValueError(
            f"No sequence in `sequences` has prefix_len + suffix_len = {prefix_len + suffix_len} tokens "
            f"({skipped} skipped): lower `prefix_len` / `suffix_len` or give longer sequences."
        )

    from accelerate import PartialState

    device = next(model.parameters()).device
    state = PartialState(cpu=device.type == "cpu")  # a CPU model under torchrun / accelerate launch: gloo
    was_training = model.training
    model.eval()
    predictions, lcps = [], []
    try:
        with state.split_between_processes(list(range(len(windows)))) as mine:
            batches = range(0, len(mine), batch_size)
            for b in tqdm(batches, desc="extraction", disable=not show_progress or not state.is_local_main_process):
                batch = torch.stack([windows[i] for i in mine[b : b + batch_size]]).to(device)
                suffix = batch[:, prefix_len:]
                if method == "generate":
                    preds = _generate(model, batch, prefix_len)
                    lcp = (preds == suffix).long().cumprod(1).sum(1)
                else:
                    greedy, out = _teacher_forced(model, batch, prefix_len, use_cache=method == "auto")
                    lcp = (greedy == suffix).long().cumprod(1).sum(1)
                    if method == "auto":
                        preds = _resume_greedy(model, out, batch, greedy, lcp, prefix_len)
                    else:  # the greedy continuation is known up to and including its first wrong token
                        preds = [torch.cat([s[:n], g[n : n + 1]]) for s, g, n in zip(suffix, greedy, lcp.tolist())]
                predictions += [p.tolist() for p in preds]
                lcps += lcp.tolist()
    finally:
        model.train(was_training)

    if state.num_processes > 1:
        from accelerate.utils import gather_object

        predictions, lcps = gather_object(predictions), gather_object(lcps)
    references = [w[prefix_len:].tolist() for w in windows]
    metrics = extraction_scores(predictions, references)
    if method == "prefix":
        metrics = {k: metrics[k] for k in ("exact_match", "longest_common_prefix")}
    return ExtractionResult(predictions, references, lcps, metrics, index, skipped)
