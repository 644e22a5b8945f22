"""Tokenizers built on the spot, for examples and tests that must not download one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._utils import check_integer


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def word_level_tokenizer(words: Sequence[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level `PreTrainedTokenizerFast`: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then `words` in order.

    Text is split on whitespace and punctuation; every encoding is wrapped in `<bos> ... <eos>`.

    Args:
        words: The vocabulary after the four special tokens, in id order (no duplicates).
        max_length: The tokenizer's `model_max_length`.

    Returns:
        The tokenizer, built in memory (nothing is downloaded).

    Raises:
        ValueError: If `words` holds an empty string, a non-string or a duplicate.

    Examples:
        >>> tok = word_level_tokenizer(["red", "circle"], max_length=8)
        >>> tok("red circle")["input_ids"], len(tok)
        ([1, 4, 5, 2], 6)
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if isinstance(words, (str, bytes, set, frozenset)) or not hasattr(words, "__iter__"):
        raise ValueError(
            f"`words` must be a list of words in id order (a string or a set has no such order), got {type(words).__name__}."
        )
    words = list(words)
    special = {"<pad>", "<bos>", "<eos>", "<unk>"}
    pattern = re.compile(r"\w+|[^\w\s]+")  # what the Whitespace pre-tokenizer keeps as one piece
    bad = [w for w in words if not isinstance(w, str) or w in special or not pattern.fullmatch(w)]
    if bad or len(set(words)) != len(words):
        raise ValueError(
            "`words` must be distinct strings, each one piece for the whitespace pre-tokenizer (letters/digits, or "
            f"punctuation) and none of {sorted(special)}; got {bad[:3] or 'duplicates'}."
        )
    max_length = check_integer(max_length, "max_length", minimum=3, hint="<bos>, a word and <eos> at least")
    vocab = {token: i for i, token in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
