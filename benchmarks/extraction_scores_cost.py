"""Cost of `extraction_scores` on skewed lengths: one very long prediction among many short ones.

The scheme before this change padded every sample to the longest prediction and ran the ROUGE-L DP over all of
its positions for every sample (n x max_len memory, n x max_len x max_ref_len time). Now the cost grows with the
total length. Both run here side by side, alternating, on the same inputs: the skewed case (200 predictions of 64
tokens and one of 20,000, references of 64) and, as a control, the same 201 samples without the long one. Numbers
are medians of the repeats; peak memory is what `tracemalloc` sees numpy allocate. The two must give the same
per-sample scores (checked here; tests/test_extractable_memorization_metric.py checks it on random inputs). Goal:
on the skewed input, time and peak memory at least 10x lower; on the control, not slower.

    python benchmarks/extraction_scores_cost.py --out benchmarks/results/extraction_scores_cost.json
    python benchmarks/extraction_scores_cost.py --small    # 2,000 tokens, 2 repeats (the test runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory.extraction.scores import check_token_columns, extraction_scores  # noqa: E402


def padded_scheme_scores(predictions, references, strict_exact_match: bool = False) -> dict:
    """The per-sample scores as computed before: every sample padded to the longest prediction (the reference)."""
    preds, refs = check_token_columns(predictions, references)
    pred_len = np.array([row.size for row in preds])
    ref_len = np.array([row.size for row in refs])

    def padded(rows, lengths, width):
        mask = np.arange(width) < lengths[:, None]
        matrix = np.zeros(mask.shape, dtype=np.int64)
        matrix[mask] = np.concatenate(rows)
        return matrix, mask

    ref, ref_mask = padded(refs, ref_len, ref_len.max())
    longest = pred_len.max()
    pred, pred_mask = padded(preds, pred_len, max(ref_len.max(), longest))
    width = ref.shape[1]
    matches = (pred[:, :width] == ref) & pred_mask[:, :width] & ref_mask
    memorization = matches.sum(axis=1) / ref_len
    prefix = np.logical_and.accumulate(matches, axis=1).sum(axis=1)
    exact = (prefix == ref_len) & (pred_len == ref_len) if strict_exact_match else prefix == ref_len
    previous = np.zeros((ref.shape[0], ref.shape[1] + 1), dtype=np.int64)
    for i in range(longest):
        match = (pred[:, i, None] == ref) & ref_mask & pred_mask[:, i, None]
        candidate = np.maximum(previous[:, 1:], previous[:, :-1] + match)
        previous[:, 1:] = np.maximum.accumulate(candidate, axis=1)
    rouge_l = 2 * previous[:, -1] / (pred_len + ref_len)
    return {
        "exact_match_per_sample": exact.tolist(),
        "memorization_score_per_sample": memorization.tolist(),
        "longest_common_prefix_per_sample": prefix.tolist(),
        "rouge_l_per_sample": rouge_l.tolist(),
    }


def inputs(short: int, length: int, long: int | None, seed: int = 0):
    """`short` references of `length` random ids, predictions half right; one more sample whose prediction has
    `long` tokens (the skewed case), or of `length` tokens (the control)."""
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 1000, (short + 1, length))
    predictions = [np.where(rng.random(length) < 0.5, row, rng.integers(0, 1000, length)) for row in references]
    if long is not None:
        predictions[-1] = np.concatenate([references[-1], rng.integers(0, 1000, long - length)])
    return predictions, list(references)


def measure(function, predictions, references) -> tuple[float, float]:
    """(seconds, peak MiB allocated) of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    function(predictions, references)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def compare(name: str, predictions, references, repeats: int) -> dict:
    new = extraction_scores(predictions, references, return_per_sample=True)
    old = padded_scheme_scores(predictions, references)
    assert all(new[key] == value for key, value in old.items()), "the two schemes disagree"
    timings = {"padded (before)": [], "ragged (now)": []}
    for _ in range(repeats):  # alternating, so machine noise hits both alike
        timings["padded (before)"].append(measure(padded_scheme_scores, predictions, references))
        timings["ragged (now)"].append(
            measure(lambda p, r: extraction_scores(p, r, return_per_sample=True), predictions, references)
        )
    medians = {
        scheme: (statistics.median(t for t, _ in runs), statistics.median(m for _, m in runs))
        for scheme, runs in timings.items()
    }
    print(f"\n{name}: {len(predictions)} samples, {sum(len(p) for p in predictions)} prediction tokens")
    for scheme, (seconds, peak) in medians.items():
        print(f"  {scheme:16} {1000 * seconds:9.1f} ms  peak {peak:8.1f} MiB")
    (old_s, old_m), (new_s, new_m) = medians.values()
    print(f"  before / now: time {old_s / new_s:.1f}x, peak memory {old_m / new_m:.1f}x")
    return {
        "samples": len(predictions),
        "prediction_tokens": int(sum(len(p) for p in predictions)),
        "padded_seconds": old_s,
        "ragged_seconds": new_s,
        "padded_peak_mib": old_m,
        "ragged_peak_mib": new_m,
        "time_ratio": old_s / new_s,
        "memory_ratio": old_m / new_m,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 2,000-token prediction and 2 repeats (quick)")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    long, repeats = (2_000, 2) if args.small else (20_000, 5)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; numpy {np.__version__}"
    print(f"machine: {machine}")
    skewed = compare(f"skewed (one {long}-token prediction)", *inputs(200, 64, long), repeats)
    control = compare("control (no long prediction)", *inputs(200, 64, None), repeats)
    print(f"\nskewed: {skewed['time_ratio']:.1f}x faster, {skewed['memory_ratio']:.1f}x less memory (goal >= 10x)")
    print(f"control: {control['time_ratio']:.2f}x (goal: not slower, >= 1.0x up to noise)")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        results = {"machine": machine, "long_prediction": long, "repeats": repeats, "skewed": skewed}
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(results | {"control": control}, file, indent=2)


if __name__ == "__main__":
    main()
