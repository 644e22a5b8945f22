"""Membership inference against exact extraction on fine-tuned models: does goldfish lower extraction while
membership still leaks?

The base model is a small Llama (and its byte-level BPE) pre-trained here on text of every machine that the
experiment never evaluates: three in four paragraph groups of Python's language reference (`pydoc_data.topics`) and
the short (100-299 characters) standard-library docstrings. For each seed, the docstrings of >= 300 characters are
split at random into members and non-members (the same source, so a classifier that reads the texts alone, the blind
baseline, should sit near chance). Three copies of the base are fine-tuned on the members, one run per arm, with the
same data order: the standard loss (`Trainer`), the goldfish loss (`GoldfishTrainer`, k = 4, h = 13) and LoRA on the
last layer's FFN (`last_ffn_lora_config`). At three training lengths (checkpoints of one run) every attack of
`membership_scores` is evaluated by `membership_report` (ROC AUC with a bootstrap interval, TPR at 1% FPR), next to
exact extraction (`measure_extraction`: greedy `suffix` tokens from each document's first `prefix`) of the members
and, as a control, of the non-members (at the last checkpoint). The base model, which trained on neither set, is the
control of the attacks.

`reference` is the base model's NLL minus the fine-tune's, per document: the same number `membership_scores` gives
with `reference_model=base` (the two read the same token ids), computed once per seed from the base model's scores
instead of once per checkpoint. A last, deliberately biased split puts members (docstrings) against non-members of
another source (the fourth paragraph groups of the language reference, which the base did not train on), scored by
the base model, which trained on neither set: any AUC away from 0.5 there is distribution shift, and the blind
baseline must fire.

`--model smollm2` runs the same experiment on the embedded SmolLM2-135M-Instruct (smaller sets, about an hour of
CPU per arm over the three seeds); the committed results are those of the small Llama, which fits the shared
2-core machine.

Results go to a JSON file as they come (`--output`; the pre-trained base weights are kept next to it, in
`<output>.base.pt`); a killed run resumes where it stopped (a run of one arm and seed is redone whole when it did not
finish; arms run one after the other, each over every seed). `--summary` prints the Markdown tables of a results file.

    nohup nice -n 19 python examples/membership_evidence.py &   # a few CPU minutes, one thread
    python examples/membership_evidence.py --small --output /tmp/small.json   # a smoke run (~30 s)
    python examples/membership_evidence.py --summary            # the tables of the committed results
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

from hf_memory.data import document_windows, stdlib_docstrings
from hf_memory.extraction import measure_extraction
from hf_memory.fastmem import last_ffn_lora_config
from hf_memory.goldfish import GoldfishTrainer, GoldfishTrainingArguments
from hf_memory.membership import (
    blind_baseline_test,
    membership_inference_scores,
    membership_report,
    membership_scores,
)


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "membership_evidence_results.json")
ARMS = ("standard", "goldfish", "last_ffn_lora")
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")


def settings(small: bool, model: str = "tiny") -> dict:
    if model == "smollm2":  # the embedded SmolLM2 (about 1 h of CPU per arm over the three seeds, one thread)
        return {
            "model": "smollm2", "members": 32, "non_members": 100, "length": 32, "prefix": 16, "suffix": 16,
            "epochs": 4, "checkpoints": [1, 2, 4], "seeds": [0, 1, 2], "lr": 3e-4, "lora_lr": 2e-3, "lora_r": 16,
            "batch_size": 8, "goldfish_k": 4, "goldfish_h": 13, "n_bootstrap": 1000, "biased_non_members": 100,
            "blind_null_splits": 40,
        }  # fmt: skip
    if small:
        return {
            "model": "tiny", "hidden": 32, "layers": 2, "vocab": 384, "pretrain_epochs": 1, "pretrain_lr": 3e-3,
            "members": 8, "non_members": 8, "length": 24, "prefix": 12, "suffix": 12, "epochs": 2,
            "checkpoints": [1, 2], "seeds": [0], "lr": 3e-3, "lora_lr": 1e-2, "lora_r": 4, "batch_size": 4,
            "goldfish_k": 4, "goldfish_h": 13, "n_bootstrap": 100, "biased_non_members": 8, "blind_null_splits": 2,
        }  # fmt: skip
    return {
        "model": "tiny", "hidden": 64, "layers": 2, "vocab": 512, "pretrain_epochs": 2, "pretrain_lr": 3e-3,
        "members": 64, "non_members": 200, "length": 48, "prefix": 24, "suffix": 24, "epochs": 16,
        "checkpoints": [4, 8, 16], "seeds": [0, 1, 2], "lr": 2e-3, "lora_lr": 1e-2, "lora_r": 16, "batch_size": 8,
        "goldfish_k": 4, "goldfish_h": 13, "n_bootstrap": 1000, "biased_non_members": 150,
        "blind_null_splits": 40,
    }  # fmt: skip


# ---------------------------------------------------------------- models and data


def language_reference_chunks() -> list[str]:
    """Paragraph groups of Python's language reference (`pydoc_data.topics`, on every machine), >= 400 characters."""
    from pydoc_data.topics import topics

    chunks = []
    for name in sorted(topics):
        current = ""
        for paragraph in topics[name].split("\n\n"):
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= 400:
                chunks.append(current)
                current = ""
    return chunks


def base_corpus() -> list[str]:
    """What the tiny base model is pre-trained on: three in four chunks of the language reference and the
    standard-library docstrings of 100-299 characters. The member / non-member pool (docstrings of >= 300
    characters) and the biased split's non-members (the fourth chunks) stay out of it."""
    short = [text for text in stdlib_docstrings(min_chars=100) if len(text) < 300]
    return [c for i, c in enumerate(language_reference_chunks()) if i % 4] + short


def tiny_base(st: dict):
    """A small Llama and a byte-level BPE, both trained here on `base_corpus()` (nothing downloaded): a base model
    that knows the language of docstrings but has seen none of the pool."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = base_corpus()
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=st["vocab"],
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    torch.manual_seed(0)
    hidden = st["hidden"]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=st["layers"], num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=True)  # fmt: skip
    model = LlamaForCausalLM(config)
    # Pre-training: every window of `length` tokens of the corpus, shuffled, AdamW with a cosine schedule.
    windows = []
    for ids in tokenizer(corpus, add_special_tokens=False)["input_ids"]:
        windows += [ids[i : i + st["length"]] for i in range(0, len(ids) - st["length"] + 1, st["length"])]
    data = torch.tensor(windows)
    steps = st["pretrain_epochs"] * (len(data) // 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=st["pretrain_lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    step, loss = 0, torch.tensor(float("nan"))
    for _ in range(st["pretrain_epochs"]):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - 15, 16):
            batch = data[order[start : start + 16]]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()
    return model, tokenizer, {"windows": len(data), "steps": step, "final_loss": round(loss.item(), 3)}


def unique(windows: list[list[int]], exclude: list[list[int]] = ()) -> list[list[int]]:
    """`windows` without repeats (first copy kept) and without those in `exclude`: two documents can begin alike,
    and one window cannot be both a member and a non-member."""
    seen = {tuple(w) for w in exclude}
    kept = []
    for window in windows:
        if tuple(window) not in seen:
            seen.add(tuple(window))
            kept.append(window)
    return kept


def docstring_pool(tokenizer, length: int) -> list[list[int]]:
    """Every standard-library docstring of at least 300 characters, cut to its first `length` tokens (distinct)."""
    return unique(document_windows(tokenizer, stdlib_docstrings(min_chars=300), length))


def reference_manual_pool(tokenizer, length: int, pool: list[list[int]]) -> list[list[int]]:
    """The language-reference chunks the base model was not pre-trained on (every fourth), cut to `length` tokens:
    another source than the docstrings (any window also in the docstring `pool` left out)."""
    return unique(document_windows(tokenizer, language_reference_chunks()[::4], length), exclude=pool)


def split(pool: list, members: int, non_members: int, seed: int) -> tuple[list, list]:
    """A random split of `pool` into members and non-members (the rest is unused)."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    if members + non_members > len(pool):
        raise ValueError(f"the pool holds {len(pool)} documents, fewer than {members} + {non_members}")
    return [pool[i] for i in order[:members]], [pool[i] for i in order[members : members + non_members]]


# ---------------------------------------------------------------- measuring


def evaluate(model, tokenizer, members, non_members, base_loss, st, seed, curves: bool, control: bool = True) -> dict:
    """Every attack's report and exact extraction of the members (and, with `control`, of the non-members)."""
    started, cpu = time.time(), time.process_time()
    docs = members + non_members
    labels = [1] * len(members) + [0] * len(non_members)
    texts = tokenizer.batch_decode(docs, skip_special_tokens=True)
    result = membership_scores(
        model, docs, tokenizer=tokenizer, attacks=ATTACKS[:4], max_tokens=st["length"], show_progress=False
    )
    scores = dict(result.scores)
    if base_loss is not None:
        scores["reference"] = scores["loss"] - np.asarray(base_loss)  # base NLL - target NLL
    # The blind baseline reads the texts only: computed once per split, in the base model's report.
    report = membership_report(scores, labels, texts, n_bootstrap=st["n_bootstrap"], seed=seed,
                               blind_baseline=base_loss is None)  # fmt: skip
    scored_cpu = time.process_time() - cpu
    member_extraction = measure_extraction(model, members, st["prefix"], st["suffix"], method="prefix",
                                           show_progress=False).metrics  # fmt: skip
    non_member_extraction = None
    if control:
        non_member_extraction = measure_extraction(model, non_members, st["prefix"], st["suffix"], method="prefix",
                                                   show_progress=False).metrics  # fmt: skip
    return {
        "report": report.to_dict(curves=curves),
        "markdown": report.to_markdown(),
        "loss_scores": scores["loss"].tolist(),
        "extraction_members": member_extraction,
        "extraction_non_members": non_member_extraction,
        "membership_cpu_s": round(scored_cpu, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "wall_s": round(time.time() - started, 1),
    }


class CheckpointCallback(TrainerCallback):
    """Evaluate the model at the end of the chosen epochs (checkpoints of one run)."""

    def __init__(self, checkpoints, measure):
        self.checkpoints, self.measure = set(checkpoints), measure

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch)
        if epoch in self.checkpoints:
            self.measure(model, epoch)


def train_arm(arm: str, base, members, st, seed, output_dir, measure) -> float:
    """Fine-tune a copy of `base` on `members` with the arm's loss / adapter; `measure(model, epoch)` at each
    checkpoint. Returns the training CPU seconds (measurements excluded)."""
    model = copy.deepcopy(base)
    lr = st["lr"]
    extra = {}
    args_class, trainer_class = TrainingArguments, Trainer
    if arm == "goldfish":
        args_class, trainer_class = GoldfishTrainingArguments, GoldfishTrainer
        extra = {"goldfish_k": st["goldfish_k"], "goldfish_h": st["goldfish_h"]}
    elif arm == "last_ffn_lora":
        from peft import get_peft_model

        torch.manual_seed(seed)  # the adapter's initialization
        config = last_ffn_lora_config(model, r=st["lora_r"], lora_alpha=2 * st["lora_r"], lora_dropout=0.0)
        model = get_peft_model(model, config)
        lr = st["lora_lr"]
    args = args_class(
        output_dir=output_dir,
        num_train_epochs=st["epochs"],
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=st["batch_size"],
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        **extra,
    )
    data = Dataset.from_dict({"input_ids": members, "labels": members})
    spent = {"cpu": 0.0}

    def timed_measure(model, epoch):
        cpu = time.process_time()
        measure(model, epoch)
        spent["cpu"] += time.process_time() - cpu

    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        callbacks=[CheckpointCallback(st["checkpoints"], timed_measure)],
    )
    cpu = time.process_time()
    trainer.train()
    return time.process_time() - cpu - spent["cpu"]


# ---------------------------------------------------------------- the run


def resume(path: str, settings: dict, fresh: dict, **also) -> dict:
    """The results stored at `path` when they were made with `settings` (and the `also` values), else `fresh`; a
    file of other settings stops the run rather than mixing two experiments."""
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        if results.get("settings") == settings and all(results.get(k) == v for k, v in also.items()):
            return results
        raise SystemExit(f"{path} holds results of other settings: move it away or give another --output.")
    return fresh


def seeded_main(argv, doc: str, default_output: str, small_help: str, run, summarize) -> dict:
    """The command line of the experiments that store one entry per seed (`--small`, `--output`, `--summary`,
    `--threads`): `run(small, output)` does the work and returns the results, `summarize(results)` the tables that
    are printed; `--summary` only reads the results file."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--small", action="store_true", help=f"a smoke run: {small_help}")
    parser.add_argument("--output", default=None, help=f"results JSON (default: {os.path.relpath(default_output)})")
    parser.add_argument("--summary", action="store_true", help="print the tables of the results file and stop")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    output = args.output or default_output
    if args.summary:
        with open(output) as f:
            results = json.load(f)
    else:
        torch.set_num_threads(args.threads)
        results = run(args.small, output)
    print(summarize(results))
    return results


def run_seeds(output: str, st: dict, run_seed) -> dict:
    """`run_seed(base, tokenizer, pool, st, seed)` for every seed of `st["seeds"]` not stored at `output` yet, saved
    as each ends. The base model is the embedded SmolLM2 or the tiny Llama (`st["model"]`); the pool is the
    docstring windows of `st["length"]` tokens (default `prefix + suffix`)."""
    results = resume(output, st, {"settings": st, "seeds": {}})
    if st["model"] == "smollm2":
        from hf_memory import load_model

        base, tokenizer = load_model()
    else:
        base, tokenizer, _ = tiny_base(st)
    base.eval()
    pool = docstring_pool(tokenizer, st.get("length", st["prefix"] + st["suffix"]))
    for seed in st["seeds"]:
        if str(seed) in results["seeds"]:
            continue
        results["seeds"][str(seed)] = run_seed(base, tokenizer, pool, st, seed)
        save(results, output)
        print(f"seed {seed}: done", flush=True)
    return results


def load(path: str, st: dict, small: bool) -> dict:
    fresh = {"settings": st, "small": small, "machine": machine(), "base": {}, "runs": {}, "biased": None}
    return resume(path, st, fresh, small=small)


def save(results: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(temporary, path)


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run(small: bool, output: str, model: str = "tiny", redo_blind: bool = False) -> dict:
    hf_logging.set_verbosity_error()
    st = settings(small, model)
    results = load(output, st, small)
    old_base = {}
    if redo_blind and results.get("blind_null") is not None:
        # The parts that hold a blind baseline, computed again with its current verdict: the random splits, the
        # biased split, the base model's report of each seed (the fine-tuned runs hold none and are kept).
        old_base = {key: entry["loss_scores"] for key, entry in results["base"].items()}
        results.update(blind_null=None, biased=None, base={})
        save(results, output)
    if model == "smollm2":
        from hf_memory import load_model

        base, tokenizer = load_model()
    else:
        # The pre-trained weights are kept next to the results, so that a resumed run does not train them again.
        cached = f"{output}.base.pt"
        cpu = time.process_time()
        if os.path.exists(cached) and "pretraining" in results:
            st_no_training = {**st, "pretrain_epochs": 0}
            base, tokenizer, _ = tiny_base(st_no_training)
            base.load_state_dict(torch.load(cached))
        else:
            base, tokenizer, pretraining = tiny_base(st)
            torch.save(base.state_dict(), cached)
            results["pretraining"] = {**pretraining, "cpu_s": round(time.process_time() - cpu, 1)}
            save(results, output)
        print(f"[base] pre-trained: {results['pretraining']}", flush=True)
    base.eval()
    pool = docstring_pool(tokenizer, st["length"])
    if results.get("blind_null") is None:
        # The blind baseline alone (texts, no model) on many random splits of the same source: how often does its
        # verdict ("distinguishable without the model") fire where the two sets differ only by chance?
        print(f"[blind baseline on {st['blind_null_splits']} random splits]", flush=True)
        cpu = time.process_time()
        runs = []
        for split_seed in range(st["blind_null_splits"]):
            members, non_members = split(pool, st["members"], st["non_members"], 1000 + split_seed)
            texts = tokenizer.batch_decode(members + non_members, skip_special_tokens=True)
            labels = [1] * len(members) + [0] * len(non_members)
            test = blind_baseline_test(texts, labels, seed=split_seed)
            entry = membership_inference_scores(test["scores"], labels, fprs=[0.01], n_bootstrap=st["n_bootstrap"],
                                                seed=split_seed)  # fmt: skip
            runs.append({"auc": entry["roc_auc"], "auc_interval": entry["roc_auc_interval"],
                         "p_value": test["p_value"]})  # fmt: skip
        results["blind_null"] = {
            "runs": runs,
            "fired": sum(r["p_value"] <= 0.025 for r in runs),  # the report's verdict (confidence 0.95)
            "interval_above": sum(r["auc_interval"][0] > 0.5 for r in runs),  # the bootstrap interval's
            "interval_below": sum(r["auc_interval"][1] < 0.5 for r in runs),
            "cpu_s": round(time.process_time() - cpu, 1),
        }
        save(results, output)
    if results["biased"] is None:
        print("[biased split] base model, docstrings vs the language reference", flush=True)
        members, _ = split(pool, st["members"], 0, st["seeds"][0])
        _, others = split(reference_manual_pool(tokenizer, st["length"], pool), 0, st["biased_non_members"], 0)
        started, cpu = time.time(), time.process_time()
        docs, labels = members + others, [1] * len(members) + [0] * len(others)
        texts = tokenizer.batch_decode(docs, skip_special_tokens=True)
        result = membership_scores(base, docs, tokenizer=tokenizer, max_tokens=st["length"], show_progress=False)
        report = membership_report(result, labels, texts, n_bootstrap=st["n_bootstrap"], seed=0)
        results["biased"] = {
            "report": report.to_dict(curves=True),
            "markdown": report.to_markdown(),
            "cpu_s": round(time.process_time() - cpu, 1),
            "wall_s": round(time.time() - started, 1),
        }
        save(results, output)
    # Arm by arm, each over every seed: a run stopped early leaves whole arms (the standard loss first).
    for arm in ARMS:
        for seed in st["seeds"]:
            members, non_members = split(pool, st["members"], st["non_members"], seed)
            key = f"seed{seed}"
            if key not in results["base"]:
                print(f"[{key}] base model", flush=True)
                results["base"][key] = evaluate(base, tokenizer, members, non_members, None, st, seed, curves=False)
                if key in old_base:  # the runs' `reference` scores were computed from these
                    gap = float(np.max(np.abs(np.subtract(results["base"][key]["loss_scores"], old_base[key]))))
                    if gap > 1e-5:
                        raise SystemExit(f"the base model's scores of {key} moved by {gap}: run the experiment anew")
                save(results, output)
            base_loss = results["base"][key]["loss_scores"]
            name = f"{key}/{arm}"
            if results["runs"].get(name, {}).get("finished"):
                continue
            print(f"[{name}] fine-tuning {st['epochs']} epochs", flush=True)
            entry = {"checkpoints": {}, "finished": False}
            results["runs"][name] = entry
            last = max(st["checkpoints"])

            def measure(model, epoch, entry=entry, members=members, non_members=non_members, seed=seed, name=name):
                curves = seed == st["seeds"][0] and epoch == last
                entry["checkpoints"][str(epoch)] = evaluate(
                    model, tokenizer, members, non_members, base_loss, st, seed, curves, control=epoch == last
                )
                save(results, output)
                aucs = {
                    a: round(v["auc"], 3) for a, v in entry["checkpoints"][str(epoch)]["report"]["attacks"].items()
                }
                em = entry["checkpoints"][str(epoch)]["extraction_members"]["exact_match"]
                print(f"[{name}] epoch {epoch}: AUC {aucs}, exact extraction {em:.3f}", flush=True)

            with tempfile.TemporaryDirectory() as folder:
                entry["train_cpu_s"] = round(train_arm(arm, base, members, st, seed, folder, measure), 1)
            entry["finished"] = True
            save(results, output)
    return results


# ---------------------------------------------------------------- summary


def _mean_range(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def summarize(results: dict) -> str:
    """Markdown tables: per arm and checkpoint, each attack's AUC and TPR@1%FPR (mean over seeds, with the range,
    and seed 0's bootstrap interval), exact extraction, the blind baseline; the base model; the biased split."""
    st = results["settings"]
    seeds = [s for s in st["seeds"] if f"seed{s}" in results["base"]]
    fpr = "0.01"
    lines = [f"Seeds: {seeds}. AUC: mean over seeds (min–max); [seed {seeds[0]}'s 95% bootstrap interval].", ""]
    header = (
        "| model | epoch | " + " | ".join(ATTACKS) + " | blind baseline | exact extraction members / non-members |"
    )
    lines += [header, "|---|---:|" + "---:|" * (len(ATTACKS) + 2)]

    def row(label, epoch, entries):
        cells = []
        for attack in (*ATTACKS, "blind"):
            aucs, first = [], None
            for e in entries:
                part = e["report"]["blind_baseline"] if attack == "blind" else e["report"]["attacks"].get(attack)
                if part is None:
                    continue
                aucs.append(part["auc"])
                if first is None:
                    first = part["auc_interval"]
            cell = _mean_range(aucs)
            if first is not None:
                cell += f" [{first[0]:.2f}, {first[1]:.2f}]"
            cells.append(cell)
        em = _mean_range([e["extraction_members"]["exact_match"] for e in entries])
        en = _mean_range([e["extraction_non_members"]["exact_match"] for e in entries if e["extraction_non_members"]])
        lines.append(f"| {label} | {epoch} | " + " | ".join(cells) + f" | {em} / {en} |")

    row("base (no fine-tuning)", 0, [results["base"][f"seed{s}"] for s in seeds])
    for arm in ARMS:
        for epoch in st["checkpoints"]:
            entries = [
                results["runs"][f"seed{s}/{arm}"]["checkpoints"][str(epoch)]
                for s in seeds
                if str(epoch) in results["runs"].get(f"seed{s}/{arm}", {}).get("checkpoints", {})
            ]
            if entries:
                row(arm, epoch, entries)
    lines += ["", f"TPR at {fpr} FPR: mean over seeds (min–max) [seed {seeds[0]}'s interval].", ""]
    lines += ["| model | epoch | " + " | ".join(ATTACKS) + " |", "|---|---:|" + "---:|" * len(ATTACKS)]

    def tpr_row(label, epoch, entries):
        cells = []
        for attack in ATTACKS:
            values, first = [], None
            for e in entries:
                part = e["report"]["attacks"].get(attack)
                if part is None:
                    continue
                values.append(part["tpr_at_fpr"][fpr])
                if first is None:
                    first = part["tpr_interval"][fpr]
            cells.append(_mean_range(values) + ("" if first is None else f" [{first[0]:.2f}, {first[1]:.2f}]"))
        lines.append(f"| {label} | {epoch} | " + " | ".join(cells) + " |")

    tpr_row("base (no fine-tuning)", 0, [results["base"][f"seed{s}"] for s in seeds])
    for arm in ARMS:
        for epoch in st["checkpoints"]:
            entries = [
                results["runs"][f"seed{s}/{arm}"]["checkpoints"][str(epoch)]
                for s in seeds
                if str(epoch) in results["runs"].get(f"seed{s}/{arm}", {}).get("checkpoints", {})
            ]
            if entries:
                tpr_row(arm, epoch, entries)
    if results.get("biased"):
        lines += ["", "Biased split (base model; members: docstrings, non-members: the language reference):", ""]
        lines.append(results["biased"]["markdown"])
    cpu = sum(r.get("train_cpu_s", 0) for r in results["runs"].values())
    cpu += sum(c["cpu_s"] for r in results["runs"].values() for c in r["checkpoints"].values())
    cpu += sum(b["cpu_s"] for b in results["base"].values()) + (results.get("biased") or {}).get("cpu_s", 0)
    cpu += (results.get("pretraining") or {}).get("cpu_s", 0) + (results.get("blind_null") or {}).get("cpu_s", 0)
    if results.get("blind_null"):
        null = results["blind_null"]
        aucs = [r["auc"] for r in null["runs"]]
        lines += ["", f"Blind baseline alone on {len(aucs)} random splits of the docstrings: AUC mean {np.mean(aucs):.3f} "
                  f"(sd {np.std(aucs):.3f}, {min(aucs):.3f}–{max(aucs):.3f}); its verdict (permutation test, "
                  f"p <= 0.025) fires on {null['fired']} of {len(aucs)} splits (about 1 expected); its bootstrap "
                  f"95% interval lies above 0.5 in {null['interval_above']} and below in {null['interval_below']}."]  # fmt: skip
        p_values = [results["base"][f"seed{s}"]["report"]["blind_baseline"].get("p_value") for s in seeds]
        lines += ["", f"Blind baseline of each seed's split: p = {p_values} (permutation test)."]
    lines += ["", f"CPU time recorded: {cpu / 3600:.2f} h ({results['machine']['cpu_count']} cores, "
              f"{results['machine']['torch_threads']} torch thread)."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a smoke run: a tiny model, a few documents")
    parser.add_argument("--output", default=None, help=f"results JSON (default: {os.path.relpath(DEFAULT_OUTPUT)})")
    parser.add_argument("--summary", action="store_true", help="print the tables of the results file and stop")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--redo-blind", action="store_true",
                        help="compute again every part that holds a blind baseline (the random splits, the biased "
                        "split, the base model's reports), keeping the fine-tuned runs")  # fmt: skip
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a small Llama pre-trained here (the committed results); smollm2: the embedded "
                        "SmolLM2-135M (hours of CPU)")  # fmt: skip
    args = parser.parse_args()
    output = args.output or DEFAULT_OUTPUT
    if args.summary:
        with open(output) as f:
            print(summarize(json.load(f)))
    else:
        torch.set_num_threads(args.threads)
        print(summarize(run(args.small, output, args.model, args.redo_blind)))
