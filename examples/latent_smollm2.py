"""Latent memorization (Duan et al.) on SmolLM2, with a trajectory and a never-seen control.

Per seed, standard-library docstrings (first 64 SmolLM2 tokens: 32 + 32) are split at random into `once` windows,
`never` windows (the control: same source, never trained on) and background windows. SmolLM2-135M is trained on a
stream, batch 8, AdamW at a constant rate: first the seen-once windows shuffled into a first background segment
(each seen exactly once), then further background segments that hold none of them. At every checkpoint (before
training, after the exposure, after each later segment) each once / never window's greedy suffix is compared with
the true one (token Levenshtein distance, exact match), so a seen-once window that moves closer *without being
seen again* shows. At the last checkpoint:

- the weight-perturbation scan (`latent_memorization_scan`, Gaussian noise of `sigma` on every weight) over the
  windows that greedy decoding does not reproduce: how many come back exactly, or closer, seen-once against never;
  a one-sided Fisher exact test per seed and pooled;
- the CE diagnostic (`ce_diagnostic`, one SGD step at lr 1e-5), plain and calibrated by SmolLM2 before training:
  its AUC between seen-once and never-seen windows, and between recovered and unrecovered seen-once windows.

Reproduction (issue 33) = seen-once, non-extractable windows are recovered by perturbation significantly more often
than the never-seen control. Results go to a JSON file as each seed ends (a killed run redoes the seed it was in).

    nohup nice python examples/latent_smollm2.py &     # SmolLM2: about 15 CPU minutes per seed
    python examples/latent_smollm2.py --small           # a tiny model, one seed: the smoke run a test makes
    python examples/latent_smollm2.py --summary         # the tables of a results file
"""

from __future__ import annotations

import copy
import os
import random
import sys
import time

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # membership_evidence.py, next to this file

import membership_evidence as shared  # noqa: E402

from hf_memory.analysis.latent import ce_diagnostic, latent_memorization_scan  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "latent_smollm2.json")


def settings(small: bool) -> dict:
    if small:
        return {
            "model": "tiny", "hidden": 32, "layers": 2, "vocab": 384, "pretrain_epochs": 1, "pretrain_lr": 3e-3,
            "length": 24, "prefix": 12, "suffix": 12, "once": 6, "never": 6, "segments": [8, 8], "lr": 3e-3,
            "batch_size": 4, "sigma": 2e-3, "perturbations": 3, "seeds": [0],
        }  # fmt: skip
    return {
        "model": "smollm2", "length": 64, "prefix": 32, "suffix": 32, "once": 32, "never": 32,
        "segments": [64, 64, 64], "lr": 2e-4, "batch_size": 8, "sigma": 2e-3, "perturbations": 20,
        "seeds": [0, 1, 2],
    }  # fmt: skip


@torch.inference_mode()
def distances(model, windows: list, st: dict) -> list[int]:
    """Token Levenshtein distance of each window's greedy suffix to its true suffix."""
    from rapidfuzz.distance import Levenshtein

    prefixes = torch.tensor(windows)[:, : st["prefix"]]
    out = []
    for batch, rows in zip(prefixes.split(16), [windows[i : i + 16] for i in range(0, len(windows), 16)]):
        generated = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=st["suffix"],
            min_new_tokens=st["suffix"],
            do_sample=False,
            pad_token_id=0,
        )[:, st["prefix"] :]
        out += [Levenshtein.distance(g.tolist(), row[st["prefix"] :]) for g, row in zip(generated, rows)]
    return out


def train_segment(model, optimizer, windows: list, st: dict) -> None:
    model.train()
    data = torch.tensor(windows)
    for start in range(0, len(data), st["batch_size"]):
        batch = data[start : start + st["batch_size"]]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def auc(positive, negative) -> float | None:
    """ROC AUC of scores where higher means the positive class (None when a class is empty)."""
    from sklearn.metrics import roc_auc_score

    if not len(positive) or not len(negative):
        return None
    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), [*positive, *negative]))


def run_seed(base, tokenizer, pool: list, st: dict, seed: int) -> dict:
    started = time.process_time()
    rng = random.Random(seed)
    picked = rng.sample(pool, st["once"] + st["never"] + sum(st["segments"]))
    once, never = picked[: st["once"]], picked[st["once"] : st["once"] + st["never"]]
    rest = picked[st["once"] + st["never"] :]
    segments, start = [], 0
    for size in st["segments"]:
        segments.append(rest[start : start + size])
        start += size
    probe = once + never
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=st["lr"], weight_decay=0.0)
    trajectory = {"before": distances(model, probe, st)}
    first = segments[0] + once
    rng.shuffle(first)
    train_segment(model, optimizer, first, st)
    trajectory["after exposure"] = distances(model, probe, st)
    for i, segment in enumerate(segments[1:], 1):
        train_segment(model, optimizer, segment, st)
        trajectory[f"after segment {i + 1} (no re-exposure)"] = distances(model, probe, st)
    scan = latent_memorization_scan(
        model, probe, st["prefix"], st["suffix"], sigma=st["sigma"], n_perturbations=st["perturbations"],
        seed=1000 * seed, show_progress=False,
    )  # fmt: skip
    diagnostic = ce_diagnostic(model, probe, reference_model=base, show_progress=False)
    return {
        "trajectory": trajectory,
        "scan": {"unperturbed": scan.unperturbed_distance, "best": scan.best_distance},
        "ce_loss_after": diagnostic.loss_after,
        "ce_calibrated": diagnostic.calibrated_loss,
        "groups": ["once"] * len(once) + ["never"] * len(never),
        "cpu_s": round(time.process_time() - started, 1),
    }


def seed_numbers(run: dict) -> dict:
    """Per group: counts of non-extractable windows, recovered exactly and brought closer by a perturbation; the
    trajectory's mean distance; the CE diagnostic's AUCs."""
    groups = np.array(run["groups"])
    unperturbed, best = np.array(run["scan"]["unperturbed"]), np.array(run["scan"]["best"])
    out = {"trajectory": {}, "scan": {}}
    for name, values in run["trajectory"].items():
        values = np.array(values)
        out["trajectory"][name] = {g: float(values[groups == g].mean()) for g in ("once", "never")}
        out["trajectory"][name]["exact_once"] = int(((values == 0) & (groups == "once")).sum())
    for g in ("once", "never"):
        eligible = (groups == g) & (unperturbed > 0)
        out["scan"][g] = {
            "not_extractable": int(eligible.sum()),
            "recovered_exactly": int((eligible & (best == 0)).sum()),
            "closer": int((eligible & (best < unperturbed)).sum()),
        }
    loss, calibrated = -np.array(run["ce_loss_after"]), -np.array(run["ce_calibrated"])  # higher = seen
    out["ce_auc_once_vs_never"] = auc(loss[groups == "once"], loss[groups == "never"])
    out["ce_calibrated_auc_once_vs_never"] = auc(calibrated[groups == "once"], calibrated[groups == "never"])
    recovered = (groups == "once") & (unperturbed > 0) & (best < unperturbed)
    others = (groups == "once") & (unperturbed > 0) & ~(best < unperturbed)
    out["ce_auc_closer_vs_not"] = auc(loss[recovered], loss[others])
    return out


def fisher(once: dict, never: dict, key: str) -> float:
    """One-sided Fisher exact p-value: `key` happens more often to seen-once than to never-seen windows."""
    from scipy.stats import fisher_exact

    table = [
        [once[key], once["not_extractable"] - once[key]],
        [never[key], never["not_extractable"] - never[key]],
    ]
    return float(fisher_exact(table, alternative="greater").pvalue)


def summarize(results: dict) -> str:
    runs = {k: seed_numbers(r) for k, r in sorted(results["seeds"].items(), key=lambda kv: int(kv[0]))}
    lines = [f"Seeds {list(runs)}.", "", "Mean greedy distance to the true suffix (tokens), seen once / never:"]
    for seed, n in runs.items():
        path = "; ".join(f"{k}: {v['once']:.1f} / {v['never']:.1f}" for k, v in n["trajectory"].items())
        lines.append(f"- seed {seed}: {path}")
    lines += ["", "| seed | group | not extractable | recovered exactly | closer | Fisher p (exact; closer) |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    pooled = {g: {"not_extractable": 0, "recovered_exactly": 0, "closer": 0} for g in ("once", "never")}
    for seed, n in runs.items():
        for g in ("once", "never"):
            row = n["scan"][g]
            for key in pooled[g]:
                pooled[g][key] += row[key]
            tests = ""
            if g == "once":
                tests = f"{fisher(row, n['scan']['never'], 'recovered_exactly'):.3g}; "
                tests += f"{fisher(row, n['scan']['never'], 'closer'):.3g}"
            lines.append(
                f"| {seed} | {g} | {row['not_extractable']} | {row['recovered_exactly']} | {row['closer']} | {tests} |"
            )
    tests = f"{fisher(pooled['once'], pooled['never'], 'recovered_exactly'):.3g}; "
    tests += f"{fisher(pooled['once'], pooled['never'], 'closer'):.3g}"
    for g in ("once", "never"):
        row = pooled[g]
        shown = tests if g == "once" else ""
        lines.append(
            f"| pooled | {g} | {row['not_extractable']} | {row['recovered_exactly']} | {row['closer']} | {shown} |"
        )
    lines += [
        "",
        "| seed | CE AUC once vs never | calibrated | CE AUC closer vs not (seen once) |",
        "|---|---:|---:|---:|",
    ]
    for seed, n in runs.items():
        cells = [n["ce_auc_once_vs_never"], n["ce_calibrated_auc_once_vs_never"], n["ce_auc_closer_vs_not"]]
        lines.append(f"| {seed} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    cpu = sum(r["cpu_s"] for r in results["seeds"].values())
    lines += ["", f"CPU time recorded: {cpu / 3600:.2f} h."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    def run(small: bool, output: str) -> dict:
        return shared.run_seeds(output, settings(small), run_seed)

    return shared.seeded_main(argv, __doc__, DEFAULT_OUTPUT, "a tiny model, one seed", run, summarize)


if __name__ == "__main__":
    main()
