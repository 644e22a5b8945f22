"""Fact capacity: how many facts a model knows, by greedy exact match of the value, at one forward per batch.

Greedy decoding from a prompt produces the value exactly iff at every value position the argmax of the logits,
with the true value tokens teacher-forced before it, equals the value token (the shortcut `measure_extraction`
uses): so one teacher-forced forward pass per batch decides every fact, with no decoding loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .._utils import (
    check_choice,
    check_integer,
    check_vocabulary,
    eval_mode,
    is_prompt_learning,
    model_device,
    supports_logits_to_keep,
    vocabulary_size,
)
from .encoding import encode_facts
from .facts import FACT_SPLITS, Fact, SyntheticFactSet


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


PADDING_SIDES = ("left", "right")


@dataclass
class FactCapacityResult:
    """How many facts a model knows.

    Attributes:
        count: Facts whose value greedy decoding reproduces exactly.
        total: Facts measured.
        known: Per fact (in the order measured), whether it is known.
        by_attribute: Attribute name -> `{"known": k, "total": n}` (empty when the rows name no attribute).
        bits: Information of the known facts in bits (sum of log2 of their value-set sizes); None when the facts
            came without value-set sizes.
    """

    count: int
    total: int
    known: list[bool] = field(default_factory=list)
    by_attribute: dict[str, dict[str, int]] = field(default_factory=dict)
    bits: float | None = None

    @property
    def fraction(self) -> float:
        """The known share of the facts measured (NaN for none)."""
        return self.count / self.total if self.total else float("nan")


def _reusable(facts):
    """`facts`, or its rows as a list when it is a one-shot iterator (a generator) that a second pass would find
    empty."""
    return list(facts) if isinstance(facts, Iterator) else facts


def _fact_rows(facts, split: str, direction: str, template: int) -> tuple[list[dict], list[int] | None]:
    """The rows to score, and per row the value-set size (None when unknown). `split` and `template` are checked
    for rows too (where they are not used), so that a typo is not silently ignored."""
    check_choice(split, "split", FACT_SPLITS)
    template = check_integer(template, "template", minimum=0)
    if isinstance(facts, SyntheticFactSet):
        chosen = facts.split(split)  # a fresh list on every call: take it once
        if not chosen:
            raise ValueError(f"`facts` has no {split} facts: nothing to measure.")
        rows = [r for r in facts.rows(split, direction, repeat=False) if r["template"] == template]
        if not rows:
            raise ValueError(f"`template` = {template} selects no row: the fact set has fewer templates.")
        sizes = [chosen[r["fact"]].num_values for r in rows]
        return rows, sizes
    if isinstance(facts, (str, bytes)) or not hasattr(facts, "__iter__"):
        raise ValueError(
            "`facts` must be a SyntheticFactSet, a datasets.Dataset or a list of rows with `prompt` and `target`, "
            f"got {type(facts).__name__}."
        )
    if hasattr(facts, "column_names"):
        missing = [c for c in ("prompt", "target") if c not in facts.column_names]
        if missing:
            raise ValueError(f"`facts` is a dataset without the columns {missing} (columns: {facts.column_names}).")
    rows = []
    for i, row in enumerate(facts):
        if isinstance(row, Fact):
            raise ValueError("`facts` holds Fact objects: pass the SyntheticFactSet, which knows their templates.")
        if not isinstance(row, Mapping) or "prompt" not in row or "target" not in row:
            raise ValueError(f"`facts[{i}]` must be a mapping with `prompt` and `target`, got {row!r}.")
        rows.append(row)
    return rows, None


def _encode_rows(model, tokenizer, rows: list) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encode rows for `model` before any work: the `(prompt_ids, target_ids)` per row, every id checked against the
    model's vocabulary, and the id to pad with (the tokenizer's, or 0 where it has none or it lies outside the
    vocabulary: padding is masked, so any id in the vocabulary will do)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"`model` must be a causal language model (a torch.nn.Module), got {type(model).__name__}.")
    if not callable(tokenizer):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}.")
    encoded = encode_facts(tokenizer, [r["prompt"] for r in rows], [r["target"] for r in rows])
    largest = max((max(p + t) for p, t in encoded), default=0)
    check_vocabulary(torch.tensor([largest]), model, "the facts' token ids (encoded with `tokenizer`)")
    pad = getattr(tokenizer, "pad_token_id", None)
    size = vocabulary_size(model)
    return encoded, 0 if pad is None or (size is not None and pad >= size) else pad


def _capacity_rows(facts, split, direction, template, batch_size, padding_side) -> tuple[list, list | None, int]:
    """Every check of `fact_capacity`'s arguments but the model's and tokenizer's: the rows it would score, their
    value-set sizes and the batch size."""
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    check_choice(padding_side, "padding_side", PADDING_SIDES)
    check_choice(direction, "direction", ("forward", "inverse"))
    rows, sizes = _fact_rows(facts, split, direction, template)
    if not rows:
        raise ValueError("`facts` is empty: give at least one fact.")
    return rows, sizes, batch_size


@torch.inference_mode()
def fact_capacity(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    facts: SyntheticFactSet | Sequence[Mapping] | object,
    split: str = "train",
    direction: str = "forward",
    template: int = 0,
    batch_size: int = 256,
    padding_side: str = "left",
) -> FactCapacityResult:
    """How many facts the model knows: greedy exact match of each value given its prompt.

    One teacher-forced forward per batch decides every fact of the batch exactly as greedy decoding would (the
    value is produced iff the argmax at each value position is the value token). Prompts of different lengths are
    padded (`padding_side`) with the attention mask and position ids a real row would get, so a fact's verdict
    does not depend on its batch. A PEFT prompt-learning model (prompt, prefix or p-tuning) drops position ids, so
    its rows are always padded on the right. The model runs in eval mode and gets its own mode back.

    Args:
        model: A causal language model, on the device to run on.
        tokenizer: The tokenizer the facts were trained with.
        facts: A `SyntheticFactSet` (each fact once, with template `template`), or a `datasets.Dataset` / list of
            rows with `prompt` and `target` columns (and optionally `attribute`). Rows are counted as given:
            `fact_set.to_dataset()` holds every template and each fact as often as its repetitions, so pass the
            `SyntheticFactSet` itself (or `to_dataset(repeat=False)` with one template) to count facts.
        split: For a `SyntheticFactSet`: "train" or "held_out".
        direction: For a `SyntheticFactSet`: "forward" (prompt -> value) or "inverse" (value prompt -> entity).
        template: For a `SyntheticFactSet`: which paraphrase template to ask with.
        batch_size: Facts per forward pass.
        padding_side: "left" (the default; only the last positions' logits are computed) or "right".

    Returns:
        A `FactCapacityResult`: the count, the per-fact mask and the per-attribute breakdown.

    Raises:
        ValueError: On empty facts, bad arguments, or a token id outside the model's vocabulary.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> facts = SyntheticFactSet(num_entities=4, attributes={"pet": 4}, seed=0)
        >>> tok = facts.build_tokenizer()
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = fact_capacity(model, tok, facts)
        >>> result.total, len(result.known), sorted(result.by_attribute)
        (4, 4, ['pet'])
    """
    rows, sizes, batch_size = _capacity_rows(facts, split, direction, template, batch_size, padding_side)
    encoded, pad = _encode_rows(model, tokenizer, rows)
    if is_prompt_learning(model):
        padding_side = "right"
    device = model_device(model)
    keep_last = padding_side == "left" and supports_logits_to_keep(model)
    known: list[bool] = []
    with eval_mode(model, "fact_capacity"):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            lengths = [len(p) + len(t) for p, t in batch]
            width = max(lengths)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (p, t) in enumerate(batch):
                row = torch.tensor(p + t, dtype=torch.long)
                if padding_side == "left":
                    ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
                else:
                    ids[i, : len(row)], mask[i, : len(row)] = row, 1
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            longest_target = max(len(t) for _, t in batch)
            extra = {"logits_to_keep": longest_target + 1} if keep_last else {}
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **extra).logits
            offset = width - logits.shape[1]  # logits[:, j] is the prediction made at position offset + j
            greedy = logits.argmax(-1).cpu()
            for i, (p, t) in enumerate(batch):
                first = (width - len(t) if padding_side == "left" else len(p)) - 1  # position predicting t[0]
                predicted = greedy[i, first - offset : first - offset + len(t)]
                known.append(predicted.tolist() == t)
    by_attribute: dict[str, dict[str, int]] = {}
    for row, ok in zip(rows, known):
        if "attribute" in row and row["attribute"] is not None:
            entry = by_attribute.setdefault(str(row["attribute"]), {"known": 0, "total": 0})
            entry["known"] += int(ok)
            entry["total"] += 1
    bits = None if sizes is None else float(sum(math.log2(s) for s, ok in zip(sizes, known) if ok))
    return FactCapacityResult(sum(known), len(known), known, by_attribute, bits)
