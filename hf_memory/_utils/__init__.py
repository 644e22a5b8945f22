"""Internals shared by the capabilities (diffusers' `hooks/_common.py` pattern): import from here, never from a
sibling capability's private names."""

from typing import TYPE_CHECKING

from .anatomy import (
    ATTENTION_NAMES,
    DENOISER_CALLS,
    FFN_LAYOUTS,
    FFN_NAMES,
    FINAL_NORM,
    LayerStack,
    attention_window,
    check_denoiser,
    denoiser,
    denoiser_problem,
    find_layers,
    forward_parameters,
    is_adaptable,
    is_gpt2_conv1d,
    model_dtype,
    pipeline_denoiser,
    predict_noise,
)
from .checks import (
    as_token_ids,
    check_bool,
    check_choice,
    check_integer,
    check_keywords,
    check_number,
    check_vocabulary,
    vocabulary_size,
)
from .config import VERSION_KEY, HubConfigMixin, push_saved_to_hub
from .files import (
    atomic_write,
    check_writable,
    folder_lock,
    is_local_path,
    is_saved_dataset,
    metric_folder,
    read_json,
    writable_problem,
    write_json,
)
from .imports import EXTRAS, is_available, require_extra
from .lazy import lazy_getattr
from .modeling import (
    cache_io,
    changing_model,
    config_digest,
    eval_mode,
    exclusive,
    is_prompt_learning,
    model_device,
    model_identity,
    restored,
    supports_logits_to_keep,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from .progress import check_progress, progress_bar
from .sequences import as_sequences, iter_sequences, leading_windows
from .store import describe_differences
from .training import calling_trainer, log_through_trainer, train_steps
from .version import __version__, is_newer_version


if TYPE_CHECKING:
    from .callbacks import (
        MeasuringCallback,
        check_every,
        global_random_states_kept,
        is_measuring,
        measuring,
        unwrap_model,
    )

# The measuring-callback base imports transformers' Trainer machinery: loaded on first use.
__getattr__, __dir__ = lazy_getattr(
    __name__,
    globals(),
    {
        "callbacks": [
            "MeasuringCallback",
            "check_every",
            "global_random_states_kept",
            "is_measuring",
            "measuring",
            "metric_folder",
            "unwrap_model",
        ]
    },
)


__all__ = [
    "ATTENTION_NAMES",
    "DENOISER_CALLS",
    "EXTRAS",
    "FFN_LAYOUTS",
    "FFN_NAMES",
    "FINAL_NORM",
    "VERSION_KEY",
    "HubConfigMixin",
    "LayerStack",
    "MeasuringCallback",
    "__version__",
    "as_sequences",
    "as_token_ids",
    "atomic_write",
    "attention_window",
    "cache_io",
    "calling_trainer",
    "changing_model",
    "check_bool",
    "check_choice",
    "check_denoiser",
    "check_every",
    "check_integer",
    "check_keywords",
    "check_number",
    "check_progress",
    "check_vocabulary",
    "check_writable",
    "config_digest",
    "denoiser",
    "denoiser_problem",
    "describe_differences",
    "eval_mode",
    "exclusive",
    "find_layers",
    "folder_lock",
    "forward_parameters",
    "global_random_states_kept",
    "is_adaptable",
    "is_available",
    "is_gpt2_conv1d",
    "is_local_path",
    "is_measuring",
    "is_newer_version",
    "is_prompt_learning",
    "is_saved_dataset",
    "iter_sequences",
    "lazy_getattr",
    "leading_windows",
    "log_through_trainer",
    "measuring",
    "model_device",
    "model_dtype",
    "model_identity",
    "pipeline_denoiser",
    "predict_noise",
    "progress_bar",
    "push_saved_to_hub",
    "read_json",
    "require_extra",
    "restored",
    "supports_logits_to_keep",
    "tokenizer_fingerprint",
    "train_steps",
    "unwrap_model",
    "vocabulary_size",
    "weights_fingerprint",
    "writable_problem",
    "write_json",
]
