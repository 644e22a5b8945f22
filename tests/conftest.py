"""Shared fixtures: the tiny architectures, a tokenizer trained here, and the embedded SmolLM2 (loaded once). The helpers
behind them are in `tests/testing_utils.py`."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.testing_utils import docstring_bpe


def pytest_collection_modifyitems(config, items):
    """Every test on the embedded SmolLM2 is slow (it loads a 135M model): mark it so `make test-fast` skips it."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning threads cost seconds per
    call; tests on the embedded SmolLM2 keep torch's default."""
    if "smollm2" in request.fixturenames:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["llama", "gpt2", "gpt_neox", "opt"])
def tiny_arch(request):
    return request.param


@pytest.fixture(scope="session")
def tokenizer():
    """The docstring BPE as a transformers tokenizer."""
    return PreTrainedTokenizerFast(
        tokenizer_object=docstring_bpe(), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct and its tokenizer, loaded offline once per test session."""
    from hf_memory import load_model

    model, tok = load_model()
    model.eval()
    return model, tok
