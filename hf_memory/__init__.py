"""hf-memory: measure, prevent and use memorization in Hugging Face models."""

import os as _os
from importlib import import_module

from .goldfish import GOLDFISH_STRATEGIES, GoldfishConfig, GoldfishDataCollator, apply_goldfish, goldfish_mask
from .models import default_model_path, load_model

__version__ = "0.1.0"

# `evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)` loads the metric offline from this folder.
EXTRACTABLE_MEMORIZATION = _os.path.join(_os.path.dirname(__file__), "metrics", "extractable_memorization")

# Trainer classes pull in transformers' Trainer and TRL: import them on first use.
_LAZY = {
    "GoldfishTrainingArguments": "goldfish_config",
    "GoldfishSFTConfig": "goldfish_config",
    "GoldfishTrainer": "goldfish_trainer",
    "GoldfishSFTTrainer": "goldfish_trainer",
    "stdlib_docstrings": "corpus",
    "measure_extraction": "extraction",
    "ExtractionResult": "extraction",
    "FastMem": "fastmem",
    "FastMemConfig": "fastmem",
    "fastmem_generate": "fastmem",
    "MemorizedPrompt": "fastmem",
    "FastMemCallback": "fastmem_callback",
    "context_as_assistant_turn": "fastmem",
    "latent_memorization_scan": "latent",
    "LatentScanResult": "latent",
    "ce_diagnostic": "latent",
    "CEDiagnosticResult": "latent",
    "memorization_signals": "signals",
    "MemorizationSignals": "signals",
    "token_entropy": "signals",
    "ngram_counts": "signals",
    "NgramCounts": "signals",
    "representation_similarity": "signals",
    "RepresentationSimilarity": "signals",
    "MemorizationPredictor": "signals",
    "PredictorReport": "signals",
    "extraction_labels": "signals",
    "NEMO_HOOK": "nemo",
    "NeMoConfig": "nemo",
    "apply_nemo": "nemo",
    "remove_nemo": "nemo",
    "value_projection_names": "nemo",
    "ActivationStatistics": "nemo_localization",
    "NeMoResult": "nemo_localization",
    "compute_activation_statistics": "nemo_localization",
    "memorization_score": "nemo_localization",
    "localize_memorization_neurons": "nemo_localization",
    "value_activations": "nemo_localization",
    "last_ffn_modules": "last_ffn",
    "last_ffn_lora_config": "last_ffn",
}

__all__ = [
    "EXTRACTABLE_MEMORIZATION",
    "GOLDFISH_STRATEGIES",
    "GoldfishConfig",
    "GoldfishDataCollator",
    "apply_goldfish",
    "goldfish_mask",
    "default_model_path",
    "load_model",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
