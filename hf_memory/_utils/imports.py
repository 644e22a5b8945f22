"""Optional dependencies: each capability checks its extra once, and a missing one names the install command."""

from __future__ import annotations

import importlib.util


# extra -> the modules it installs that the code imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "trl": ("trl",),
    "diffusers": ("diffusers", "torchmetrics", "safetensors"),
    "analysis": ("sklearn", "rapidfuzz", "scipy", "rouge_score"),
    "plots": ("matplotlib",),
    "graphs": ("networkx",),
    "memcontrol": ("optuna",),
    "memfree": ("fastbloom_rs",),
    "spaces": ("gradio",),
}


def is_available(module: str) -> bool:
    """Whether `module` can be imported (without importing it).

    Args:
        module: A top-level module name, e.g. "diffusers".
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or without a spec
        return False


def require_extra(extra: str, feature: str) -> None:
    """Raise an `ImportError` naming `pip install "hf-memory[extra]"` if a module of `extra` is missing.

    Args:
        extra: A key of `EXTRAS`.
        feature: What needs it, in the user's words (shown in the message).
    """
    missing = [module for module in EXTRAS[extra] if not is_available(module)]
    if missing:
        names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        verb = "is" if len(missing) == 1 else "are"
        raise ImportError(
            f'{feature} needs {names}, which {verb} not installed: run `pip install "hf-memory[{extra}]"`.'
        )
