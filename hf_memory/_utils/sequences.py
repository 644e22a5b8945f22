"""Token sequences as every capability takes them: lists, tensors, or a `datasets.Dataset` with `input_ids`."""

from __future__ import annotations

import torch

from .checks import as_token_ids, check_integer


def as_sequences(sequences, name: str = "sequences") -> list[torch.Tensor]:
    """Return `sequences` as a non-empty list of 1-D int64 tensors.

    Args:
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column.
        name: The argument name shown in error messages.
    """
    if hasattr(sequences, "column_names"):  # datasets.Dataset
        if "input_ids" not in sequences.column_names:
            raise ValueError(
                f"`{name}` is a Dataset without an `input_ids` column (columns: {sequences.column_names})."
            )
        sequences = sequences["input_ids"]
    if isinstance(sequences, torch.Tensor):
        sequences = list(sequences) if sequences.dim() == 2 else [sequences]
    out = [as_token_ids(seq, f"{name}[{i}]", dims=(1,)) for i, seq in enumerate(sequences)]
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
