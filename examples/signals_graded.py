"""Memorization signals without label leakage: windows fine-tuned at graded repetition counts, a predictor that sees
the prefix only and is evaluated on documents it did not fit, the entropy along the model's own continuation, and
ROME's word-length test.

Per seed, standard-library docstrings (first 64 SmolLM2 tokens, one window per document: 32 + 32) are split at
random into six groups of `per_count` documents: seen 1, 2, 4, 8 or 16 times in one fine-tuning pass (shuffled), or
never (the control). After fine-tuning, a window is "memorized" when greedy decoding from its prefix reproduces its
32-token suffix exactly. Then:

- **Predictors** (`MemorizationPredictor`, logistic regression on standardized features), fitted on half of the
  documents (stratified) and scored on the other half, one window per document, so the split is by document:
  - *prefix only, fine-tuned model*: the entropy of the predictions inside the prefix and the last layer's hidden
    state mean-pooled over the prefix: nothing of the suffix is read;
  - *prefix only, base model* (the control for what a prefix says before any training: its text alone);
  - *suffix-reading* (the earlier "easy mode", for contrast): confidence and the true token's probability averaged
    over the true suffix, which nearly encode the label.
- **Entropy at the boundary along the model's own continuation** (greedy, the same tokens the label is read from):
  mean entropy over the 8 predictions before the boundary and the 8 from it on, memorized against not memorized.
- **Word length** (ROME: longer words are memorized less): mean characters per word of the suffix text, memorized
  against not memorized within each repetition count (a permutation test of the difference, labels permuted within
  counts, so the count cannot explain it).
- **Representation similarity across contexts** (ROME: memorized text is represented alike whatever precedes it):
  `representation_similarity` of each suffix after its own prefix and after the prefixes of two other windows of the
  set (last layer, mean over the suffix tokens), memorized against not memorized, with the same permutation test.

    nohup nice python examples/signals_graded.py &      # SmolLM2, about 10 CPU minutes per seed
    python examples/signals_graded.py --small            # a tiny model, one seed: the smoke run a test makes
    python examples/signals_graded.py --summary          # the tables of the committed results
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # membership_evidence.py, next to this file

import membership_evidence as shared  # noqa: E402

from hf_memory.analysis import MemorizationPredictor, memorization_signals, representation_similarity  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "signals_graded_smollm2.json")
COUNTS = (0, 1, 2, 4, 8, 16)  # 0: never seen (the control)
PREDICTORS = {
    "prefix only, fine-tuned model": {"features": ["entropy_prefix"], "hidden_layer": -1, "model": "tuned"},
    "prefix only, base model (control)": {"features": ["entropy_prefix"], "hidden_layer": -1, "model": "base"},
    "suffix-reading (leaks the label)": {"features": ["confidence", "true_prob"], "hidden_layer": None, "model": "tuned"},
}  # fmt: skip


def settings(small: bool) -> dict:
    if small:
        return {
            "model": "tiny", "hidden": 32, "layers": 2, "vocab": 384, "pretrain_epochs": 1, "pretrain_lr": 3e-3,
            "per_count": 6, "prefix": 12, "suffix": 12, "lr": 1e-2, "batch_size": 8, "seeds": [0],
            "permutations": 200, "length": 24,
        }  # fmt: skip
    return {
        "model": "smollm2", "per_count": 16, "prefix": 32, "suffix": 32, "lr": 1e-4, "batch_size": 8,
        "seeds": [0, 1, 2], "permutations": 10000,
    }  # fmt: skip


def groups(pool: list, st: dict, seed: int) -> tuple[list, list]:
    """(windows, counts): `per_count` documents for each repetition count, a random draw of the pool."""
    picked = random.Random(seed).sample(pool, st["per_count"] * len(COUNTS))
    counts = [c for c in COUNTS for _ in range(st["per_count"])]
    return picked, counts


def fine_tune(base, windows: list, counts: list, st: dict, seed: int):
    """One pass over every window repeated its count of times, shuffled; AdamW at a constant rate."""
    model = copy.deepcopy(base)
    stream = [w for w, c in zip(windows, counts) for _ in range(c)]
    random.Random(seed).shuffle(stream)
    data = torch.tensor(stream)
    optimizer = torch.optim.AdamW(model.parameters(), lr=st["lr"], weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    for start in tqdm(range(0, len(data), st["batch_size"]), desc=f"seed {seed}: fine-tuning", mininterval=10):
        batch = data[start : start + st["batch_size"]]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@torch.inference_mode()
def greedy_suffixes(model, windows: list, st: dict) -> torch.Tensor:
    """The model's own greedy continuation of every prefix (prefixes have one length: no padding)."""
    prefixes = torch.tensor(windows)[:, : st["prefix"]]
    out = []
    for batch in prefixes.split(16):
        generated = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=st["suffix"],
            min_new_tokens=st["suffix"],
            do_sample=False,
            pad_token_id=0,
        )
        out.append(generated[:, st["prefix"] :])
    return torch.cat(out)


def signals(model, windows, st: dict, pool: str = "prefix"):
    return memorization_signals(model, windows, st["prefix"], st["suffix"], pool=pool, show_progress=False)


def word_length(tokenizer, windows: list, st: dict) -> np.ndarray:
    """Mean characters per word (runs of non-space characters) of each window's suffix text."""
    texts = tokenizer.batch_decode([w[st["prefix"] :] for w in windows], skip_special_tokens=True)
    return np.array([np.mean([len(word) for word in text.split()]) if text.split() else 0.0 for text in texts])


def context_similarity(model, windows: list, st: dict, seed: int) -> np.ndarray:
    """Per window: the mean cosine similarity (last layer) of its suffix's representation after its own prefix and
    after two other windows' prefixes, drawn at random."""
    rng = random.Random(seed + 2000)
    prefix = st["prefix"]
    contexts = {}
    for i, window in enumerate(windows):
        others = rng.sample([j for j in range(len(windows)) if j != i], 2)
        rows = [window] + [windows[j][:prefix] + window[prefix:] for j in others]
        contexts[i] = [(row, (prefix, len(window))) for row in rows]
    result = representation_similarity(model, contexts)
    return np.array([result.per_concept[i][-1] for i in range(len(windows))])


def stratified_permutation(values: np.ndarray, labels: np.ndarray, strata: np.ndarray, n: int, seed: int) -> dict:
    """Difference of means (label 1 minus label 0), averaged over the strata that hold both labels (weighted by
    size), and its two-sided p-value with labels permuted within strata."""
    rng = np.random.default_rng(seed)

    def statistic(y):
        total, weight = 0.0, 0
        for s in np.unique(strata):
            inside = strata == s
            if 0 < y[inside].sum() < inside.sum():
                total += inside.sum() * (values[inside & (y == 1)].mean() - values[inside & (y == 0)].mean())
                weight += inside.sum()
        return total / weight if weight else float("nan")

    observed = statistic(labels)
    if math.isnan(observed):
        return {"difference": None, "p": None, "strata_used": 0}
    permuted = []
    for _ in range(n):
        y = labels.copy()
        for s in np.unique(strata):
            inside = np.flatnonzero(strata == s)
            y[inside] = rng.permutation(y[inside])
        permuted.append(statistic(y))
    p = (1 + np.sum(np.abs(permuted) >= abs(observed) - 1e-12)) / (n + 1)
    used = sum(0 < labels[strata == s].sum() < (strata == s).sum() for s in np.unique(strata))
    return {"difference": float(observed), "p": float(p), "strata_used": int(used)}


def run_seed(base, tokenizer, pool: list, st: dict, seed: int) -> dict:
    started = time.process_time()
    windows, counts = groups(pool, st, seed)
    tuned = fine_tune(base, windows, counts, st, seed)
    own = greedy_suffixes(tuned, windows, st)
    truth = torch.tensor(windows)[:, st["prefix"] :]
    labels = (own == truth).all(-1).long().numpy()
    out = {"counts": counts, "memorized": labels.tolist()}
    out["memorized_by_count"] = {str(c): float(labels[np.array(counts) == c].mean()) for c in COUNTS}

    models = {"tuned": tuned, "base": base}
    computed = {name: signals(model, windows, st) for name, model in models.items()}
    out["predictors"] = {}
    if min(labels.sum(), len(labels) - labels.sum()) >= 4:
        for name, spec in PREDICTORS.items():
            predictor = MemorizationPredictor(spec["features"], hidden_layer=spec["hidden_layer"], C=0.1)
            report = predictor.fit(computed[spec["model"]], labels, test_size=0.5, seed=seed)
            out["predictors"][name] = {"auc": report.auc, "accuracy": report.accuracy, "test": report.n_test}
    # the entropy along the model's own greedy continuation, 8 predictions on each side of the boundary
    continued = torch.cat([torch.tensor(windows)[:, : st["prefix"]], own], 1)
    own_signals = memorization_signals(
        tuned, continued, st["prefix"], st["suffix"], hidden_states=False, show_progress=False
    )
    offsets, entropy = own_signals.boundary("entropy", 8)
    before, after = entropy[:, offsets < 0].mean(1), entropy[:, offsets >= 0].mean(1)
    out["own_continuation_entropy"] = {"before": before.tolist(), "after": after.tolist()}
    lengths = word_length(tokenizer, windows, st)
    out["word_length"] = lengths.tolist()
    seen = np.array(counts) > 0
    out["word_length_test"] = stratified_permutation(
        lengths[seen], labels[seen], np.array(counts)[seen], st["permutations"], seed
    )
    similarity = context_similarity(tuned, windows, st, seed)
    out["context_similarity"] = similarity.tolist()
    out["context_similarity_test"] = stratified_permutation(
        similarity[seen], labels[seen], np.array(counts)[seen], st["permutations"], seed
    )
    out["cpu_s"] = round(time.process_time() - started, 1)
    print(f"seed {seed}: memorized by count {out['memorized_by_count']}", flush=True)
    return out


def interval(values) -> list:
    """[mean, low, high]: the mean over seeds and its 95% t-interval (the mean alone for one seed)."""
    from scipy import stats

    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return [None, None, None]
    mean = float(values.mean())
    if len(values) < 2:
        return [mean, mean, mean]
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return [mean, mean - half, mean + half]


def prefix_entropy_auc(run: dict) -> tuple[float | None, float | None]:
    """(AUC over every window, AUC within repetition counts) of minus the prefix entropy against the labels."""
    from sklearn.metrics import roc_auc_score

    score = -np.asarray(run["own_continuation_entropy"]["before"])
    labels, counts = np.asarray(run["memorized"]), np.asarray(run["counts"])
    overall = float(roc_auc_score(labels, score)) if 0 < labels.sum() < len(labels) else None
    total, weight = 0.0, 0
    for c in np.unique(counts):
        inside = counts == c
        if 0 < labels[inside].sum() < inside.sum():
            total += inside.sum() * roc_auc_score(labels[inside], score[inside])
            weight += inside.sum()
    return overall, (float(total / weight) if weight else None)


def summary_numbers(results: dict) -> dict:
    runs = [results["seeds"][k] for k in sorted(results["seeds"], key=int)]
    out = {"seeds": len(runs)}
    out["memorized_by_count"] = {str(c): interval([r["memorized_by_count"][str(c)] for r in runs]) for c in COUNTS}
    out["predictor_auc"] = {
        name: interval([r["predictors"].get(name, {}).get("auc") for r in runs]) for name in PREDICTORS
    }
    # One prefix-only feature, nothing fitted: minus the mean entropy of the fine-tuned model's 8 predictions before
    # the boundary (inside the true prefix: the "before" side of the own-continuation entropy), as a score; over
    # every window, and within each repetition count that holds both labels (weighted by its size).
    out["prefix_entropy_auc"] = interval([prefix_entropy_auc(r)[0] for r in runs])
    out["prefix_entropy_auc_within_counts"] = interval([prefix_entropy_auc(r)[1] for r in runs])
    entropy = {}
    for side in ("before", "after"):
        for label, name in ((1, "memorized"), (0, "not memorized")):
            entropy[f"{name}, {side}"] = interval(
                [
                    np.mean([e for e, m in zip(r["own_continuation_entropy"][side], r["memorized"]) if m == label])
                    if label in r["memorized"]
                    else None
                    for r in runs
                ]
            )
    out["own_continuation_entropy"] = entropy
    out["word_length_test"] = [r["word_length_test"] for r in runs]
    out["context_similarity_test"] = [r["context_similarity_test"] for r in runs]
    return out


def summarize(results: dict) -> str:
    n = summary_numbers(results)

    def cell(v):
        return "—" if v[0] is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    lines = [f"{n['seeds']} seeds: mean [95% t-interval].", "", "| repetitions | share memorized (exact) |"]
    lines += ["|---:|---:|"] + [f"| {c} | {cell(v)} |" for c, v in n["memorized_by_count"].items()]
    lines += ["", "| predictor (split by document) | AUC |", "|---|---:|"]
    lines += [f"| {name} | {cell(v)} |" for name, v in n["predictor_auc"].items()]
    lines += [f"| prefix entropy alone, nothing fitted: every window | {cell(n['prefix_entropy_auc'])} |"]
    lines += [f"| prefix entropy alone, within repetition counts | {cell(n['prefix_entropy_auc_within_counts'])} |"]
    lines += ["", "| entropy along the model's own continuation (nats) | mean |", "|---|---:|"]
    lines += [f"| {name} | {cell(v)} |" for name, v in n["own_continuation_entropy"].items()]
    lines += ["", "Word length of the suffix, memorized minus not, within repetition counts (permutation test):"]
    lines += [f"- seed {i}: {t}" for i, t in enumerate(n["word_length_test"])]
    lines += ["", "Suffix representation similarity across contexts, memorized minus not, within counts:"]
    lines += [f"- seed {i}: {t}" for i, t in enumerate(n["context_similarity_test"])]
    cpu = sum(r["cpu_s"] for r in results["seeds"].values())
    lines += ["", f"CPU time recorded: {cpu / 3600:.2f} h."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    def run(small: bool, output: str) -> dict:
        return shared.run_seeds(output, settings(small), run_seed)

    return shared.seeded_main(argv, __doc__, DEFAULT_OUTPUT, "a tiny model, one seed", run, summarize)


if __name__ == "__main__":
    main()
