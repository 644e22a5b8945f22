"""How the harness decodes a window's suffix: the true suffix verified in chunks from the KV cache, the way
speculative decoding verifies a draft, with greedy decoding where rows diverge (`verify_and_decode`), and plain
batched `generate` (the reference)."""

from __future__ import annotations

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer

from .._utils import (
    attention_window,
    cache_io,
    check_bool,
    check_choice,
    check_integer,
    check_vocabulary,
    supports_logits_to_keep,
)


def _check_windows(windows, prefix_len, model) -> int:
    """Refuse anything but a non-empty 2-D integer tensor of token ids of `model`'s vocabulary, with at least one
    suffix token; return `prefix_len` as an int."""
    if not isinstance(windows, torch.Tensor):
        raise ValueError(
            f"`windows` must be a 2-D tensor of token ids, shape (batch, prefix_len + suffix_len), got "
            f"{type(windows).__name__}."
        )
    if windows.dim() != 2 or windows.dtype == torch.bool or windows.is_floating_point() or windows.is_complex():
        raise ValueError(
            "`windows` must be a 2-D tensor of integer token ids, shape (batch, prefix_len + suffix_len), got a "
            f"{windows.dim()}-D tensor of dtype {windows.dtype}."
        )
    if windows.shape[0] == 0:
        raise ValueError("`windows` holds no window (its first dimension is 0).")
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    if prefix_len >= windows.shape[1]:
        raise ValueError(
            f"`prefix_len` must be smaller than the windows' length {windows.shape[1]} (at least one suffix token), "
            f"got {prefix_len}."
        )
    if int(windows.min()) < 0:
        raise ValueError(f"`windows` must hold token ids >= 0, got {int(windows.min())}.")
    check_vocabulary(windows, model, "windows")
    return prefix_len


def _plain(cache) -> bool:
    """Whether `cache` is a `DynamicCache` of full-attention `DynamicLayer`s (no sliding window, no recurrent or
    static layer)."""
    layers = getattr(cache, "layers", None)
    return type(cache) is DynamicCache and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _holes_hidden(model, cache, prefix_len: int, suffix_len: int) -> bool:
    """Whether cached tokens that the attention mask hides ("holes": true suffix tokens fed past a row's divergence,
    or padding) leave a row's attention exactly as without them.

    They do in a plain cache of full-attention layers. A sliding-window layer keeps only its last slots, so masked
    tokens push real context out of the window; a recurrent layer absorbs them into its state; and a local window
    or attention chunk (`attention_window`: sliding windows, GPT-Neo's local layers, Llama 4's chunks, ...) is
    counted on cache slots, which holes shift: up to `suffix_len` of them come on top of the `prefix_len +
    suffix_len` tokens of a window.
    """
    if not _plain(cache):
        return False
    window = attention_window(model)
    return window is None or prefix_len + 2 * suffix_len < window


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

    Masked cached tokens are exact only in a plain cache of full-attention layers: a sliding-window (or recurrent,
    or chunked-attention) layer would let them push real context out of its window. On such a model, or when the
    window plus those tokens (`prefix_len + 2 * suffix_len`) reaches a local window or attention chunk of the
    config (`sliding_window`, GPT-Neo's `window_size`, `attention_chunk_size`, ...), the suffix is
    verified one token at a time whatever `chunks` says (with decoding; `decode=False` leaves no masked token): no
    row then holds a masked token, and the result is still `generate`'s, at `generate`'s cost.

    Args:
        model: A causal language model.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`, on the model's device.
        prefix_len: Tokens of each window's prefix; the rest is the suffix.
        decode: Decode every row to the end of the suffix. Without it, only the longest common prefix and the first
            wrong token are computed, and prediction positions after that token hold the true suffix.
        chunks: Tokens per verification chunk: "doubling" (1, 2, 4, ...; close to the best fixed size on memorized
            batches and better than a large one where a window diverges early, see docs/extraction.md) or a
            fixed positive integer. Sliding-window models are verified one token at a time (above).

    Returns:
        `(predictions, longest_common_prefix)`: the greedy continuation of every row, shape `(batch, suffix_len)`,
        and per row how many leading suffix tokens it reproduces, shape `(batch,)`.

    Raises:
        ValueError: If `windows` is not a non-empty 2-D integer tensor of ids in the model's vocabulary,
            `prefix_len` is not an integer from 1 to the windows' length - 1, `decode` is not a bool, or `chunks`
            is neither "doubling" nor a positive integer.
    """
    prefix_len = _check_windows(windows, prefix_len, model)
    decode = check_bool(decode, "decode")
    chunks = _check_chunks(chunks)
    predictions = _verify(model, windows, prefix_len, chunks, decode)
    return predictions, _matched_prefix(predictions, windows[:, prefix_len:])


def _matched_prefix(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per row, how many tokens `predictions` gets right before its first mistake against `references`."""
    return (predictions == references).long().cumprod(1).sum(1)


def _verify(model, windows: torch.Tensor, prefix_len: int, chunks: str | int, decode: bool, park=None) -> torch.Tensor:
    """The loop of `verify_and_decode`, returning the predictions. Where rows diverge, `park(rows, start, cache,
    local, verified, chunks_left)` (if given) may take them (returning True: they leave the batch, their first wrong
    token written); otherwise they are decoded in the batch (`decode`) or leave it. `verified` is how many suffix
    tokens the other rows have reproduced, `chunks_left` how many more verification passes they need if they keep
    matching."""
    batch, length = windows.shape
    suffix_len = length - prefix_len
    device = windows.device
    suffix = windows[:, prefix_len:]
    predictions = suffix.clone()
    cache_name, get_cache = cache_io(model)
    last_only = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=windows[:, :prefix_len], use_cache=True, **last_only)
    cache = get_cache(out)
    if decode and not _holes_hidden(model, cache, prefix_len, suffix_len):
        chunks, park = 1, None  # one token per chunk, no merged caches: no row ever holds a masked token
    greedy = out.logits[:, -1:].argmax(-1)  # (rows, width): greedy tokens at suffix positions pos .. pos + width - 1
    del out  # its logits would stay alive through the next forward (as `generate` drops its outputs)
    rows, pos, size = torch.arange(batch, device=device), 0, 1 if chunks == "doubling" else chunks
    while True:
        width = greedy.shape[1]
        matched = _matched_prefix(greedy, suffix[rows, pos : pos + width])
        wrong = matched < width
        if wrong.any():
            predictions[rows[wrong], pos + matched[wrong]] = greedy[wrong, matched[wrong]]
            parked = park is not None and park(
                rows[wrong],
                (pos + matched)[wrong],
                cache,
                torch.nonzero(wrong).flatten(),
                pos + width,
                _chunks_left(pos + width, size, suffix_len, chunks == "doubling"),
            )
            if (
                decode and not parked
            ):  # verified rows resume after their last fed token, the others at their first wrong one
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
        del out
    return predictions


def _chunks_left(verified: int, size: int, suffix_len: int, doubling: bool) -> int:
    """Verification passes still to make after `verified` suffix tokens, the next chunk `size` tokens wide."""
    passes = 0
    while verified < suffix_len:
        verified += min(size, suffix_len - verified)
        size, passes = 2 * size if doubling else size, passes + 1
    return passes


class Regrouper:
    """`verify_and_decode` over a stream of batches, with the diverged rows of several batches decoded together.

    Within one batch, a row that diverges needs one forward per remaining token, and the rows still matching ride
    along in those passes: a half-memorized batch costs what `generate` pays. Across batches that cost can be
    shared: the batch is only verified (a row leaves as soon as it diverges), the cache rows of the diverged
    windows are parked, and greedy decoding runs once `batch_size` parked rows have gathered, from their caches
    (padded to one length, the padding masked like every position past a row's divergence). A memorized window
    then costs about its share of one forward, a diverged one its share of `generate`'s passes, whatever the
    windows next to it do.

    Parking costs the verification passes of the rows that still match, which pay only if enough of them turn out
    memorized: on text the model has not memorized they diverge a few tokens later and need their decoding passes
    anyway. So with `regroup="auto"`, at a batch's first divergence its rows are parked only if the decoding passes
    that the expected memorized rows would free (their share of a decoding batch) outnumber the verification passes
    left, the expected count read from the batches already done (how many of the rows that reproduced as many
    tokens went on to the end; none before the first batch is done). Otherwise the batch is decoded where it is,
    with exactly `generate`'s passes when a row diverges at its first suffix token.

    Batches come back complete and in the order they were submitted. At most `max_lag` batches wait for their
    parked rows; parked caches hold at most about `2 * batch_size` rows. A model whose cache is not a plain
    `DynamicCache` of full-attention layers (sliding windows, static or recurrent layers), or whose local window
    or attention chunk (see `verify_and_decode`) the window could reach, is decoded batch by batch by `verify_and_decode`, one token per
    verification chunk: exact, at `generate`'s cost.

    Args:
        model: A causal language model.
        prefix_len: Tokens of each window's prefix.
        batch_size: Rows per decoding batch.
        chunks: The verification schedule, as in `verify_and_decode`.
        max_lag: Submitted batches that may wait for their parked rows before those are decoded in a smaller batch.
        regroup: When diverged rows are parked: "auto" (where the estimate above expects it to pay), "always" (every
            batch, except one that diverges whole while nothing is parked) or "never" (every batch decoded where
            it is, as `verify_and_decode` does).

    Raises:
        ValueError: If `prefix_len`, `batch_size` or `max_lag` is not a positive integer, `chunks` is neither
            "doubling" nor a positive integer, or `regroup` is not "auto", "always" or "never".
    """

    def __init__(
        self,
        model,
        prefix_len: int,
        batch_size: int,
        chunks: str | int = "doubling",
        max_lag: int = 4,
        regroup: str = "auto",
    ):
        self.model = model
        self.prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.chunks = _check_chunks(chunks)
        self.max_lag = check_integer(max_lag, "max_lag", minimum=1)
        self.regroup = check_choice(regroup, "regroup", ("auto", "always", "never"))
        self._length = None  # tokens per window, set by the first batch
        self._pending = []  # entries of `submit`, in submission order
        self._parked = []  # segments: [pending entry, row indices, starts, per-layer (keys, values)]
        self._parked_rows = 0
        self._reached = []  # per suffix position j: rows of finished batches that reproduced at least j tokens

    def submit(self, key, windows: torch.Tensor) -> list[tuple[object, torch.Tensor, torch.Tensor]]:
        """Verify one batch of windows and return every batch completed so far, in order.

        Args:
            key: Anything; handed back with the batch's results.
            windows: Token ids, shape `(batch, prefix_len + suffix_len)`, on the model's device.

        Returns:
            A list of `(key, predictions, longest_common_prefix)` for the batches now complete (possibly empty).

        Raises:
            ValueError: If `windows` is not a non-empty 2-D integer tensor of ids in the model's vocabulary, longer
                than `prefix_len`, or its windows differ in length from those of earlier batches.
        """
        _check_windows(windows, self.prefix_len, self.model)
        if self._length is not None and windows.shape[1] != self._length:
            raise ValueError(
                f"`windows` holds windows of {windows.shape[1]} tokens, but earlier batches held {self._length}: "
                "every batch of one Regrouper must have the same prefix_len + suffix_len."
            )
        self._length = windows.shape[1]
        # [key, suffix, predictions, rows still to decode, whether the batch parks, longest common prefixes]
        entry = [key, windows[:, self.prefix_len :], None, 0, None, None]
        self._pending.append(entry)
        entry[2] = _verify(
            self.model, windows, self.prefix_len, self.chunks, decode=True, park=lambda *seg: self._park(entry, *seg)
        )
        self._count_reached(entry)
        while self._parked_rows >= self.batch_size:
            self._decode(self.batch_size)
        while len(self._pending) > self.max_lag and self._pending[0][3]:
            self._decode(min(self.batch_size, self._parked_rows))
        return self._complete()

    def finish(self) -> list[tuple[object, torch.Tensor, torch.Tensor]]:
        """Decode every parked row and return the remaining batches, in order.

        Returns:
            A list of `(key, predictions, longest_common_prefix)`.
        """
        while self._parked_rows:
            self._decode(min(self.batch_size, self._parked_rows))
        return self._complete()

    def _count_reached(self, entry) -> None:
        """Add the longest common prefixes of `entry`'s rows (final once verified: a parked row's first wrong token
        is written) to the counts that `_worth_parking` reads."""
        suffix = entry[1]
        entry[5] = lcp = _matched_prefix(entry[2], suffix)
        counts = torch.bincount(lcp, minlength=suffix.shape[1] + 1).flip(0).cumsum(0).flip(0).tolist()
        self._reached = [a + b for a, b in zip(self._reached, counts)] if self._reached else counts

    def _worth_parking(self, right: int, verified: int, first_wrong: int, chunks_left: int) -> bool:
        """Whether parking a batch's diverged rows and verifying its `right` other rows (which reproduced
        `verified` suffix tokens) is expected to cost fewer passes than decoding the whole batch where it is.

        Decoding where it is makes one pass per token after the first wrong one. Parking makes the verification
        passes left, plus the diverged rows' share of the same decoding passes in a full batch: it saves the
        shares of the rows that turn out memorized. Their expected count is `right` times the share of memorized
        rows among the earlier rows that reproduced `verified` tokens (one pseudo-row that did not go on, so that
        nothing is parked before there is evidence)."""
        suffix_len = self._length - self.prefix_len
        reached = self._reached
        memorized = right * reached[suffix_len] / (reached[verified] + 1) if reached else 0.0
        decoding_passes = suffix_len - 1 - first_wrong
        return decoding_passes * memorized / self.batch_size > chunks_left + 1  # + 1: the parking's bookkeeping

    def _park(self, entry, rows, start, cache, local, verified, chunks_left) -> bool:
        """Keep the diverged rows `rows` of `entry`'s batch (rows `local` of `cache`) for later decoding; False if
        they are better decoded in the batch (`_worth_parking`, decided at the batch's first divergence) or the
        cache cannot be regrouped (then the caller decodes in the batch). `_verify` parks only plain caches whose
        masked slots are exact (`_holes_hidden`)."""
        layers = cache.layers
        if entry[4] is None:  # the batch's first divergence decides for the batch
            right = layers[0].keys.shape[0] - local.numel()
            entry[4] = self.regroup == "always" or (
                self.regroup == "auto" and self._worth_parking(right, verified, int(start.min()), chunks_left)
            )
        if not entry[4]:
            return False
        keep = start < entry[1].shape[1] - 1  # a row wrong at its last position has nothing left to decode
        rows, start, local = rows[keep], start[keep], local[keep]
        whole = local.numel() == layers[0].keys.shape[0]  # every row of the cache, in order
        if whole and not self._parked_rows and rows.numel() >= self.batch_size:
            return False  # a full batch that diverges at once: decoded where it is, nothing to share
        if rows.numel():
            kv = [
                (layer.keys, layer.values) if whole else (layer.keys[local], layer.values[local]) for layer in layers
            ]
            self._parked.append([entry, rows, start, kv])
            self._parked_rows += rows.numel()
            entry[3] += rows.numel()
        return True

    def _decode(self, count: int) -> None:
        """Greedy decoding of the first `count` parked rows, written into their batches' predictions."""
        taken, need = [], count
        while need:
            entry, rows, start, kv = self._parked[0]
            if rows.numel() <= need:
                taken.append(self._parked.pop(0))
                need -= rows.numel()
            else:  # split the segment: its first `need` rows now, the rest stay parked
                taken.append([entry, rows[:need], start[:need], [(k[:need], v[:need]) for k, v in kv]])
                self._parked[0] = [entry, rows[need:], start[need:], [(k[need:], v[need:]) for k, v in kv]]
                need = 0
        self._parked_rows -= count
        length = max(seg[3][0][0].shape[-2] for seg in taken)

        def merged(i: int, j: int) -> torch.Tensor:  # layer i's keys (j = 0) or values (j = 1), padded to `length`
            parts = [seg[3][i][j] for seg in taken]
            parts = [
                p if p.shape[-2] == length else torch.nn.functional.pad(p, (0, 0, 0, length - p.shape[-2]))
                for p in parts
            ]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        cache = DynamicCache([(merged(i, 0), merged(i, 1)) for i in range(len(taken[0][3]))])
        start = torch.cat([seg[2] for seg in taken])
        predictions = torch.cat([seg[0][2][seg[1]] for seg in taken])  # each row's first wrong token at `start`
        local = torch.arange(count, device=start.device)
        _resume_greedy(self.model, cache, local, start, predictions, self.prefix_len)
        offset = 0
        for entry, rows, _, _ in taken:
            entry[2][rows] = predictions[offset : offset + rows.numel()]
            entry[3] -= rows.numel()
            offset += rows.numel()

    def _complete(self) -> list[tuple[object, torch.Tensor, torch.Tensor]]:
        done = []
        while self._pending and not self._pending[0][3]:
            key, _, predictions, _, _, lcp = self._pending.pop(0)
            done.append((key, predictions, lcp))
        return done


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
        del out
        predictions[rows[:active], start[:active] + 1 + step] = token


def _plain_greedy(model, max_new_tokens: int, pad_token_id: int) -> dict:
    """`generate` keyword arguments for plain greedy decoding of exactly `max_new_tokens` tokens, whatever the
    model's own `generation_config` says.

    `generate` fills every setting its caller leaves unset (None) from `model.generation_config`, even with a
    `generation_config=` argument, and many logits processors are off only when their setting is None
    (`suppress_tokens`, `forced_eos_token_id`, `bad_words_ids`, `sequence_bias`, ...). Only keyword arguments
    override a setting with None. So every setting in which the model's config differs from a fresh
    `GenerationConfig` is passed back at its global default: no processor, stopping rule or sampling setting of the
    model applies.
    """
    fresh = GenerationConfig()
    neutral = fresh.to_dict()
    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()
    kwargs = {}
    own = getattr(model, "generation_config", None)
    if isinstance(own, GenerationConfig):
        for key, value in own.to_dict().items():
            if key.startswith("_") or key == "transformers_version" or key not in neutral:
                continue
            if value != neutral[key]:
                kwargs[key] = defaults.get(key, neutral[key])
    return kwargs | {
        "max_length": None,  # the model's own would only be overridden by max_new_tokens, with a warning
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": False,
        "num_beams": 1,
        "num_return_sequences": 1,
        "eos_token_id": None,
        "pad_token_id": pad_token_id,
        "use_cache": True,
    }


def generate_suffixes(
    model: torch.nn.Module, windows: torch.Tensor, prefix_len: int, logits_processor=None
) -> torch.Tensor:
    """Greedy continuation of each window's prefix with plain batched `generate` (the reference decoding).

    Exactly `suffix_len` tokens are generated for every row: end-of-sequence tokens do not stop generation. The
    model's own `generation_config` (a repetition penalty, suppressed tokens, forced or stop tokens, sampling) is
    ignored: this is plain greedy decoding, as `verify_and_decode` computes it.

    Args:
        model: A causal language model with `generate`.
        windows: Token ids, shape `(batch, prefix_len + suffix_len)`; only the prefixes are read.
        prefix_len: Tokens of each window's prefix.
        logits_processor: A `LogitsProcessorList` applied at every step (a decoding guard), or None.

    Returns:
        The generated tokens, shape `(batch, suffix_len)`.

    Raises:
        ValueError: If `windows` is not a non-empty 2-D integer tensor of ids in the model's vocabulary, or
            `prefix_len` is not an integer from 1 to the windows' length - 1.
    """
    prefix_len = _check_windows(windows, prefix_len, model)
    prefix = windows[:, :prefix_len]
    suffix_len = windows.shape[1] - prefix_len
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    extra = {} if logits_processor is None else {"logits_processor": logits_processor}
    out = model.generate(
        input_ids=prefix, attention_mask=torch.ones_like(prefix), **_plain_greedy(model, suffix_len, pad), **extra
    )
    return out[:, prefix_len:]
