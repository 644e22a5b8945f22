"""What FastMem memorizes: prompt batches, loss masks, positions, and the paper's context-as-assistant-turn input."""

from __future__ import annotations

import torch

from .._utils import as_token_ids


def prompt_batch(input_ids, attention_mask, device) -> tuple[torch.Tensor, torch.Tensor]:
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


def loss_mask(loss_mask, ids, attention_mask) -> torch.Tensor:
    """Bool mask over targets ids[:, 1:]: which next-token predictions are memorized."""
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


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` computes them from a (left-padded) attention mask."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(~attention_mask, 0)


def context_as_assistant_turn(tokenizer, context: str) -> dict:
    """The paper's memorization input: `context` as an assistant turn of the tokenizer's chat template.

    Returns `input_ids` (1, length) and a `loss_mask` selecting the context tokens and the end-of-turn token after
    them, for `FastMem.memorize(**context_as_assistant_turn(tokenizer, context))`.
    """
    if not context:
        raise ValueError("`context` is empty: there is nothing to memorize.")
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": context}], tokenize=False)
    start = text.rindex(context)
    end = start + len(context)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = encoded["offset_mapping"]
    mask = [s < end and e > start for s, e in spans]
    after = [i for i, (s, _) in enumerate(spans) if s >= end]
    if after:  # the end-of-turn token closes the memorized turn
        mask[after[0]] = True
    return {"input_ids": torch.tensor([encoded["input_ids"]]), "loss_mask": torch.tensor([mask])}
