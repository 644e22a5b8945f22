"""Data on every machine: standard-library docstrings as documents, token sequences from files, local tokenizers."""

from .corpus import STDLIB_MODULES, document_windows, stdlib_docstrings
from .files import iter_token_sequences, load_token_sequences
from .tokenizers import word_level_tokenizer


__all__ = [
    "STDLIB_MODULES",
    "document_windows",
    "iter_token_sequences",
    "load_token_sequences",
    "stdlib_docstrings",
    "word_level_tokenizer",
]
