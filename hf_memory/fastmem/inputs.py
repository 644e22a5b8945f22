"""What FastMem memorizes: prompt batches, loss masks, positions, and the paper's context-as-assistant-turn input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .._utils import as_token_ids


if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase


def prompt_batch(
    input_ids: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and batch the prompts to memorize.

    Args:
        input_ids: One prompt (1-D) or a left-padded batch (2-D) of token ids: a tensor, a (nested) list or a numpy
            array.
        attention_mask: 1 (or True) on real tokens and 0 on padding, with the shape of `input_ids`; None marks
            every token as real.
        device: The device to put both tensors on.

    Returns:
        `(ids, mask)`: int64 token ids and a bool attention mask, both (batch, length).

    Raises:
        ValueError: If `input_ids` is not 1-D or 2-D integer ids, the mask's shape differs, or a prompt has fewer than
            2 real tokens.
    """
    ids = as_token_ids(input_ids, "input_ids")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (length,) or (batch, length), got {tuple(ids.shape)}.")
    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        mask = torch.as_tensor(attention_mask).bool()
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(mask.shape)}."
            )
    if ids.shape[1] < 2 or (mask.sum(1) < 2).any():
        raise ValueError(
            "`input_ids` is empty or a single token: FastMem needs at least 2 tokens per prompt to memorize."
        )
    return ids.to(device), mask.to(device)


def target_mask(
    loss_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Bool mask over targets ids[:, 1:]: which next-token predictions are memorized.

    Args:
        loss_mask: Which tokens of `ids` are memorized, with the shape of `ids` (1-D for one prompt); None selects
            every real token. The first token of a prompt and padding are never targets.
        ids: (batch, length) token ids from `prompt_batch`.
        attention_mask: (batch, length) bool attention mask from `prompt_batch`.

    Returns:
        A (batch, length - 1) bool mask: True where token i + 1 is a target predicted from token i.

    Raises:
        ValueError: If `loss_mask` has another shape, or selects no target in some prompt.
    """
    if loss_mask is None:
        mask = attention_mask.clone()
    else:
        mask = torch.as_tensor(loss_mask, device=ids.device)
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(
                f"`loss_mask` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(mask.shape)}."
            )
        mask = mask.bool() & attention_mask
    mask = mask[:, 1:] & attention_mask[:, :-1]  # token i is a target when it and the token before it are real
    if not mask.any(dim=1).all():
        raise ValueError("`loss_mask` selects no token after the first in some prompt: nothing to memorize there.")
    return mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` computes them from a (left-padded) attention mask.

    Args:
        attention_mask: (batch, length) bool mask, True on real tokens.

    Returns:
        (batch, length) int64 positions counting from 0 at each prompt's first real token; 0 on padding.
    """
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(~attention_mask, 0)


def context_as_assistant_turn(tokenizer: PreTrainedTokenizerBase, context: str) -> dict[str, torch.Tensor]:
    """The paper's memorization input: `context` as an assistant turn of the tokenizer's chat template.

    The result goes straight to `FastMem.memorize(**context_as_assistant_turn(tokenizer, context))`.

    Args:
        tokenizer: A fast tokenizer (it must return offset mappings) with a chat template.
        context: The text to memorize; the chat template must keep it verbatim.

    Returns:
        `{"input_ids": ..., "loss_mask": ...}`: the token ids of the templated turn, (1, length), and a bool mask of
        the same shape selecting the context tokens and the end-of-turn token after them.

    Raises:
        ValueError: If `context` is empty, or the templated text does not contain it verbatim.
    """
    if not isinstance(context, str) or not context:
        raise ValueError(f"`context` must be a non-empty string: there is nothing to memorize, got {context!r:.80}.")
    # Where the template puts the content, found with a marker rather than by searching for the context (a short
    # context such as "end" also occurs inside the template's own tokens, e.g. "<|im_end|>").
    marker = "\u2063hf-memory-context\u2063"
    probe = tokenizer.apply_chat_template([{"role": "assistant", "content": marker}], tokenize=False)
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": context}], tokenize=False)
    start = probe.find(marker)
    end = start + len(context)
    if (
        start < 0
        or text[:start] != probe[:start]
        or text[start:end] != context
        or text[end:] != probe[start + len(marker) :]
    ):
        raise ValueError(
            "The tokenizer's chat template does not keep the assistant content verbatim (it trims or rewrites it), "
            "so the context tokens cannot be located: pass `input_ids` and `loss_mask` to FastMem yourself."
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = encoded["offset_mapping"]
    mask = [s < end and e > start for s, e in spans]
    after = [i for i, (s, _) in enumerate(spans) if s >= end]
    if after:  # the end-of-turn token closes the memorized turn
        mask[after[0]] = True
    return {"input_ids": torch.tensor([encoded["input_ids"]]), "loss_mask": torch.tensor([mask])}
