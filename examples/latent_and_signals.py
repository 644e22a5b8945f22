"""Latent memorization and memorization signals on a controlled set: repeated, seen once, never seen.

A tiny Llama is trained from scratch on windows of standard-library docstrings (a byte-level BPE trained here, no
download): first a few epochs of background windows, then one fine-tuning epoch over the controlled set, shuffled:
`n_repeated` windows `repeats` times each and `n_once` windows once (the seen-once windows are spread through the
epoch, not placed at its end); `n_never` windows of the same pool are held out. `finetune_background=True` adds the
background to the fine-tuning epoch (the earlier setup, where the CE diagnostic's AUC was 0.70). Then it reports, as
JSON and in a figure:

- the CE diagnostic (one SGD step at lr 1e-5, then the loss) and its ROC AUC for seen-once vs never-seen, plain and
  calibrated by the model before fine-tuning (`ce_diagnostic(..., reference_model=...)`);
- how many seen-once windows the perturbation scan brings closer to / exactly onto their suffix, vs never-seen;
- the per-token entropy and input n-gram frequency across the prefix/suffix boundary, memorized vs not;
- the held-out accuracy and AUC of `MemorizationPredictor` trained on extraction labels.

    python examples/latent_and_signals.py              # about 4 minutes on 2 (shared) CPU cores, one thread
    python examples/latent_and_signals.py --small      # a smoke run of about 10 seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_memory.analysis import MemorizationPredictor, extraction_labels, memorization_signals, ngram_counts
from hf_memory.analysis.latent import ce_diagnostic, latent_memorization_scan
from hf_memory.data import stdlib_docstrings
from hf_memory.extraction import measure_extraction


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PLOT = os.path.join(HERE, "..", "docs", "latent_and_signals.png")


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE trained on `texts` (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def token_windows(tokenizer, texts, length: int) -> list[list[int]]:
    """Non-overlapping `length`-token windows of every text; a window whose prefix was already seen is dropped."""
    windows, prefixes = [], set()
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - length + 1, length):
            window = ids[start : start + length]
            if tuple(window[: length // 2]) not in prefixes:
                prefixes.add(tuple(window[: length // 2]))
                windows.append(window)
    return windows


def tiny_llama(vocab_size: int, hidden: int, layers: int, length: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=length,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def train(model, windows, epochs: int, lr: float, batch_size: int, seed: int, desc: str) -> float:
    """Plain AdamW next-token training over shuffled `windows` (each listed window is one sample per epoch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    loss = float("nan")
    for _ in range(epochs):
        order = list(range(len(windows)))
        rng.shuffle(order)
        for b in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            ids = torch.tensor([windows[i] for i in order[b : b + batch_size]])
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = out.loss.item()
    model.eval()
    return loss


def roc_auc(positive, negative) -> float:
    """P(score of a positive > score of a negative), ties counted half (the ROC AUC)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), list(positive) + list(negative)))


def main(
    n_repeated: int = 40,
    n_once: int = 96,
    n_never: int = 96,
    repeats: int = 64,
    prefix_len: int = 32,
    suffix_len: int = 32,
    hidden: int = 128,
    layers: int = 4,
    vocab_size: int = 1024,
    pretrain_epochs: int = 8,
    batch_size: int = 16,
    lr: float = 3e-3,
    finetune_lr: float = 3e-3,
    sigma: float = 2e-3,
    n_perturbations: int = 20,
    max_background: int | None = None,
    finetune_background: bool = False,
    plot: str | None = DEFAULT_PLOT,
    seed: int = 0,
) -> dict:
    """Run the whole experiment and return the JSON summary (also saves the figure to `plot` unless None)."""
    started = time.time()
    texts = stdlib_docstrings(min_chars=200)
    tokenizer = train_tokenizer(texts, vocab_size)
    length = prefix_len + suffix_len
    windows = token_windows(tokenizer, texts, length)
    random.Random(seed).shuffle(windows)
    controlled = n_repeated + n_once + n_never
    if len(windows) < controlled + 8:
        raise ValueError(f"Only {len(windows)} windows of {length} tokens: lower n_repeated / n_once / n_never.")
    repeated = windows[:n_repeated]
    once = windows[n_repeated : n_repeated + n_once]
    never = windows[n_repeated + n_once : controlled]
    background = windows[controlled:][:max_background]

    model = tiny_llama(len(tokenizer), hidden, layers, length, seed)
    pretrain_loss = train(model, background, pretrain_epochs, lr, batch_size, seed, "pretrain")
    reference = copy.deepcopy(model)  # the model before it saw the controlled set: calibrates per-window difficulty
    # the fine-tuning epoch: the controlled set (and the background again if `finetune_background`), shuffled, so the
    # seen-once windows are spread through the epoch, not placed at its end
    finetune_set = (background if finetune_background else []) + repeated * repeats + once
    finetune_loss = train(model, finetune_set, 1, finetune_lr, batch_size, seed + 1, "fine-tune")
    train_time = time.time() - started

    # extraction: which windows are memorized (exact greedy suffix)
    groups = {"repeated": repeated, "once": once, "never": never}
    extraction = {
        g: measure_extraction(model, w, prefix_len, suffix_len, show_progress=False) for g, w in groups.items()
    }

    # CE diagnostic: seen once vs never seen
    ce = {
        g: ce_diagnostic(model, groups[g], lr=1e-5, steps=1, show_progress=False, reference_model=reference)
        for g in ("once", "never")
    }
    ce_auc = roc_auc([-x for x in ce["once"].loss_after], [-x for x in ce["never"].loss_after])
    plain_auc = roc_auc([-x for x in ce["once"].loss], [-x for x in ce["never"].loss])
    change_auc = roc_auc(ce["once"].weight_change, ce["never"].weight_change)
    calibrated_auc = roc_auc([-x for x in ce["once"].calibrated_loss], [-x for x in ce["never"].calibrated_loss])

    # perturbation scan: seen once vs never seen (the control: noise alone also moves text around)
    scans = {
        g: latent_memorization_scan(
            model, groups[g], prefix_len, suffix_len, sigma=sigma, n_perturbations=n_perturbations, seed=seed
        )
        for g in ("once", "never")
    }

    def scan_summary(scan, result):
        extracted = [bool(x) for x in extraction_labels(result)]
        improved = [b < u for u, b in zip(scan.unperturbed_distance, scan.best_distance)]
        return {
            "extractable_unperturbed": int(sum(extracted)),
            "recovered_exactly_by_perturbation": int(sum(scan.recovered(0))),
            "closer_under_some_perturbation": int(sum(improved)),
            "mean_unperturbed_distance": float(np.mean(scan.unperturbed_distance)),
            "mean_best_distance": float(np.mean(scan.best_distance)),
        }

    scan_report = {g: scan_summary(scans[g], extraction[g]) for g in scans}

    # signals and the predictor: every controlled window plus as many background windows, labels = exact match
    sample = repeated + once + never + background[: n_once + n_never]
    sample_result = measure_extraction(model, sample, prefix_len, suffix_len, show_progress=False)
    labels = np.array(extraction_labels(sample_result))
    counts = ngram_counts(
        background + repeated * repeats + once
    )  # every training window (background seen in pretraining)
    signals = memorization_signals(model, sample, prefix_len, suffix_len, ngram_counts=counts, show_progress=False)
    predictor_reports = {}
    if min(labels.sum(), len(labels) - labels.sum()) >= 4:
        for name, kwargs in {
            "all_signals": {
                "features": (
                    "confidence",
                    "true_prob",
                    "logit_mean",
                    "logit_var",
                    "entropy_prefix",
                    "entropy_suffix",
                    "entropy_jump",
                    "unigram_suffix",
                    "bigram_suffix",
                )
            },
            "entropy_and_hidden": {
                "features": ("entropy_prefix", "entropy_suffix", "entropy_jump"),
                "hidden_layer": -1,
            },
            "entropy_only": {"features": ("entropy_prefix", "entropy_suffix", "entropy_jump")},
        }.items():
            report = MemorizationPredictor(**kwargs).fit(signals, labels, test_size=0.3, seed=seed)
            predictor_reports[name] = {
                "accuracy": round(report.accuracy, 3),
                "auc": round(report.auc, 3),
                "n_test": report.n_test,
            }

    window = min(prefix_len, suffix_len, 16)
    offsets, entropy = signals.boundary("entropy", window)
    ngram_offsets, unigram = signals.boundary("unigram", window)
    memorized, unmemorized = labels == 1, labels == 0

    def boundary_means(mask):
        """Mean entropy over the `window` predictions before the boundary and from it, and the jump between them."""
        if not mask.any():
            return None
        before, after = float(entropy[mask][:, offsets < 0].mean()), float(entropy[mask][:, offsets >= 0].mean())
        return {
            "prefix": round(before, 3),
            "suffix": round(after, 3),
            "jump": round(after - before, 3),
            "n": int(mask.sum()),
        }

    summary = {
        "setup": {
            "model": f"Llama from scratch, hidden {hidden}, {layers} layers, {sum(p.numel() for p in model.parameters()):,} parameters",
            "tokenizer": f"byte-level BPE, {len(tokenizer)} tokens",
            "windows": f"{prefix_len} prefix + {suffix_len} suffix tokens",
            "background": len(background),
            "pretrain_epochs": pretrain_epochs,
            "finetune_background": finetune_background,
            "finetune_samples": len(finetune_set),
            "finetune_lr": finetune_lr,
            "repeated": n_repeated,
            "repeats": repeats,
            "once": n_once,
            "never": n_never,
            "final_train_loss": round(finetune_loss, 3),
            "pretrain_loss": round(pretrain_loss, 3),
            "train_seconds": round(train_time, 1),
            "threads": torch.get_num_threads(),
        },
        "exact_match": {g: round(r.metrics["exact_match"], 3) for g, r in extraction.items()},
        "memorization_score": {g: round(r.metrics["memorization_score"], 3) for g, r in extraction.items()},
        "ce_diagnostic": {
            "auc_once_vs_never_after_one_sgd_step": round(ce_auc, 3),
            "auc_once_vs_never_plain_ce": round(plain_auc, 3),
            "auc_once_vs_never_weight_change": round(change_auc, 3),
            "auc_once_vs_never_calibrated_by_pre_finetune_model": round(calibrated_auc, 3),
            "mean_loss_after": {g: round(float(np.mean(r.loss_after)), 3) for g, r in ce.items()},
            "mean_reference_loss": {g: round(float(np.mean(r.reference_loss)), 3) for g, r in ce.items()},
            "goal_auc": 0.9,
        },
        "perturbation_scan": {"sigma": sigma, "n_perturbations": n_perturbations, **scan_report},
        "entropy_boundary": {
            "window": window,
            "memorized": boundary_means(memorized),
            "unmemorized": boundary_means(unmemorized),
        },
        "predictor": predictor_reports,
        "seconds": round(time.time() - started, 1),
    }
    if plot:
        save_plot(plot, offsets, entropy, ngram_offsets, unigram, memorized, ce, summary)
        summary["plot"] = os.path.relpath(plot)
    return summary


def save_plot(path, offsets, entropy, ngram_offsets, unigram, memorized, ce, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for mask, label, color in (
        (memorized, "memorized (exact match)", "tab:red"),
        (~memorized, "not memorized", "tab:blue"),
    ):
        if not mask.any():
            continue
        mean, std = entropy[mask].mean(0), entropy[mask].std(0)
        axes[0].plot(offsets, mean, color=color, label=f"{label}, n={mask.sum()}")
        axes[0].fill_between(offsets, mean - std, mean + std, color=color, alpha=0.15)
        axes[1].plot(ngram_offsets, np.nanmean(np.log1p(unigram[mask]), 0), color=color, label=label)
    for ax, title, ylabel in (
        (axes[0], "Per-token entropy across the boundary", "entropy of the next-token distribution (nats)"),
        (axes[1], "Input unigram frequency across the boundary", "mean log(1 + count in training data)"),
    ):
        ax.axvline(-0.5, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel("token offset (0 = first suffix token)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
    auc = summary["ce_diagnostic"]["auc_once_vs_never_after_one_sgd_step"]
    bins = np.histogram_bin_edges(ce["once"].loss_after + ce["never"].loss_after, bins=30)
    axes[2].hist(ce["never"].loss_after, bins=bins, alpha=0.6, color="tab:blue", label="never seen")
    axes[2].hist(ce["once"].loss_after, bins=bins, alpha=0.6, color="tab:orange", label="seen once")
    axes[2].set_xlabel("cross-entropy after one SGD step (lr 1e-5)")
    axes[2].set_ylabel("windows")
    calibrated = summary["ce_diagnostic"]["auc_once_vs_never_calibrated_by_pre_finetune_model"]
    axes[2].set_title(
        f"CE diagnostic, seen once vs never: AUC {auc:.3f}\n(minus the pre-fine-tuning CE: AUC {calibrated:.3f})",
        fontsize=10,
    )
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a smoke run: tiny sizes, no plot unless --plot")
    parser.add_argument("--repeats", type=int, default=64)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument(
        "--finetune-background",
        action="store_true",
        help="fine-tune on the background again plus the controlled set (default: the controlled set only)",
    )
    parser.add_argument("--n-perturbations", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=2e-3)
    parser.add_argument("--plot", default=None, help=f"figure path (default: {os.path.relpath(DEFAULT_PLOT)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (a model this small gains little from more)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {
        "repeats": args.repeats,
        "pretrain_epochs": args.pretrain_epochs,
        "finetune_background": args.finetune_background,
        "n_perturbations": args.n_perturbations,
        "sigma": args.sigma,
        "seed": args.seed,
        "plot": args.plot or DEFAULT_PLOT,
    }
    if args.small:
        kwargs.update(
            n_repeated=8,
            n_once=16,
            n_never=16,
            hidden=32,
            layers=1,
            pretrain_epochs=1,
            n_perturbations=2,
            max_background=64,
            plot=args.plot,
        )
    print(json.dumps(main(**kwargs), indent=2))
