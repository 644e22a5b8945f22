"""Probabilistic extraction cost: `extraction_log_probs` against one plain teacher-forced forward on the same windows.

The floor is what the harness pays at least: one forward over the windows, `model(input_ids=batch,
use_cache=False)`, with the logits of every position (as `benchmarks/extraction_throughput.py` times it), and the
same forward keeping only the logits that predict the suffix (`logits_to_keep`, what `extraction_log_probs` runs).
The sampling settings cover each warper: temperature alone, top-k, and top-p (the dearest: the kept set is found
without a sort over the vocabulary). Schemes alternate within each repeat, so machine noise hits all alike; the
median of the repeats is reported. Goal: every setting <= 1.1x the plain forward.

    python benchmarks/probabilistic_extraction.py               # embedded SmolLM2-135M, 32 windows of 32 + 32 tokens
    python benchmarks/probabilistic_extraction.py --model tiny  # a 2-layer Llama, for a quick look
    python benchmarks/probabilistic_extraction.py --threads 1 --output benchmarks/results/probabilistic_extraction.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import document_windows, load_model, stdlib_docstrings  # noqa: E402
from hf_memory.extraction import SamplingConfig, extraction_log_probs  # noqa: E402


SETTINGS = {
    "greedy (temperature None)": SamplingConfig(temperature=None),
    "temperature 0.7": SamplingConfig(temperature=0.7),
    "temperature 1.0, top-k 50": SamplingConfig(temperature=1.0, top_k=50),
    "temperature 0.7, top-p 0.9": SamplingConfig(temperature=0.7, top_p=0.9),
    "temperature 1.0, top-k 50, top-p 0.95": SamplingConfig(temperature=1.0, top_k=50, top_p=0.95),
}


@torch.inference_mode()
def plain_forward(model, windows, batch_size, keep=None):
    for batch in windows.split(batch_size):
        model(input_ids=batch, use_cache=False, **({} if keep is None else {"logits_to_keep": keep}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--output", default=None, help="write the timings and ratios to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    model, tokenizer = load_model()
    if args.model == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    length = args.prefix + args.suffix
    windows = torch.tensor(document_windows(tokenizer, stdlib_docstrings(), length)[: args.windows], device=device)
    n = len(windows)

    schemes = {
        "floor: forward, all logits": lambda: plain_forward(model, windows, args.batch_size),
        "floor: forward, suffix logits": lambda: plain_forward(model, windows, args.batch_size, args.suffix + 1),
    }
    for name, config in SETTINGS.items():
        schemes[name] = lambda config=config: extraction_log_probs(
            model, windows, args.prefix, config, batch_size=args.batch_size
        )
    for scheme in schemes.values():  # warm-up
        scheme()
    times = {name: [] for name in schemes}
    for _ in range(args.repeats):
        for name, scheme in schemes.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scheme()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}

    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(
        f"\nProbabilistic extraction cost, {'SmolLM2-135M' if args.model == 'smollm2' else 'tiny Llama'} on {where}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"{n} windows of {args.prefix}+{args.suffix} tokens, batch {args.batch_size}, vocabulary {len(tokenizer)}; "
        f"median of {args.repeats} repeats\n"
    )
    floor, floor_kept = median["floor: forward, all logits"], median["floor: forward, suffix logits"]
    print(f"{'scheme':<42}{'seconds':>9}{'windows/s':>11}{'vs forward':>12}{'vs same logits':>16}")
    for name, seconds in median.items():
        print(f"{name:<42}{seconds:>9.3f}{n / seconds:>11.1f}{seconds / floor:>11.3f}x{seconds / floor_kept:>15.3f}x")
    worst = max(median[name] / floor for name in SETTINGS)
    print(
        f"\nGoal: every setting <= 1.1x one plain forward: {'met' if worst <= 1.1 else 'NOT met'} (worst {worst:.3f}x)"
    )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(
                {
                    "machine": where,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                    "settings": {k: v for k, v in vars(args).items() if k != "output"},
                    "seconds": times,
                    "median_seconds": median,
                    "ratio_vs_forward_all_logits": {name: median[name] / floor for name in median},
                    "ratio_vs_forward_suffix_logits": {name: median[name] / floor_kept for name in median},
                    "goal": "every setting <= 1.1x one plain forward (all logits)",
                    "worst_ratio": worst,
                    "goal_met": worst <= 1.1,
                },
                f,
                indent=2,
            )
    return median


if __name__ == "__main__":
    main()
