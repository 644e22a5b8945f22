"""Extractable memorization: greedy extraction of training suffixes at forward-pass cost, scored by the
`extractable_memorization` metric (`evaluate.load(EXTRACTABLE_MEMORIZATION)`)."""

from ..metrics import EXTRACTABLE_MEMORIZATION
from ..metrics.extractable_memorization.extractable_memorization import extraction_scores
from .callback import MEMORIZATION_LOG_PREFIX, MemorizationCallback
from .harness import EXTRACTION_METHODS, ExtractionResult, measure_extraction
from .probabilistic import (
    SamplingConfig,
    extractable_fraction,
    extraction_curve,
    extraction_log_probs,
    extraction_probability,
    queries_to_extract,
    suffix_log_probs,
)
from .text import text_rouge_l
from .windows import WindowSample, WindowStream, extraction_windows, sample_windows


__all__ = [
    "EXTRACTABLE_MEMORIZATION",
    "EXTRACTION_METHODS",
    "MEMORIZATION_LOG_PREFIX",
    "ExtractionResult",
    "MemorizationCallback",
    "SamplingConfig",
    "WindowSample",
    "WindowStream",
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
