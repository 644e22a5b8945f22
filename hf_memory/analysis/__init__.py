"""Memorization beyond extraction: latent memorization (Duan et al. 2024), signals from one forward pass (ROME,
Chen et al. 2024) and a predictor fitted on them. `latent` and `predictor` need the `analysis` extra."""

from typing import TYPE_CHECKING

from .._utils import lazy_getattr


_LAZY = {
    "latent": ["CEDiagnosticResult", "LatentScanResult", "ce_diagnostic", "latent_memorization_scan"],
    "signals": [
        "POOLS",
        "PREDICTOR_FEATURES",
        "MemorizationSignals",
        "NgramCounts",
        "RepresentationSimilarity",
        "memorization_signals",
        "ngram_counts",
        "representation_similarity",
        "token_entropy",
    ],
    "predictor": ["DEFAULT_PREDICTOR_FEATURES", "MemorizationPredictor", "PredictorReport", "extraction_labels"],
}

if TYPE_CHECKING:
    from .latent import CEDiagnosticResult, LatentScanResult, ce_diagnostic, latent_memorization_scan
    from .predictor import DEFAULT_PREDICTOR_FEATURES, MemorizationPredictor, PredictorReport, extraction_labels
    from .signals import (
        POOLS,
        PREDICTOR_FEATURES,
        MemorizationSignals,
        NgramCounts,
        RepresentationSimilarity,
        memorization_signals,
        ngram_counts,
        representation_similarity,
        token_entropy,
    )

__getattr__, __dir__ = lazy_getattr(__name__, globals(), _LAZY)

__all__ = sorted(name for names in _LAZY.values() for name in names)
