"""hf-memory: measure, prevent and use memorization in Hugging Face models.

Every public name is importable from here and loads its capability on first use (trl's lazy `__init__`), so
`import hf_memory` is cheap and a capability whose extra is missing fails only when it is used, naming the
`pip install "hf-memory[...]"` to run.
"""

from typing import TYPE_CHECKING

from ._utils import lazy_getattr
from ._utils.version import __version__
from .metrics import EXTRACTABLE_MEMORIZATION, GRAPH_REASONING, MEMBERSHIP_INFERENCE


_LAZY = {
    "_utils": ["HubConfigMixin"],
    "models": ["default_model_path", "load_model"],
    "data": [
        "document_windows",
        "iter_token_sequences",
        "load_token_sequences",
        "stdlib_docstrings",
        "word_level_tokenizer",
    ],
    "goldfish": [
        "GOLDFISH_STRATEGIES",
        "GoldfishConfig",
        "GoldfishDataCollator",
        "GoldfishSFTConfig",
        "GoldfishSFTTrainer",
        "GoldfishTrainer",
        "GoldfishTrainingArguments",
        "apply_goldfish",
        "goldfish_mask",
    ],
    "extraction": [
        "MEMORIZATION_LOG_PREFIX",
        "ExtractionConfig",
        "ExtractionResult",
        "MemorizationCallback",
        "SamplingConfig",
        "extractable_fraction",
        "extraction_curve",
        "extraction_log_probs",
        "extraction_probability",
        "extraction_scores",
        "measure_extraction",
        "queries_to_extract",
        "suffix_log_probs",
    ],
    "fastmem": [
        "FASTMEM_PRESETS",
        "FastMem",
        "FastMemCallback",
        "FastMemConfig",
        "MemorizedPrompt",
        "context_as_assistant_turn",
        "fastmem_generate",
        "is_memorizing",
        "last_ffn_lora_config",
        "last_ffn_modules",
    ],
    "analysis": [
        "CEDiagnosticResult",
        "LatentScanResult",
        "MemorizationPredictor",
        "MemorizationSignals",
        "NgramCounts",
        "PredictorReport",
        "RepresentationSimilarity",
        "ce_diagnostic",
        "extraction_labels",
        "latent_memorization_scan",
        "memorization_signals",
        "ngram_counts",
        "representation_similarity",
        "token_entropy",
    ],
    "nemo": [
        "NEMO_HOOK",
        "ActivationStatistics",
        "MemorizationScorer",
        "NeMoConfig",
        "NeMoResult",
        "NeMoScorerConfig",
        "apply_nemo",
        "compute_activation_statistics",
        "localize_memorization_neurons",
        "memorization_score",
        "nemo_memorization_score",
        "remove_nemo",
        "value_activations",
        "value_projection_names",
    ],
    "auditing": ["AuditConfig", "AuditReport", "audit"],
    "membership": [
        "MEMBERSHIP_ATTACKS",
        "MembershipCallback",
        "MembershipConfig",
        "MembershipReport",
        "MembershipResult",
        "blind_baseline_scores",
        "blind_baseline_test",
        "membership_inference_scores",
        "membership_report",
        "membership_scores",
    ],
    "canaries": [
        "CanaryConfig",
        "CanaryExposureCallback",
        "ExposureResult",
        "canary_exposure",
        "canary_log_perplexity",
        "insert_canaries",
        "make_canaries",
    ],
    "memcontrol": [
        "ExtractionAttackResult",
        "MemControlMask",
        "MemControlResult",
        "MemControlSearch",
        "MemControlSearchConfig",
        "MemControlTrial",
        "denoising_loss",
        "diffusion_extraction_attack",
        "maskable_groups",
        "noise_magnitude",
    ],
    "memfree": ["MEMFREE_FALLBACKS", "MEMFREE_MODES", "MemFreeLogitsProcessor", "NgramIndex", "NgramIndexConfig"],
    "fact_scaling": [
        "CapacityFit",
        "FactCapacityCallback",
        "FactCapacityResult",
        "FactTrainingConfig",
        "RequiredScale",
        "SyntheticFactSet",
        "compatibility_experiment",
        "fact_capacity",
        "fit_epoch_capacity",
        "fit_linear_capacity",
        "non_embedding_parameters",
        "overwriting_experiment",
        "preference_experiment",
        "required_scale",
        "train_on_facts",
    ],
    "graph_reasoning": [
        "GRAPH_PATTERNS",
        "GRAPH_TASKS",
        "TransferReport",
        "generate_graph_problems",
        "graph_reasoning_scores",
        "mcnemar_exact",
        "score_graph_answer",
        "shortcut_answers",
        "transfer_report",
    ],
}

if TYPE_CHECKING:
    from ._utils import HubConfigMixin
    from .analysis import (
        CEDiagnosticResult,
        LatentScanResult,
        MemorizationPredictor,
        MemorizationSignals,
        NgramCounts,
        PredictorReport,
        RepresentationSimilarity,
        ce_diagnostic,
        extraction_labels,
        latent_memorization_scan,
        memorization_signals,
        ngram_counts,
        representation_similarity,
        token_entropy,
    )
    from .auditing import AuditConfig, AuditReport, audit
    from .canaries import (
        CanaryConfig,
        CanaryExposureCallback,
        ExposureResult,
        canary_exposure,
        canary_log_perplexity,
        insert_canaries,
        make_canaries,
    )
    from .data import (
        document_windows,
        iter_token_sequences,
        load_token_sequences,
        stdlib_docstrings,
        word_level_tokenizer,
    )
    from .extraction import (
        MEMORIZATION_LOG_PREFIX,
        ExtractionConfig,
        ExtractionResult,
        MemorizationCallback,
        SamplingConfig,
        extractable_fraction,
        extraction_curve,
        extraction_log_probs,
        extraction_probability,
        extraction_scores,
        measure_extraction,
        queries_to_extract,
        suffix_log_probs,
    )
    from .fact_scaling import (
        CapacityFit,
        FactCapacityCallback,
        FactCapacityResult,
        FactTrainingConfig,
        RequiredScale,
        SyntheticFactSet,
        compatibility_experiment,
        fact_capacity,
        fit_epoch_capacity,
        fit_linear_capacity,
        non_embedding_parameters,
        overwriting_experiment,
        preference_experiment,
        required_scale,
        train_on_facts,
    )
    from .fastmem import (
        FASTMEM_PRESETS,
        FastMem,
        FastMemCallback,
        FastMemConfig,
        MemorizedPrompt,
        context_as_assistant_turn,
        fastmem_generate,
        is_memorizing,
        last_ffn_lora_config,
        last_ffn_modules,
    )
    from .goldfish import (
        GOLDFISH_STRATEGIES,
        GoldfishConfig,
        GoldfishDataCollator,
        GoldfishSFTConfig,
        GoldfishSFTTrainer,
        GoldfishTrainer,
        GoldfishTrainingArguments,
        apply_goldfish,
        goldfish_mask,
    )
    from .graph_reasoning import (
        GRAPH_PATTERNS,
        GRAPH_TASKS,
        TransferReport,
        generate_graph_problems,
        graph_reasoning_scores,
        mcnemar_exact,
        score_graph_answer,
        shortcut_answers,
        transfer_report,
    )
    from .membership import (
        MEMBERSHIP_ATTACKS,
        MembershipCallback,
        MembershipConfig,
        MembershipReport,
        MembershipResult,
        blind_baseline_scores,
        blind_baseline_test,
        membership_inference_scores,
        membership_report,
        membership_scores,
    )
    from .memcontrol import (
        ExtractionAttackResult,
        MemControlMask,
        MemControlResult,
        MemControlSearch,
        MemControlSearchConfig,
        MemControlTrial,
        denoising_loss,
        diffusion_extraction_attack,
        maskable_groups,
        noise_magnitude,
    )
    from .memfree import MEMFREE_FALLBACKS, MEMFREE_MODES, MemFreeLogitsProcessor, NgramIndex, NgramIndexConfig
    from .models import default_model_path, load_model
    from .nemo import (
        NEMO_HOOK,
        ActivationStatistics,
        MemorizationScorer,
        NeMoConfig,
        NeMoResult,
        NeMoScorerConfig,
        apply_nemo,
        compute_activation_statistics,
        localize_memorization_neurons,
        memorization_score,
        nemo_memorization_score,
        remove_nemo,
        value_activations,
        value_projection_names,
    )

__getattr__, __dir__ = lazy_getattr(__name__, globals(), _LAZY)

__all__ = sorted(
    [
        "EXTRACTABLE_MEMORIZATION",
        "GRAPH_REASONING",
        "MEMBERSHIP_INFERENCE",
        *(name for names in _LAZY.values() for name in names),
    ]
)
