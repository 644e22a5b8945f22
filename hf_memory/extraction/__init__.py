"""Extractable memorization: greedy extraction of training suffixes at forward-pass cost, scored by
`extraction_scores` (which the `evaluate` metric `evaluate.load(EXTRACTABLE_MEMORIZATION)` wraps)."""

from .callback import MEMORIZATION_LOG_PREFIX, MemorizationCallback
from .config import EXTRACTION_METHODS, ExtractionConfig
from .harness import ExtractionResult, measure_extraction
from .scores import EXTRACTABLE_MEMORIZATION, extraction_scores
from .text import text_rouge_l
from .windows import WindowSample, WindowStream, extraction_windows, sample_windows


__all__ = [
    "EXTRACTABLE_MEMORIZATION",
    "EXTRACTION_METHODS",
    "MEMORIZATION_LOG_PREFIX",
    "ExtractionConfig",
    "ExtractionResult",
    "MemorizationCallback",
    "WindowSample",
    "WindowStream",
    "extraction_scores",
    "extraction_windows",
    "measure_extraction",
    "sample_windows",
    "text_rouge_l",
]
