"""Canaries (Carlini et al. 2019, "The Secret Sharer"): random secrets planted in training data, and their exposure."""

from .callback import CANARY_LOG_PREFIX, CanaryExposureCallback
from .canaries import insert_canaries, make_canaries
from .config import SLOT, CanaryConfig
from .exposure import (
    ENUMERATION_LIMIT,
    EXPOSURE_METHODS,
    ExposureResult,
    canary_exposure,
    canary_log_perplexity,
    check_tokenization,
)


__all__ = [
    "CANARY_LOG_PREFIX",
    "ENUMERATION_LIMIT",
    "EXPOSURE_METHODS",
    "SLOT",
    "CanaryConfig",
    "CanaryExposureCallback",
    "ExposureResult",
    "canary_exposure",
    "canary_log_perplexity",
    "check_tokenization",
    "insert_canaries",
    "make_canaries",
]
