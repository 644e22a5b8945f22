"""Probabilistic extraction, checked and put to work: (n, p)-extraction against greedy exact match.

Part 1, the check. A tiny Llama is trained a few steps on planted windows (prefix 4, suffix 4), so that sampling
reproduces their suffixes with probabilities spread over (0, 1). For several sampling settings (temperature, top-k,
top-p), the probability `p` that `extraction_log_probs` computes from one teacher-forced pass is compared with the
hit rate of `generate(do_sample=True)` drawn thousands of times per window: the share of windows whose `p` lies in
the 99% Clopper-Pearson interval of the draws (about 0.99 expected), and the mean squared z-score (about 1). The
control is the number a user gets without the sampling scheme: the plain softmax probability of the suffix (the
model's loss), compared with the same draws. Greedy decoding (`temperature=None`) is compared with
`measure_extraction`'s greedy exact match window by window.

Part 2, the effect. A tiny Llama (2 layers, width 64, SmolLM2's tokenizer) is trained from scratch on a few
docstring windows (prefix 32, suffix 32) with the standard loss and with the goldfish loss (k = 4), three seeds (a
different draw of the training and held-out windows, and of the data order); `--model smollm2` fine-tunes
SmolLM2-135M instead (about 15 minutes on 2 busy CPU cores). At checkpoints along training: the share of training windows
that greedy decoding extracts, and the share that is (n, 0.5)-extractable when sampling at temperature 0.7 and
1.0, for n = 1, 10, 100, 1000; the held-out windows (never trained on) are the control. Each run is stored as it
ends: a rerun resumes.

    python examples/probabilistic_extraction.py                  # ~30 min on 2 busy CPU cores
    python examples/probabilistic_extraction.py --small          # tiny models, a minute: what the tests run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time

import numpy as np
import torch

from hf_memory.extraction import (
    SamplingConfig,
    extractable_fraction,
    extraction_log_probs,
    measure_extraction,
)


MC_SETTINGS = {  # (temperature, top_k, top_p)
    "temperature 1.0": (1.0, None, 1.0),
    "temperature 0.7": (0.7, None, 1.0),
    "temperature 1.0, top-k 5": (1.0, 5, 1.0),
    "temperature 1.3, top-p 0.9": (1.3, None, 0.9),
    "temperature 0.7, top-k 10, top-p 0.95": (0.7, 10, 0.95),
}
EFFECT_SETTINGS = {
    "temperature 0.7": SamplingConfig(temperature=0.7),
    "temperature 1.0": SamplingConfig(temperature=1.0),
}
QUERIES = (1, 10, 100, 1000)
THRESHOLD = 0.5  # (n, p)-extractable: extracted within n queries with probability >= 0.5


def tiny_llama(vocab_size: int, hidden: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


def interval(values) -> dict:
    """Mean over seeds and its 95% t-interval (a single value gets no interval)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or values.std() == 0:
        return {"mean": mean, "low": mean, "high": mean, "seeds": values.tolist()}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": values.tolist()}


# ---------------------------------------------------------------- part 1: p against Monte Carlo


def monte_carlo_check(seed: int, samples: int, num_windows: int = 12) -> dict:
    from scipy.stats import binomtest

    vocab, prefix, suffix = 32, 4, 4
    model = tiny_llama(vocab, 32, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    windows = torch.randint(3, vocab, (num_windows, prefix + suffix), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(12):
        loss = model(input_ids=windows, labels=windows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config.eos_token_id = None  # exactly `suffix` new tokens
    model.generation_config.pad_token_id = 0

    out = {}
    plain = extraction_log_probs(model, windows, prefix, temperature=1.0).exp().tolist()  # the control
    for name, (temperature, top_k, top_p) in MC_SETTINGS.items():
        config = SamplingConfig(temperature, top_k, top_p)
        p = extraction_log_probs(model, windows, prefix, config).exp().tolist()
        rows = []
        for i, window in enumerate(windows):
            torch.manual_seed(seed * 10_000 + i)
            start = window[:prefix].expand(samples, -1)
            with torch.no_grad():
                drawn = model.generate(
                    input_ids=start,
                    attention_mask=torch.ones_like(start),
                    max_new_tokens=suffix,
                    **config.generate_kwargs(),
                )
            hits = int((drawn[:, prefix:] == window[prefix:]).all(-1).sum())
            ci = binomtest(hits, samples).proportion_ci(0.99)
            rows.append({"p": p[i], "plain_p": plain[i], "hits": hits, "ci99": [ci.low, ci.high]})
        out[name] = summarize_check(rows, samples)
    greedy = extraction_log_probs(model, windows, prefix, temperature=None).exp().tolist()
    exact = measure_extraction(model, windows, prefix, suffix, method="generate", show_progress=False)
    matched = [float(m) for m in exact.per_sample()["exact_match_per_sample"]]
    out["greedy"] = {
        "windows": num_windows,
        "agree_with_greedy_exact_match": sum(a == b for a, b in zip(greedy, matched)),
        "extracted": sum(matched),
    }
    return out


def summarize_check(rows: list, samples: int) -> dict:
    def score(key):
        inside = [r["ci99"][0] <= r[key] <= r["ci99"][1] for r in rows]
        z2 = [(r["hits"] - samples * r[key]) ** 2 / (samples * r[key] * (1 - r[key])) for r in rows if 0 < r[key] < 1]
        return {"inside_ci99": sum(inside), "z2": z2, "mean_z2": float(np.mean(z2)) if z2 else None}

    zero = [r for r in rows if r["p"] == 0]
    return {
        "windows": len(rows),
        "samples_per_window": samples,
        "moderate_p": sum(0.05 < r["p"] < 0.95 for r in rows),
        "p_zero_windows": len(zero),
        "p_zero_windows_ever_sampled": sum(r["hits"] > 0 for r in zero),
        "ours": score("p"),
        "control_plain_softmax": score("plain_p"),
        "rows": rows,
    }


# ---------------------------------------------------------------- part 2: fine-tuning


def fine_tune_run(arm: str, seed: int, base, tokenizer, pool: list, args) -> dict:
    from hf_memory.goldfish import GoldfishConfig, apply_goldfish

    rng = random.Random(seed)
    picked = rng.sample(pool, 2 * args.windows)
    train, heldout = torch.tensor(picked[: args.windows]), torch.tensor(picked[args.windows :])
    model = tiny_llama(len(tokenizer), 64, seed) if args.model == "tiny" else copy.deepcopy(base)
    torch.manual_seed(seed)
    labels = train.clone()
    if arm == "goldfish":
        labels = apply_goldfish(labels, train, GoldfishConfig(k=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    checkpoints = sorted(set(args.checkpoints))
    record = {"arm": arm, "seed": seed, "checkpoints": {}}
    step = 0
    order = torch.Generator().manual_seed(seed)
    for target in checkpoints:
        model.train()
        while step < target:
            for batch in torch.randperm(len(train), generator=order).split(args.batch_size):
                loss = model(input_ids=train[batch], labels=labels[batch]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            step += 1
        model.eval()
        record["checkpoints"][str(step)] = evaluate(model, train, heldout, args)
        print(f"{arm} seed {seed} epoch {step}: {summary_line(record['checkpoints'][str(step)])}", flush=True)
    return record


def evaluate(model, train, heldout, args) -> dict:
    out = {}
    for split, windows in (("train", train), ("heldout", heldout)):
        greedy = extraction_log_probs(model, windows, args.prefix, temperature=None, batch_size=args.batch_size)
        row = {"greedy_exact_match": float(greedy.exp().mean())}
        if split == "train":
            exact = measure_extraction(
                model, windows, args.prefix, args.suffix, batch_size=args.batch_size, show_progress=False
            )
            matched = exact.per_sample()["exact_match_per_sample"]
            row["greedy_agrees_with_measure_extraction"] = greedy.exp().tolist() == [float(m) for m in matched]
        for name, config in EFFECT_SETTINGS.items():
            log_p = extraction_log_probs(model, windows, args.prefix, config, batch_size=args.batch_size)
            row[name] = {
                "log_p": log_p.tolist(),
                "extractable": {str(n): extractable_fraction(log_p, n, THRESHOLD) for n in QUERIES},
            }
        out[split] = row
    return out


def summary_line(checkpoint: dict) -> str:
    train, heldout = checkpoint["train"], checkpoint["heldout"]
    parts = [f"greedy {train['greedy_exact_match']:.2f} (held-out {heldout['greedy_exact_match']:.2f})"]
    for name in EFFECT_SETTINGS:
        parts.append(
            f"{name}: n=1 {train[name]['extractable']['1']:.2f}, n=1000 {train[name]['extractable']['1000']:.2f} "
            f"(held-out {heldout[name]['extractable']['1000']:.2f})"
        )
    return "; ".join(parts)


def aggregate(runs: list) -> dict:
    """Per arm and checkpoint: each share's mean over seeds with its 95% t-interval."""
    out = {}
    for arm in sorted({r["arm"] for r in runs}):
        mine = [r for r in runs if r["arm"] == arm]
        out[arm] = {}
        for step in mine[0]["checkpoints"]:
            cell = {}
            for split in ("train", "heldout"):
                rows = [r["checkpoints"][step][split] for r in mine]
                cell[split] = {"greedy_exact_match": interval([row["greedy_exact_match"] for row in rows])}
                for name in EFFECT_SETTINGS:
                    cell[split][name] = {
                        f"n={n}": interval([row[name]["extractable"][str(n)] for row in rows]) for n in QUERIES
                    }
            out[arm][f"epoch {step}"] = cell
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny models, two seeds, few samples (the test)")
    parser.add_argument("--output-dir", default="examples/results/probabilistic_extraction")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", choices=["standard", "goldfish"], default=["standard", "goldfish"])
    parser.add_argument("--skip-fine-tuning", action="store_true", help="part 1 only")
    parser.add_argument(
        "--model",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="part 2: a tiny Llama trained from scratch (SmolLM2's tokenizer), or SmolLM2-135M fine-tuned (about 15 min on 2 CPU cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or ([0, 1] if args.small else [0, 1, 2])
    if args.small:
        args.model = "tiny"
    args.windows = 4 if args.small else 8
    args.prefix, args.suffix = (8, 8) if args.small else (32, 32)
    args.batch_size = 4 if args.small else 8
    args.lr = 2e-4 if args.model == "smollm2" else 3e-3
    if args.small:
        args.checkpoints = [0, 10, 30]
    else:
        args.checkpoints = [0, 2, 4, 6, 8, 10] if args.model == "smollm2" else [0, 25, 50, 100, 200]
    samples = 200 if args.small else 3000
    os.makedirs(os.path.join(args.output_dir, "runs"), exist_ok=True)
    started = time.time()
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "seeds", "arms", "skip_fine_tuning")}
    results: dict = {"settings": {**settings, "seeds": seeds, "monte_carlo_samples": samples, "threshold": THRESHOLD}}

    check_path = os.path.join(args.output_dir, "runs", "monte_carlo.json")
    checks = {}
    if os.path.exists(check_path):
        with open(check_path) as f:
            stored = json.load(f)
        if stored.get("samples") == samples:
            checks = stored["seeds"]
    for seed in seeds:
        if str(seed) not in checks:
            checks[str(seed)] = monte_carlo_check(seed, samples)
            with open(check_path, "w") as f:
                json.dump({"samples": samples, "seeds": checks}, f, indent=2)
        print(f"Monte Carlo check, seed {seed}: done", flush=True)
    results["monte_carlo"] = {"per_seed": checks, "pooled": pool_checks([checks[str(s)] for s in seeds])}

    if not args.skip_fine_tuning:
        from hf_memory import document_windows, load_model, stdlib_docstrings

        loaded = []  # the model, its tokenizer and the windows, loaded once and only if a run is not stored

        def load():
            if not loaded:
                base, tokenizer = load_model()  # each run fine-tunes a copy (or trains a tiny model, same tokenizer)
                loaded.extend(
                    [base, tokenizer, document_windows(tokenizer, stdlib_docstrings(), args.prefix + args.suffix)]
                )
            return loaded

        runs = []
        key = json.dumps(settings, sort_keys=True)
        for arm in args.arms:
            for seed in seeds:
                path = os.path.join(args.output_dir, "runs", f"{arm}_seed{seed}.json")
                if os.path.exists(path):
                    with open(path) as f:
                        stored = json.load(f)
                    if stored.get("settings") == key:
                        runs.append(stored["run"])
                        continue
                run = fine_tune_run(arm, seed, *load(), args)
                with open(path + ".tmp", "w") as f:
                    json.dump({"settings": key, "run": run}, f)
                os.replace(path + ".tmp", path)  # a run killed mid-way leaves no half file
                runs.append(run)
        results["fine_tuning"] = aggregate(runs)
    results["total_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def pool_checks(per_seed: list) -> dict:
    """Over seeds, per setting: windows whose p lies in the 99% interval of the draws, and the mean squared z-score
    of the hit counts under p over windows with 0 < p < 1 (1 when p is right; its chi-square p-value beside it)."""
    from scipy.stats import chi2

    def z2_summary(values):
        if not values:
            return None
        return {
            "mean": float(np.mean(values)),
            "windows": len(values),
            "chi2_p_value": float(chi2.sf(sum(values), len(values))),
        }

    pooled = {}
    for name in MC_SETTINGS:
        cells = [seed[name] for seed in per_seed]
        pooled[name] = {
            "windows": sum(c["windows"] for c in cells),
            "moderate_p": sum(c["moderate_p"] for c in cells),
            "ours_inside_ci99": sum(c["ours"]["inside_ci99"] for c in cells),
            "control_inside_ci99": sum(c["control_plain_softmax"]["inside_ci99"] for c in cells),
            "ours_z2": z2_summary([z for c in cells for z in c["ours"]["z2"]]),
            "control_z2": z2_summary([z for c in cells for z in c["control_plain_softmax"]["z2"]]),
            "p_zero_windows": sum(c["p_zero_windows"] for c in cells),
            "p_zero_windows_ever_sampled": sum(c["p_zero_windows_ever_sampled"] for c in cells),
        }
    pooled["greedy"] = {
        "windows": sum(seed["greedy"]["windows"] for seed in per_seed),
        "agree_with_greedy_exact_match": sum(seed["greedy"]["agree_with_greedy_exact_match"] for seed in per_seed),
        "extracted": sum(seed["greedy"]["extracted"] for seed in per_seed),
    }
    return pooled


if __name__ == "__main__":
    out = main()
    print(json.dumps({"monte_carlo": out["monte_carlo"]["pooled"], "fine_tuning": out.get("fine_tuning")}, indent=2))
