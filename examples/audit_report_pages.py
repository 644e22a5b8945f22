"""The audit pages shown in the docs (`docs/audit_report*.png`): the embedded SmolLM2 before and after fine-tuning.

32 standard-library docstrings cut to their first 64 tokens are split at random (seed 0) into 16 members and 16
held-out documents (the same source, so the blind baseline should sit at chance). The embedded
SmolLM2-135M-Instruct is fine-tuned on the members twice, as `hf-memory demo` does: 8 epochs, lr 2e-4 (constant),
batch 8, seed 0, once with the standard loss (`Trainer`) and once with the goldfish loss (`GoldfishTrainer`,
k = 4, h = 13). Three audits, each of the 16 members (32 + 32 tokens, one window per document) with the 16 held-out
documents as non-members:

- `base`: the model before fine-tuning (no reference model): it trained on neither set, the control;
- `standard` and `goldfish`: each fine-tune, with the model before fine-tuning as the reference.

Each report folder is written once; a rerun loads a finished one and writes its page again with the current code
(so a change of the page needs no new fine-tune). `summary.json` holds each audit's headline numbers and verdicts.
`--screenshots` takes a picture of each page with headless Chromium (`chromium` on the PATH), 1280 x 1800.

    nohup nice -n 19 python examples/audit_report_pages.py --screenshots &   # ~10 min on one busy CPU core
    python examples/audit_report_pages.py --small --output-dir /tmp/pages   # a tiny Llama, seconds: what the tests run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import subprocess
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

from hf_memory import load_model
from hf_memory.auditing import HTML_FILE, RESULTS_FILE, AuditReport, audit
from hf_memory.data import document_windows, stdlib_docstrings
from hf_memory.goldfish import GoldfishTrainer, GoldfishTrainingArguments


ARMS = ("base", "standard", "goldfish")
BASE_NAME = "SmolLM2-135M-Instruct (before fine-tuning)"
NAMES = {
    "base": "SmolLM2-135M-Instruct, not fine-tuned (the control)",
    "standard": "SmolLM2-135M-Instruct, standard fine-tune (16 docstrings, 8 epochs)",
    "goldfish": "SmolLM2-135M-Instruct, goldfish fine-tune k=4 (16 docstrings, 8 epochs)",
}


def tiny_llama(vocab_size: int, seed: int = 0):
    """The `--small` stand-in for SmolLM2: 2 layers of width 32, SmolLM2's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def fine_tune(base, arm: str, members: list[list[int]], args, folder: str):
    model = copy.deepcopy(base)
    common = {
        "output_dir": folder,
        "num_train_epochs": args.epochs,
        "learning_rate": args.lr,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "per_device_train_batch_size": 8,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "data_seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    data = Dataset.from_dict({"input_ids": members, "labels": members})
    if arm == "standard":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data,
                          data_collator=default_data_collator)  # fmt: skip
    else:
        arguments = GoldfishTrainingArguments(goldfish_k=4, goldfish_h=13, **common)
        trainer = GoldfishTrainer(model=model, args=arguments, train_dataset=data, data_collator=default_data_collator)
    trainer.train()
    return model.eval()


def screenshot(page: str, png: str) -> None:
    """A 1280 x 1800 picture of the page's top, by headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("--screenshots needs `chromium` on the PATH (apt-get install chromium)")
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
               "--window-size=1280,1800", "file://" + os.path.abspath(page)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def summarize(report: AuditReport, seconds: float | None) -> dict:
    membership = report.membership
    best = None
    if membership is not None:
        name, entry = max(membership.attacks.items(), key=lambda item: item[1]["auc"])
        best = {"attack": name, "auc": entry["auc"], "auc_interval": entry["auc_interval"]}
    return {
        "model": report.model["name_or_path"],
        "metrics": {k: report.metrics[k] for k in ("exact_match", "half_suffix_rate", "longest_common_prefix")},
        "reference_exact_match": None if report.reference_metrics is None else report.reference_metrics["exact_match"],
        "membership_best_attack": best,
        "blind_baseline_auc": None if membership is None else (membership.blind_baseline or {}).get("auc"),
        "extraction_level": report.extraction_level,
        "extraction_verdict": report.extraction_verdict(),
        "membership_verdict": report.membership_verdict(),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a tiny Llama instead of SmolLM2, 8 + 8 documents")
    parser.add_argument("--output-dir", default="examples/results/audit_report_pages", help="the report folders")
    parser.add_argument("--screenshots", action="store_true", help="a PNG of each page (headless Chromium)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    args.epochs, args.lr = (3, 1e-2) if args.small else (8, 2e-4)
    length, per_set = (16, 8) if args.small else (64, 16)
    os.makedirs(args.output_dir, exist_ok=True)

    loaded = []  # the model, its tokenizer and the two sets, loaded once and only if an audit is not on disk

    def setup():
        if not loaded:
            start = time.time()
            base, tokenizer = load_model()
            if args.small:
                base = tiny_llama(len(tokenizer))
            windows = document_windows(tokenizer, stdlib_docstrings(), length)
            chosen = random.Random(0).sample(range(len(windows)), 2 * per_set)
            loaded.extend(
                [base, tokenizer, [windows[i] for i in chosen[:per_set]], [windows[i] for i in chosen[per_set:]]]
            )
            print(f"model loaded, {len(windows)} docstring windows, {time.time() - start:.0f} s", flush=True)
        return loaded

    summary_path = os.path.join(args.output_dir, "summary.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    summary["setup"] = {
        "model": "tiny Llama (--small)" if args.small else "SmolLM2-135M-Instruct (embedded, de-quantized Q4_1 GGUF)",
        "documents": f"{2 * per_set} stdlib docstrings cut to {length} tokens, split at random (seed 0) in two",
        "training": f"{args.epochs} epochs, lr {args.lr:g} constant, batch 8, seed 0; goldfish k=4, h=13",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, 1 torch thread",
        "python": platform.python_version(),
    }
    half = length // 2
    for arm in ARMS:
        folder = os.path.join(args.output_dir, arm)
        seconds = summary.get(arm, {}).get("seconds")
        if os.path.exists(os.path.join(folder, RESULTS_FILE)):
            report = AuditReport.load(folder)
            report.save(folder)  # the page again, with the current code
        else:
            base, tokenizer, members, held_out = setup()
            began = time.time()
            model = base if arm == "base" else fine_tune(base, arm, members, args, os.path.join(folder, "trainer"))
            report = audit(
                model,
                tokenizer,
                members,
                reference_model=None if arm == "base" else base,
                non_members=held_out,
                prefix_len=half,
                suffix_len=half,
                model_name=NAMES[arm],
                reference_name=None if arm == "base" else BASE_NAME,
                output_dir=folder,
                show_progress=False,
            )
            shutil.rmtree(os.path.join(folder, "trainer"), ignore_errors=True)
            seconds = round(time.time() - began, 1)
        summary[arm] = summarize(report, seconds)
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(arm, json.dumps(summary[arm]["metrics"]), summary[arm]["extraction_level"], flush=True)
        if args.screenshots:
            screenshot(os.path.join(folder, HTML_FILE), os.path.join(args.output_dir, f"{arm}.png"))


if __name__ == "__main__":
    main()
