"""Token sequences as every capability takes them: lists, tensors, or a `datasets.Dataset` with `input_ids`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .checks import as_token_ids, check_integer


def _strip_padding(row: torch.Tensor, mask, label: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.shape != row.shape:
        raise ValueError(f"`{label}`: `attention_mask` has shape {tuple(mask.shape)}, `input_ids` {tuple(row.shape)}.")
    return row[mask.bool()]


def _rows_of(item, label: str) -> torch.Tensor:
    """One streamed item (ids, or a row dict with `input_ids` and maybe `attention_mask`) as 1-D int64 ids."""
    if isinstance(item, Mapping):
        if "input_ids" not in item:
            raise ValueError(f"`{label}` is a mapping without `input_ids` (keys: {sorted(item)}).")
        row = as_token_ids(item["input_ids"], label, dims=(1,))
        mask = item.get("attention_mask")
        return row if mask is None else _strip_padding(row, mask, label)
    return as_token_ids(item, label, dims=(1,))


def iter_sequences(sequences, name: str = "sequences", batch_size: int = 1000) -> Iterator[torch.Tensor]:
    """Yield the token sequences of `sequences` one at a time as 1-D int64 tensors, reading lazily.

    A `datasets.Dataset` is read `batch_size` rows at a time (never converted to one list); an
    `IterableDataset`, a generator or any other iterable is consumed as it goes, so the input may be larger than
    memory or endless.

    Args:
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), a
            `datasets.Dataset` or `IterableDataset` with an `input_ids` column, a mapping with `input_ids` (a
            tokenizer's output), or any iterable of id sequences or of row dicts with `input_ids`. With an
            `attention_mask` column or key, padded positions (mask 0) are dropped from each row.
        name: The argument name shown in error messages.
        batch_size: Rows read at a time from a `datasets.Dataset`.

    Raises:
        ValueError: When an item is not a sequence of integer token ids (naming `name[i]`), a dataset or mapping
            has no `input_ids`, or `sequences` is not iterable. An empty input yields nothing.
    """
    if isinstance(sequences, (str, bytes)) or not (
        hasattr(sequences, "__iter__") or isinstance(sequences, torch.Tensor)
    ):
        raise ValueError(
            f"`{name}` must be token id sequences, a Dataset / IterableDataset with `input_ids`, or an iterable of "
            f"them, got {type(sequences).__name__}."
        )
    if hasattr(sequences, "column_names") and hasattr(sequences, "iter") and hasattr(sequences, "__len__"):
        columns = sequences.column_names  # a map-style datasets.Dataset: read in batches
        if "input_ids" not in columns:
            raise ValueError(f"`{name}` is a Dataset without an `input_ids` column (columns: {columns}).")
        wanted = ["input_ids"] + (["attention_mask"] if "attention_mask" in columns else [])
        index = 0
        for batch in sequences.select_columns(wanted).iter(batch_size=batch_size):
            for i, ids in enumerate(batch["input_ids"]):
                label = f"{name}[{index}]"
                row = as_token_ids(ids, label, dims=(1,))
                yield row if "attention_mask" not in batch else _strip_padding(row, batch["attention_mask"][i], label)
                index += 1
        return
    if hasattr(sequences, "column_names") and sequences.column_names is not None:  # IterableDataset, known columns
        if "input_ids" not in sequences.column_names:
            raise ValueError(
                f"`{name}` is a dataset without an `input_ids` column (columns: {sequences.column_names})."
            )
    if isinstance(sequences, Mapping):  # a tokenizer's BatchEncoding, or a plain dict of columns
        if "input_ids" not in sequences:
            raise ValueError(f"`{name}` is a mapping without `input_ids` (keys: {sorted(sequences)}).")
        ids, masks = sequences["input_ids"], sequences.get("attention_mask")
        if isinstance(ids, torch.Tensor) and ids.dim() == 1:
            ids, masks = [ids], None if masks is None else [masks]
        if masks is not None and len(masks) != len(ids):
            raise ValueError(f"`{name}` has {len(ids)} rows of `input_ids` but {len(masks)} of `attention_mask`.")
        for i, row in enumerate(ids):
            row = as_token_ids(row, f"{name}[{i}]", dims=(1,))
            yield row if masks is None else _strip_padding(row, masks[i], f"{name}[{i}]")
        return
    if isinstance(sequences, torch.Tensor):
        sequences = [sequences] if sequences.dim() == 1 else sequences
        if isinstance(sequences, torch.Tensor) and sequences.dim() != 2:
            raise ValueError(f"`{name}` must be a 1-D or 2-D tensor of token ids, got {sequences.dim()}-D.")
    for i, item in enumerate(sequences):
        yield _rows_of(item, f"{name}[{i}]")


def as_sequences(sequences, name: str = "sequences") -> list[torch.Tensor]:
    """Return `sequences` as a non-empty list of 1-D int64 tensors.

    Args:
        sequences: Anything `iter_sequences` takes.
        name: The argument name shown in error messages.

    Raises:
        ValueError: As `iter_sequences`, and when `sequences` holds no sequence.
    """
    out = list(iter_sequences(sequences, name))
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
