"""Text-level ROUGE-L: the number the goldfish paper reports, from decoded text rather than token ids."""

from __future__ import annotations

from collections.abc import Sequence

from .._utils import require_extra


def text_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each decoded prediction against its reference, as `evaluate`'s `rouge` scores a pair.

    `evaluate.load("rouge")` (a module on the Hub, so not loadable offline) scores each pair with rouge_score's
    `RougeScorer(["rougeL"], use_stemmer=False)`: words are the runs of ASCII letters and digits, lower-cased;
    everything else separates words and non-ASCII characters are dropped. Hans et al. (2024) call it once per
    sample and average the results; the mean of this list is that number. (One `compute` over all samples would
    instead return the median of a random bootstrap of the mean.)

    Args:
        predictions: The generated texts, one per sample.
        references: The true texts, one per sample, in the same order.

    Returns:
        One F-measure in [0, 1] per sample; 0.0 where either text has no word.

    Raises:
        ImportError: If rouge_score (the `analysis` extra) is not installed.
        ValueError: If an argument is not a list of strings, or the two differ in length.

    Examples:
        >>> text_rouge_l(["The cat sat, on the mat!"], ["the cat sat on a mat"])
        [0.8333333333333334]
    """
    for name, texts in (("predictions", predictions), ("references", references)):
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise ValueError(f"`{name}` must be a list of strings, got {type(texts).__name__}.")
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"`{name}[{bad}]` must be a string, got {type(texts[bad]).__name__}.")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have the same length, got {len(predictions)} and {len(references)}."
        )
    require_extra("analysis", "Text-level ROUGE-L")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def decode_for_rouge(tokenizer, rows: Sequence[Sequence[int]]) -> list[str]:
    """Decode token-id rows the way the goldfish paper's evaluation does before ROUGE-L.

    Args:
        tokenizer: A transformers tokenizer.
        rows: Token-id sequences.

    Returns:
        The texts, special tokens skipped and tokenization spaces kept (`clean_up_tokenization_spaces=False`).
    """
    return tokenizer.batch_decode(list(rows), skip_special_tokens=True, clean_up_tokenization_spaces=False)
