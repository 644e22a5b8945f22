"""Read token sequences for the CLI, streamed or into memory: text files, JSON Lines, or a dataset saved with
`save_to_disk`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .._utils import as_token_ids, is_saved_dataset


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _lines(handle, path: str):
    """The lines of a text file; a file that is not UTF-8 text is named."""
    try:
        yield from handle
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not UTF-8 text (a binary file?): give text, JSON Lines or a saved dataset."
        ) from None


def _paths(paths) -> list[str]:
    """`paths` as a list of path strings: one path (a string or `os.PathLike`) or an iterable of them."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, bytes) or not hasattr(paths, "__iter__"):
        raise ValueError(f"`paths` must be a path or a list of paths, got {type(paths).__name__}.")
    out = []
    for i, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"`paths[{i}]` must be a path (str or os.PathLike), got {type(path).__name__}.")
        out.append(os.fspath(path))
    return out


def iter_token_sequences(
    paths: Iterable[str] | str | os.PathLike, tokenizer: PreTrainedTokenizerBase, text_field: str = "text"
) -> Iterator[tuple[list[int], str]]:
    """Yield each document's token ids and where it came from, reading the files lazily (one record at a time).

    A text file is one document; a `.jsonl` file holds one JSON object per line with `input_ids` or `text_field`;
    a folder written by `Dataset.save_to_disk` gives its `input_ids` column, or else its `text_field` column. Text is
    tokenized without special tokens, as documents are usually seen in training. Nothing is read before iteration
    starts, and only the current record is held: a corpus larger than memory streams through. Files are read as
    UTF-8; a leading byte-order mark is dropped.

    Args:
        paths: Text files, `.jsonl` / `.json` files (one JSON object per line) and `save_to_disk` folders, in order
            (one path may be given alone).
        tokenizer: The tokenizer for records given as text (called with `add_special_tokens=False`).
        text_field: The JSON key or dataset column holding the text, used where there is no `input_ids`.

    Yields:
        `(ids, source)`: the token id list, and a label saying where it came from (`path`, `path:line` or
        `path[/split][row]`).

    Raises:
        ValueError: At once, if `paths` is not a path or a list of them; when the record at fault is reached: a path
            that is neither a file nor a saved dataset folder, a record with neither `input_ids` nor `text_field`,
            invalid JSON, an empty text file; and at the end, if the paths gave no document.
    """
    return _iter_token_sequences(_paths(paths), tokenizer, text_field)


def _iter_token_sequences(paths: list[str], tokenizer, text_field: str) -> Iterator[tuple[list[int], str]]:

    def text_or_ids(record: dict, where: str) -> list[int]:
        if not isinstance(record, dict):
            raise ValueError(f"{where} holds a JSON {type(record).__name__}; each line must be an object.")
        if "input_ids" in record:
            return as_token_ids(record["input_ids"], f"input_ids of {where}", dims=(1,)).tolist()
        if text_field in record:
            if not isinstance(record[text_field], str):
                raise ValueError(f"{where}: `{text_field}` must be a string, got {type(record[text_field]).__name__}.")
            return tokenizer(record[text_field], add_special_tokens=False)["input_ids"]
        raise ValueError(
            f"{where} has neither `input_ids` nor `{text_field}` (set `text_field`, --text-field on the command line)."
        )

    found = False
    for path in paths:
        if is_saved_dataset(path):
            from datasets import DatasetDict, load_from_disk

            data = load_from_disk(path)
            splits = data.items() if isinstance(data, DatasetDict) else [(None, data)]
            for split, dataset in splits:
                for i, row in enumerate(dataset):
                    where = f"{path}{'/' + split if split else ''}[{i}]"
                    yield text_or_ids(row, where), where
                    found = True
        elif not os.path.isfile(path):
            raise ValueError(f"`paths` entry {path!r} is not a file or a saved dataset folder.")
        elif path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8-sig", errors="strict") as f:
                for line_no, line in enumerate(_lines(f, path), 1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as err:
                            raise ValueError(
                                f"{path}:{line_no} is not valid JSON ({err.msg}); a .jsonl file holds one JSON object "
                                "per line."
                            ) from None
                        yield text_or_ids(record, f"{path}:{line_no}"), f"{path}:{line_no}"
                        found = True
        else:
            with open(path, encoding="utf-8-sig") as f:
                text = "".join(_lines(f, path))
            if not text.strip():
                raise ValueError(f"{path} is empty: a text file is one document.")
            yield text_or_ids({text_field: text}, path), path
            found = True
    if not found:
        raise ValueError("`paths` gave no documents.")


def load_token_sequences(
    paths: Iterable[str] | str | os.PathLike, tokenizer: PreTrainedTokenizerBase, text_field: str = "text"
) -> tuple[list[list[int]], list[str]]:
    """Token id sequences and, per sequence, where it came from, all read into memory (`iter_token_sequences` streams
    them instead).

    Args:
        paths: Text files, `.jsonl` / `.json` files (one JSON object per line) and `save_to_disk` folders, in order
            (one path may be given alone).
        tokenizer: The tokenizer for records given as text (called with `add_special_tokens=False`).
        text_field: The JSON key or dataset column holding the text, used where there is no `input_ids`.

    Returns:
        `(sequences, sources)`: the token id lists, and for each a label saying where it came from (`path`,
        `path:line` or `path[/split][row]`).

    Raises:
        ValueError: If a path is neither a file nor a saved dataset folder, a record has neither `input_ids` nor
            `text_field`, or no document was found.
    """
    pairs = list(iter_token_sequences(paths, tokenizer, text_field))
    return [ids for ids, _ in pairs], [source for _, source in pairs]
