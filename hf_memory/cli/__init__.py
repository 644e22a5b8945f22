"""The `hf-memory` command line: `hf-memory demo` and `hf-memory measure`."""

from .main import build_parser, main


__all__ = ["build_parser", "main"]
