"""Canaries end to end on a tiny model trained here: exposure against repetitions, the estimate against
enumeration, canaries as a membership test with known ground truth, and extraction of the secrets.

A byte-level BPE (512 ids) is trained on standard-library docstrings, and a tiny Llama is trained from scratch on
docstring chunks with canaries "my PIN is:NNNN." (4 digits: |R| = 10^4) inserted 1, 4 and 16 times (three canaries
per count), with the standard loss and with the goldfish loss (k = 4), three seeds. Fresh canaries of the same
format, never inserted, are the control. Per canary: exposure by enumerating all 10^4 candidates, the skew-normal
estimate from 1,000 sampled candidates, and the probability of extracting the secret after "my PIN is:" by
sampling (temperature 1.0 and 0.7, from `extraction_log_probs`) against greedy exact match. Inserted against fresh
canaries: the membership AUC of exposure.

    python examples/canary_exposure.py           # ~10 min on 2 busy CPU cores
    python examples/canary_exposure.py --small   # one seed, few steps: what the tests run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch

from hf_memory.canaries import CanaryConfig, canary_exposure, insert_canaries, make_canaries
from hf_memory.data import stdlib_docstrings
from hf_memory.extraction import SamplingConfig, extractable_fraction, extraction_log_probs


CONFIG = CanaryConfig("my PIN is:{secret}.", alphabet="0123456789", length=4)
REPETITIONS = (1, 4, 16)
PER_COUNT = 3  # canaries per repetition count


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(stdlib_docstrings(min_chars=200), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def tiny_llama(vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    )


def auc(members, non_members) -> float:
    """ROC AUC of a score where higher means member (ties count one half)."""
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in non_members)
    return wins / (len(members) * len(non_members))


def interval(values) -> dict:
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or values.std() == 0:
        return {"mean": mean, "low": mean, "high": mean, "seeds": values.tolist()}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": values.tolist()}


def run(arm: str, seed: int, tokenizer, args) -> dict:
    from hf_memory.goldfish import GoldfishConfig, apply_goldfish

    secrets = make_canaries(CONFIG, 2 * PER_COUNT * len(REPETITIONS), seed=seed)
    inserted, fresh = secrets[: PER_COUNT * len(REPETITIONS)], secrets[PER_COUNT * len(REPETITIONS) :]
    counts = [r for r in REPETITIONS for _ in range(PER_COUNT)]
    docs = random.Random(seed).sample(stdlib_docstrings(min_chars=300), args.docs)
    texts = insert_canaries(docs, [CONFIG.text(s) for s in inserted], counts, seed=seed)
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]

    model = tiny_llama(len(tokenizer), seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    order = random.Random(seed)
    goldfish = GoldfishConfig(k=4)
    started = time.time()
    model.train()
    for _ in range(args.epochs):
        batches = list(range(len(encoded)))
        order.shuffle(batches)
        for start in range(0, len(batches), args.batch_size):
            rows = [encoded[i] for i in batches[start : start + args.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            labels = ids.masked_fill(mask == 0, -100)
            if arm == "goldfish":
                labels = apply_goldfish(labels, ids, goldfish)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    train_seconds = time.time() - started

    started = time.time()
    exact = canary_exposure(model, tokenizer, inserted + fresh, CONFIG, method="enumerate", batch_size=500)
    enumerate_seconds = time.time() - started
    estimate = canary_exposure(
        model,
        tokenizer,
        inserted + fresh,
        CONFIG,
        method="estimate",
        num_samples=args.samples,
        batch_size=500,
        seed=seed,
    )

    prefix_len = len(tokenizer(CONFIG.template.split("{secret}")[0])["input_ids"])
    windows = torch.tensor(tokenizer([CONFIG.text(s) for s in inserted + fresh])["input_ids"])
    extraction = {"greedy": extraction_log_probs(model, windows, prefix_len, temperature=None).tolist()}
    for name, sampling in {"temperature 1.0": SamplingConfig(1.0), "temperature 0.7": SamplingConfig(0.7)}.items():
        extraction[name] = extraction_log_probs(model, windows, prefix_len, sampling).tolist()

    k = len(inserted)
    out = {"arm": arm, "seed": seed, "train_seconds": round(train_seconds, 1)}
    out["enumeration_seconds"] = round(enumerate_seconds, 1)
    out["exposure"] = {
        **{f"inserted x{r}": [exact.exposure[i] for i in range(k) if counts[i] == r] for r in REPETITIONS},
        "fresh (control)": exact.exposure[k:],
    }
    out["estimate_error_bits"] = [e - x for e, x in zip(estimate.exposure, exact.exposure)]
    out["membership_auc_exposure"] = auc(exact.exposure[:k], exact.exposure[k:])
    out["extraction"] = {}
    for name, log_p in extraction.items():
        group = {f"inserted x{r}": [log_p[i] for i in range(k) if counts[i] == r] for r in REPETITIONS}
        group["fresh (control)"] = log_p[k:]
        out["extraction"][name] = {
            g: {
                "greedy_or_p": [math.exp(v) for v in values],
                "extractable_n100_p0.5": extractable_fraction(values, 100, 0.5),
            }
            for g, values in group.items()
        }
    return out


def aggregate(runs: list) -> dict:
    out = {}
    for arm in sorted({r["arm"] for r in runs}):
        mine = [r for r in runs if r["arm"] == arm]
        groups = list(mine[0]["exposure"])
        out[arm] = {
            "mean_exposure_bits": {g: interval([np.mean(r["exposure"][g]) for r in mine]) for g in groups},
            "membership_auc_exposure": interval([r["membership_auc_exposure"] for r in mine]),
            "estimate_abs_error_bits": {
                "median": float(np.median([abs(e) for r in mine for e in r["estimate_error_bits"]])),
                "max": float(np.max([abs(e) for r in mine for e in r["estimate_error_bits"]])),
                "canaries": sum(len(r["estimate_error_bits"]) for r in mine),
            },
            "greedy_extracted": {
                g: interval([np.mean(r["extraction"]["greedy"][g]["greedy_or_p"]) for r in mine]) for g in groups
            },
            "extractable_n100_p0.5": {
                name: {g: interval([r["extraction"][name][g]["extractable_n100_p0.5"] for r in mine]) for g in groups}
                for name in ("temperature 1.0", "temperature 0.7")
            },
            "mean_p": {
                name: {g: interval([np.mean(r["extraction"][name][g]["greedy_or_p"]) for r in mine]) for g in groups}
                for name in ("temperature 1.0", "temperature 0.7")
            },
            "enumeration_seconds": interval([r["enumeration_seconds"] for r in mine]),
        }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--output-dir", default="examples/results/canary_exposure")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", choices=["standard", "goldfish"], default=["standard", "goldfish"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    args.docs = 32 if args.small else 256
    args.epochs = 2 if args.small else 8
    args.max_length = 64
    args.batch_size = 16
    args.lr = 3e-3
    args.samples = 200 if args.small else 1000
    os.makedirs(os.path.join(args.output_dir, "runs"), exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "seeds", "arms")}
    key = json.dumps(settings, sort_keys=True)
    tokenizer = bpe_tokenizer()
    assert len({len(ids) for ids in tokenizer([CONFIG.text(s) for s in CONFIG.secrets()])["input_ids"]}) == 1
    started = time.time()
    runs = []
    for arm in args.arms:
        for seed in seeds:
            path = os.path.join(args.output_dir, "runs", f"{arm}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    stored = json.load(f)
                if stored.get("settings") == key:
                    runs.append(stored["run"])
                    continue
            result = run(arm, seed, tokenizer, args)
            with open(path + ".tmp", "w") as f:
                json.dump({"settings": key, "run": result}, f)
            os.replace(path + ".tmp", path)
            print(
                f"{arm} seed {seed}: exposure {json.dumps({g: np.round(v, 1).tolist() for g, v in result['exposure'].items()})}",
                flush=True,
            )
            runs.append(result)
    results = {
        "settings": {**settings, "seeds": seeds, "template": CONFIG.template, "space_size": CONFIG.space_size},
        "summary": aggregate(runs),
        "total_seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    print(json.dumps(main()["summary"], indent=2))
