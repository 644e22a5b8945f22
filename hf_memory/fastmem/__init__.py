"""FastMem (Zhu et al. 2024): memorize the prompt into the last FFN (or several) before answering, so the model
follows its context; with the last-FFN PEFT configs it builds on and the official settings as presets."""

from .callback import FastMemCallback
from .config import FASTMEM_PRESETS, FastMemConfig
from .fastmem import FastMem, MemorizedPrompt, fastmem_generate, is_memorizing
from .inputs import context_as_assistant_turn
from .last_ffn import last_ffn_lora_config, last_ffn_modules


__all__ = [
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
]
