"""MemControl (Dutt et al., WACV 2025): search which parts of a model to fine-tune, so that it learns the data
without memorizing it. Masks over the model's groups (`maskable_groups`), PEFT methods applied per mask
(`MemControlMask`), memorization and quality objectives, the Optuna search (`MemControlSearch`) and the tile-L2
extraction attack for diffusion models (`diffusion_extraction_attack`)."""

from .attack import ExtractionAttackResult, diffusion_extraction_attack, tile_distance
from .config import MemControlSearchConfig
from .groups import maskable_groups
from .mask import MemControlMask, count_parameters
from .objectives import (
    causal_lm_loss,
    denoising_loss,
    extraction_rate,
    frechet_distance,
    generated_fid,
    noise_magnitude,
)
from .search import MemControlResult, MemControlSearch, MemControlTrial, hypervolume, pareto_front
from .svdiff import SpectralShift, add_svdiff
from .training import train_causal_lm, train_unet


__all__ = [
    "ExtractionAttackResult",
    "MemControlMask",
    "MemControlResult",
    "MemControlSearch",
    "MemControlSearchConfig",
    "MemControlTrial",
    "SpectralShift",
    "add_svdiff",
    "causal_lm_loss",
    "count_parameters",
    "denoising_loss",
    "diffusion_extraction_attack",
    "extraction_rate",
    "frechet_distance",
    "generated_fid",
    "hypervolume",
    "maskable_groups",
    "noise_magnitude",
    "pareto_front",
    "tile_distance",
    "train_causal_lm",
    "train_unet",
]
