"""Documents present on every machine: the docstrings of Python's standard library (no copied prose is shipped)."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._utils import check_integer


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


# Modules whose long docstrings make varied, English, self-contained documents.
STDLIB_MODULES = (
    "json",
    "csv",
    "argparse",
    "functools",
    "itertools",
    "collections",
    "textwrap",
    "heapq",
    "bisect",
    "shutil",
    "tempfile",
    "subprocess",
    "threading",
    "logging",
    "pathlib",
    "dataclasses",
    "contextlib",
    "inspect",
    "pickle",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "calendar",
    "string",
    "difflib",
    "zipfile",
    "tarfile",
    "gzip",
    "base64",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "socket",
    "selectors",
    "sched",
    "queue",
    "weakref",
    "copy",
    "pprint",
    "enum",
    "operator",
    "typing",
    "abc",
    "unittest",
    "doctest",
    "shlex",
    "fnmatch",
    "glob",
    "locale",
    "gettext",
    "codecs",
    "unicodedata",
    "struct",
    "array",
    "io",
)


def stdlib_docstrings(min_chars: int = 400, max_docs: int | None = None) -> list[str]:
    """Docstrings of standard-library modules, classes and functions, at least `min_chars` long, in a fixed order.

    Every machine with Python has them, so examples and tests get English documents without a download. The order
    follows `STDLIB_MODULES` (each module, then its classes and functions by name); duplicates are dropped and
    modules missing on this platform are skipped. The texts depend on the Python version.

    Args:
        min_chars: The shortest docstring kept, in characters (after `inspect.getdoc` cleaning).
        max_docs: Stop after this many documents; None returns all of them.

    Returns:
        The docstrings, as plain strings.

    Raises:
        ValueError: If `min_chars` is not an integer >= 0 or `max_docs` not an integer >= 1 or None.
    """
    min_chars = check_integer(min_chars, "min_chars", minimum=0)
    max_docs = check_integer(max_docs, "max_docs", minimum=1, allow_none=True)
    return list(_stdlib_docstrings(min_chars, max_docs))


@functools.lru_cache(maxsize=8)
def _stdlib_docstrings(min_chars: int, max_docs: int | None) -> tuple[str, ...]:
    """`stdlib_docstrings`, read once per process (it imports and walks every module of `STDLIB_MODULES`)."""
    docs, seen = [], set()
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a platform without this module
            continue
        members = [module] + [
            obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj) or inspect.isfunction(obj)
        ]
        for obj in members:
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)
                if max_docs is not None and len(docs) >= max_docs:
                    return tuple(docs)
    return tuple(docs)


def document_windows(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], length: int) -> list[list[int]]:
    """The first `length` tokens of each text that has that many (no special tokens added).

    Args:
        tokenizer: A Hugging Face tokenizer (called as `tokenizer(text, add_special_tokens=False)`).
        texts: The documents to tokenize.
        length: Tokens per window; shorter documents are left out.

    Returns:
        One list of `length` token ids per document long enough, in the order of `texts`.

    Raises:
        ValueError: If `length` is not an integer >= 1, `texts` is a single string, or a text is not a string.

    Examples:
        >>> from hf_memory.data import word_level_tokenizer
        >>> tok = word_level_tokenizer(["a", "b", "c"])
        >>> document_windows(tok, ["a b c a", "b c", "c c c"], 3)
        [[4, 5, 6], [6, 6, 6]]
    """
    length = check_integer(length, "length", minimum=1)
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise ValueError(f"`texts` must be an iterable of strings (a list of documents), got {type(texts).__name__}.")
    windows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{i}]` must be a string, got {type(text).__name__}.")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            windows.append(ids[:length])
    return windows
