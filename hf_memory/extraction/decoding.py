"""The three ways the harness decodes a window's suffix: teacher-forced argmax, greedy resumed from the KV cache
where it diverges, and plain batched `generate` (the reference)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._utils import cache_io, supports_logits_to_keep


if TYPE_CHECKING:
    from transformers.utils import ModelOutput


def teacher_forced(
    model: torch.nn.Module, windows: torch.Tensor, prefix_len: int, use_cache: bool
) -> tuple[torch.Tensor, ModelOutput]:
    """Greedy token at every suffix position given the true history, and the forward's output.

    Only the logits of the last `suffix_len + 1` positions are computed when the model takes `logits_to_keep`.

    Args:
        model: A causal language model.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`, on the model's device.
        prefix_len: Tokens of each window's prefix; the rest is the suffix.
        use_cache: Keep the KV cache in the output (needed by `resume_greedy`).

    Returns:
        `(greedy, output)`: the argmax token for each suffix position, shape `(batch, suffix_len)`, and the
        model's forward output (with its cache when `use_cache`).
    """
    suffix_len = windows.shape[1] - prefix_len
    kwargs = {"logits_to_keep": suffix_len + 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=windows, use_cache=use_cache, **kwargs)
    logits = out.logits[:, -(suffix_len + 1) : -1]
    return logits.argmax(-1), out


def resume_greedy(
    model: torch.nn.Module,
    out: ModelOutput,
    windows: torch.Tensor,
    greedy: torch.Tensor,
    lcp: torch.Tensor,
    prefix_len: int,
) -> torch.Tensor:
    """Continue greedy decoding of the diverged rows from their divergence point, reusing the forward's cache.

    Cache entries past a row's divergence point hold the true tokens, not the generated ones: the attention mask
    hides them, so each step sees the prefix, the correct part of the suffix and the tokens generated so far.

    Args:
        model: The model that produced `out`.
        out: The output of `teacher_forced(..., use_cache=True)` on `windows`; its cache is modified in place.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`.
        greedy: The teacher-forced argmax per suffix position, shape `(batch, suffix_len)`.
        lcp: Per row, the number of leading suffix tokens `greedy` gets right, shape `(batch,)`.
        prefix_len: Tokens of each window's prefix.

    Returns:
        The greedy continuation of every row, shape `(batch, suffix_len)`: the true suffix for rows that never
        diverge, decoded tokens from the divergence point on for the others.
    """
    batch, length = windows.shape
    suffix_len = length - prefix_len
    predictions = windows[:, prefix_len:].clone()
    rows = torch.nonzero(lcp < suffix_len).flatten()
    if rows.numel() == 0:
        return predictions
    rows = rows[torch.argsort(lcp[rows], stable=True)]  # earliest divergence first: finished rows leave at the end
    start = lcp[rows]
    predictions[rows, start] = greedy[rows, start]
    cache_name, get_cache = cache_io(model)
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
        out = model(
            input_ids=token[:, None],
            attention_mask=mask.long(),
            position_ids=position,
            use_cache=True,
            **{cache_name: cache},
        )
        cache = get_cache(out)
        token = out.logits[:, -1].argmax(-1)
        predictions[rows[:active], start[:active] + 1 + step] = token
    return predictions


def generate_suffixes(model: torch.nn.Module, windows: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Greedy continuation of each window's prefix with plain batched `generate` (the reference decoding).

    Exactly `suffix_len` tokens are generated for every row: end-of-sequence tokens do not stop generation.

    Args:
        model: A causal language model with `generate`.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`; only the prefixes are read.
        prefix_len: Tokens of each window's prefix.

    Returns:
        The generated tokens, shape `(batch, suffix_len)`.
    """
    prefix = windows[:, :prefix_len]
    suffix_len = windows.shape[1] - prefix_len
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    out = model.generate(
        input_ids=prefix,
        attention_mask=torch.ones_like(prefix),
        max_new_tokens=suffix_len,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        pad_token_id=pad,
    )
    return out[:, prefix_len:]
