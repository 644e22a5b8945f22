"""From a fact's prompt and answer texts to token ids: where the prompt ends and the value starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_prompt_target(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its answer, cut from the encoding of the whole text `prompt + target`.

    The whole text is encoded once (with the tokenizer's special tokens, e.g. a leading BOS; a trailing EOS is
    dropped) and split where the answer starts, so training rows and `fact_capacity` see exactly the tokens a
    tokenizer gives the full sentence. A slow tokenizer (no offsets) encodes the two parts separately.

    Args:
        tokenizer: Any transformers tokenizer.
        prompt: The prompt text.
        target: The answer, usually with its leading space (" Kavo").

    Returns:
        `(prompt_ids, target_ids)`, both non-empty.

    Raises:
        ValueError: If the tokenizer merges the end of the prompt and the start of the answer into one token, or
            either part encodes to no token.
    """
    return encode_facts(tokenizer, [prompt], [target])[0]


def encode_facts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """`encode_prompt_target` for many facts at once (one batched tokenizer call).

    Args:
        tokenizer: Any transformers tokenizer.
        prompts: The prompt texts.
        targets: The answers, one per prompt.

    Returns:
        `(prompt_ids, target_ids)` per fact.

    Raises:
        ValueError: As `encode_prompt_target`, naming the fact.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets.")
    for prompt, target in zip(prompts, targets):
        if not isinstance(prompt, str) or not isinstance(target, str) or not prompt or not target.strip():
            raise ValueError(f"A fact needs a non-empty prompt and target string, got {prompt!r} and {target!r}.")
    if not prompts:
        return []
    out = []
    if getattr(tokenizer, "is_fast", False):
        texts = [p + t for p, t in zip(prompts, targets)]
        enc = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        for n, prompt in enumerate(prompts):
            ids, offsets, special = enc["input_ids"][n], enc["offset_mapping"][n], enc["special_tokens_mask"][n]
            boundary = len(prompt)
            prompt_ids: list[int] = []
            target_ids: list[int] = []
            for token, (start, end), is_special in zip(ids, offsets, special):
                if is_special:
                    if not target_ids:
                        prompt_ids.append(token)  # leading special tokens (BOS) belong to the prompt
                    continue
                if start < boundary < end:
                    raise ValueError(
                        f"The tokenizer merges the end of the prompt {prompt!r} with the answer {targets[n]!r} into "
                        "one token: the value cannot be scored on its own. Start the target with a space."
                    )
                if target_ids or (start >= boundary and end > start):
                    target_ids.append(token)
                else:
                    prompt_ids.append(token)
            out.append((prompt_ids, target_ids))
    else:
        for prompt, target in zip(prompts, targets):
            enc = tokenizer(prompt, return_special_tokens_mask=True)
            ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
            while ids and special[-1]:  # a trailing EOS
                ids, special = ids[:-1], special[:-1]
            out.append((ids, list(tokenizer(target, add_special_tokens=False)["input_ids"])))
    for (prompt_ids, target_ids), prompt, target in zip(out, prompts, targets):
        if not prompt_ids or not target_ids:
            raise ValueError(
                f"The prompt {prompt!r} or the target {target!r} encodes to no token with this tokenizer."
            )
    return out
