"""Goldfish loss (Hans et al. 2024): leave a deterministic ~1/k of the tokens out of the training loss.

A model never trained on those tokens cannot reproduce its training documents verbatim, yet it still sees the
whole text as context. The mask is a pure function of the token ids (and document boundaries), so every rank,
every epoch and every resumed run drops the same labels for the same data.

Labels are in Hugging Face coordinates: ``labels[i]`` is the target predicted at position ``i - 1``, and
dropping label ``i`` means ``labels[i] = -100``.
"""

from __future__ import annotations

import functools

import torch

from .._utils import as_token_ids
from .config import GoldfishConfig


IGNORE_INDEX = -100

# Official "hash-table" constants (ahans30/goldfish-loss): a 1,000,003-entry uniform table seeded with fib(47).
HASH_TABLE_SIZE = 1_000_003
HASH_TABLE_SEED = 2971215073

# "hash" strategy: everything stays below 2**62 in int64, so the result is exact on every device.
_PRIME = 2_147_483_647  # 2**31 - 1
_BASE = 1_000_000_007 % _PRIME
_MIX1 = 0x45D9F3B
_MIX2 = 0x2C1B3C6D


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
            raise ValueError(
                f"`position_ids` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(positions.shape)}."
            )
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
