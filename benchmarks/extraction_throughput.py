"""Extraction throughput on SmolLM2: windows/s of the harness against the generation schemes it replaces.

    (a) measure_extraction(method="prefix")   one forward: exact match + longest common prefix
    (b) measure_extraction(method="auto")     (a) + greedy resumed from the KV cache where it diverged
    (c) batched greedy generate, KV cache     = measure_extraction(method="generate")
    (d) the Pythia scheme                     batched greedy generation with use_cache=False
    (e) a per-sample generate loop            batch 1, KV cache
    (f) the floor                             one teacher-forced forward over the same windows

All on the same windows (the slow schemes (d), (e) on a subset), in one run. Goals: (a) >= 0.8x (f) and >= 10x (d);
(b) >= 0.5x (f).

    python benchmarks/extraction_throughput.py [--windows 64] [--slow-windows 8] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import load_model, measure_extraction, stdlib_docstrings  # noqa: E402
from hf_memory.data import document_windows  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


@torch.inference_mode()
def pythia_generate(model, windows, prefix_len, batch_size):
    """Greedy decoding without a KV cache: every step re-runs the whole sequence (Pythia's memorization eval)."""
    suffix_len = windows.shape[1] - prefix_len
    out = []
    for batch in windows.split(batch_size):
        tokens = batch[:, :prefix_len]
        for _ in range(suffix_len):
            next_token = model(input_ids=tokens, use_cache=False).logits[:, -1].argmax(-1)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        out.append(tokens[:, prefix_len:])
    return torch.cat(out)


@torch.inference_mode()
def per_sample_generate(model, windows, prefix_len):
    suffix_len = windows.shape[1] - prefix_len
    return [
        model.generate(
            w[None, :prefix_len], max_new_tokens=suffix_len, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, prefix_len:]
        for w in windows
    ]


@torch.inference_mode()
def teacher_forced_forward(model, windows, batch_size):
    for batch in windows.split(batch_size):
        model(input_ids=batch, use_cache=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--slow-windows", type=int, default=8, help="windows for the slow schemes (d) and (e)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--suffix", type=int, default=32)
    args = parser.parse_args()

    model, tokenizer = load_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    length = args.prefix + args.suffix
    windows = torch.tensor(
        document_windows(tokenizer, stdlib_docstrings(min_chars=200), length)[: args.windows], device=device
    )
    slow = windows[: args.slow_windows]
    n, m = len(windows), len(slow)

    def harness(method, w=windows):
        return measure_extraction(
            model, w, args.prefix, args.suffix, batch_size=args.batch_size, method=method, show_progress=False
        )

    harness("auto", windows[: args.batch_size // 4])  # warm-up
    seconds, rates = {}, {}
    seconds["a"], fast = timed(lambda: harness("prefix"))
    seconds["b"], auto = timed(lambda: harness("auto"))
    seconds["c"], generated = timed(lambda: harness("generate"))
    seconds["d"], pythia = timed(lambda: pythia_generate(model, slow, args.prefix, args.batch_size))
    seconds["e"], looped = timed(lambda: per_sample_generate(model, slow, args.prefix))
    seconds["f"], _ = timed(lambda: teacher_forced_forward(model, windows, args.batch_size))
    for key, s in seconds.items():
        rates[key] = (m if key in "de" else n) / s

    names = {
        "a": "harness, exact match + prefix",
        "b": "harness, + positional score",
        "c": "batched generate (KV cache)",
        "d": "Pythia scheme (no KV cache)",
        "e": "per-sample generate loop",
        "f": "floor: one teacher-forced forward",
    }
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(f"\nExtraction throughput, SmolLM2-135M on {where}, torch {torch.__version__}")
    print(f"{n} windows of {args.prefix}+{args.suffix} tokens ({m} for (d), (e)), batch {args.batch_size}\n")
    print(f"{'':4}{'scheme':<36}{'windows/s':>11}{'vs (f)':>9}")
    for key in "abcdef":
        print(f"({key}) {names[key]:<36}{rates[key]:>11.2f}{rates[key] / rates['f']:>8.2f}x")
    print(
        f"\n(a) / (f) = {rates['a'] / rates['f']:.2f}x (goal >= 0.8)   (a) / (d) = {rates['a'] / rates['d']:.1f}x (goal >= 10)"
        f"   (b) / (f) = {rates['b'] / rates['f']:.2f}x (goal >= 0.5)"
    )

    same = sum(a == g for a, g in zip(auto.predictions, generated.predictions))
    same_lcp = sum(a == g for a, g in zip(auto.longest_common_prefix, generated.longest_common_prefix))
    pythia_same = sum(p.tolist() == a for p, a in zip(pythia, auto.predictions))
    loop_same = sum(p.tolist() == a for p, a in zip(looped, auto.predictions))
    print(
        f"\nagreement with (b): (c) {same}/{n} predictions, {same_lcp}/{n} prefixes; (d) {pythia_same}/{m}; (e) {loop_same}/{m}"
    )
    print(
        f"(a) and (b) agree on exact match: {fast.metrics['exact_match'] == auto.metrics['exact_match']}; "
        f"exact match {auto.metrics['exact_match']:.3f}, positional score {auto.metrics['memorization_score']:.3f}"
    )


if __name__ == "__main__":
    main()
