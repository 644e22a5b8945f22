"""Extractable memorization: greedy extraction of training suffixes at forward-pass cost, scored by
`extraction_scores` (which the `evaluate` metric `evaluate.load(EXTRACTABLE_MEMORIZATION)` wraps)."""

from .callback import MEMORIZATION_LOG_PREFIX, MemorizationCallback
from .config import EXTRACTION_METHODS, ExtractionConfig
from .harness import ExtractionResult, check_logits_processor, measure_extraction
from .probabilistic import (
    SamplingConfig,
    extractable_fraction,
    extraction_curve,
    extraction_log_probs,
    extraction_probability,
    queries_to_extract,
    suffix_log_probs,
)
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
    "SamplingConfig",
    "WindowSample",
    "WindowStream",
    "check_logits_processor",
    "extractable_fraction",
    "extraction_curve",
    "extraction_log_probs",
    "extraction_probability",
    "extraction_scores",
    "extraction_windows",
    "measure_extraction",
    "queries_to_extract",
    "sample_windows",
    "suffix_log_probs",
    "text_rouge_l",
]
