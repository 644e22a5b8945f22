"""Cost of `membership_scores`: every one-pass attack against one teacher-forced forward over the same samples.

The reference scheme is what any loss-based audit costs at least: the same documents (token ids), in the same
length-sorted batches of `MembershipConfig.batch_size`, one forward pass of the model under `torch.inference_mode`,
the logits and nothing more (the strictest reference: not even the loss is computed from them). Against it, side by side and alternating (so that the
noise of the shared machine hits both alike), with medians over the repeats:

- `membership_scores` with every one-pass attack (`loss`, `zlib`, `min_k`, `min_k_plus_plus`; `zlib` decodes the
  ids with the tokenizer): goal <= 1.1x the forward;
- the same with a reference model (a copy of the model: one forward pass more, `reference`): goal <= 2.2x.

Times are the CPU time of the process (one torch thread), which the other jobs of a shared machine disturb much
less than the wall time (printed too).

The `loss` of `membership_scores` must equal the mean NLL computed from the forward's logits (checked). Memory: peak resident memory (`VmHWM`) of a streamed run (documents
from a generator) over `n` documents and over 100 x `n`, each in a fresh process, of a small Llama built in code:
goal, the large run's peak within +10% of the small run's (also printed: the growth above the memory held once the
model is built and warmed up, which is stricter). Both with glibc's default allocator and with a fixed mmap
threshold (`MALLOC_MMAP_THRESHOLD_`): by default glibc serves large blocks from its heap once some were freed, and
the heap grows by fragmentation with the number of batches, whatever the program holds.

    python benchmarks/membership_cost.py --out benchmarks/results/membership_cost.json   # SmolLM2-135M, minutes
    python benchmarks/membership_cost.py --model tiny      # a small Llama built in code, for a quick look
    python benchmarks/membership_cost.py --small           # tiny model, few documents, 2 repeats (the test runs this)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory.membership import MembershipConfig, membership_scores  # noqa: E402


def tiny_model(vocab: int = 8192, hidden: int = 256):
    """A small Llama built in code, and a stand-in tokenizer that decodes ids to words (for `zlib`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    return LlamaForCausalLM(config).eval(), IdTokenizer(vocab)


class IdTokenizer:
    """Decodes ids as words `w<id>`: enough for `zlib` and for the vocabulary checks."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(f"w{int(i)}" for i in ids)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row) for row in rows]


def documents(n: int, vocab: int, seed: int = 0, low: int = 32, high: int = 128) -> list[list[int]]:
    """`n` token-id documents of random lengths in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (n,), generator=generator).tolist()
    return [torch.randint(0, vocab, (length,), generator=generator).tolist() for length in lengths]


def forward_losses(model, docs: list[list[int]], batch_size: int, loss: bool = True) -> list[float]:
    """The reference scheme: one teacher-forced forward per length-sorted batch (the logits only, the timed
    reference); with `loss`, each row's mean NLL from them too (the check)."""
    out = [0.0] * len(docs)
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            length = max(len(docs[i]) for i in batch)
            ids = torch.zeros(len(batch), length, dtype=torch.long)
            mask = torch.zeros(len(batch), length, dtype=torch.long)
            for j, i in enumerate(batch):
                ids[j, : len(docs[i])] = torch.tensor(docs[i])
                mask[j, : len(docs[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if not loss:
                continue
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
            for j, i in enumerate(batch):
                out[i] = float(nll[j].sum()) / (len(docs[i]) - 1)
    return out


def timed(function) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call. With one torch thread the CPU time is what the
    call costs; the wall time also counts the other jobs of a shared machine."""
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    return time.process_time() - cpu, time.perf_counter() - wall


def compare_time(model, tokenizer, docs, repeats: int) -> dict:
    reference = copy.deepcopy(model)
    batch_size = MembershipConfig.batch_size
    max_tokens = max(len(d) for d in docs)
    losses = forward_losses(model, docs, batch_size)
    result = membership_scores(model, docs, tokenizer=tokenizer, max_tokens=max_tokens, show_progress=False)
    assert sorted(result.attacks) == ["loss", "min_k", "min_k_plus_plus", "zlib"], result.attacks
    gap = max(abs(a + b) for a, b in zip(result.scores["loss"], losses))
    assert gap < 1e-4, f"the two schemes' losses differ by {gap}"
    schemes = {
        "forward (reference scheme)": lambda: forward_losses(model, docs, batch_size, loss=False),
        "one-pass attacks": lambda: membership_scores(
            model, docs, tokenizer=tokenizer, max_tokens=max_tokens, show_progress=False
        ),
        "with a reference model": lambda: membership_scores(
            model, docs, tokenizer=tokenizer, reference_model=reference, max_tokens=max_tokens, show_progress=False
        ),
    }
    runs = {name: [] for name in schemes}
    for _ in range(repeats):  # alternating, so machine noise hits every scheme alike
        for name, function in schemes.items():
            runs[name].append(timed(function))
    medians = {name: statistics.median(cpu for cpu, _ in values) for name, values in runs.items()}
    wall = {name: statistics.median(w for _, w in values) for name, values in runs.items()}
    forward, forward_wall = medians["forward (reference scheme)"], wall["forward (reference scheme)"]
    tokens = sum(len(d) for d in docs)
    print(f"\n{len(docs)} documents, {tokens} tokens, batch {batch_size}; medians of {repeats} alternating repeats")
    for name, seconds in medians.items():
        print(
            f"  {name:40} CPU {seconds:8.3f} s  {seconds / forward:5.2f}x the forward   (wall "
            f"{wall[name]:8.3f} s, {wall[name] / forward_wall:5.2f}x)"
        )
    return {
        "documents": len(docs),
        "tokens": tokens,
        "repeats": repeats,
        "cpu_and_wall_seconds": runs,
        "median_cpu_seconds": medians,
        "median_wall_seconds": wall,
        "one_pass_ratio": medians["one-pass attacks"] / forward,
        "reference_ratio": medians["with a reference model"] / forward,
        "one_pass_wall_ratio": wall["one-pass attacks"] / forward_wall,
        "reference_wall_ratio": wall["with a reference model"] / forward_wall,
    }


def resident_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (the peak) of this process, in KiB, from /proc (Linux); `ru_maxrss` elsewhere.
    Not `ru_maxrss` on Linux: it keeps the peak of the parent that forked this process across `exec`."""
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(n: int, vocab: int, hidden: int) -> None:
    """In a fresh process: stream `n` documents through `membership_scores`; print the resident memory."""
    torch.set_num_threads(1)
    model, tokenizer = tiny_model(vocab, hidden)
    membership_scores(model, documents(4, vocab), tokenizer=tokenizer, show_progress=False)  # warm up
    before = resident_kib("VmRSS")

    def stream():  # a generator: membership_scores cannot hold the documents
        generator = torch.Generator().manual_seed(1)
        for _ in range(n):
            length = int(torch.randint(32, 129, (1,), generator=generator))
            yield torch.randint(0, vocab, (length,), generator=generator).tolist()

    result = membership_scores(model, stream(), tokenizer=tokenizer, show_progress=False)
    assert len(result) == n
    peak = resident_kib("VmHWM")
    print(json.dumps({"documents": n, "before_kib": before, "peak_kib": peak}))


ALLOCATORS = {
    "glibc default": {},
    # A fixed mmap threshold: every large tensor is mapped and unmapped, so the heap cannot grow by fragmentation
    # (glibc otherwise raises the threshold as large blocks are freed, and serves later ones from its heap).
    "glibc, fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def compare_memory(n: int, vocab: int, hidden: int) -> dict:
    out = {"model": f"tiny Llama, vocabulary {vocab}, width {hidden}, 2 layers", "allocators": {}}
    print(f"\nstreamed peak memory (tiny Llama, vocabulary {vocab}, width {hidden}; each run in a fresh process):")
    for allocator, env in ALLOCATORS.items():
        runs = {}
        for count in (n, 100 * n):
            done = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--memory-child",
                    str(count),
                    "--vocab",
                    str(vocab),
                    "--hidden",
                    str(hidden),
                ],  # fmt: skip
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **env},
            )
            runs[count] = json.loads(done.stdout.strip().splitlines()[-1])
        growth = {count: (r["peak_kib"] - r["before_kib"]) / 1024 for count, r in runs.items()}
        ratio = runs[100 * n]["peak_kib"] / runs[n]["peak_kib"]
        print(f"  {allocator}:")
        for count, r in runs.items():
            print(
                f"    {count:7d} documents: peak {r['peak_kib'] / 1024:8.1f} MiB, {growth[count]:6.1f} MiB above the start"
            )
        print(f"    100x the documents: peak {100 * (ratio - 1):+.1f}% (goal <= +10%)")
        out["allocators"][allocator] = {
            "env": env,
            "runs": {str(count): r for count, r in runs.items()},
            "growth_mib": {str(count): g for count, g in growth.items()},
            "peak_ratio": ratio,
        }
    out["peak_ratio"] = out["allocators"]["glibc default"]["peak_ratio"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny model, few documents, 2 repeats (quick)")
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--documents", type=int, default=None, help="documents timed (default 16; 8 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 5; 2 with --small)")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=8192, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.vocab, args.hidden)
        return
    torch.set_num_threads(1)
    model_name = "tiny" if args.small else args.model
    n = args.documents or (8 if args.small else 16)
    repeats = args.repeats or (2 if args.small else 5)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread; torch "
        f"{torch.__version__}"
    )
    print(f"machine: {machine}")
    if model_name == "smollm2":
        from hf_memory import load_model

        model, tokenizer = load_model()
        model.eval()
        vocab = len(tokenizer)
        label = "SmolLM2-135M-Instruct (embedded)"
    else:
        vocab = 1024 if args.small else 8192
        model, tokenizer = tiny_model(vocab, 64 if args.small else 256)
        label = f"tiny Llama, vocabulary {vocab}, width {model.config.hidden_size}, 2 layers"
    print(f"model: {label}")
    timing = compare_time(model, tokenizer, documents(n, vocab), repeats)
    memory = compare_memory(4 if args.small else 64, 1024 if args.small else 8192, 64 if args.small else 256)
    print(
        f"\none-pass attacks: {timing['one_pass_ratio']:.2f}x the forward (goal <= 1.1x); with a reference: "
        f"{timing['reference_ratio']:.2f}x (goal <= 2.2x); streamed peak memory at 100x the documents: "
        f"{100 * (memory['peak_ratio'] - 1):+.1f}% (goal <= +10%; with a fixed mmap threshold "
        f"{100 * (memory['allocators']['glibc, fixed mmap threshold']['peak_ratio'] - 1):+.1f}%)"
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump({"machine": machine, "model": label, "timing": timing, "memory": memory}, file, indent=2)


if __name__ == "__main__":
    main()
