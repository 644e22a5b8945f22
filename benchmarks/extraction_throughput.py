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

`--grid` measures instead (b) against (c) on the docstring windows (0%: not memorized) at batch sizes 1, 8, 48, 64
and suffix lengths 32, 50 (prefix 32), and (b) against (f) on 64 memorized windows (100%) at batch 64: per round,
each cell's two methods back to back (their order alternating between rounds), the ratio of throughputs per round
(CPU time of this process, and wall time), the median over `--rounds` rounds. Goals: (b) >= 1.0x (c) in every cell,
(b) >= 0.9x (f) at 100%. Each round is written to `--out` as it ends, and a run with the same settings resumes
after the last round written.

`--grid --passes` counts instead, in one untimed run of each method per cell, the forward passes and the token
positions they compute: the cost the time ratios measure, without this machine's noise.

`--small`: a 2-layer Llama built in code and random windows, a small grid, 2 rounds (the test runs this).

    python benchmarks/extraction_throughput.py [--windows 64] [--slow-windows 8] [--batch-size 64] [--repeats 3]
        [--schedules] [--out FILE]
    nohup nice -n 19 python benchmarks/extraction_throughput.py --grid [--rounds 5] \
        --out benchmarks/results/extraction_throughput_grid.json &
    python benchmarks/extraction_throughput.py --grid --passes --out benchmarks/results/extraction_passes_grid.json
    python benchmarks/extraction_throughput.py [--grid [--passes]] --small
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import load_model, measure_extraction, stdlib_docstrings  # noqa: E402
from hf_memory.data import document_windows  # noqa: E402
from hf_memory.extraction import harness as harness_module  # noqa: E402
from hf_memory.extraction.decoding import Regrouper, generate_suffixes, verify_and_decode  # noqa: E402


SCHEDULES = ("doubling", 1, 4, 8, 32)
GRID_BATCHES, GRID_SUFFIXES, GRID_FLOOR_BATCH = (1, 8, 48, 64), (32, 50), 64
SMALL_GRID_BATCHES, SMALL_GRID_SUFFIXES, SMALL_FLOOR_BATCH = (1, 4), (8, 12), 4
# the control, where issue 37 measured the former behaviour slower than generate: every batch parks its diverged rows
GRID_CONTROL, SMALL_GRID_CONTROL = ("8/32", "48/32", "48/50"), ("4/8",)


def cell_windows(batch_size: int) -> int:
    """Windows per grid cell: 8 at batch 1, else at least two batches (so that batches can share decoding) and at
    least 48 windows."""
    return 8 if batch_size == 1 else max(2 * batch_size, 48)


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


def load(args):
    """The model, a function giving `n` windows of `length` tokens, and a description of both."""
    if args.small:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
        model = LlamaForCausalLM(config).eval()

        def windows(length: int, n: int) -> torch.Tensor:
            return torch.randint(0, config.vocab_size, (n, length), generator=torch.Generator().manual_seed(length))

        return model, windows, "a 2-layer Llama built in code (width 64, vocabulary 512), random windows"
    model, tokenizer = load_model()
    model.eval()

    def windows(length: int, n: int) -> torch.Tensor:
        found = document_windows(tokenizer, stdlib_docstrings(min_chars=200), length)[:n]
        if len(found) < n:
            raise SystemExit(f"only {len(found)} docstring windows of {length} tokens on this machine, {n} asked for")
        return torch.tensor(found)

    return model, windows, "SmolLM2-135M-Instruct (embedded), standard-library docstring windows"


def machine() -> str:
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    return f"{where}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s); torch {torch.__version__}"


def write_json(path: str, data: dict) -> None:
    """Write `data` to `path` whole or not at all (a run stopped mid-write leaves the last complete file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
    os.replace(path + ".tmp", path)


def timed_both(fn):
    """(CPU seconds of this process, wall seconds, value) of `fn()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, value


def grid_setup(args, model, windows_for) -> dict:
    """The grid's cells and windows: the docstring windows per suffix length (0%), one batch of memorized windows
    per suffix length (the model's own greedy continuations: 100%), and `harness(method, windows, batch, suffix)`."""
    device = next(model.parameters()).device
    batches = SMALL_GRID_BATCHES if args.small else GRID_BATCHES
    suffixes = SMALL_GRID_SUFFIXES if args.small else GRID_SUFFIXES
    floor_batch = SMALL_FLOOR_BATCH if args.small else GRID_FLOOR_BATCH
    prefix = 8 if args.small else args.prefix
    windows_per = {b: 4 * b if args.small else cell_windows(b) for b in batches}
    real = {s: windows_for(prefix + s, max(windows_per.values())).to(device) for s in suffixes}
    memorized = {}
    with torch.inference_mode():
        for s in suffixes:
            w = real[s][:floor_batch]  # one batch
            continuation = torch.cat([generate_suffixes(model, b, prefix) for b in w.split(floor_batch)])
            memorized[s] = torch.cat([w[:, :prefix], continuation], dim=1)

    def harness(method, w, batch_size, suffix):
        if method == "always":  # the control: `auto` as it was, every batch parking its diverged rows
            harness_module.Regrouper = functools.partial(Regrouper, regroup="always")
            try:
                return harness("auto", w, batch_size, suffix)
            finally:
                harness_module.Regrouper = Regrouper
        return measure_extraction(model, w, prefix, suffix, batch_size=batch_size, method=method, show_progress=False)

    return {
        "batches": batches, "suffixes": suffixes, "floor_batch": floor_batch, "prefix": prefix,
        "windows_per": windows_per, "real": real, "memorized": memorized, "harness": harness,
        "control": SMALL_GRID_CONTROL if args.small else GRID_CONTROL,
    }  # fmt: skip


def count_passes(args, model, windows_for, label: str) -> None:
    """`--grid --passes`: the forward passes of each method in every cell, and the token positions they compute
    (rows x new tokens, summed), counted by a forward pre-hook on one untimed run each: what the time ratios measure
    with this machine's noise, counted without it."""
    setup = grid_setup(args, model, windows_for)
    harness, counts = setup["harness"], {"calls": 0, "positions": 0}

    def count(module, positional, keywords):
        ids = keywords.get("input_ids", positional[0] if positional else None)
        counts["calls"] += 1
        counts["positions"] += ids.numel()

    def counted(run) -> dict:
        counts.update(calls=0, positions=0)
        run()
        return dict(counts)

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    table = {"settings": {"model": label, "prefix": setup["prefix"]}, "machine": machine(), "cells": {}}
    try:
        for s in setup["suffixes"]:
            for b in setup["batches"]:
                w = setup["real"][s][: setup["windows_per"][b]]
                methods = ["auto", "generate"] + (["always"] if f"{b}/{s}" in setup["control"] else [])
                cell = {m: counted(lambda: harness(m, w, b, s)) for m in methods}  # noqa: B023
                table["cells"][f"{b}/{s}"] = {"windows": len(w), **cell}
            w = setup["memorized"][s]
            table["cells"][f"floor/{s}"] = {
                "windows": len(w),
                "auto": counted(lambda: harness("auto", w, setup["floor_batch"], s)),  # noqa: B023
                "floor": counted(lambda: teacher_forced_forward(model, w, setup["floor_batch"])),  # noqa: B023
            }
    finally:
        handle.remove()
    print(f"{label}: forward passes (token positions computed), one run of each method per cell")
    for key, cell in table["cells"].items():
        print(f"{key:>10} ({cell['windows']} windows): " + "  ".join(
            f"{m} {c['calls']} ({c['positions']})" for m, c in cell.items() if m != "windows"
        ))  # fmt: skip
    if args.out:
        write_json(args.out, table)


def grid(args, model, windows_for, label: str) -> None:
    """`auto` against `generate` at 0% per (batch size, suffix length), and `auto` against the floor at 100%."""
    setup = grid_setup(args, model, windows_for)
    batches, suffixes, floor_batch, prefix = setup["batches"], setup["suffixes"], setup["floor_batch"], setup["prefix"]
    control, windows_per, harness = setup["control"], setup["windows_per"], setup["harness"]
    real, memorized = setup["real"], setup["memorized"]
    rounds = args.rounds or (2 if args.small else 5)
    settings = {
        "model": label, "prefix": prefix, "batch_sizes": list(batches), "suffixes": list(suffixes),
        "windows_per_cell": {str(b): n for b, n in windows_per.items()}, "floor_batch_size": floor_batch,
        "floor_windows": floor_batch, "threads": torch.get_num_threads(), "control_cells": list(control),
    }  # fmt: skip
    state = {"settings": settings, "machine": machine(), "rounds": []}
    if args.out and os.path.exists(args.out):
        state["rounds"] = earlier_rounds(args.out, settings, [f"{b}/{s}" for s in suffixes for b in batches])[:rounds]
        print(f"resuming {args.out}: {len(state['rounds'])} of {rounds} rounds done")
    print(f"{label}; {state['machine']}; load average {os.getloadavg()[0]:.2f}")

    if len(state["rounds"]) < rounds:
        harness("auto", real[suffixes[0]][: max(batches)], max(batches), suffixes[0])  # warm-up
    for r in range(len(state["rounds"]), rounds):
        done = {"cells": {}, "floor": {}, "load_average": os.getloadavg()[0]}
        for s in suffixes:
            for b in batches:
                w = real[s][: windows_per[b]]
                cell, results = {}, {}
                methods = ["auto", "generate"] + (["always"] if f"{b}/{s}" in control else [])
                for method in methods[r % len(methods) :] + methods[: r % len(methods)]:  # each first in turn
                    cpu, wall, results[method] = timed_both(lambda: harness(method, w, b, s))  # noqa: B023
                    cell[method] = {"cpu_s": cpu, "wall_s": wall}
                cell["agree"] = min(
                    sum(x == y for x, y in zip(results[method].predictions, results["generate"].predictions))
                    for method in methods
                )
                cell["windows"] = len(w)
                cell["exact_match"] = results["auto"].metrics["exact_match"]
                done["cells"][f"{b}/{s}"] = cell
            w = memorized[s]
            cell = {}
            for name in ("auto", "floor") if r % 2 == 0 else ("floor", "auto"):
                run = (
                    (lambda: harness("auto", w, floor_batch, s))  # noqa: B023
                    if name == "auto"
                    else (lambda: teacher_forced_forward(model, w, floor_batch))  # noqa: B023
                )
                cpu, wall, value = timed_both(run)
                cell[name] = {"cpu_s": cpu, "wall_s": wall}
                if name == "auto":
                    cell["exact_match"] = value.metrics["exact_match"]
            done["floor"][str(s)] = cell
        state["rounds"].append(done)
        state["summary"] = grid_summary(state["rounds"], batches, suffixes)
        if args.out:
            write_json(args.out, state)
        ratios = "  ".join(f"{key}: {ratio(c, 'generate', 'auto', 'cpu_s'):.3f}" for key, c in done["cells"].items())
        print(f"round {r + 1}/{rounds} (auto / generate, CPU time; load {done['load_average']:.2f}): {ratios}")
    state["summary"] = grid_summary(state["rounds"], batches, suffixes)
    if args.out:  # a resumed run with every round done still brings the summary up to date
        write_json(args.out, state)
    print_grid(state, batches, suffixes, floor_batch)


def earlier_rounds(path: str, settings: dict, cells: list[str]) -> list[dict]:
    """The rounds of an earlier run with the same settings written to `path`; exit, naming the file, if it holds
    anything else (another run's settings, or a file that is not this script's), rather than overwrite it."""
    try:
        with open(path, encoding="utf-8") as file:
            earlier = json.load(file)
        if not isinstance(earlier, dict) or not isinstance(earlier.get("rounds"), list):
            raise ValueError("no list of rounds")
        rounds, same = earlier["rounds"], earlier.get("settings") == settings
        for done in rounds if same else []:
            timings = [done["cells"][cell][method] for cell in cells for method in ("auto", "generate")]
            timings += [done["floor"][str(s)][name] for s in settings["suffixes"] for name in ("auto", "floor")]
            if not all(isinstance(t[clock], (int, float)) for t in timings for clock in ("cpu_s", "wall_s")):
                raise ValueError("a round without its times")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"{path} is not a complete grid file of this script ({type(error).__name__}: {error}): move it away or "
            "pass another --out."
        ) from None
    if not same:
        raise SystemExit(
            f"{path} holds a grid run with other settings ({earlier.get('settings')}): move it away or pass another "
            "--out."
        )
    return rounds


def ratio(cell: dict, reference: str, method: str, clock: str) -> float:
    """Throughput of `method` over that of `reference` in one round: the reference's time over the method's."""
    return cell[reference][clock] / cell[method][clock]


def grid_summary(rounds: list, batches, suffixes) -> dict:
    summary = {"cells": {}, "floor": {}}
    for s in suffixes:
        for b in batches:
            cells = [r["cells"][f"{b}/{s}"] for r in rounds]
            summary["cells"][f"{b}/{s}"] = {
                "batch_size": b,
                "suffix": s,
                "cpu_ratio_median": statistics.median(ratio(c, "generate", "auto", "cpu_s") for c in cells),
                "wall_ratio_median": statistics.median(ratio(c, "generate", "auto", "wall_s") for c in cells),
                "cpu_ratio_range": [f(ratio(c, "generate", "auto", "cpu_s") for c in cells) for f in (min, max)],
                "auto_windows_per_cpu_s": statistics.median(c["windows"] / c["auto"]["cpu_s"] for c in cells),
                "generate_windows_per_cpu_s": statistics.median(c["windows"] / c["generate"]["cpu_s"] for c in cells),
                "all_agree": all(c["agree"] == c["windows"] for c in cells),
                "exact_match": cells[0]["exact_match"],
            }
            if all("always" in c for c in cells):  # the control: the former behaviour against generate
                summary["cells"][f"{b}/{s}"]["always_cpu_ratio_median"] = statistics.median(
                    ratio(c, "generate", "always", "cpu_s") for c in cells
                )
                summary["cells"][f"{b}/{s}"]["always_wall_ratio_median"] = statistics.median(
                    ratio(c, "generate", "always", "wall_s") for c in cells
                )
        cells = [r["floor"][str(s)] for r in rounds]
        summary["floor"][str(s)] = {
            "cpu_ratio_median": statistics.median(ratio(c, "floor", "auto", "cpu_s") for c in cells),
            "wall_ratio_median": statistics.median(ratio(c, "floor", "auto", "wall_s") for c in cells),
            "cpu_ratio_range": [f(ratio(c, "floor", "auto", "cpu_s") for c in cells) for f in (min, max)],
            "exact_match": cells[0]["exact_match"],
        }
    summary["pooled"] = pooled_ratio(
        [ratio(r["cells"][k], "generate", "auto", "cpu_s") for r in rounds for k in r["cells"]]
    )
    summary["pooled_control"] = pooled_ratio(
        [ratio(c, "generate", "always", "cpu_s") for r in rounds for c in r["cells"].values() if "always" in c]
    )
    summary["rounds"] = len(rounds)
    summary["goal_met_every_cell"] = all(c["cpu_ratio_median"] >= 1.0 for c in summary["cells"].values())
    summary["floor_goal_met"] = all(c["cpu_ratio_median"] >= 0.9 for c in summary["floor"].values())
    return summary


def pooled_ratio(ratios: list) -> dict | None:
    """The geometric mean of per-round ratios pooled over cells, with a 95% t-interval on the log scale: a run-to-run
    noise of several percent (this machine's) blurs any one cell's median, much less the mean of many."""
    if len(ratios) < 2:
        return None
    from scipy import stats

    logs = [math.log(x) for x in ratios]
    mean, half = statistics.fmean(logs), stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / len(logs) ** 0.5
    return {"geometric_mean": math.exp(mean), "interval95": [math.exp(mean - half), math.exp(mean + half)],
            "pairs": len(logs), "log_sd": statistics.stdev(logs)}  # fmt: skip


def print_grid(state: dict, batches, suffixes, floor_batch: int) -> None:
    summary, settings = state["summary"], state["settings"]
    print(
        f"\nmethod='auto' against method='generate' at 0% memorization: throughput ratio, median of "
        f"{summary['rounds']} interleaved rounds, CPU time (wall time); prefix {settings['prefix']}"
    )
    print(f"{'batch':>6}{'windows':>9}" + "".join(f"{f'suffix {s}':>28}" for s in suffixes))
    for b in batches:
        cells = [summary["cells"][f"{b}/{s}"] for s in suffixes]
        row = "".join(
            f"{c['cpu_ratio_median']:>10.3f}x ({c['wall_ratio_median']:.3f}x) "
            f"[{c['cpu_ratio_range'][0]:.2f}-{c['cpu_ratio_range'][1]:.2f}]"
            for c in cells
        )
        print(f"{b:>6}{settings['windows_per_cell'][str(b)]:>9}{row}")
    for s in suffixes:
        c = summary["floor"][str(s)]
        print(
            f"100% memorized, batch {floor_batch}, suffix {s}: auto {c['cpu_ratio_median']:.3f}x the one-forward "
            f"floor ({c['wall_ratio_median']:.3f}x wall; exact match {c['exact_match']:.2f})"
        )
    for key, c in summary["cells"].items():
        if "always_cpu_ratio_median" in c:
            print(
                f"control, batch {c['batch_size']}, suffix {c['suffix']}: every batch parking (auto before issue 37) "
                f"{c['always_cpu_ratio_median']:.3f}x generate ({c['always_wall_ratio_median']:.3f}x wall), "
                f"auto now {c['cpu_ratio_median']:.3f}x"
            )
    for key, name in (("pooled", "auto"), ("pooled_control", "every batch parking")):
        pooled = summary.get(key)
        if pooled:
            print(
                f"pooled over cells and rounds: {name} {pooled['geometric_mean']:.3f}x generate (geometric mean of "
                f"{pooled['pairs']} ratios, 95% interval {pooled['interval95'][0]:.3f}-{pooled['interval95'][1]:.3f}; "
                f"one ratio's spread {100 * pooled['log_sd']:.1f}%)"
            )
    agree = all(c["all_agree"] for c in summary["cells"].values())
    print(
        f"auto >= 1.0x generate in every cell: {'met' if summary['goal_met_every_cell'] else 'NOT met'}; "
        f">= 0.9x the floor at 100%: {'met' if summary['floor_goal_met'] else 'NOT met'}; predictions equal to "
        f"generate's on every window of every round (auto and the control): {agree}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--slow-windows", type=int, default=8, help="windows for the slow schemes (d) and (e)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prefix", type=int, default=32)
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="time every scheme this many times, keep the best")
    parser.add_argument("--schedules", action="store_true", help="also time verify_and_decode's chunk schedules")
    parser.add_argument("--grid", action="store_true", help="auto against generate per batch size and suffix length")
    parser.add_argument("--rounds", type=int, default=None, help="grid rounds (default 5; 2 with --small)")
    parser.add_argument("--passes", action="store_true", help="with --grid: count forward passes instead of timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--small", action="store_true", help="a tiny model built in code, few windows (quick)")
    parser.add_argument("--out", help="also write the numbers to this JSON file (the grid: after every round)")
    args = parser.parse_args()
    if (args.rounds is not None and args.rounds < 1) or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1")
    if args.passes and not args.grid:
        parser.error("--passes counts the grid's forward passes: give --grid too")
    torch.set_num_threads(args.threads)
    if args.small:
        args.windows, args.slow_windows, args.batch_size, args.prefix, args.suffix = 16, 4, 4, 8, 12
        args.repeats = 1

    load_average = os.getloadavg()[0]
    model, windows_for, label = load(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    if args.grid:
        (count_passes if args.passes else grid)(args, model, windows_for, label)
        return
    length = args.prefix + args.suffix
    real = windows_for(length, args.windows).to(device)
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
    print(
        f"\nExtraction throughput, {label}; {machine()}; load average {load_average:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end"
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
    if args.out:
        write_json(
            args.out,
            {
                "machine": machine(),
                "model": label,
                "settings": {
                    k: getattr(args, k) for k in ("windows", "slow_windows", "batch_size", "prefix", "suffix")
                }
                | {"repeats": args.repeats, "clock": "wall, best of the repeats"},
                "load_average": [load_average, os.getloadavg()[0]],
                "windows_per_second": {f"{level.strip()}/{name}": value for (level, name), value in rate.items()}
                | {"0%/pythia": rates["d"], "0%/per-sample generate": rates["e"]},
                "goals": dict(goals),
            },
        )


if __name__ == "__main__":
    main()
