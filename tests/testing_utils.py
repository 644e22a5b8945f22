"""Helpers the tests share (transformers' `testing_utils` in spirit): tiny models built in code, a tokenizer trained
here, runs in two processes, and the examples as modules. Fixtures stay in `conftest.py`; import these by name."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    OPTConfig,
    OPTForCausalLM,
    TrainingArguments,
)

from hf_memory.data import stdlib_docstrings


TINY_VOCAB = 128


def tiny_causal_lm(
    arch: str = "llama", vocab_size: int = TINY_VOCAB, hidden: int = 16, layers: int = 2, seed: int = 0
):
    """A seeded, randomly initialised causal LM of the given architecture, small enough for CPU unit tests."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        return LlamaForCausalLM(config)
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab_size,
                n_embd=hidden,
                n_layer=layers,
                n_head=4,
                n_positions=256,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    if arch == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=256,
        )
        return GPTNeoXForCausalLM(config)
    if arch == "opt":
        config = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=hidden,
        )
        return OPTForCausalLM(config)
    raise ValueError(f"unknown tiny architecture {arch!r}")


@functools.cache
def docstring_bpe():
    """A byte-level BPE (a `tokenizers.Tokenizer`, 512 ids, <pad> <bos> <eos> first) trained here on standard-library
    docstrings: no download. Trained once per process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(stdlib_docstrings(min_chars=200), trainer=trainer)
    return bpe


def run_two_processes(script: str, out_path, *args) -> list:
    """Run `tests/<script>` in 2 CPU processes with torchrun (gloo); it writes a JSON list, one entry per rank."""
    here = os.path.dirname(os.path.abspath(__file__))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + (os.getpid() + hash(script)) % 2000),
        os.path.join(here, script),
        str(out_path),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(here)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out_path) as f:
        return json.load(f)


def gather_to_json(mine: dict, out_path: str) -> None:
    """In a `run_two_processes` script: gather every rank's `mine` and have rank 0 write the list to `out_path`
    (what `run_two_processes` returns)."""
    import torch.distributed as dist

    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(everyone, f)


def leave_process_group() -> None:
    """End a `run_two_processes` script: wait for every rank, then exit without interpreter teardown.

    Tearing down gloo (destroying the group, or freeing it at exit) sometimes aborts a rank with "terminate called
    without an active exception" or deadlocks on the GIL; the results are already on disk, so skip the teardown.
    """
    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_example(name: str):
    """Import `examples/<name>.py` (the examples folder is not a package)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `import` would: worker processes find the example's functions by name
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `examples/<name>.py` with `args` in a fresh interpreter, as a user would from the repository root (offline,
    the repository importable, matplotlib without a display); its output is captured as text."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": root, "MPLBACKEND": "Agg"}
    command = [sys.executable, os.path.join("examples", f"{name}.py"), *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def model_state(model) -> dict:
    """A copy of every tensor of the model's state dict, to check later that it came back bit for bit."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before: dict) -> bool:
    """Whether the model's state dict equals `before` (from `model_state`) bit for bit."""
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def training_args(tmp_path, args_class=TrainingArguments, **overrides):
    """Quiet, CPU, 4-step `TrainingArguments` (or `args_class`) writing to `tmp_path`, with `overrides` laid over."""
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_steps": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return args_class(**settings)


class BanToken(LogitsProcessor):
    """A logits processor that forbids one token at every step, as a decoding guard would."""

    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token] = -float("inf")
        return scores
