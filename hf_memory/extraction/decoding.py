"""How the harness decodes a window's suffix: the true suffix verified in chunks from the KV cache, the way
speculative decoding verifies a draft, with greedy decoding where rows diverge (`verify_and_decode`), and plain
batched `generate` (the reference)."""

from __future__ import annotations

import torch

from .._utils import cache_io, check_integer, supports_logits_to_keep


def _check_chunks(chunks) -> str | int:
    if isinstance(chunks, str) and chunks == "doubling":
        return chunks
    try:
        return check_integer(chunks, "chunks", minimum=1)
    except ValueError:
        raise ValueError(
            f"`chunks` must be 'doubling' or a positive integer (tokens per verification chunk), got {chunks!r}."
        ) from None


def verify_and_decode(
    model: torch.nn.Module,
    windows: torch.Tensor,
    prefix_len: int,
    decode: bool = True,
    chunks: str | int = "doubling",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of each window's prefix, checking the true suffix as speculative decoding checks a draft.

    One forward over the prefixes fills the KV cache and gives the greedy token at the first suffix position. The
    true suffix is then teacher-forced from the cache in chunks of 1, 2, 4, ... tokens while every row reproduces
    it: a fully memorized batch costs about one forward. When a row diverges, it needs greedy decoding from there,
    one forward per token; every row still being verified rides along in those passes (they run anyway), so a batch
    that diverges at once costs what `generate` pays. Cached positions past a row's divergence hold true tokens
    that its greedy path never produced: the attention mask hides them, and every new token gets its true
    `position_ids`. With `decode=False` there is no decoding: a row leaves the batch (`Cache.batch_select_indices`)
    at its first wrong token and the others go on being verified.

    Args:
        model: A causal language model.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`, on the model's device.
        prefix_len: Tokens of each window's prefix; the rest is the suffix.
        decode: Decode every row to the end of the suffix. Without it, only the longest common prefix and the first
            wrong token are computed, and prediction positions after that token hold the true suffix.
        chunks: Tokens per verification chunk: "doubling" (1, 2, 4, ...; close to the best fixed size on memorized
            batches and better than a large one where a window diverges early, see docs/extraction.md) or a
            fixed positive integer.

    Returns:
        `(predictions, longest_common_prefix)`: the greedy continuation of every row, shape `(batch, suffix_len)`,
        and per row how many leading suffix tokens it reproduces, shape `(batch,)`.

    Raises:
        ValueError: If `chunks` is neither "doubling" nor a positive integer.
    """
    chunks = _check_chunks(chunks)
    batch, length = windows.shape
    suffix_len = length - prefix_len
    device = windows.device
    suffix = windows[:, prefix_len:]
    predictions = suffix.clone()
    cache_name, get_cache = cache_io(model)
    last_only = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=windows[:, :prefix_len], use_cache=True, **last_only)
    cache = get_cache(out)
    greedy = out.logits[:, -1:].argmax(-1)  # (rows, width): greedy tokens at suffix positions pos .. pos + width - 1
    rows, pos, size = torch.arange(batch, device=device), 0, 1 if chunks == "doubling" else chunks
    while True:
        width = greedy.shape[1]
        matched = (greedy == suffix[rows, pos : pos + width]).long().cumprod(1).sum(1)
        wrong = matched < width
        if wrong.any():
            predictions[rows[wrong], pos + matched[wrong]] = greedy[wrong, matched[wrong]]
            if decode:  # verified rows resume after their last fed token, the others at their first wrong one
                start = torch.where(wrong, pos + matched, pos + width - 1)
                _resume_greedy(model, cache, rows, start, predictions, prefix_len)
                break
            right = torch.nonzero(~wrong).flatten()
            if right.numel() == 0:
                break
            rows = rows[right]
            cache.batch_select_indices(right)
        pos += width
        if pos == suffix_len:
            break
        width = min(size, suffix_len - pos)
        size = 2 * size if chunks == "doubling" else size
        out = model(input_ids=suffix[rows, pos - 1 : pos - 1 + width], use_cache=True, **{cache_name: cache})
        cache = get_cache(out)
        greedy = out.logits.argmax(-1)
    return predictions, (predictions == suffix).long().cumprod(1).sum(1)


def _resume_greedy(model, cache, rows: torch.Tensor, start: torch.Tensor, predictions: torch.Tensor, prefix_len: int):
    """Greedy decoding of `rows` (the rows of `cache`, in order) after suffix position `start`, writing into
    `predictions`, whose token at `start` each row feeds first. The cache holds the prefix and the fed suffix
    tokens; positions from `prefix_len + start` on are masked."""
    device = predictions.device
    suffix_len = predictions.shape[1]
    if (start != start[0]).any():  # earliest start first: rows that finish first leave from the end
        order = torch.argsort(start, stable=True)
        rows, start = rows[order], start[order]
        cache.batch_select_indices(order)
    cache_name, get_cache = cache_io(model)
    token = predictions[rows, start]
    seen = torch.arange(cache.get_seq_length(), device=device) < (prefix_len + start)[:, None]
    active = rows.numel()
    for step in range(int(suffix_len - 1 - start[0])):
        still = int((start + 1 + step < suffix_len).sum())  # rows that still have suffix positions to fill
        if still < active:
            active = still
            cache.batch_select_indices(torch.arange(active, device=device))
            token, seen = token[:active], seen[:active]
        mask = torch.cat([seen, torch.ones(active, step + 1, dtype=torch.bool, device=device)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=mask.long(),
            position_ids=(prefix_len + start[:active] + step)[:, None],
            use_cache=True,
            **{cache_name: cache},
        )
        cache = get_cache(out)
        token = out.logits[:, -1].argmax(-1)
        predictions[rows[:active], start[:active] + 1 + step] = token


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
