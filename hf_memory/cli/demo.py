"""The main job on the embedded model: fine-tune with the standard loss and with goldfish, measure extraction, and
audit both fine-tunes: a positive control for `hf-memory audit`.

Both arms start from the same weights and see the same batches; only the loss differs. After every epoch a
`MemorizationCallback` scores the training documents (greedy `suffix_len` tokens from each document's first
`prefix_len`) and logs the numbers through the Trainer; at the end each arm's loss on held-out documents (every
token counted) shows what the model kept, and `audit` writes each arm's report on its training documents, with the
held-out documents as the control (`non_members`): the standard arm's shows memorization, the goldfish arm's much
less, which is what a working audit must show.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import tempfile
import time
import warnings

from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

from .._utils import EXTRAS, is_available, require_extra
from ..auditing import audit
from ..data import document_windows, stdlib_docstrings
from ..extraction import MemorizationCallback, measure_extraction
from ..goldfish import GoldfishTrainer, GoldfishTrainingArguments
from ..membership import MIN_PER_CLASS
from ..models import DEFAULT_MODEL_DESCRIPTION, DEFAULT_MODEL_NAME, check_device, load_model
from .arguments import DemoArguments


CURVES = ("exact_match", "memorization_score")
AUDIT_FOLDERS = {"standard": "audit_standard", "goldfish": "audit_goldfish"}  # arm -> report folder in output_dir
# windows per forward pass of the audits: as the callback measures (its default), so the demo's documents go in one
# batch; the training batch (8) made the goldfish arm's greedy decoding several times slower
AUDIT_BATCH_SIZE = 64


def _arm_args(args_class, output_dir, epochs, lr, batch_size, seed, use_cpu, **extra):
    return args_class(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        logging_strategy="epoch",
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        **extra,
    )


def plot_curves(histories: dict, before: dict, path: str, title: str) -> None:
    """Memorization of the training documents against epoch, one line per arm, for each metric in CURVES.

    Args:
        histories: Per arm name, one dict per epoch: `epoch` and the extraction metrics after it.
        before: The extraction metrics before fine-tuning, plotted at epoch 0 for every arm.
        path: Where the PNG image is written.
        title: The figure's title.

    Raises:
        ImportError: If matplotlib (the `plots` extra) is not installed.
    """
    require_extra("plots", "The demo's plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    labels = {"exact_match": "exact extraction (%)", "memorization_score": "positional score (%)"}
    for ax, metric in zip(axes, CURVES):
        for arm, history in histories.items():
            epochs = [0] + [h["epoch"] for h in history]
            values = [100 * before[metric]] + [100 * h[metric] for h in history]
            ax.plot(epochs, values, marker="o", label=arm)
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[metric])
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(
    model: str | None = None,
    gguf_file: str | None = None,
    docs: int = DemoArguments.docs,
    held_out: int = DemoArguments.held_out,
    epochs: int = DemoArguments.epochs,
    lr: float = DemoArguments.lr,
    batch_size: int = DemoArguments.batch_size,
    prefix_len: int = DemoArguments.prefix_len,
    suffix_len: int = DemoArguments.suffix_len,
    goldfish_k: int = DemoArguments.goldfish_k,
    goldfish_h: int = DemoArguments.goldfish_h,
    seed: int = DemoArguments.seed,
    output_dir: str = DemoArguments.output_dir,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    out_dir: str | None = None,
) -> dict:
    """Fine-tune two copies of one model (standard loss, goldfish), report extraction and held-out loss for each, and
    audit both.

    The documents are standard-library docstrings cut to `prefix_len + suffix_len` tokens: the first `docs +
    held_out` of them are split at random (seeded by `seed`) into `docs` trained on and `held_out` that measure the
    loss and are the audits' control. A table is printed, and a plot (`goldfish_demo.png`) and the
    numbers (`goldfish_demo.json`) are written to `output_dir`. Each fine-tune is then audited on its training
    documents (`audit`, every window, no reference model), with the held-out documents as the control when both
    sets have at least 5 documents: `output_dir/audit_standard/` and `output_dir/audit_goldfish/` hold the two
    reports (`index.html`, `results.json`, ...), and one line per arm compares them: the share of windows extracted,
    the control's share, and the strongest membership attack's AUC.

    Args:
        model: A local model folder; None uses the embedded SmolLM2-135M-Instruct.
        gguf_file: The GGUF file name inside `model`, if the model is stored as one.
        docs: Number of training documents.
        held_out: Number of held-out documents for the loss.
        epochs: Fine-tuning epochs per arm.
        lr: Learning rate (constant schedule, no warm-up, no weight decay).
        batch_size: Training and evaluation batch size per device.
        prefix_len: Tokens of each document given to the model when measuring extraction.
        suffix_len: Tokens the model must then reproduce.
        goldfish_k: Goldfish drops about 1 in `goldfish_k` labels in the goldfish arm.
        goldfish_h: Width of the hashed window that decides each goldfish drop.
        seed: Seed of training and data order, the same for both arms.
        output_dir: The folder for the plot, the JSON results and the two audit reports (created if missing).
        revision: With a Hub model id as `model`, the branch, tag or commit.
        dtype: The weights' dtype ("auto", "float32", "float16", "bfloat16"); None: float32.
        device: Where to train ("cpu", "cuda", ...); None: CUDA when available, else the CPU.
        out_dir: The earlier name of `output_dir` (a `FutureWarning`; it goes in a later release).

    Returns:
        `{"results": ..., "histories": ..., "audits": ...}`: per arm (and "before fine-tuning"), the final extraction
        metrics and `held_out_loss`; per trained arm, the metrics after every epoch, and its audit's headline (the
        report folder, `exact_match`, the control's `control_exact_match`, the membership AUC of each attack and
        the verdict).

    Raises:
        ValueError: If a setting is out of range (see `DemoArguments`), or fewer than `docs + held_out` documents
            have `prefix_len + suffix_len` tokens.
        ImportError: If matplotlib (the `plots` extra) is not installed.
    """
    if out_dir is not None:
        warnings.warn(
            "`run_demo(out_dir=...)` is now `output_dir=`; `out_dir` goes in a later release.",
            FutureWarning,
            stacklevel=2,
        )
        output_dir = out_dir
    settings = DemoArguments(
        docs, held_out, epochs, lr, batch_size, prefix_len, suffix_len, goldfish_k, goldfish_h, seed, output_dir
    )  # every value checked before the model loads
    docs, held_out, epochs, lr, batch_size, prefix_len, suffix_len, goldfish_k, goldfish_h, seed, output_dir = (
        settings.run_settings().values()
    )
    require_extra("plots", "The demo's plot")  # before training, not after it
    target = check_device(device)
    hf_logging.set_verbosity_warning()
    started = time.time()
    if model is None:
        print(
            f"{DEFAULT_MODEL_DESCRIPTION} This demo fine-tunes it on {docs} documents with and without goldfish, "
            "then audits both fine-tunes: a positive control for `hf-memory audit` (the standard fine-tune must show "
            "memorization, the goldfish one much less)."
        )
    base, tokenizer = load_model(model, gguf_file, dtype, revision=revision, device=target)
    windows = document_windows(tokenizer, stdlib_docstrings(), prefix_len + suffix_len)
    if len(windows) < docs + held_out:
        raise ValueError(
            f"`docs` + `held_out` must be at most {len(windows)} (documents of {prefix_len + suffix_len} tokens), "
            f"got {docs} + {held_out}."
        )
    # a random split of one pool (seeded): held-out documents from other modules than the training ones would differ
    # in their words alone, and the audit's blind baseline would rightly call its membership verdict not conclusive
    pool = windows[: docs + held_out]
    random.Random(seed).shuffle(pool)
    train, held = pool[:docs], pool[docs:]
    train_data = Dataset.from_dict({"input_ids": train, "labels": train})
    held_data = Dataset.from_dict({"input_ids": held, "labels": held})

    arms = {
        "standard": (TrainingArguments, Trainer, {}),
        f"goldfish (k={goldfish_k})": (
            GoldfishTrainingArguments,
            GoldfishTrainer,
            {"goldfish_k": goldfish_k, "goldfish_h": goldfish_h},
        ),
    }
    results, histories, audits = {}, {}, {}
    use_cpu = target.type == "cpu"
    # the control (membership inference against the held-out documents) needs 5 windows in each set, sklearn, and
    # no text in both sets (checked here rather than by the audit, after the training)
    texts = [tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) for ids in pool]
    shared = set(texts[:docs]) & set(texts[docs:])
    control = f"the {held_out} held-out documents as the control"
    if docs < MIN_PER_CLASS or held_out < MIN_PER_CLASS:
        control = f"no control (membership inference needs {MIN_PER_CLASS} documents in each set)"
    elif shared:
        control = "no control (a held-out window's text is also a training window's)"
    elif not all(map(is_available, EXTRAS["analysis"])):
        control = 'no control (membership inference needs the analysis extra: pip install "hf-memory[analysis]")'
    controlled = control.startswith("the ")
    audit_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        before = measure_extraction(base, train, prefix_len, suffix_len, show_progress=False).metrics
        reference = Trainer(
            model=base, args=_arm_args(TrainingArguments, f"{tmp}/before", 1, lr, batch_size, seed, use_cpu)
        )
        results["before fine-tuning"] = {**before, "held_out_loss": reference.evaluate(held_data)["eval_loss"]}
        for name, (args_class, trainer_class, extra) in arms.items():
            print(f"\n[{name}] fine-tuning on {docs} documents for {epochs} epochs")
            args = _arm_args(args_class, f"{tmp}/{len(results)}", epochs, lr, batch_size, seed, use_cpu, **extra)
            steps_per_epoch = math.ceil(docs / args.train_batch_size)  # measure at the last step of every epoch
            callback = MemorizationCallback(train, prefix_len, suffix_len, max_windows=None, every=steps_per_epoch)
            trainer = trainer_class(
                model=copy.deepcopy(base),
                args=args,
                train_dataset=train_data,
                data_collator=default_data_collator,
                callbacks=[callback],
            )
            train_seconds = trainer.train().metrics["train_runtime"]
            print(
                f"[{name}] memorization measured {len(callback.history)} times: {callback.seconds:.1f} s of "
                f"{train_seconds:.1f} s of training ({100 * callback.seconds / train_seconds:.1f} %)"
            )
            history = [
                {"epoch": round(h["epoch"]), **{k: v for k, v in h.items() if k not in ("step", "epoch")}}
                for h in callback.history
            ]
            results[name] = {**history[-1], "held_out_loss": trainer.evaluate(held_data)["eval_loss"]}
            results[name].pop("epoch")
            histories[name] = history
            folder = os.path.join(output_dir, AUDIT_FOLDERS[name.split()[0]])
            print(f"[{name}] auditing the fine-tune on its {docs} training documents -> {folder}")
            audit_started = time.time()
            report = audit(
                trainer.model,
                tokenizer,
                train,
                prefix_len=prefix_len,
                suffix_len=suffix_len,
                max_windows=None,
                batch_size=AUDIT_BATCH_SIZE,
                output_dir=folder,
                non_members=held if controlled else None,
                model_name=f"{DEFAULT_MODEL_NAME if model is None else model}, {name} fine-tune (hf-memory demo)",
            )
            audit_seconds += time.time() - audit_started
            audits[name] = _audit_headline(report, folder)
            del trainer

    print(
        f"\nExtraction of {docs} training documents: greedy {suffix_len} tokens from a {prefix_len}-token prefix; "
        f"loss on {held_out} held-out documents"
    )
    print(f"{'model':<22}{'exact extraction':>18}{'positional score':>18}{'ROUGE-L':>10}{'held-out loss':>15}")
    for name, r in results.items():
        print(
            f"{name:<22}{100 * r['exact_match']:>17.1f}%{100 * r['memorization_score']:>17.1f}%"
            f"{r['rouge_l']:>10.3f}{r['held_out_loss']:>15.3f}"
        )

    os.makedirs(output_dir, exist_ok=True)
    plot = os.path.join(output_dir, "goldfish_demo.png")
    plot_curves(
        histories,
        before,
        plot,
        f"Memorization of {docs} fine-tuning documents ({base.config.model_type}, "
        f"{sum(p.numel() for p in base.parameters()) / 1e6:.0f}M parameters)",
    )
    _print_audits(audits, docs, control)
    with open(os.path.join(output_dir, "goldfish_demo.json"), "w") as f:
        json.dump({"results": results, "histories": histories, "audits": audits}, f, indent=2)
    print(
        f"\nplot: {plot}   results: {os.path.join(output_dir, 'goldfish_demo.json')}   "
        f"(total {time.time() - started:.0f} s on {base.device}, of which {audit_seconds:.0f} s auditing)"
    )
    return {"results": results, "histories": histories, "audits": audits}


def _audit_headline(report, folder: str) -> dict:
    """What the demo keeps of an arm's audit: where the report is and its headline numbers."""
    contrast = report.control_contrast
    membership = report.membership
    return {
        "report": os.path.join(folder, "index.html"),
        "windows": report.data["num_windows"],
        "exact_match": report.metrics["exact_match"],
        "longest_common_prefix": report.metrics["longest_common_prefix"],
        "control_exact_match": None if contrast is None else contrast["control"]["exact_match"],
        "control_windows": None if contrast is None else contrast["control"]["windows"],
        "membership_auc": None
        if membership is None
        else {name: [entry["auc"], *entry["auc_interval"]] for name, entry in membership.attacks.items()},
        "verdict": report.membership_verdict()[0],
    }


def _print_audits(audits: dict, docs: int, control: str) -> None:
    """The two audits side by side: the positive control (standard) against goldfish."""
    print(f"\nhf-memory audit of each fine-tune on its {docs} training documents, {control}:")
    print(f"{'model':<22}{'extracted':>11}{'control':>10}{'  strongest membership attack, AUC [95%]':<44}report")
    for name, entry in audits.items():
        share = f"{100 * entry['exact_match']:.1f}%"
        control_share = "-" if entry["control_exact_match"] is None else f"{100 * entry['control_exact_match']:.1f}%"
        attack = "  (no control)"
        if entry["membership_auc"]:
            best, (auc, low, high) = max(entry["membership_auc"].items(), key=lambda item: item[1][0])
            attack = f"  {best} {auc:.3f} [{low:.3f}, {high:.3f}]"
        print(f"{name:<22}{share:>11}{control_share:>10}{attack:<44}{entry['report']}")
