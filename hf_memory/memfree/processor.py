"""`MemFreeLogitsProcessor`: MemFree decoding (Ippolito et al., INLG 2023) as a transformers `LogitsProcessor`.

At each step, every token that would complete an indexed n-gram after a row's last n - 1 tokens gets the score
-inf, so no n-gram of the indexed corpus is ever generated (beam search, sampling and greedy alike: the processor
runs before transformers' sampling warpers and covers the whole vocabulary). Only the last n - 1 tokens of each row
are read, so the cost per step does not grow with the length of the text.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
from transformers import LogitsProcessor

from .._utils import check_choice
from .index import NgramIndex


MEMFREE_FALLBACKS = ("unchanged", "error")


class MemFreeLogitsProcessor(LogitsProcessor):
    """Forbid every next token that would complete an n-gram of the index (its score set to -inf).

    Pass it to `model.generate(..., logits_processor=[guard])` or a text-generation pipeline's call. Rows are
    independent (a batch, beams, several return sequences); the n-grams checked include the prompt's last tokens,
    so a prompt taken from the corpus cannot be continued verbatim. A row with fewer than n - 1 tokens so far is not
    checked. With left padding, a row whose prompt is shorter than n - 1 tokens is checked against a context that
    includes pad tokens for its first steps.

    When every token a row could still take (every finite score) is forbidden, which needs a tiny vocabulary or an
    over-full filter, the fallback decides: "unchanged" leaves that row's scores as they came for this step (the
    model may then complete an indexed n-gram; counted in `num_fallbacks`, with a warning), "error" raises a
    `RuntimeError`.

    Args:
        index: The `NgramIndex` of the text that must not come out verbatim.
        tokenizer: The model's tokenizer: required when the index recorded one, and refused if it is another.
        fallback: "unchanged" or "error" (see above).

    Attributes:
        num_steps: Calls so far (decoding steps).
        num_masked: (row, token) pairs set to -inf so far.
        num_fallbacks: Rows left unchanged because every token they could take was forbidden.

    Raises:
        TypeError: If `index` is not an `NgramIndex`.
        ValueError: If `fallback` is unknown, `tokenizer` is missing for an index that recorded one, or is not the
            tokenizer the index was built with.

    Examples:
        >>> index = NgramIndex.build([[5, 6, 7, 8, 9]], n=3, mode="exact", vocab_size=16, show_progress=False)
        >>> guard = MemFreeLogitsProcessor(index)
        >>> scores = guard(torch.tensor([[1, 6, 7]]), torch.zeros(1, 16))
        >>> torch.isinf(scores).nonzero().tolist()  # after 6, 7 the token 8 would complete the 3-gram 6 7 8
        [[0, 8]]
    """

    def __init__(self, index: NgramIndex, tokenizer=None, fallback: str = "unchanged"):
        if not isinstance(index, NgramIndex):
            raise TypeError(f"`index` must be an NgramIndex, got {type(index).__name__}.")
        check_choice(fallback, "fallback", MEMFREE_FALLBACKS)
        if tokenizer is None and index.tokenizer_fingerprint is not None:
            raise ValueError(
                "This n-gram index records the tokenizer it was built with: pass the model's tokenizer "
                "(`tokenizer=`) so the guard can check that the token ids mean the same text."
            )
        if tokenizer is not None:
            index.check_tokenizer(tokenizer)
        self.index = index
        self.fallback = fallback
        self.num_steps = 0
        self.num_masked = 0
        self.num_fallbacks = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return `scores` with the forbidden tokens of each row set to -inf.

        Args:
            input_ids: The tokens so far, shape (rows, length).
            scores: The next-token scores, shape (rows, vocabulary).
        """
        width = self.index.n - 1
        with self._lock:
            self.num_steps += 1
        if input_ids.shape[-1] < width:
            return scores
        contexts = input_ids[:, -width:].cpu().numpy()  # generate's ids: a 2-D integer tensor, no check needed
        rows, tokens = self.index._forbidden(contexts, min(self.index.vocab_size, scores.shape[-1]))
        if not len(rows):
            return scores
        device = scores.device
        rows_t, tokens_t = torch.from_numpy(rows).to(device), torch.from_numpy(tokens).to(device)
        guarded = scores.clone()  # O(forbidden) writes, no |V|-wide mask: the cost stays small at any batch size
        guarded[rows_t, tokens_t] = float("-inf")
        # a row is stuck when the guard removed every token it could take: its best score fell to -inf
        stuck = torch.nonzero(torch.isneginf(guarded.amax(-1)) & ~torch.isneginf(scores.amax(-1))).flatten()
        masked = len(rows)
        if len(stuck):
            if self.fallback == "error":
                raise RuntimeError(
                    f"MemFree: every token that row(s) {stuck.tolist()} could take next completes an indexed "
                    "n-gram (fallback='error')."
                )
            guarded[stuck] = scores[stuck]
            masked -= int(np.isin(rows, stuck.cpu().numpy()).sum())
            warnings.warn(
                f"MemFree: every token row(s) {stuck.tolist()} could take completes an indexed n-gram; those rows "
                "were left unchanged for this step (fallback='unchanged').",
                UserWarning,
                stacklevel=2,
            )
        with self._lock:
            self.num_masked += masked
            self.num_fallbacks += len(stuck)
        return guarded
