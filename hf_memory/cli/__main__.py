"""`python -m hf_memory.cli ...` runs the `hf-memory` command."""

from .main import main


if __name__ == "__main__":
    raise SystemExit(main())
