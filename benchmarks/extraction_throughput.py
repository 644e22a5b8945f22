"""Extraction throughput on SmolLM2: windows/s of the harness against the generation schemes it replaces.

    (a) measure_extraction(method="prefix")   exact match + longest common prefix (chunked verification)
    (b) measure_extraction(method="auto")     (a) + greedy decoding where rows diverge (the positional score)
    (c) batched greedy generate, KV cache     = measure_extraction(method="generate")
    (d) the Pythia scheme                     batched greedy generation with use_cache=False
    (e) a per-sample generate loop            batch 1, KV cache
    (f) the floor                             one teacher-forced forward over the same windows

All on the same docstring windows (the slow schemes (d), (e) on a subset), in one run. Goals: (a) >= 0.8x (f) and
>= 10x (d); (b) >= 0.5x (f).

Then three memorization levels, side by side in the same run: the docstring windows (0%: the base model has not
memorized them), the same prefixes followed by the model's own greedy continuation (100% memorized by
construction), and a half/half mix (every other window). Goals: (b) >= 1.0x (c) at 0%, >= 0.9x (f) at 100%, faster
than both at 50%. `--schedules` adds the verification chunk schedules of `verify_and_decode` where they differ: on
the 100% level and on a "partial" one where every window follows the model's continuation for 1 to suffix - 1
tokens, then the real text (a batch with a window diverging at position 0 makes the same passes under every
schedule: `generate`'s). Every time is the best of `--repeats` runs, interleaved; the load average is read before
the model loads and again at the end.

    python benchmarks/extraction_throughput.py [--windows 64] [--slow-windows 8] [--batch-size 64] [--repeats 3]
        [--schedules]
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
from hf_memory.extraction.decoding import generate_suffixes, verify_and_decode  # noqa: E402


SCHEDULES = ("doubling", 1, 4, 8, 32)


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


@torch.inference_mode()
def chunked(model, windows, prefix_len, batch_size, chunks):
    for batch in windows.split(batch_size):
        verify_and_decode(model, batch, prefix_len, chunks=chunks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--slow-windows", type=int, default=8, help="windows for the slow schemes (d) and (e)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="time every scheme this many times, keep the best")
    parser.add_argument("--schedules", action="store_true", help="also time verify_and_decode's chunk schedules")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    model, tokenizer = load_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    length = args.prefix + args.suffix
    real = torch.tensor(
        document_windows(tokenizer, stdlib_docstrings(min_chars=200), length)[: args.windows], device=device
    )
    with torch.inference_mode():
        continuation = torch.cat([generate_suffixes(model, b, args.prefix) for b in real.split(args.batch_size)])
    memorized = torch.cat([real[:, : args.prefix], continuation], dim=1)
    half = (torch.arange(len(real), device=device) % 2 == 0)[:, None]
    levels = {"0%": real, "50%": torch.where(half, memorized, real), "100%": memorized}
    # window i follows the model for 1 + (7 i mod (suffix - 1)) tokens, then the real text
    followed = 1 + (7 * torch.arange(len(real), device=device)) % (args.suffix - 1)
    from_model = torch.arange(length, device=device)[None] < args.prefix + followed[:, None]
    schedule_levels = {"100%": memorized, "partial": torch.where(from_model, memorized, real)}
    slow = real[: args.slow_windows]
    n, m = len(real), len(slow)

    def harness(method, w):
        return measure_extraction(
            model, w, args.prefix, args.suffix, batch_size=args.batch_size, method=method, show_progress=False
        )

    schemes = {
        "prefix": lambda w: harness("prefix", w),
        "auto": lambda w: harness("auto", w),
        "generate": lambda w: harness("generate", w),
        "floor": lambda w: teacher_forced_forward(model, w, args.batch_size),
    }
    schedules = {f"chunks={c}": lambda w, c=c: chunked(model, w, args.prefix, args.batch_size, c) for c in SCHEDULES}
    schedules["generate"] = lambda w: generate_suffixes(model, w, args.prefix)
    runs = [(level, w, schemes) for level, w in levels.items()]
    runs += [(f"{level} ", w, schedules) for level, w in schedule_levels.items()] if args.schedules else []
    harness("auto", real[: args.batch_size // 4])  # warm-up
    best, results = {}, {}
    for _ in range(args.repeats):
        for level, w, named in runs:
            for name, run in named.items():
                seconds, results[level, name] = timed(lambda: run(w))  # noqa: B023
                best[level, name] = min(best.get((level, name), float("inf")), seconds)
    rate = {key: n / seconds for key, seconds in best.items()}
    seconds_d, pythia = timed(lambda: pythia_generate(model, slow, args.prefix, args.batch_size))
    seconds_e, looped = timed(lambda: per_sample_generate(model, slow, args.prefix))
    rates = {
        "a": rate["0%", "prefix"],
        "b": rate["0%", "auto"],
        "c": rate["0%", "generate"],
        "d": m / seconds_d,
        "e": m / seconds_e,
        "f": rate["0%", "floor"],
    }

    names = {
        "a": "harness, exact match + prefix",
        "b": "harness, + positional score",
        "c": "batched generate (KV cache)",
        "d": "Pythia scheme (no KV cache)",
        "e": "per-sample generate loop",
        "f": "floor: one teacher-forced forward",
    }
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(
        f"\nExtraction throughput, SmolLM2-135M on {where}, torch {torch.__version__}; load average {load:.2f} at "
        f"the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"{n} windows of {args.prefix}+{args.suffix} tokens ({m} for (d), (e)), batch {args.batch_size}, "
        f"best of {args.repeats}\n"
    )
    print(f"{'':4}{'scheme':<36}{'windows/s':>11}{'vs (f)':>9}")
    for key in "abcdef":
        print(f"({key}) {names[key]:<36}{rates[key]:>11.2f}{rates[key] / rates['f']:>8.2f}x")
    print(
        f"\n(a) / (f) = {rates['a'] / rates['f']:.2f}x (goal >= 0.8)   (a) / (d) = {rates['a'] / rates['d']:.1f}x (goal >= 10)"
        f"   (b) / (f) = {rates['b'] / rates['f']:.2f}x (goal >= 0.5)"
    )
    auto, generated, fast = results["0%", "auto"], results["0%", "generate"], results["0%", "prefix"]
    pythia_same = sum(p.tolist() == a for p, a in zip(pythia, auto.predictions))
    loop_same = sum(p.tolist() == a for p, a in zip(looped, auto.predictions))
    print(f"agreement with (b): (d) {pythia_same}/{m}; (e) {loop_same}/{m}")
    print(
        f"(a) and (b) agree on exact match: {fast.metrics['exact_match'] == auto.metrics['exact_match']}; "
        f"exact match {auto.metrics['exact_match']:.3f}, positional score {auto.metrics['memorization_score']:.3f}"
    )

    print("\nMemorization levels (windows/s; (b) auto, (c) generate, (f) floor, (a) prefix)\n")
    header = "".join(f"{name:>10}" for name in ("(b)", "(c)", "(f)", "(a)", "(b)/(c)", "(b)/(f)", "(a)/(f)"))
    print(f"{'level':<7}{'exact':>7}{header}   (b) = (c)")
    for level in levels:
        b, c, f, a = (rate[level, name] for name in ("auto", "generate", "floor", "prefix"))
        auto, generated = results[level, "auto"], results[level, "generate"]
        same = sum(x == y for x, y in zip(auto.predictions, generated.predictions))
        same_lcp = sum(x == y for x, y in zip(auto.longest_common_prefix, generated.longest_common_prefix))
        cells = "".join(f"{x:>10.2f}" for x in (b, c, f, a)) + "".join(f"{x:>9.2f}x" for x in (b / c, b / f, a / f))
        print(f"{level:<7}{auto.metrics['exact_match']:>7.2f}{cells}   {same}/{n}, {same_lcp}/{n}")
    goals = [
        ("(b) >= 1.0x (c) at 0%", rate["0%", "auto"] >= rate["0%", "generate"]),
        ("(b) >= 0.9x (f) at 100%", rate["100%", "auto"] >= 0.9 * rate["100%", "floor"]),
        ("(b) > (c) and > (f) at 50%", rate["50%", "auto"] > max(rate["50%", "generate"], rate["50%", "floor"])),
    ]
    print("\n" + "   ".join(f"{goal}: {'met' if ok else 'NOT met'}" for goal, ok in goals))
    if args.schedules:
        print("\nverify_and_decode's chunk schedules (windows/s, and vs batched generate on the same windows)\n")
        print(f"{'level':<9}{'generate':>10}" + "".join(f"{name:>22}" for name in schedules if name != "generate"))
        for level in schedule_levels:
            c = rate[f"{level} ", "generate"]
            cells = "".join(
                f"{rate[f'{level} ', name]:>13.2f} ({rate[f'{level} ', name] / c:.2f}x)"
                for name in schedules
                if name != "generate"
            )
            print(f"{level:<9}{c:>10.2f}{cells}")


if __name__ == "__main__":
    main()
