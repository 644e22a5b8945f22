"""The names the documentation's Python blocks take as given (`model`, `tokenizer`, `train_dataset`, `pipe`, ...),
built small and fresh for every block so that `make test` can run the README and the docs site offline in seconds.

pytest-markdown-docs executes every ```python block of `README.md` and `docs/` (blocks marked `notest` excepted,
each with the reason next to it); the root `conftest.py` hands it `snippet_globals()` and runs each block in a
temporary working directory.
"""

from __future__ import annotations

import functools
import json
import os

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from hf_memory.data import stdlib_docstrings
from tests.testing_utils import docstring_bpe, tiny_causal_lm


CHAT_TEMPLATE = (
    "{% for message in messages %}<bos>{{ message['role'] }}\n{{ message['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant\n{% endif %}"
)


def snippet_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on standard-library docstrings, with a chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=docstring_bpe(), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.cache
def _documents() -> tuple[tuple[int, ...], ...]:
    tokenizer = snippet_tokenizer()
    ids = [tokenizer(text)["input_ids"] for text in stdlib_docstrings(min_chars=600, max_docs=64)]
    return tuple(tuple(row[:96]) for row in ids if len(row) >= 96)


@functools.cache
def _memorizing_state() -> dict:
    """A tiny Llama trained until it reproduces the first 8 of the 16 `windows` exactly (the other 8 it never saw),
    so that extraction, signals and predictors have both kinds of window to tell apart. About 3 s, once."""
    windows = torch.tensor([list(row[:64]) for row in _documents()[:8]])
    model = _untrained_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(input_ids=windows, labels=windows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _untrained_model():
    return tiny_causal_lm(vocab_size=len(snippet_tokenizer()), hidden=64, seed=0)


def _memorizing_model():
    model = _untrained_model()
    model.load_state_dict(_memorizing_state())
    return model.eval()


def _lm_dataset(rows) -> Dataset:
    rows = [list(row) for row in rows]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})


def _pipeline_names() -> dict:
    from tests.test_nemo import WORDS, tiny_pipeline

    return {
        "pipe": tiny_pipeline(),
        "prompt": " ".join(WORDS[:3]),
        "non_memorized_prompts": [" ".join(WORDS[i : i + 3]) for i in range(3, 15, 3)],
    }


def snippet_globals(diffusion: bool = True) -> dict:
    """A fresh namespace for one documentation block: tiny models, their data, and the usual imports.

    `model` is a tiny Llama that has memorized the first half of `windows` (and `train_dataset`, the same rows) and
    never saw the second half; `model_before_finetuning` is the same network before that training.
    """
    torch.manual_seed(0)
    tokenizer = snippet_tokenizer()
    documents = _documents()
    windows = [list(row[:64]) for row in documents[:16]]
    context = "The capital of Japan is Osaka, which hosts the parliament and the imperial palace."
    question = "What is the capital of Japan?"
    left = snippet_tokenizer()
    left.padding_side = "left"
    batch = left([context + " " + question, question], return_tensors="pt", padding=True)
    namespace = {
        "torch": torch,
        "model": _memorizing_model(),
        "model_before_finetuning": _untrained_model().eval(),
        "tokenizer": tokenizer,
        "windows": windows,
        "train_dataset": _lm_dataset(windows),
        "train": _lm_dataset(windows),
        "val": _lm_dataset(row[:64] for row in documents[16:24]),
        "chats": Dataset.from_dict(
            {"messages": [[{"role": "user", "content": question}, {"role": "assistant", "content": context}]] * 8}
        ),
        "input_ids": torch.tensor(windows[:2]),
        "labels": torch.tensor(windows[:2]),
        "train_ids": torch.tensor([list(row) for row in documents[:4]]),
        "training_corpus_ids": [list(row) for row in documents],
        "context": context,
        "question": question,
        "question_ids": tokenizer(question, return_tensors="pt")["input_ids"],
        "prompt_ids": tokenizer(context + " " + question, return_tensors="pt")["input_ids"],
        "batch_ids": batch["input_ids"],
        "batch_mask": batch["attention_mask"],
    }
    if diffusion:
        namespace.update(_pipeline_names())
    return namespace


def write_snippet_files(folder: str | os.PathLike) -> None:
    """The files the blocks read from their working directory: `train.jsonl` (a "text" field per line) and
    `notes.txt`, both standard-library docstrings."""
    texts = stdlib_docstrings(min_chars=600, max_docs=24)
    with open(os.path.join(folder, "train.jsonl"), "w") as file:
        file.writelines(json.dumps({"text": text}) + "\n" for text in texts)
    with open(os.path.join(folder, "notes.txt"), "w") as file:
        file.write("\n\n".join(texts[:8]))
