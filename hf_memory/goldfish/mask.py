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
    """The official goldfish lookup table: ``torch.rand(1_000_003)`` from a generator seeded 2971215073 on ``device``.

    The "hash-table" strategy looks up each window's key here. The values depend on the device's random generator
    (CPU and CUDA differ), so the device is part of the setting; the last few tables are cached.

    Args:
        device: The device whose random generator builds the table, and where the table lives.

    Returns:
        A float tensor of `HASH_TABLE_SIZE` uniform values in [0, 1).
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(HASH_TABLE_SEED)
    return torch.rand(HASH_TABLE_SIZE, device=device, generator=generator)


def document_offsets(position_ids: torch.Tensor) -> torch.Tensor:
    """Index of each token inside its own document.

    A document starts at column 0, wherever ``position_ids`` is 0, and wherever it does not continue the previous
    position by one (packed, padding-free or left-padded batches).

    Args:
        position_ids: Integer positions, shape `(..., seq_len)`; each row is read along its last dimension.

    Returns:
        A tensor of the same shape: 0 at the first token of each document, then 1, 2, ...

    Examples:
        >>> document_offsets(torch.tensor([[0, 1, 2, 0, 1], [-1, -1, 0, 1, 2]])).tolist()
        [[0, 1, 2, 0, 1], [0, 0, 0, 1, 2]]
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
    key = _window_products(ids, config.h)
    table = goldfish_hash_table(config.hash_table_device or str(ids.device)).to(ids.device)
    return table[key % HASH_TABLE_SIZE] < 1 / config.k


def _window_products(ids: torch.Tensor, h: int) -> torch.Tensor:
    key = torch.ones_like(ids)
    for token in _windows(ids, h, pad_value=1):
        key = key * token  # int64, wraps like the official `prod`
    return key


def _logical_right_shift(value: torch.Tensor, bits: int) -> torch.Tensor:
    """``value >> bits`` on the 64 bits of an int64 tensor read as unsigned (zeros shifted in, not the sign)."""
    return (value >> bits) & ((1 << (64 - bits)) - 1)


def avalanche_hash(keys: torch.Tensor) -> torch.Tensor:
    """The official goldfish "hash-avalanche" integer hash (Thomas Wang's 64-bit mixer, 32-bit output).

    The official code runs it on ``torch.uint64``, which torch cannot do on a CPU; here the same arithmetic runs on
    the two's-complement bits of int64: every addition, subtraction, multiplication and left shift is modulo 2**64
    (as in uint64), and right shifts are logical.

    Args:
        keys: An int64 tensor of keys; each is read as the unsigned 64-bit number with the same bits (so a negative
            window product means the same key as the official ``.to(torch.uint64)``).

    Returns:
        An int64 tensor of keys' shape with values in [0, 2**32).

    Examples:
        >>> avalanche_hash(torch.tensor([0, 1, -1])).tolist()
        [791250447, 4151993710, 58270011]
    """
    mask = (1 << 32) - 1
    key = torch.as_tensor(keys).to(torch.int64)
    key = (~key + (key << 21)) & mask
    key = (key << 21) - key - 1
    key = key ^ _logical_right_shift(key, 24)
    key = ((key + (key << 3)) + (key << 8)) & mask
    key = key * 265
    key = key ^ _logical_right_shift(key, 14)
    key = ((key + (key << 2)) + (key << 4)) & mask
    key = key * 21
    key = key ^ _logical_right_shift(key, 28)
    return (key + (key << 31)) & mask


def _hash_avalanche_drops(ids: torch.Tensor, config: GoldfishConfig) -> torch.Tensor:
    hashed = avalanche_hash(_window_products(ids, config.h))
    # The official `hashed < (2**32 - 1) / k` compares an int64 tensor with a Python float: torch promotes both
    # sides to float32, which rounds keys and threshold alike. Keep that, so the drops match bit for bit.
    threshold = torch.tensor(((1 << 32) - 1) / config.k, dtype=torch.float32, device=ids.device)
    return hashed.to(torch.float32) < threshold


def _hash_drops(ids: torch.Tensor, config: GoldfishConfig) -> torch.Tensor:
    tokens = ids % (_PRIME - 1) + 1  # 1..P-1: no id is invisible or absorbing
    key = torch.zeros_like(ids)
    for token in _windows(tokens, config.h, pad_value=0):
        key = (key * _BASE + token) % _PRIME  # order-sensitive polynomial of the window
    key = ((key ^ (key >> 16)) * _MIX1) % _PRIME  # avalanche, still below 2**62
    key = ((key ^ (key >> 13)) * _MIX2) % _PRIME
    key = key ^ (key >> 16)
    return key % config.k == 0


_HASH_DROPS = {"hash": _hash_drops, "hash-table": _hash_table_drops, "hash-avalanche": _hash_avalanche_drops}


def first_droppable_offset(config: GoldfishConfig) -> int:
    """The first offset inside its document at which `goldfish_mask` may drop a label.

    Args:
        config: The goldfish settings.

    Returns:
        `h` for the hash strategies (the window needs h targets of the document; its first token is no target),
        `start + 1` for "static". A document of at most this many tokens loses no label.
    """
    return config.start + 1 if config.strategy == "static" else config.h


def goldfish_mask(
    input_ids: torch.Tensor, config: GoldfishConfig | None = None, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of ``input_ids``' shape: True where the label at that position is dropped from the loss.

    ``position_ids`` (optional) marks document boundaries: each document of a packed batch gets the mask it gets
    alone. Labels with fewer than ``h`` targets of their own document in the window ending at them (for the hash
    strategies), or before ``start + 1`` (for "static"), are never dropped, nor are ``config.exempt_token_ids``.

    Args:
        input_ids: Token ids, 1-D `(seq_len,)` or 2-D `(batch, seq_len)`; the mask is a function of these alone.
        config: Which labels to drop; None uses the default `GoldfishConfig()`.
        position_ids: Positions of the same shape as `input_ids`, marking where each document starts (see
            `document_offsets`); None treats every row as one document.

    Returns:
        A boolean tensor of `input_ids`' shape, on its device: True where the label is dropped.

    Raises:
        TypeError: If `config` is not a `GoldfishConfig`.
        ValueError: If `input_ids` or `position_ids` are not 1-D or 2-D integer ids, or their shapes differ.

    Examples:
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
        positions = as_token_ids(position_ids, "position_ids", allow_negative=True).to(ids.device)
        if positions.shape != ids.shape:
            raise ValueError(
                f"`position_ids` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(positions.shape)}."
            )
        offsets = document_offsets(positions)

    first = first_droppable_offset(config)
    if config.strategy == "static":
        shifted = offsets - first
        drop = (shifted >= 0) & (shifted % config.k == 0)
    elif first >= ids.shape[-1]:  # no label has h targets of its own document before it: nothing to hash
        drop = torch.zeros_like(ids, dtype=torch.bool)
    else:
        drop = _HASH_DROPS[config.strategy](ids, config)
        drop &= offsets >= first  # the window holds h targets of this document (its first token is no target)
    if config.exempt_token_ids:
        exempt = torch.tensor(config.exempt_token_ids, dtype=ids.dtype, device=ids.device)
        drop &= ~torch.isin(ids, exempt)
    return drop


def apply_goldfish(
    labels: torch.Tensor, input_ids: torch.Tensor, config: GoldfishConfig, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Return a copy of ``labels`` with the goldfish-dropped labels set to -100 (labels already -100 stay so).

    Args:
        labels: Labels in Hugging Face coordinates, of `input_ids`' shape.
        input_ids: The token ids the mask is computed from (see `goldfish_mask`).
        config: Which labels to drop.
        position_ids: Optional positions marking document boundaries, of `input_ids`' shape.

    Returns:
        A new tensor like `labels`, with `IGNORE_INDEX` (-100) where goldfish drops the label.

    Raises:
        TypeError: If `config` is not a `GoldfishConfig`.
        ValueError: If `input_ids` or `position_ids` are not valid token-id tensors of one shape.

    Examples:
        >>> ids = torch.arange(10, 18).unsqueeze(0)
        >>> apply_goldfish(ids.clone(), ids, GoldfishConfig(k=2, strategy="static")).tolist()
        [[10, -100, 12, -100, 14, -100, 16, -100]]
    """
    if tuple(torch.as_tensor(labels).shape) != tuple(torch.as_tensor(input_ids).shape):
        raise ValueError(
            f"`labels` {tuple(torch.as_tensor(labels).shape)} and `input_ids` {tuple(torch.as_tensor(input_ids).shape)} "
            "must have the same shape: each label is masked by the tokens at its own position."
        )
    return labels.masked_fill(goldfish_mask(input_ids, config, position_ids).to(labels.device), IGNORE_INDEX)
