"""Token sequences as every capability takes them: lists, tensors, or a `datasets.Dataset` with `input_ids`."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .checks import as_token_ids, check_integer


def as_sequences(sequences, name: str = "sequences") -> list[torch.Tensor]:
    """Return `sequences` as a non-empty list of 1-D int64 tensors.

    Args:
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), a
            `datasets.Dataset` with an `input_ids` column, or a mapping with `input_ids` (a tokenizer's output). With
            an `attention_mask` column or key, padded positions (mask 0) are dropped from each row.
        name: The argument name shown in error messages.
    """
    masks = None
    if hasattr(sequences, "column_names"):  # datasets.Dataset
        if "input_ids" not in sequences.column_names:
            raise ValueError(
                f"`{name}` is a Dataset without an `input_ids` column (columns: {sequences.column_names})."
            )
        if "attention_mask" in sequences.column_names:
            masks = sequences["attention_mask"]
        sequences = sequences["input_ids"]
    elif isinstance(sequences, Mapping):  # a tokenizer's BatchEncoding, or a plain dict of columns
        if "input_ids" not in sequences:
            raise ValueError(f"`{name}` is a mapping without `input_ids` (keys: {sorted(sequences)}).")
        masks, sequences = sequences.get("attention_mask"), sequences["input_ids"]
    if isinstance(sequences, torch.Tensor):
        sequences = list(sequences) if sequences.dim() == 2 else [sequences]
    out = [as_token_ids(seq, f"{name}[{i}]", dims=(1,)) for i, seq in enumerate(sequences)]
    if masks is not None:  # padded rows: keep the real tokens only
        if isinstance(masks, torch.Tensor) and masks.dim() == 1:
            masks = [masks]
        masks = list(masks)
        if len(masks) != len(out):
            raise ValueError(f"`{name}` has {len(out)} rows of `input_ids` but {len(masks)} of `attention_mask`.")
        stripped = []
        for i, (row, mask) in enumerate(zip(out, masks)):
            mask = torch.as_tensor(mask)
            if mask.shape != row.shape:
                raise ValueError(
                    f"`{name}[{i}]`: `attention_mask` has shape {tuple(mask.shape)}, `input_ids` {tuple(row.shape)}."
                )
            stripped.append(row[mask.bool()])
        out = stripped
    if not out:
        raise ValueError(f"`{name}` is empty: give at least one sequence of token ids.")
    return out


def leading_windows(sequences, prefix_len: int, suffix_len: int) -> torch.Tensor:
    """The first `prefix_len + suffix_len` tokens of every sequence, stacked into one 2-D tensor.

    Args:
        sequences: Anything `as_sequences` takes.
        prefix_len: Tokens of each window's prefix (>= 1).
        suffix_len: Tokens of each window's suffix (>= 1).

    Raises:
        ValueError: If a length is not a positive integer or a sequence is shorter than one window.
    """
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
    rows = as_sequences(sequences)
    length = prefix_len + suffix_len
    for i, row in enumerate(rows):
        if len(row) < length:
            raise ValueError(
                f"`sequences[{i}]` has {len(row)} tokens, fewer than prefix_len + suffix_len = {length}: "
                "lower `prefix_len` / `suffix_len` or drop the short sequences."
            )
    return torch.stack([row[:length] for row in rows])
