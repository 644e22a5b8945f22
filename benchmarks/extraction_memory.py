"""Peak memory of a streamed extraction run with `output_dir`: it must not grow with the number of windows.

Each run is a fresh process (so its peak resident set size is its own): a tiny Llama scores windows cut from a
generator of random token sequences, writing rows to a results folder. The large run has `--factor` times the
windows of the small one. Goal: its peak RSS within +10% of the small run's. For contrast, the same large input
kept in memory (no `output_dir`).

    python benchmarks/extraction_memory.py [--windows 500] [--factor 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(windows: int, output_dir: str | None) -> None:
    """Run one measurement and print its peak RSS (MiB), windows and seconds as JSON."""
    sys.path.insert(0, ROOT)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_memory import measure_extraction

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()

    def sequences():
        generator = torch.Generator().manual_seed(1)
        for _ in range(windows):
            yield torch.randint(0, 512, (64,), generator=generator).tolist()

    start = time.perf_counter()
    result = measure_extraction(
        model, sequences(), 32, 32, batch_size=64, show_progress=False, output_dir=output_dir, flush_every=8
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak, "windows": result.num_windows, "seconds": seconds}))


def measure(windows: int, output_dir: str | None) -> dict:
    args = [sys.executable, __file__, "--child", str(windows)] + ([output_dir] if output_dir else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=500, help="windows of the small run")
    parser.add_argument("--factor", type=int, default=100, help="the large run has this many times more")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(args.windows, os.path.join(tmp, "small"))
        large = measure(args.windows * args.factor, os.path.join(tmp, "large"))
        in_memory = measure(args.windows * args.factor, None)
    print(f"{'run':<34}{'windows':>10}{'peak RSS MiB':>14}{'windows/s':>11}")
    for name, row in [
        ("streamed to disk, small", small),
        (f"streamed to disk, {args.factor}x", large),
        (f"in memory, {args.factor}x", in_memory),
    ]:
        print(f"{name:<34}{row['windows']:>10}{row['peak_mib']:>14.1f}{row['windows'] / row['seconds']:>11.0f}")
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"\npeak RSS, {args.factor}x windows / small (streamed): {ratio:.3f}x (goal <= 1.10x)")
    print(f"peak RSS, in memory / streamed at {args.factor}x: {in_memory['peak_mib'] / large['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
