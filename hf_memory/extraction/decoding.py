"""The three ways the harness decodes a window's suffix: teacher-forced argmax, greedy resumed from the KV cache
where it diverges, and plain batched `generate` (the reference)."""

from __future__ import annotations

import torch

from .._utils import cache_io, supports_logits_to_keep


def teacher_forced(model, windows: torch.Tensor, prefix_len: int, use_cache: bool):
    """Greedy token at every suffix position given the true history, and the forward's output."""
    suffix_len = windows.shape[1] - prefix_len
    kwargs = {"logits_to_keep": suffix_len + 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=windows, use_cache=use_cache, **kwargs)
    logits = out.logits[:, -(suffix_len + 1) : -1]
    return logits.argmax(-1), out


def resume_greedy(model, out, windows, greedy, lcp, prefix_len):
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


def generate_suffixes(model, windows, prefix_len):
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
