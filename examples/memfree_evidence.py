"""MemFree on the goldfish demo's standard-loss fine-tune: does the guard stop verbatim extraction, how much
near-verbatim text still comes out, and what does it cost on text the model did not train on?

The fine-tune is `make demo`'s standard arm (SmolLM2-135M-Instruct, the first 64 tokens of 24 standard-library
docstrings, 12 epochs, AdamW lr 2e-4 constant, batch 8, seed 0), which the demo does not save: it is reproduced here
and kept in `<output-dir>/finetuned` so a rerun skips it. The guard's index holds the 24 training documents'
n-grams, for n = 4 and n = 10: an exact index, and Bloom filters (1% false positives per probe) with hash seeds
0, 1 and 2. Every guarded decoding is plain greedy `model.generate(..., logits_processor=[guard])`, scored with
`hf_memory.extraction`'s public scoring (`extraction_scores`, `text_rouge_l`).

- Training documents (greedy 32 tokens from each document's first 32): exact extraction, longest common prefix,
  ROUGE-L, token and character edit distance to the true suffix, and whether the true suffix's text comes out
  character for character through other tokens. Controls: the model before fine-tuning, the fine-tuned model
  without a guard, and a guard whose index holds other documents (the held-out ones).
- Held-out documents (64 never trained on): how many greedy steps the guard blocks (split into n-grams truly in
  the training documents and false positives of the filter), the base model's loss on the guarded continuations
  against the unguarded ones, and the teacher-forced loss of the held-out text under the guarded distribution.

`--model tiny` runs the same measurements on a 2-layer Llama (hidden 128) with SmolLM2's tokenizer, pretrained for
2 epochs on 512 other docstrings (the model "before fine-tuning") and then fine-tuned on the 24 training documents
for 60 epochs at lr 2e-3 until it recites them: minutes instead of the SmolLM2 fine-tune's hour on a busy 2-core
machine.

    python examples/memfree_evidence.py                 # SmolLM2: about 1 h on 2 idle CPU cores (mostly fine-tuning)
    python examples/memfree_evidence.py --model tiny    # the tiny model
    python examples/memfree_evidence.py --small         # smoke test: 4 documents, 1 epoch (a test runs it)

Results go to `<output-dir>/results.json`, written after every part, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import GenerationConfig, LogitsProcessorList, Trainer, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

from hf_memory import (
    MemFreeLogitsProcessor,
    NgramIndex,
    default_model_path,
    document_windows,
    load_model,
    stdlib_docstrings,
)
from hf_memory.extraction import extraction_scores, measure_extraction, text_rouge_l


DEFAULT_DIR = os.path.join("demo_output", "memfree")


# ---------------------------------------------------------------- the fine-tune (make demo's standard arm)


def finetune(base, train: list[list[int]], folder: str, epochs: int, lr: float, batch_size: int, seed: int):
    """The demo's standard arm, saved to `folder` (reused when its settings match)."""
    settings = {"docs": len(train), "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    marker = os.path.join(folder, "memfree_finetune.json")
    model = copy.deepcopy(base)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                from safetensors.torch import load_model as load_weights

                load_weights(model, os.path.join(folder, "weights.safetensors"))
                print(f"fine-tuned weights reused from {folder}", flush=True)
                return model.eval()
    data = Dataset.from_dict({"input_ids": train, "labels": train})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=epochs,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            per_device_train_batch_size=batch_size,
            logging_strategy="epoch",
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
    from safetensors.torch import save_model

    os.makedirs(folder, exist_ok=True)
    save_model(model, os.path.join(folder, "weights.safetensors"))  # tied weights stored once
    with open(marker, "w") as f:
        json.dump(settings, f)
    return model.eval()


def smollm2_tokenizer():
    """SmolLM2's tokenizer alone (from the embedded GGUF file, offline)."""
    from transformers import AutoTokenizer

    folder, gguf_file = default_model_path()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)


def train_loop(model, rows: list[list[int]], epochs: int, lr: float, batch_size: int, seed: int):
    """Plain AdamW (no weight decay, constant rate) over `rows` in a seeded order, full-sequence loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = torch.tensor(rows)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            batch = data[order[start : start + batch_size]]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def tiny_models(tokenizer, background, train, folder: str, settings: dict):
    """A 2-layer Llama with SmolLM2's vocabulary, pretrained on `background` documents (the model "before
    fine-tuning"), then fine-tuned on `train` until it recites it; both saved to `folder` and reused."""
    from safetensors.torch import load_model as load_weights
    from safetensors.torch import save_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def fresh():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return LlamaForCausalLM(config)

    marker = os.path.join(folder, "memfree_tiny.json")
    base, tuned = fresh(), fresh()
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                load_weights(base, os.path.join(folder, "base.safetensors"))
                load_weights(tuned, os.path.join(folder, "finetuned.safetensors"))
                print(f"tiny models reused from {folder}", flush=True)
                return base.eval(), tuned.eval()
    print(f"pretraining the tiny model on {len(background)} other documents", flush=True)
    base = train_loop(base, background, settings["pretrain_epochs"], settings["pretrain_lr"], 16, 0)
    tuned = copy.deepcopy(base)
    print(f"fine-tuning it on the {len(train)} training documents", flush=True)
    tuned = train_loop(tuned, train, settings["epochs"], settings["lr"], settings["batch_size"], 0)
    os.makedirs(folder, exist_ok=True)
    save_model(base, os.path.join(folder, "base.safetensors"))
    save_model(tuned, os.path.join(folder, "finetuned.safetensors"))
    with open(marker, "w") as f:
        json.dump(settings, f)
    return base, tuned


# ---------------------------------------------------------------- decoding and scoring


def plain_greedy(model) -> None:
    """Plain greedy decoding whatever the checkpoint's generation config says (no stop token, no penalties)."""
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=None, pad_token_id=0, use_cache=True
    )


@torch.inference_mode()
def greedy(model, windows: torch.Tensor, prefix_len: int, guard=None, batch_size: int = 32) -> torch.Tensor:
    """Greedy continuation of each window's prefix, as long as its suffix, with the guard when given."""
    suffix_len = windows.shape[1] - prefix_len
    out = []
    for start in range(0, len(windows), batch_size):
        prefix = windows[start : start + batch_size, :prefix_len]
        generated = model.generate(
            prefix,
            attention_mask=torch.ones_like(prefix),
            max_new_tokens=suffix_len,
            do_sample=False,
            num_beams=1,
            logits_processor=LogitsProcessorList([guard]) if guard is not None else None,
        )
        out.append(generated[:, prefix_len:])
    return torch.cat(out)


def decode(tokenizer, rows) -> list[str]:
    return tokenizer.batch_decode(
        [list(r) for r in rows], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def bootstrap_interval(values, seed: int = 0, draws: int = 2000) -> list[float]:
    """A 95% percentile bootstrap interval of the mean over windows."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def near_verbatim(predictions: torch.Tensor, references: torch.Tensor, tokenizer) -> dict:
    """How close each continuation is to the true suffix: the extraction metric's token scores, text ROUGE-L, token
    and character edit distances, and whether the suffix's text comes out exactly (through any tokens)."""
    from rapidfuzz.distance import Levenshtein

    preds, refs = predictions.tolist(), references.tolist()
    scores = extraction_scores(preds, refs, return_per_sample=True)
    pred_text, ref_text = decode(tokenizer, preds), decode(tokenizer, refs)
    rouge = text_rouge_l(pred_text, ref_text)
    token_edits = [Levenshtein.distance(p, r) for p, r in zip(preds, refs)]
    char_edits = [Levenshtein.normalized_distance(p, r) for p, r in zip(pred_text, ref_text)]
    # the characters generated agree with the true suffix's as far as both go (through whatever tokens)
    same_text = [p.startswith(r) or r.startswith(p) for p, r in zip(pred_text, ref_text)]
    char_prefix = [len(os.path.commonprefix([p, r])) / max(len(r), 1) for p, r in zip(pred_text, ref_text)]
    within_3 = [float(d <= 3) for d in token_edits]
    within_10pct = [float(d <= 0.1) for d in char_edits]
    return {
        "exact_match": scores["exact_match"],
        "exact_match_interval": bootstrap_interval(scores["exact_match_per_sample"]),
        "longest_common_prefix": scores["longest_common_prefix"],
        "longest_common_prefix_interval": bootstrap_interval(scores["longest_common_prefix_per_sample"]),
        "rouge_l": scores["rouge_l"],
        "rouge_l_text": float(np.mean(rouge)),
        "rouge_l_text_interval": bootstrap_interval(rouge),
        "token_edit_distance": float(np.mean(token_edits)),
        "within_3_token_edits": float(np.mean(within_3)),
        "within_3_token_edits_interval": bootstrap_interval(within_3),
        "char_edit_distance": float(np.mean(char_edits)),
        "within_10pct_char_edits": float(np.mean(within_10pct)),
        "within_10pct_char_edits_interval": bootstrap_interval(within_10pct),
        "text_verbatim": float(np.mean(same_text)),
        "text_verbatim_interval": bootstrap_interval(np.asarray(same_text, dtype=float)),
        "char_prefix_share": float(np.mean(char_prefix)),
        "per_window": {
            "exact_match": scores["exact_match_per_sample"],
            "longest_common_prefix": scores["longest_common_prefix_per_sample"],
            "rouge_l_text": rouge,
            "token_edit_distance": token_edits,
        },
    }


@torch.inference_mode()
def continuation_loss(judge, prefixes: torch.Tensor, continuations: torch.Tensor) -> list[float]:
    """The judge model's mean loss per token of each continuation given its prefix."""
    ids = torch.cat([prefixes, continuations], 1)
    logits = judge(input_ids=ids).logits[:, prefixes.shape[1] - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), continuations, reduction="none")
    return nll.mean(1).tolist()


def flagged_steps(index: NgramIndex, windows: torch.Tensor, prefix_len: int, continuations: torch.Tensor):
    """Per step of each continuation, whether the index holds the n-gram ending there (the guard would block it)."""
    n = index.n
    ids = torch.cat([windows[:, :prefix_len], continuations], 1)
    grams = ids.unfold(1, n, 1)[:, prefix_len - n + 1 :]  # the n-grams ending at each generated token
    return index.contains(grams.reshape(-1, n)).reshape(grams.shape[:2])


@torch.inference_mode()
def teacher_forced(model, windows: torch.Tensor, first: int, indexes: dict) -> dict:
    """The held-out text's loss under the model, and under the guarded distribution of each index (probability of
    the forbidden tokens removed and the rest renormalized): tokens the guard forbids are counted, not scored."""
    out = {name: {"blocked": 0, "guarded": [], "plain_same": []} for name in indexes}
    plain, total = [], 0
    for start in range(0, len(windows), 8):
        batch = windows[start : start + 8]
        logprobs = torch.log_softmax(model(input_ids=batch).logits.float(), -1)[:, first - 1 : -1]
        targets = batch[:, first:]
        true_lp = logprobs.gather(-1, targets[..., None])[..., 0]
        plain.extend((-true_lp).reshape(-1).tolist())
        total += targets.numel()
        for name, index in indexes.items():
            n = index.n
            contexts = batch.unfold(1, n - 1, 1)[:, first - n + 1 : batch.shape[1] - n + 1]  # before each target
            flat = logprobs.reshape(-1, logprobs.shape[-1])
            rows, tokens = index.forbidden_tokens(contexts.reshape(-1, n - 1), vocab_size=flat.shape[-1])
            mass = torch.zeros(flat.shape[0])
            mass.index_add_(0, torch.from_numpy(rows), flat[torch.from_numpy(rows), torch.from_numpy(tokens)].exp())
            blocked = torch.zeros(flat.shape[0], dtype=torch.bool)
            hit = torch.from_numpy(tokens) == targets.reshape(-1)[torch.from_numpy(rows)]
            blocked[torch.from_numpy(rows)[hit]] = True
            lp = true_lp.reshape(-1)
            kept = ~blocked
            out[name]["blocked"] += int(blocked.sum())
            out[name]["guarded"].extend((-(lp[kept] - torch.log1p(-mass[kept].clamp(max=1 - 1e-6)))).tolist())
            out[name]["plain_same"].extend((-lp[kept]).tolist())
    summary = {"tokens": total, "loss": float(np.mean(plain))}
    for name, values in out.items():
        summary[name] = {
            "blocked_tokens": values["blocked"] / total,
            "loss_guarded": float(np.mean(values["guarded"])),
            "loss_unguarded_same_tokens": float(np.mean(values["plain_same"])),
        }
    return summary


# ---------------------------------------------------------------- the run


def main(
    output_dir: str = DEFAULT_DIR,
    small: bool = False,
    model: str = "smollm2",
    docs: int = 24,
    held_out: int = 64,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 8,
    prefix_len: int = 32,
    suffix_len: int = 32,
    ns: tuple[int, ...] = (4, 10),
    seeds: tuple[int, ...] = (0, 1, 2),
    false_positive_rate: float = 0.01,
    num_threads: int = 1,
    background: int = 512,
    pretrain_epochs: int = 2,
    pretrain_lr: float = 2e-3,
) -> dict:
    torch.set_num_threads(num_threads)
    hf_logging.set_verbosity_error()
    # make demo's standard arm for SmolLM2; the tiny model needs more passes to memorize, at a higher rate
    epochs = epochs if epochs is not None else {"smollm2": 12, "tiny": 60}[model]
    lr = lr if lr is not None else {"smollm2": 2e-4, "tiny": 2e-3}[model]
    if small:
        docs, held_out, epochs, prefix_len, suffix_len, ns, background = 4, 4, 1, 16, 16, (4, 6), 16
    started = time.time()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")
    settings = {
        "model": model,
        "docs": docs,
        "held_out": held_out,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "prefix_len": prefix_len,
        "suffix_len": suffix_len,
        "ns": list(ns),
        "seeds": list(seeds),
        "false_positive_rate": false_positive_rate,
    }
    if model == "tiny":
        settings.update(background=background, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr)
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        if results.get("settings") != settings:
            results = {}
    results.update(
        {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{num_threads} torch thread(s), torch {torch.__version__}",
            "small": small,
            "settings": settings,
        }
    )

    def save() -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)

    if model == "tiny":
        tokenizer = smollm2_tokenizer()
    else:
        base, tokenizer = load_model()
        base.eval()
    windows = document_windows(tokenizer, stdlib_docstrings(), prefix_len + suffix_len)
    if len(windows) < docs + held_out:
        raise ValueError(f"only {len(windows)} documents of {prefix_len + suffix_len} tokens")
    train = torch.tensor(windows[:docs])
    held = torch.tensor(windows[docs : docs + held_out])
    print(f"loaded in {time.time() - started:.0f} s; fine-tuning", flush=True)
    if model == "tiny":
        others = windows[docs + held_out :][:background]  # neither trained on as "training documents" nor held out
        tiny_settings = {k: settings[k] for k in ("docs", "epochs", "lr", "batch_size", "prefix_len", "suffix_len")}
        tiny_settings.update(background=len(others), pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr)
        base, tuned = tiny_models(tokenizer, others, windows[:docs], os.path.join(output_dir, "tiny"), tiny_settings)
    else:
        tuned = finetune(base, windows[:docs], os.path.join(output_dir, "finetuned"), epochs, lr, batch_size, 0)
    plain_greedy(base)
    plain_greedy(tuned)
    results.setdefault("seconds", {})["finetune_and_load"] = round(time.time() - started)
    save()

    # The harness's own greedy decoding and ours agree without a guard: the guarded runs differ only by the guard.
    reference = measure_extraction(tuned, train, prefix_len, suffix_len, method="generate", show_progress=False)
    unguarded = greedy(tuned, train, prefix_len)
    results["check"] = {"generate_equals_measure_extraction": reference.predictions == unguarded.tolist()}
    references = train[:, prefix_len:]

    train_results = results.setdefault("train", {})
    held_results = results.setdefault("held_out", {})
    index_facts = results.setdefault("indexes", {})
    if "before fine-tuning" not in train_results:
        train_results["before fine-tuning"] = near_verbatim(greedy(base, train, prefix_len), references, tokenizer)
        train_results["fine-tuned, no guard"] = near_verbatim(unguarded, references, tokenizer)
        save()
    held_plain = greedy(tuned, held, prefix_len)
    held_plain_judge = continuation_loss(base, held[:, :prefix_len], held_plain)

    indexes = {}
    for n in ns:
        indexes[f"n={n}, exact"] = NgramIndex.build(train, tokenizer, n=n, mode="exact", show_progress=False)
        for seed in seeds:
            indexes[f"n={n}, bloom seed {seed}"] = NgramIndex.build(
                train,
                tokenizer,
                n=n,
                mode="bloom",
                hash_seed=seed,
                false_positive_rate=false_positive_rate,
                show_progress=False,
            )
    control_n = ns[0]
    control = NgramIndex.build(held, tokenizer, n=control_n, mode="exact", show_progress=False)
    for name, index in indexes.items():
        index_facts[name] = {
            "num_ngrams": index.num_ngrams,
            "num_keys": index.num_keys,
            "bytes": index.nbytes,
            "false_positive_rate_per_probe": index.false_positive_rate,
        }

    control_name = f"control: guard indexing the held-out documents instead (n={control_n}, exact)"
    if control_name not in train_results:
        guard = MemFreeLogitsProcessor(control, tokenizer)
        train_results[control_name] = near_verbatim(greedy(tuned, train, prefix_len, guard), references, tokenizer)
        save()

    for name, index in indexes.items():
        if name in train_results and name in held_results:
            continue
        step = time.time()
        guard = MemFreeLogitsProcessor(index, tokenizer)
        guarded = greedy(tuned, train, prefix_len, guard)
        record = near_verbatim(guarded, references, tokenizer)
        record["masked_tokens_per_step"] = guard.num_masked / max(guard.num_steps * len(train), 1)
        record["fallbacks"] = guard.num_fallbacks
        record["indexed_ngrams_in_output"] = int(flagged_steps(index, train, prefix_len, guarded).sum())
        train_results[name] = record

        exact = indexes[f"n={index.n}, exact"]
        flagged = flagged_steps(index, held, prefix_len, held_plain)
        truly = flagged_steps(exact, held, prefix_len, held_plain)
        guard = MemFreeLogitsProcessor(index, tokenizer)
        held_guarded = greedy(tuned, held, prefix_len, guard)
        judge = continuation_loss(base, held[:, :prefix_len], held_guarded)
        held_results[name] = {
            "blocked_steps_of_unguarded_greedy": float(flagged.mean()),
            "blocked_steps_truly_in_training_text": float(truly.mean()),
            "blocked_steps_false_positive": float((flagged & ~truly).mean()),
            "windows_changed": float((held_guarded != held_plain).any(1).float().mean()),
            "base_model_loss_of_continuations": float(np.mean(judge)),
            "base_model_loss_of_unguarded_continuations": float(np.mean(held_plain_judge)),
            "masked_tokens_per_step": guard.num_masked / max(guard.num_steps * len(held), 1),
        }
        results["seconds"][name] = round(time.time() - step)
        save()
        print(
            f"{name}: exact {train_results[name]['exact_match']:.3f}, ROUGE-L text "
            f"{train_results[name]['rouge_l_text']:.3f}, held-out blocked steps "
            f"{held_results[name]['blocked_steps_of_unguarded_greedy']:.4f}",
            flush=True,
        )

    if "teacher_forced" not in held_results:
        first = max(ns) - 1  # every index scores the same tokens: those with a full context for the largest n
        held_results["teacher_forced"] = teacher_forced(tuned, held, first, indexes)
        save()

    summary = results.setdefault("summary", {})
    for n in ns:
        names = [f"n={n}, bloom seed {seed}" for seed in seeds]
        for metric in ("exact_match", "longest_common_prefix", "rouge_l_text", "within_3_token_edits",
                       "within_10pct_char_edits", "text_verbatim"):  # fmt: skip
            values = [train_results[name][metric] for name in names]
            summary[f"n={n}, bloom: {metric}"] = {
                "mean": float(np.mean(values)),
                "min": min(values),
                "max": max(values),
            }
        for metric in ("blocked_steps_of_unguarded_greedy", "blocked_steps_false_positive", "windows_changed",
                       "base_model_loss_of_continuations"):  # fmt: skip
            values = [held_results[name][metric] for name in names]
            summary[f"n={n}, bloom: held-out {metric}"] = {
                "mean": float(np.mean(values)),
                "min": min(values),
                "max": max(values),
            }
    results["seconds"]["total"] = round(time.time() - started)
    save()
    print(f"done in {time.time() - started:.0f} s: {path}", flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--small", action="store_true", help="smoke test: 4 documents, 1 epoch")
    parser.add_argument(
        "--model",
        choices=["smollm2", "tiny"],
        default="smollm2",
        help="smollm2: make demo's standard fine-tune of the embedded SmolLM2; tiny: a 2-layer Llama with SmolLM2's "
        "vocabulary, pretrained on other docstrings, then fine-tuned (minutes instead of an hour on 2 CPU cores)",
    )
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="default 12 (smollm2) or 60 (tiny)")
    parser.add_argument("--num-threads", type=int, default=1)
    arguments = parser.parse_args()
    main(
        output_dir=arguments.output_dir,
        small=arguments.small,
        model=arguments.model,
        docs=arguments.docs,
        held_out=arguments.held_out,
        epochs=arguments.epochs,
        num_threads=arguments.num_threads,
    )
