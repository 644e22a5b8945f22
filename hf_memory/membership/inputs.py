"""Documents as `membership_scores` reads them: text or token ids, streamed, tokenized by each model's own tokenizer,
cut to the scored length (or into windows), checked against each model's vocabulary."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .._utils import as_token_ids, check_vocabulary, iter_sequences, tokenizer_fingerprint, vocabulary_size
from .config import MembershipConfig


_IN_MEMORY = (list, tuple, torch.Tensor, Mapping)  # inputs checked whole before any work


@dataclass
class Document:
    """One document, ready to score.

    Attributes:
        index: Its position in the input.
        rows: The token rows the target model scores (one, or the windows), each of at least 2 tokens.
        text: The scored text (what `rows` cover), or None when it is unknown (token ids without a tokenizer).
        reference_rows: The rows the reference model scores (the same tensors when the two share a vocabulary), or
            None without a reference.
        digest: A BLAKE2b digest of the whole input document (its text, or its token ids), to find duplicates.
        truncated: Whether the target rows leave out tokens of the document.
    """

    index: int
    rows: list[torch.Tensor]
    text: str | None
    reference_rows: list[torch.Tensor] | None
    digest: str
    truncated: bool


def text_digest(text: str) -> str:
    """The digest `membership_scores` records for a text document (BLAKE2b, 16 bytes, hex).

    Args:
        text: The document.
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def ids_digest(ids: torch.Tensor) -> str:
    """The digest `membership_scores` records for a token-id document (BLAKE2b of its int64 ids, 16 bytes, hex).

    Args:
        ids: The document's token ids, 1-D.
    """
    return hashlib.blake2b(ids.to(torch.int64).cpu().numpy().tobytes(), digest_size=16).hexdigest()


def split_rows(ids: torch.Tensor, max_tokens: int, windows: bool) -> tuple[list[torch.Tensor], bool]:
    """The rows that score `ids`: its first `max_tokens` tokens, or (`windows`) windows of `max_tokens` tokens, each
    starting on the last token of the one before, so every token after the first is predicted exactly once.

    Args:
        ids: 1-D token ids, at least 2.
        max_tokens: Tokens per row (>= 2).
        windows: Cut windows instead of truncating.

    Returns:
        `(rows, truncated)`.
    """
    if len(ids) <= max_tokens:
        return [ids], False
    if not windows:
        return [ids[:max_tokens]], True
    step = max_tokens - 1
    return [ids[start : start + max_tokens] for start in range(0, len(ids) - 1, step)], False


def _is_map_dataset(data) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "iter") and hasattr(data, "__len__")


def raw_documents(data, text_column: str) -> Iterator[tuple[str, object]]:
    """Yield `(label, item)` per document, lazily: `item` a `str` (text) or a 1-D int64 tensor (token ids, padding
    removed where an `attention_mask` says so).

    Args:
        data: See `membership_scores`.
        text_column: The text column of datasets and row dicts.

    Raises:
        ValueError: If `data` is no collection of documents, or a dataset has neither a text nor an `input_ids`
            column.
    """
    if isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or isinstance(data, torch.Tensor)):
        raise ValueError(
            "`data` must be documents: a list or iterable of texts, of token id sequences or of row dicts, a 2-D "
            f"tensor of token ids, or a datasets.Dataset / IterableDataset; got {type(data).__name__}."
        )
    columns = getattr(data, "column_names", None)
    if isinstance(columns, (list, tuple)):  # a datasets.Dataset, or an IterableDataset with known features
        if text_column not in columns and "input_ids" not in columns:
            raise ValueError(
                f"`data` is a dataset with neither a {text_column!r} column (text) nor an `input_ids` column (token "
                f"ids); its columns are {list(columns)}. Set `text_column` to the column holding the text."
            )
        if text_column in columns and _is_map_dataset(data):
            index = itertools.count()
            for batch in data.select_columns([text_column]).iter(batch_size=256):
                for text in batch[text_column]:
                    yield f"data[{next(index)}]", text
            return
        if text_column not in columns and _is_map_dataset(data):
            for i, row in enumerate(iter_sequences(data, "data")):
                yield f"data[{i}]", row
            return
    if isinstance(data, Mapping):  # a tokenizer's BatchEncoding, or a dict of columns
        if text_column in data and "input_ids" not in data:
            texts = data[text_column]
            for i, text in enumerate([texts] if isinstance(texts, str) else texts):
                yield f"data[{i}]", text
            return
        for i, row in enumerate(iter_sequences(data, "data")):
            yield f"data[{i}]", row
        return
    if isinstance(data, torch.Tensor):
        for i, row in enumerate(iter_sequences(data, "data")):
            yield f"data[{i}]", row
        return
    for i, item in enumerate(data):
        label = f"data[{i}]"
        if isinstance(item, Mapping):
            if text_column in item:
                yield label, item[text_column]
                continue
            if "input_ids" not in item:
                raise ValueError(
                    f"`{label}` is a row without a {text_column!r} (text) or `input_ids` (token ids) entry; its keys "
                    f"are {sorted(map(str, item))}."
                )
            row = as_token_ids(item["input_ids"], label, dims=(1,))
            mask = item.get("attention_mask")
            if mask is not None:
                mask = torch.as_tensor(mask)
                if mask.shape != row.shape:
                    raise ValueError(
                        f"`{label}`: `attention_mask` has shape {tuple(mask.shape)}, `input_ids` {tuple(row.shape)}."
                    )
                row = row[mask.bool()]
            yield label, row
        elif isinstance(item, str):
            yield label, item
        elif isinstance(item, bytes):
            raise ValueError(f"`{label}` is bytes: decode it to a str first.")
        else:
            yield label, as_token_ids(item, label, dims=(1,))


class DocumentReader:
    """Turns `data` into `Document`s as it streams in; every check that can be made on one document is made here.

    Args:
        data: See `membership_scores`.
        config: The settings.
        model: The target model (for its vocabulary size).
        tokenizer: The target's tokenizer, or None.
        reference_model: The reference model, or None.
        reference_tokenizer: The reference's tokenizer, or None.
        need_text: Whether the scored text is needed (zlib).
    """

    def __init__(
        self, data, config: MembershipConfig, model, tokenizer, reference_model, reference_tokenizer, need_text
    ):
        self.data = data
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.reference_model = reference_model
        self.reference_tokenizer = reference_tokenizer
        self.need_text = need_text
        self.kind = None  # "text" or "ids", from the first document

    def check_shared_vocabulary(self) -> None:
        """Refuse token-id data for a reference that does not share the target's vocabulary.

        Raises:
            ValueError: If both tokenizers are given and their vocabularies differ, or, without them, the two
                models' embeddings have different sizes.
        """
        if self.reference_model is None:
            return
        if self.tokenizer is not None and self.reference_tokenizer is not None:
            if tokenizer_fingerprint(self.tokenizer) != tokenizer_fingerprint(self.reference_tokenizer):
                raise ValueError(
                    "Token-id data needs a shared vocabulary, but `tokenizer` and `reference_tokenizer` have different "
                    "vocabularies: the same ids mean different text to the two models. Give the texts instead (each "
                    "model then reads them with its own tokenizer)."
                )
            return
        target, reference = vocabulary_size(self.model), vocabulary_size(self.reference_model)
        if target != reference:
            raise ValueError(
                "Token-id data needs a shared vocabulary, but the target model's embedding has "
                f"{target} rows and the reference model's {reference}: the same ids may mean different text to the "
                "two models. Give the texts (with `tokenizer` and `reference_tokenizer`: each model reads them with "
                "its own), or pass both tokenizers when they are the same."
            )

    def _reference_reads_own_text(self) -> bool:
        return self.reference_tokenizer is not None and (
            self.tokenizer is None
            or tokenizer_fingerprint(self.tokenizer) != tokenizer_fingerprint(self.reference_tokenizer)
        )

    def check_text_setup(self) -> None:
        """Refuse text data that a model cannot read.

        Raises:
            ValueError: Without `tokenizer`, or when the reference would read the target's token ids (no
                `reference_tokenizer`) although its embedding has another size.
        """
        if self.tokenizer is None:
            raise ValueError("`data` holds text: give the target model's `tokenizer` to read it.")
        if self.reference_model is not None and self.reference_tokenizer is None:
            target, reference = vocabulary_size(self.model), vocabulary_size(self.reference_model)
            if target != reference:
                raise ValueError(
                    f"The reference model's embedding has {reference} rows and the target's {target}: give the "
                    "reference's own `reference_tokenizer` (without it the reference reads the target's token ids)."
                )

    def _tokenize(self, tokenizer, text: str) -> tuple[torch.Tensor, list | None]:
        fast = bool(getattr(tokenizer, "is_fast", False))
        encoded = tokenizer(
            text, add_special_tokens=self.config.add_special_tokens, return_offsets_mapping=fast, truncation=False
        )
        return torch.tensor(encoded["input_ids"], dtype=torch.long), encoded.get("offset_mapping") if fast else None

    def _scored_text(self, text: str, ids: torch.Tensor, kept: int, offsets) -> str:
        """The text the first `kept` tokens cover: cut at the end of the last kept token (fast tokenizers), else
        the decoded tokens."""
        if offsets is not None:
            ends = [end for start, end in offsets[:kept] if end > start]
            return text[: max(ends)] if ends else ""
        return self.tokenizer.decode(ids[:kept].tolist(), skip_special_tokens=True)

    def document(self, index: int, label: str, item) -> Document:
        """Build and check one document.

        Raises:
            ValueError: If it is of another kind than the first document, an empty or too short document (fewer
                than 2 tokens for a model), not a string or token ids, or holds an id outside a vocabulary.
        """
        kind = "text" if isinstance(item, str) else "ids"
        if self.kind is None:
            self.kind = kind
            if kind == "text":
                self.check_text_setup()
            else:
                self.check_shared_vocabulary()
        elif kind != self.kind:
            first = "text" if self.kind == "text" else "token ids"
            raise ValueError(f"`{label}` is {'text' if kind == 'text' else 'token ids'}, but `data[0]` was {first}.")
        config = self.config
        if kind == "text":
            ids, offsets = self._tokenize(self.tokenizer, item)
            digest = text_digest(item)
        else:
            ids, offsets = item, None
            digest = ids_digest(ids)
        if len(ids) < 2:
            raise ValueError(
                f"`{label}` has {len(ids)} token(s){' after tokenization' if kind == 'text' else ''}: at least 2 are "
                "needed (the first token is only context)."
            )
        rows, truncated = split_rows(ids, config.max_tokens, config.windows)
        check_vocabulary(ids[: config.max_tokens] if truncated else ids, self.model, label)
        kept = len(rows[0]) if truncated else len(ids)
        if kind == "text":
            text = item if not truncated else self._scored_text(item, ids, kept, offsets)
        elif self.need_text and self.tokenizer is not None:
            text = self.tokenizer.decode(ids[:kept].tolist(), skip_special_tokens=True)
        else:
            text = None
        reference_rows = None
        if self.reference_model is not None:
            if kind == "text" and self._reference_reads_own_text():
                reference_ids, _ = self._tokenize(self.reference_tokenizer, text)
                if len(reference_ids) < 2:
                    raise ValueError(
                        f"`{label}` has {len(reference_ids)} token(s) for the reference tokenizer: at least 2 are "
                        "needed."
                    )
                reference_rows, _ = split_rows(reference_ids, config.max_tokens, config.windows)
                check_vocabulary(torch.cat(reference_rows), self.reference_model, f"{label} (reference tokens)")
            else:
                reference_rows = rows
                check_vocabulary(torch.cat(rows), self.reference_model, f"{label} (for the reference model)")
        return Document(index, rows, text, reference_rows, digest, truncated)

    def __iter__(self) -> Iterator[Document]:
        for index, (label, item) in enumerate(raw_documents(self.data, self.config.text_column)):
            if not isinstance(item, (str, torch.Tensor)):
                raise ValueError(f"`{label}` must be a text or token ids, got {type(item).__name__}.")
            yield self.document(index, label, item)

    def validate(self) -> int:
        """Read every document once, checking it, without keeping any; return how many there are (in-memory inputs
        only: a stream cannot be read twice)."""
        count = sum(1 for _ in self)
        self.kind = None
        return count


def is_in_memory(data) -> bool:
    """Whether `data` can be read twice and is checked whole before any work (lists, tuples, tensors, mappings).

    Args:
        data: See `membership_scores`.
    """
    return isinstance(data, _IN_MEMORY)
