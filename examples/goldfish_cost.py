"""Goldfish's downstream cost, measured where a user would train: held-out and out-of-domain loss per epoch for the
standard and the goldfish loss, at a learning rate that over-fits and at one that memorizes without over-fitting,
three seeds, next to exact extraction and membership inference of the same models.

The model is the embedded SmolLM2-135M-Instruct (`--model smollm2`, the default) or, for `--small`, the small Llama
that `membership_evidence.py` pre-trains. Per seed, the standard-library docstrings (first `length` tokens, distinct)
are split at random into members (the fine-tuning set) and held-out documents of the same source; the out-of-domain
set is windows of Python's language reference. At each learning rate, two copies of the base are fine-tuned on the
members with the same data order: the standard loss (`Trainer`) and the goldfish loss (`GoldfishTrainer`, k = 4,
h = 13). After every checkpoint epoch: the mean token NLL of the members, the held-out and the out-of-domain set
(`membership_scores`' `loss`, negated), exact extraction of the members (greedy `suffix` tokens after the first
`prefix`) and the `loss` attack's AUC, members against held-out. The base model before fine-tuning is the control.

The learning rates were chosen on a pilot seed (99) that is not reported with the others (`--seeds 99 --lrs ...
--output examples/results/goldfish_cost_pilot.json`, committed): one that over-fits as `make demo` does, and one under
which the held-out loss does not rise above the base model's while the members are memorized.

Results go to a JSON file as they come (`--output`), a killed run resumes (an unfinished run of one learning rate,
seed and arm is redone whole), `--summary` prints the tables and `--plot` draws the loss curves (the `plots` extra).

    nohup nice python examples/goldfish_cost.py &            # SmolLM2: about half a CPU hour per learning rate
    python examples/goldfish_cost.py --small --output /tmp/g.json   # the smoke run the tests make
    python examples/goldfish_cost.py --summary --plot        # tables and figure of the committed results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from transformers.utils import logging as hf_logging


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # membership_evidence.py, next to this file

import membership_evidence as shared  # noqa: E402

from hf_memory.data import document_windows  # noqa: E402
from hf_memory.extraction import measure_extraction  # noqa: E402
from hf_memory.membership import membership_inference_scores, membership_scores  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "goldfish_cost_smollm2.json")
ARMS = ("standard", "goldfish")
SETS = ("members", "held_out", "out_of_domain")


def settings(small: bool) -> dict:
    if small:
        return {
            "model": "tiny", "hidden": 32, "layers": 2, "vocab": 384, "pretrain_epochs": 1, "pretrain_lr": 3e-3,
            "members": 8, "held_out": 8, "out_of_domain": 8, "length": 24, "prefix": 12, "suffix": 12, "epochs": 2,
            "checkpoints": [1, 2], "seeds": [0], "lrs": [3e-3, 3e-4], "batch_size": 4, "goldfish_k": 4,
            "goldfish_h": 13, "n_bootstrap": 50,
        }  # fmt: skip
    return {
        "model": "smollm2", "members": 48, "held_out": 64, "out_of_domain": 64, "length": 64, "prefix": 32,
        "suffix": 32, "epochs": 6, "checkpoints": [1, 2, 3, 4, 6], "seeds": [0, 1, 2], "lrs": [1e-4, 3e-5],
        "batch_size": 8, "goldfish_k": 4, "goldfish_h": 13, "n_bootstrap": 200,
    }  # fmt: skip


def data(tokenizer, st: dict, seed: int) -> dict:
    """The seed's members and held-out documents (a random split of the docstrings) and the out-of-domain windows
    (the language reference, the same for every seed)."""
    pool = shared.docstring_pool(tokenizer, st["length"])
    members, held_out = shared.split(pool, st["members"], st["held_out"], seed)
    reference = shared.unique(document_windows(tokenizer, shared.language_reference_chunks(), st["length"]), pool)
    return {"members": members, "held_out": held_out, "out_of_domain": reference[: st["out_of_domain"]]}


def evaluate(model, tokenizer, sets: dict, st: dict, seed: int) -> dict:
    """Mean token NLL of each set, exact extraction of the members, and the `loss` attack's AUC (members against
    held-out documents)."""
    started = time.process_time()
    docs = [doc for name in SETS for doc in sets[name]]
    loss = membership_scores(
        model, docs, tokenizer=tokenizer, attacks=["loss"], max_tokens=st["length"], show_progress=False
    ).scores["loss"]  # fmt: skip  (higher = member: minus the NLL)
    out, start = {}, 0
    for name in SETS:
        out[f"nll_{name}"] = float(-np.mean(loss[start : start + len(sets[name])]))
        start += len(sets[name])
    members, held_out = len(sets["members"]), len(sets["held_out"])
    mia = membership_inference_scores(loss[: members + held_out], [1] * members + [0] * held_out, fprs=[0.01],
                                      n_bootstrap=st["n_bootstrap"], seed=seed)  # fmt: skip
    out["loss_auc"] = mia["roc_auc"]
    out["loss_auc_interval"] = mia.get("roc_auc_interval")
    extraction = measure_extraction(model, sets["members"], st["prefix"], st["suffix"], method="prefix",
                                    show_progress=False).metrics  # fmt: skip
    out["exact_extraction"] = extraction["exact_match"]
    out["cpu_s"] = round(time.process_time() - started, 1)
    return out


def base_model(st: dict, results: dict, output: str):
    if st["model"] == "smollm2":
        from hf_memory import load_model

        return load_model()
    cached = f"{output}.base.pt"
    if os.path.exists(cached) and "pretraining" in results:
        base, tokenizer, _ = shared.tiny_base({**st, "pretrain_epochs": 0})
        base.load_state_dict(torch.load(cached))
        return base, tokenizer
    base, tokenizer, results["pretraining"] = shared.tiny_base(st)
    torch.save(base.state_dict(), cached)
    return base, tokenizer


def run(small: bool, output: str, seeds=None, lrs=None, arms=None) -> dict:
    hf_logging.set_verbosity_error()
    st = settings(small)
    st.update({k: v for k, v in (("seeds", seeds), ("lrs", lrs), ("arms", arms)) if v})
    results = shared.load(output, st, small)
    base, tokenizer = base_model(st, results, output)
    base.eval()
    for seed in st["seeds"]:
        sets = data(tokenizer, st, seed)
        key = f"seed{seed}"
        if key not in results["base"]:
            results["base"][key] = evaluate(base, tokenizer, sets, st, seed)
            shared.save(results, output)
            print(f"[{key}] base: {json.dumps(results['base'][key])}", flush=True)
        for lr in st["lrs"]:
            for arm in st.get("arms", ARMS):
                name = f"lr{lr:g}/{key}/{arm}"
                if results["runs"].get(name, {}).get("finished"):
                    continue
                entry = {"checkpoints": {}, "finished": False}
                results["runs"][name] = entry

                def measure(model, epoch, entry=entry, sets=sets, seed=seed, name=name):
                    was_training = model.training
                    model.eval()
                    entry["checkpoints"][str(epoch)] = evaluate(model, tokenizer, sets, st, seed)
                    model.train(was_training)
                    shared.save(results, output)
                    print(f"[{name}] epoch {epoch}: {json.dumps(entry['checkpoints'][str(epoch)])}", flush=True)

                with tempfile.TemporaryDirectory() as folder:
                    arm_settings = {**st, "lr": lr}
                    entry["train_cpu_s"] = round(shared.train_arm(arm, base, sets["members"], arm_settings, seed,
                                                                  folder, measure), 1)  # fmt: skip
                entry["finished"] = True
                shared.save(results, output)
    return results


# ---------------------------------------------------------------- summary


def interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def summary_numbers(results: dict) -> dict:
    """Per learning rate, arm and epoch: every measure's mean and interval over seeds; and goldfish's paired cost,
    (goldfish NLL / standard NLL - 1) per seed, on the held-out and the out-of-domain set."""
    st = results["settings"]
    seeds = [s for s in st["seeds"] if all(results["runs"].get(f"lr{lr:g}/seed{s}/{arm}", {}).get("finished")
                                           for lr in st["lrs"] for arm in ARMS)]  # fmt: skip
    measures = [f"nll_{name}" for name in SETS] + ["loss_auc", "exact_extraction"]
    out = {"seeds": seeds, "base": {m: interval([results["base"][f"seed{s}"][m] for s in seeds]) for m in measures}}
    for lr in st["lrs"]:
        for arm in ARMS:
            runs = [results["runs"][f"lr{lr:g}/seed{s}/{arm}"]["checkpoints"] for s in seeds]
            out[f"lr{lr:g}/{arm}"] = {
                epoch: {m: interval([r[str(epoch)][m] for r in runs]) for m in measures} for epoch in st["checkpoints"]
            }
        out[f"lr{lr:g}/goldfish_cost"] = {
            epoch: {
                name: interval(
                    [
                        results["runs"][f"lr{lr:g}/seed{s}/goldfish"]["checkpoints"][str(epoch)][f"nll_{name}"]
                        / results["runs"][f"lr{lr:g}/seed{s}/standard"]["checkpoints"][str(epoch)][f"nll_{name}"]
                        - 1
                        for s in seeds
                    ]
                )
                for name in ("held_out", "out_of_domain")
            }
            for epoch in st["checkpoints"]
        }
    return out


def summarize(results: dict) -> str:
    numbers = summary_numbers(results)
    st = results["settings"]

    def cell(value) -> str:
        mean, low, high = value
        return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    lines = [f"Seeds {numbers['seeds']}: mean [95% t-interval].", ""]
    lines += ["| lr | arm | epoch | NLL members | NLL held-out | NLL out-of-domain | loss AUC | exact extraction |"]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|"]
    base = numbers["base"]
    lines.append(
        f"| — | base (control) | 0 | {cell(base['nll_members'])} | {cell(base['nll_held_out'])} | "
        f"{cell(base['nll_out_of_domain'])} | {cell(base['loss_auc'])} | {cell(base['exact_extraction'])} |"
    )
    for lr in st["lrs"]:
        for arm in ARMS:
            for epoch, row in numbers[f"lr{lr:g}/{arm}"].items():
                lines.append(
                    f"| {lr:g} | {arm} | {epoch} | {cell(row['nll_members'])} | {cell(row['nll_held_out'])} | "
                    f"{cell(row['nll_out_of_domain'])} | {cell(row['loss_auc'])} | {cell(row['exact_extraction'])} |"
                )
    lines += ["", "Goldfish's cost, paired by seed: goldfish NLL / standard NLL - 1.", ""]
    lines += ["| lr | epoch | held-out | out-of-domain |", "|---|---:|---:|---:|"]
    for lr in st["lrs"]:
        for epoch, row in numbers[f"lr{lr:g}/goldfish_cost"].items():
            held, ood = row["held_out"], row["out_of_domain"]
            lines.append(
                f"| {lr:g} | {epoch} | {held[0]:+.1%} [{held[1]:+.1%}, {held[2]:+.1%}] | "
                f"{ood[0]:+.1%} [{ood[1]:+.1%}, {ood[2]:+.1%}] |"
            )
    cpu = sum(r.get("train_cpu_s", 0) for r in results["runs"].values())
    cpu += sum(c["cpu_s"] for r in results["runs"].values() for c in r["checkpoints"].values())
    cpu += sum(b["cpu_s"] for b in results["base"].values())
    lines += ["", f"CPU time recorded: {cpu / 3600:.2f} h."]
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Held-out and out-of-domain NLL per epoch, both arms, one panel per learning rate (mean and interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = summary_numbers(results)
    st = results["settings"]
    figure, axes = plt.subplots(1, len(st["lrs"]), figsize=(5.5 * len(st["lrs"]), 4), sharey=True, squeeze=False)
    epochs = [0, *st["checkpoints"]]
    for ax, lr in zip(axes[0], st["lrs"]):
        for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
            for name, style in (("held_out", "-"), ("out_of_domain", "--")):
                key = f"nll_{name}"
                values = [numbers["base"][key]] + [numbers[f"lr{lr:g}/{arm}"][e][key] for e in st["checkpoints"]]
                mean = [v[0] for v in values]
                ax.plot(epochs, mean, style, color=color, marker="o", label=f"{arm}, {name.replace('_', '-')}")
                ax.fill_between(epochs, [v[1] for v in values], [v[2] for v in values], color=color, alpha=0.15)
        ax.axhline(numbers["base"]["nll_held_out"][0], color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"learning rate {lr:g}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean token NLL (nats)")
    axes[0][-1].legend(fontsize=8)
    figure.suptitle(f"Goldfish's cost: held-out and out-of-domain loss ({len(numbers['seeds'])} seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a smoke run: a tiny model, a few documents")
    parser.add_argument("--output", default=None, help=f"results JSON (default: {os.path.relpath(DEFAULT_OUTPUT)})")
    parser.add_argument("--summary", action="store_true", help="print the tables of the results file and stop")
    parser.add_argument("--plot", action="store_true", help="also draw the loss curves next to the results (PNG)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="instead of the settings' (the pilot: 99)")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="instead of the settings' learning rates")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="only these arms (the pilot: standard)")
    args = parser.parse_args(argv)
    output = args.output or DEFAULT_OUTPUT
    if args.summary:
        with open(output) as f:
            results = json.load(f)
    else:
        torch.set_num_threads(args.threads)
        results = run(args.small, output, args.seeds, args.lrs, args.arms)
    if set(results["settings"].get("arms", ARMS)) != set(ARMS):  # a pilot: no paired table
        print(json.dumps({name: r["checkpoints"] for name, r in results["runs"].items()}, indent=1))
        return results
    print(summarize(results))
    if args.plot:
        plot(results, os.path.splitext(output)[0] + ".png")
    return results


if __name__ == "__main__":
    main()
