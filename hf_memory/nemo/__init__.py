"""NeMo for diffusers (Hintersdorf et al. 2024): find the cross-attention value channels that carry a memorized
image, and switch them off with a diffusers hook. Needs the `diffusers` extra."""

from .._utils import require_extra


require_extra("diffusers", "NeMo")

from .config import NeMoConfig  # noqa: E402
from .hooks import NEMO_HOOK, NeMoHook, apply_nemo, remove_nemo, value_projection_names  # noqa: E402
from .localization import (  # noqa: E402
    REFINEMENTS,
    NeMoResult,
    localize_memorization_neurons,
    refine_selection,
    search_initial_selection,
)
from .scoring import (  # noqa: E402
    SCORES,
    MemorizationScorer,
    NeMoScorerConfig,
    memorization_score,
    nemo_memorization_score,
    official_min_size,
)
from .statistics import (  # noqa: E402
    PAPER_BLOCKS,
    ActivationStatistics,
    compute_activation_statistics,
    value_activations,
)


__all__ = [
    "NEMO_HOOK",
    "PAPER_BLOCKS",
    "REFINEMENTS",
    "SCORES",
    "ActivationStatistics",
    "MemorizationScorer",
    "NeMoConfig",
    "NeMoHook",
    "NeMoResult",
    "NeMoScorerConfig",
    "apply_nemo",
    "compute_activation_statistics",
    "localize_memorization_neurons",
    "memorization_score",
    "nemo_memorization_score",
    "official_min_size",
    "refine_selection",
    "remove_nemo",
    "search_initial_selection",
    "value_activations",
    "value_projection_names",
]
