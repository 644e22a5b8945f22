"""Canaries end to end on a tiny model trained here: exposure against repetitions, the estimate against
enumeration, canaries as a membership test with known ground truth, and extraction of the secrets.

A byte-level BPE (512 ids) is trained on standard-library docstrings, and a tiny Llama is trained from scratch on
docstring chunks with canaries "my PIN is:NNNN." (4 digits: |R| = 10^4) inserted 1, 4 and 16 times (three canaries
per count), with the standard loss and with the goldfish loss (k = 4), three seeds. Fresh canaries of the same
format, never inserted, are the control. Per canary: exposure by enumerating all 10^4 candidates, the skew-normal
estimate from 1,000 sampled candidates, and the probability of extracting the secret after "my PIN is:" by
sampling (temperature 1.0 and 0.7, from `extraction_log_probs`) against greedy exact match. Inserted against fresh
canaries: the membership test with exposure as the score (`membership_inference_scores`: AUC and TPR at low FPR, with
bootstrap intervals). A rerun reads the stored runs (`runs/`) and only aggregates.

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
from tqdm.auto import tqdm

from hf_memory.canaries import CanaryConfig, canary_exposure, insert_canaries, make_canaries
from hf_memory.data import document_windows, stdlib_docstrings
from hf_memory.extraction import SamplingConfig, extractable_fraction, extraction_log_probs
from hf_memory.membership import MIN_PER_CLASS, membership_inference_scores


CONFIG = CanaryConfig("my PIN is:{secret}.", alphabet="0123456789", length=4)
# SmolLM2: 17 tokens before the secret, so that goldfish (h = 13) hashes a full window at every digit and drops about
# a quarter of them (on the tiny model's 12-token canaries no label has 13 targets before it: goldfish drops none),
# and 3 digits (|R| = 10^3): enumerating 10^4 canaries of 22 tokens costs about 10 CPU minutes per model on SmolLM2.
SMOLLM2_CONFIG = CanaryConfig(
    "Note for the night shift: the alarm panel in the north building takes the PIN:{secret}.",
    alphabet="0123456789",
    length=3,
)
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


def membership(members, non_members, n_bootstrap: int = 0) -> dict:
    """The membership test with exposure as the score (higher = member): `membership_inference_scores`' AUC and TPR at
    10%, 1% and 0.1% FPR (None, with the reason, where too few non-members allow no false positive), with stratified
    bootstrap intervals where each class has enough samples."""
    scores = [*members, *non_members]
    labels = [1] * len(members) + [0] * len(non_members)
    if min(len(members), len(non_members)) < MIN_PER_CLASS:
        n_bootstrap = 0
    return membership_inference_scores(scores, labels, fprs=(0.1, 0.01, 0.001), n_bootstrap=n_bootstrap, seed=0)


def whole_space_tpr(runs: list, groups: list, space_size: int, fpr: float) -> dict:
    """TPR at `fpr` FPR with every candidate of the space that was not inserted as a non-member (|R| - 9 of them, the
    population fresh canaries are drawn from), one model per run: an inserted canary is a positive when at most
    floor(fpr * non-members) non-members rank strictly above it. Read off the stored exposures (rank = |R| / 2^exposure;
    the candidates above a canary are rank - 1, less the inserted canaries among them), with a 95% Clopper-Pearson
    interval over the members (the non-members are the whole space: their side has no sampling error)."""
    positives, members = 0, 0
    for run in runs:
        ranks = [
            round(space_size / 2**e) for g in run["exposure"] if g.startswith("inserted") for e in run["exposure"][g]
        ]
        mine = [round(space_size / 2**e) for g in groups for e in run["exposure"][g]]
        allowed = math.floor(fpr * (space_size - len(ranks)) + 1e-9)
        for rank in mine:
            non_members_above = rank - 1 - sum(other < rank for other in ranks)
            positives += non_members_above <= allowed
            members += 1
    from scipy.stats import binomtest

    ci = binomtest(positives, members).proportion_ci(0.95, method="exact")  # Clopper-Pearson, over the members
    return {"tpr": positives / members, "interval": [ci.low, ci.high], "positives": positives, "members": members}


def interval(values) -> dict:
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or values.std() == 0:
        return {"mean": mean, "low": mean, "high": mean, "seeds": values.tolist()}
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": values.tolist()}


def base_model(args, tokenizer, seed: int):
    """A fresh model to train: the tiny Llama (random weights of `seed`) or the embedded SmolLM2 (`load_model`)."""
    if args.model == "smollm2":
        from hf_memory import load_model

        torch.manual_seed(seed)
        return load_model()[0]
    return tiny_llama(len(tokenizer), seed)


def run(arm: str, seed: int, tokenizer, config: CanaryConfig, args) -> dict:
    from hf_memory.goldfish import GoldfishConfig, apply_goldfish, goldfish_mask

    secrets = make_canaries(config, 2 * PER_COUNT * len(REPETITIONS), seed=seed)
    inserted, fresh = secrets[: PER_COUNT * len(REPETITIONS)], secrets[PER_COUNT * len(REPETITIONS) :]
    counts = [r for r in REPETITIONS for _ in range(PER_COUNT)]
    docs = random.Random(seed).sample(stdlib_docstrings(min_chars=300), args.docs)
    texts = insert_canaries(docs, [config.text(s) for s in inserted], counts, seed=seed)
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    model = base_model(args, tokenizer, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    order = random.Random(seed)
    goldfish = GoldfishConfig(k=4)
    prefix_len = len(tokenizer(config.template.split("{secret}")[0])["input_ids"])
    windows = torch.tensor(tokenizer([config.text(s) for s in inserted + fresh])["input_ids"])
    # the labels of each inserted canary's secret (and what follows it) that the goldfish mask drops from the loss:
    # the same ones at every repetition, since the mask is a function of the tokens before each label
    dropped = goldfish_mask(windows[: len(inserted)], goldfish)[:, prefix_len:].sum(-1).tolist()
    steps = args.epochs * math.ceil(len(encoded) / args.batch_size)
    started = time.time()
    model.train()
    progress = tqdm(total=steps, desc=f"{arm} seed {seed}", disable=args.small, mininterval=10)
    for _ in range(args.epochs):
        batches = list(range(len(encoded)))
        order.shuffle(batches)
        for start in range(0, len(batches), args.batch_size):
            rows = [encoded[i] for i in batches[start : start + args.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            labels = ids.masked_fill(mask == 0, -100)
            if arm == "goldfish":
                labels = apply_goldfish(labels, ids, goldfish)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress.update()
    progress.close()
    model.eval()
    train_seconds = time.time() - started

    started = time.time()
    exact = canary_exposure(model, tokenizer, inserted + fresh, config, method="enumerate", batch_size=500)
    enumerate_seconds = time.time() - started
    estimate = canary_exposure(
        model,
        tokenizer,
        inserted + fresh,
        config,
        method="estimate",
        num_samples=args.samples,
        batch_size=500,
        seed=seed,
    )

    extraction = {"greedy": extraction_log_probs(model, windows, prefix_len, temperature=None).tolist()}
    for name, sampling in {"temperature 1.0": SamplingConfig(1.0), "temperature 0.7": SamplingConfig(0.7)}.items():
        extraction[name] = extraction_log_probs(model, windows, prefix_len, sampling).tolist()

    k = len(inserted)
    out = {"arm": arm, "seed": seed, "train_seconds": round(train_seconds, 1)}
    if getattr(args, "window", None):
        out["window_extraction"] = window_extraction(model, tokenizer, docs, seed, args)
    out["enumeration_seconds"] = round(enumerate_seconds, 1)
    out["goldfish_dropped_secret_labels"] = {
        f"inserted x{r}": [dropped[i] for i in range(k) if counts[i] == r] for r in REPETITIONS
    }
    out["exposure"] = {
        **{f"inserted x{r}": [exact.exposure[i] for i in range(k) if counts[i] == r] for r in REPETITIONS},
        "fresh (control)": exact.exposure[k:],
    }
    out["estimate_error_bits"] = [e - x for e, x in zip(estimate.exposure, exact.exposure)]
    out["membership_auc_exposure"] = membership(exact.exposure[:k], exact.exposure[k:])["roc_auc"]
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


def window_extraction(model, tokenizer, docs: list[str], seed: int, args) -> dict:
    """Greedy exact match against (100, 0.5)-extraction at temperature 1.0 and 0.7 of the training documents' first
    `args.window` tokens (half prefix, half suffix), and of as many docstrings that were not trained on (the control).
    """
    trained = set(docs)
    rest = [text for text in stdlib_docstrings(min_chars=300) if text not in trained]
    unseen = random.Random(seed + 1000).sample(rest, len(docs))
    prefix = args.window // 2
    out = {}
    for group, texts in (("trained", docs), ("not trained (control)", unseen)):
        windows = torch.tensor(document_windows(tokenizer, texts, args.window))
        settings = {"greedy": None, "temperature 1.0": SamplingConfig(1.0), "temperature 0.7": SamplingConfig(0.7)}
        out[group] = {"windows": len(windows)}
        for name, sampling in settings.items():
            if sampling is None:
                log_p = extraction_log_probs(model, windows, prefix, temperature=None).tolist()
                out[group][name] = float(np.mean([math.exp(v) for v in log_p]))  # the share greedy decoding emits
            else:
                log_p = extraction_log_probs(model, windows, prefix, sampling).tolist()
                out[group][name] = extractable_fraction(log_p, 100, 0.5)
    return out


def aggregate(runs: list, space_size: int) -> dict:
    out = {}
    for arm in sorted({r["arm"] for r in runs}):
        mine = [r for r in runs if r["arm"] == arm]
        groups = list(mine[0]["exposure"])
        inserted = [g for g in groups if g.startswith("inserted")]
        out[arm] = {
            "mean_exposure_bits": {g: interval([np.mean(r["exposure"][g]) for r in mine]) for g in groups},
            "membership_auc_exposure": interval([r["membership_auc_exposure"] for r in mine]),
            # inserted against fresh canaries, pooled over seeds (exposure is in bits of the same space for every
            # model): the AUC and TPR at low FPR with 1,000 stratified bootstrap resamples
            "membership_pooled": {
                name: membership(
                    [e for r in mine for g in members for e in r["exposure"][g]],
                    [e for r in mine for e in r["exposure"]["fresh (control)"]],
                    n_bootstrap=1000,
                )
                for name, members in [("all inserted", inserted), *((g, [g]) for g in inserted)]
            },
            "membership_whole_space": {
                name: {f"tpr_at_{fpr:g}_fpr": whole_space_tpr(mine, members, space_size, fpr) for fpr in (0.01, 0.001)}
                for name, members in [("all inserted", inserted), *((g, [g]) for g in inserted)]
            },
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
        if all("window_extraction" in r for r in mine):
            # the training documents' windows: greedy exact match against (100, 0.5)-extraction when sampling
            out[arm]["window_extraction"] = {
                group: {
                    name: interval([r["window_extraction"][group][name] for r in mine])
                    for name in ("greedy", "temperature 1.0", "temperature 0.7")
                }
                for group in mine[0]["window_extraction"]
            }
        if all("goldfish_dropped_secret_labels" in r for r in mine):
            # how many labels of an inserted canary's secret part the goldfish mask would drop (the goldfish arm
            # drops them; the standard arm trains on them): mean over the canaries of every seed
            out[arm]["goldfish_dropped_secret_labels"] = {
                g: float(np.mean([d for r in mine for d in r["goldfish_dropped_secret_labels"][g]])) for g in inserted
            }
    return out


def plot(runs: list, space_size: int, path: str, title: str) -> None:
    """Exposure against insertions: every canary of every seed (fresh canaries at 0), the mean per count, one colour
    per arm, the space's ceiling log2 |R| dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    counts = [0, *REPETITIONS]
    positions = {c: i for i, c in enumerate(counts)}
    arms = sorted({r["arm"] for r in runs}, key=["standard", "goldfish"].index)
    for offset, arm, color in zip((-0.12, 0.12), arms, ("tab:blue", "tab:orange")):
        means = []
        for count in counts:
            group = "fresh (control)" if count == 0 else f"inserted x{count}"
            values = [e for r in runs if r["arm"] == arm for e in r["exposure"][group]]
            jitter = np.random.default_rng(count).uniform(-0.05, 0.05, len(values))
            ax.scatter(positions[count] + offset + jitter, values, s=14, color=color, alpha=0.5)
            means.append(float(np.mean(values)))
        ax.plot([positions[c] + offset for c in counts], means, "-o", color=color, label=f"{arm} (mean)")
    ax.axhline(math.log2(space_size), color="grey", linestyle=":", linewidth=1, label="log2 |R| (rank 1)")
    ax.set_xticks(range(len(counts)), ["fresh\n(control)", *(f"{c}x" for c in REPETITIONS)])
    ax.set_xlabel("insertions of the canary in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a Llama trained from scratch here; smollm2: the embedded SmolLM2-135M, fine-tuned")  # fmt: skip
    parser.add_argument("--output-dir", default=None,
                        help="default: examples/results/canary_exposure (tiny) or canary_exposure_smollm2")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--arms", nargs="+", choices=["standard", "goldfish"], default=["standard", "goldfish"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--plot", default=None, help="draw exposure against insertions to this PNG (`plots` extra)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    output_dir = args.output_dir or "examples/results/canary_exposure" + (
        "_smollm2" if args.model == "smollm2" else ""
    )
    seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    if args.model == "smollm2":
        config = SMOLLM2_CONFIG
        args.docs = 8 if args.small else 64
        args.epochs = 1 if args.small else 3
        args.lr = 1e-4
        args.batch_size = 8
        args.window = 48  # the training documents' windows measured for (n, p)-extraction: 24 + 24 tokens
    else:
        config = CONFIG
        args.docs = 32 if args.small else 256
        args.epochs = 2 if args.small else 8
        args.lr = 3e-3
        args.batch_size = 16
    args.max_length = 64
    args.samples = 200 if args.small or args.model == "smollm2" else 1000
    os.makedirs(os.path.join(output_dir, "runs"), exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("output_dir", "seeds", "arms", "threads", "plot")}
    if args.model == "tiny":
        del settings["model"]  # the stored tiny runs predate the option
    key = json.dumps(settings, sort_keys=True)
    if args.model == "smollm2":
        from hf_memory import load_model

        tokenizer = load_model()[1]
    else:
        tokenizer = bpe_tokenizer()
    assert len({len(ids) for ids in tokenizer([config.text(s) for s in config.secrets()])["input_ids"]}) == 1
    started = time.time()
    runs, trained = [], 0
    for arm in args.arms:
        for seed in seeds:
            path = os.path.join(output_dir, "runs", f"{arm}_seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    stored = json.load(f)
                if stored.get("settings") == key:
                    runs.append(stored["run"])
                    continue
            result = run(arm, seed, tokenizer, config, args)
            with open(path + ".tmp", "w") as f:
                json.dump({"settings": key, "run": result}, f)
            os.replace(path + ".tmp", path)
            print(
                f"{arm} seed {seed}: exposure {json.dumps({g: np.round(v, 1).tolist() for g, v in result['exposure'].items()})}",
                flush=True,
            )
            runs.append(result)
            trained += 1
    results = {
        "settings": {**settings, "seeds": seeds, "template": config.template, "space_size": config.space_size},
        "summary": aggregate(runs, config.space_size),
        "total_seconds": round(time.time() - started, 1),  # this invocation's: stored runs are read, not trained
        "runs_trained_now": trained,
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.plot:
        model = "SmolLM2-135M fine-tuned" if args.model == "smollm2" else "tiny Llama trained from scratch"
        plot(runs, config.space_size, args.plot, f"Canary exposure, {model} ({len(seeds)} seeds)")
    return results


if __name__ == "__main__":
    print(json.dumps(main()["summary"], indent=2))
