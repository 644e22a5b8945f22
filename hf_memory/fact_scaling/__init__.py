"""Fact-memorization scaling laws (Lu et al. 2024): a synthetic fact set, fact capacity as a metric and a Trainer
callback, the linear (parameters) and negative-exponential (epochs) laws fitted with bootstrap intervals and
inverted, and the compatibility, preference and overwriting experiments."""

from .callback import FactCapacityCallback
from .capacity import FactCapacityResult, fact_capacity
from .encoding import encode_facts, encode_prompt_target
from .experiments import compatibility_experiment, overwriting_experiment, preference_experiment
from .facts import Fact, SyntheticFactSet
from .fitting import CapacityFit, RequiredScale, fit_epoch_capacity, fit_linear_capacity, required_scale
from .training import FactTrainingConfig, TrainingHistory, non_embedding_parameters, train_on_facts


__all__ = [
    "CapacityFit",
    "Fact",
    "FactCapacityCallback",
    "FactCapacityResult",
    "FactTrainingConfig",
    "RequiredScale",
    "SyntheticFactSet",
    "TrainingHistory",
    "compatibility_experiment",
    "encode_facts",
    "encode_prompt_target",
    "fact_capacity",
    "fit_epoch_capacity",
    "fit_linear_capacity",
    "non_embedding_parameters",
    "overwriting_experiment",
    "preference_experiment",
    "required_scale",
    "train_on_facts",
]
