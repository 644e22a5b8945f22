"""A lazy attribute map for package `__init__` files (trl's pattern): heavy submodules load on first use."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_getattr(package: str, namespace: dict, structure: dict[str, list[str]]) -> tuple[Callable, Callable]:
    """Return `__getattr__` and `__dir__` for a package whose names live in submodules.

    Args:
        package: The package's `__name__`.
        namespace: The package's `globals()`; a loaded name is stored there, so it loads once.
        structure: Submodule (relative, without the dot) -> names it defines.
    """
    where = {name: module for module, names in structure.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
