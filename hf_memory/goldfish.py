"""Goldfish loss (Hans et al. 2024): leave a deterministic ~1/k of the tokens out of the training loss.

A model never trained on those tokens cannot reproduce its training documents verbatim, yet it still sees the
whole text as context. The mask is a pure function of the token ids (and document boundaries), so every rank,
every epoch and every resumed run drops the same labels for the same data.

Labels are in Hugging Face coordinates: ``labels[i]`` is the target predicted at position ``i - 1``, and
dropping label ``i`` means ``labels[i] = -100``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from ._token_ids import as_token_ids

GOLDFISH_STRATEGIES = ("hash", "hash-table", "static")
IGNORE_INDEX = -100

# Official "hash-table" constants (ahans30/goldfish-loss): a 1,000,003-entry uniform table seeded with fib(47).
HASH_TABLE_SIZE = 1_000_003
HASH_TABLE_SEED = 2971215073

# "hash" strategy: everything stays below 2**62 in int64, so the result is exact on every device.
_PRIME = 2_147_483_647  # 2**31 - 1
_BASE = 1_000_000_007 % _PRIME
_MIX1 = 0x45D9F3B
_MIX2 = 0x2C1B3C6D


def check_goldfish_settings(k, h, strategy, start, names=("k", "h", "strategy", "start")) -> None:
    """Raise one clear ``ValueError`` per bad setting; ``names`` are the argument names shown to the user."""
    k_name, h_name, strategy_name, start_name = names
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"`{k_name}` must be an integer >= 2 (drop about 1 in k tokens), got {k!r}.")
    if isinstance(h, bool) or not isinstance(h, int) or h < 1:
        raise ValueError(f"`{h_name}` must be an integer >= 1 (hash context width in tokens), got {h!r}.")
    if strategy not in GOLDFISH_STRATEGIES:
        raise ValueError(f"`{strategy_name}` must be one of {', '.join(map(repr, GOLDFISH_STRATEGIES))}, got {strategy!r}.")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"`{start_name}` must be an integer >= 0, got {start!r}.")


@dataclass
class GoldfishConfig:
    """Which labels the goldfish loss drops.

    Example:
        >>> config = GoldfishConfig(k=4, h=13)
        >>> GoldfishConfig.from_dict(config.to_dict()) == config
        True
    """

    k: int = field(default=4, metadata={"help": "Drop about 1 in k labels from the loss (k >= 2)."})
    h: int = field(default=13, metadata={"help": "Width of the hashed token window that decides each drop."})
    strategy: str = field(default="hash", metadata={"help": "One of 'hash', 'hash-table' (official) or 'static'."})
    start: int = field(default=0, metadata={"help": "Offset of the first dropped label for 'static'."})
    exempt_token_ids: Sequence[int] = field(
        default=(), metadata={"help": "Target token ids that are never dropped (e.g. special tokens)."}
    )
    hash_table_device: str | None = field(
        default="cpu",
        metadata={"help": "Device whose RNG builds the 'hash-table' table; None = the input's device (official)."},
    )

    def __post_init__(self):
        check_goldfish_settings(self.k, self.h, self.strategy, self.start)
        ids = tuple(self.exempt_token_ids)
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise ValueError(f"`exempt_token_ids` must be integers, got {list(ids)!r}.")
        self.exempt_token_ids = tuple(sorted(set(ids)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exempt_token_ids"] = list(self.exempt_token_ids)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GoldfishConfig":
        return cls(**data)


@functools.lru_cache(maxsize=4)
def goldfish_hash_table(device: str = "cpu") -> torch.Tensor:
    """The official goldfish lookup table: ``torch.rand(1_000_003)`` from a generator seeded 2971215073 on ``device``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(HASH_TABLE_SEED)
    return torch.rand(HASH_TABLE_SIZE, device=device, generator=generator)


def document_offsets(position_ids: torch.Tensor) -> torch.Tensor:
    """Index of each token inside its own document.

    A document starts at column 0, wherever ``position_ids`` is 0, and wherever it does not continue the previous
    position by one (packed, padding-free or left-padded batches).
    """
    columns = torch.arange(position_ids.shape[-1], device=position_ids.device).expand_as(position_ids)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = (position_ids[..., 1:] == 0) | (position_ids[..., 1:] != position_ids[..., :-1] + 1)
    first_column = torch.where(starts, columns, torch.zeros_like(columns)).cummax(dim=-1).values
    return columns - first_column


def _windows(ids: torch.Tensor, h: int, pad_value: int):
    """Yield, for j = 0..h-1, the token at ``i - h + 1 + j`` for every position ``i`` (left-padded)."""
    padded = torch.nn.functional.pad(ids, (h - 1, 0), value=pad_value)
    length = ids.shape[-1]
    for j in range(h):  # loop over the window width, never over tokens
        yield padded[..., j : j + length]


def _hash_table_drops(ids: torch.Tensor, config: GoldfishConfig) -> torch.Tensor:
    key = torch.ones_like(ids)
    for token in _windows(ids, config.h, pad_value=1):
        key = key * token  # int64, wraps like the official `prod`
    table = goldfish_hash_table(config.hash_table_device or str(ids.device)).to(ids.device)
    return table[key % HASH_TABLE_SIZE] < 1 / config.k


def _hash_drops(ids: torch.Tensor, config: GoldfishConfig) -> torch.Tensor:
    tokens = ids % (_PRIME - 1) + 1  # 1..P-1: no id is invisible or absorbing
    key = torch.zeros_like(ids)
    for token in _windows(tokens, config.h, pad_value=0):
        key = (key * _BASE + token) % _PRIME  # order-sensitive polynomial of the window
    key = ((key ^ (key >> 16)) * _MIX1) % _PRIME  # avalanche, still below 2**62
    key = ((key ^ (key >> 13)) * _MIX2) % _PRIME
    key = key ^ (key >> 16)
    return key % config.k == 0


def goldfish_mask(
    input_ids: torch.Tensor, config: GoldfishConfig | None = None, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of ``input_ids``' shape: True where the label at that position is dropped from the loss.

    ``position_ids`` (optional) marks document boundaries: each document of a packed batch gets the mask it gets
    alone. Labels with fewer than ``h`` targets of their own document in the window ending at them (for the hash
    strategies), or before ``start + 1`` (for "static"), are never dropped, nor are ``config.exempt_token_ids``.

    Example:
        >>> ids = torch.arange(100, 132).unsqueeze(0)
        >>> goldfish_mask(ids, GoldfishConfig(k=4, strategy="static")).nonzero()[:, 1].tolist()
        [1, 5, 9, 13, 17, 21, 25, 29]
    """
    config = config if config is not None else GoldfishConfig()
    if not isinstance(config, GoldfishConfig):
        raise TypeError(f"`config` must be a GoldfishConfig, got {type(config).__name__}.")
    ids = as_token_ids(input_ids, "input_ids")
    if position_ids is None:
        offsets = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
    else:
        positions = as_token_ids(position_ids, "position_ids").to(ids.device)
        if positions.shape != ids.shape:
            raise ValueError(f"`position_ids` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(positions.shape)}.")
        offsets = document_offsets(positions)

    if config.strategy == "static":
        shifted = offsets - 1 - config.start
        drop = (shifted >= 0) & (shifted % config.k == 0)
    else:
        drop = _hash_drops(ids, config) if config.strategy == "hash" else _hash_table_drops(ids, config)
        drop &= offsets >= config.h  # the window holds h targets of this document (its first token is no target)
    if config.exempt_token_ids:
        exempt = torch.tensor(config.exempt_token_ids, dtype=ids.dtype, device=ids.device)
        drop &= ~torch.isin(ids, exempt)
    return drop


def apply_goldfish(
    labels: torch.Tensor, input_ids: torch.Tensor, config: GoldfishConfig, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Return a copy of ``labels`` with the goldfish-dropped labels set to -100 (labels already -100 stay so)."""
    return labels.masked_fill(goldfish_mask(input_ids, config, position_ids).to(labels.device), IGNORE_INDEX)


class GoldfishDataCollator:
    """Wrap any collator so the training batches it builds carry goldfish-masked ``labels``.

    Document boundaries come from the batch's ``position_ids`` (packing / padding-free) or, failing that, its
    ``attention_mask`` (so left padding does not shift the mask). With ``return_dropped_counts=True`` the batch also
    holds ``goldfish_dropped_tokens`` (per row), which ``GoldfishTrainer`` pops for its logs.

    Example:
        >>> from transformers import default_data_collator
        >>> collator = GoldfishDataCollator(default_data_collator, GoldfishConfig(k=2, strategy="static"))
        >>> batch = collator([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9]}])
        >>> batch["labels"].tolist()
        [[5, -100, 7, -100, 9]]
    """

    def __init__(self, base_collator: Callable, config: GoldfishConfig, return_dropped_counts: bool = False):
        if not callable(base_collator):
            raise TypeError(f"`base_collator` must be callable, got {type(base_collator).__name__}.")
        if not isinstance(config, GoldfishConfig):
            raise TypeError(f"`config` must be a GoldfishConfig, got {type(config).__name__}.")
        self.base_collator = base_collator
        self.config = config
        self.return_dropped_counts = return_dropped_counts

    def __call__(self, features, *args, **kwargs):
        batch = self.base_collator(features, *args, **kwargs)
        if "input_ids" not in batch:
            raise ValueError(
                f"`base_collator` returned no `input_ids` (keys: {sorted(batch)}); goldfish hashes the input tokens."
            )
        if "labels" not in batch:
            raise ValueError(
                f"The batch has no `labels` (keys: {sorted(batch)}): goldfish drops labels, so the collator or the "
                "dataset must provide them (e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False))."
            )
        input_ids, labels = torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["labels"])
        positions = batch.get("position_ids")
        if positions is None and batch.get("attention_mask") is not None:
            positions = torch.as_tensor(batch["attention_mask"]).long().cumsum(-1) - 1
        drop = goldfish_mask(input_ids, self.config, positions) & (labels != IGNORE_INDEX)
        batch["labels"] = labels.masked_fill(drop, IGNORE_INDEX)
        if self.return_dropped_counts:
            batch["goldfish_dropped_tokens"] = drop.reshape(-1, drop.shape[-1]).sum(-1)
        return batch
