"""Fact capacity over seeds, at a constant learning rate fixed before the run (issue 34, part 2).

The scaling part of `fact_scaling.py` measured one seed, under a cosine schedule, with per-size learning rates
picked on the counts being fitted. This script asks the same question without those three weaknesses:

* Main grid: widths 16 / 24 / 32 / 40 / 48 of its 2-layer Llama, seeds 0 / 1 / 2 (a seed sets the model's
  initialisation and the row order; the fact set is the same for every job), 240 epochs at a constant learning rate
  after the usual 50 warm-up steps, the rate fixed in advance by `fact_scaling.learning_rate` (3e-3 * sqrt(32 /
  width)), capacity measured every 5 epochs.
* Learning-rate sweep: widths 16 and 48, the rule's rate times 1/16, 1/8, 1/4, 1/2, 1, 2 and 4 (1/16 and 1/8
  added once 1/4 came out best at width 48), 60 epochs, seed 0: is the rule's rate near the best one at both ends
  of the width range, or could the size exponent be the rate's doing?
* Analysis (`summary.json`, recomputed from the finished jobs after each one): per seed with every width done, the
  OLS fit of log capacity on log non-embedding parameters (the exponent, with a t-interval; Lu et al.'s linear law
  is exponent 1), the linear law's R² and bits per parameter; per job, the epoch law c_max - alpha * exp(-beta * E)
  on every point and from the inflection on; the exponent of the fitted limits c_max.

Each (seed, width) or (width, rate) is one job on one CPU thread, `--workers` at a time; a job's result goes to its
own JSON file under `<output-dir>/jobs/` when it ends, and a rerun skips the jobs whose file is there (a killed job
starts again from scratch). The queue runs seed 0's widths first, then the sweep, then the other seeds, so a
partial run already answers something.

    python examples/fact_capacity_seeds.py --workers 1   # the evidence in docs/fact_scaling.md (hours on one thread)
    python examples/fact_capacity_seeds.py --only sweep  # the learning-rate sweep alone
    python examples/fact_capacity_seeds.py --analyse     # refit and replot the finished jobs, no training
    python examples/fact_capacity_seeds.py --small --output-dir /tmp/x  # smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fact_scaling.py, next to this file

import fact_scaling  # noqa: E402  (the examples folder is not a package)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, "examples", "results", "fact_capacity_seeds")
DOCS_DIR = os.path.join(ROOT, "docs")
# 1/16 and 1/8 were added after the first width-48 jobs: the best count came at 1/4, the lowest rate then tried
MULTIPLIERS = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
CONFIDENCE = 0.95
# fact_scaling's recipe (batch 128, 50 warm-up steps), with the rate held constant after the warm-up
RECIPE = {**fact_scaling.RECIPE, "schedule": "constant"}


def settings(small: bool) -> dict:
    """Every size and count of the run, in one place."""
    if small:
        return {
            "entities": 60,
            "value_set": 16,
            "widths": [8, 16, 24],
            "seeds": [0, 1],
            "epochs": 12,
            "every": 2,
            "sweep": {"widths": [8, 24], "multipliers": list(MULTIPLIERS), "epochs": 4, "seed": 0},
            "recipe": {**RECIPE, "batch_size": 16, "warmup_steps": 5},  # 8 steps an epoch: leave the warm-up
            "bootstrap": 10,
        }
    return {
        "entities": 12000,  # x 2 attributes = 24,000 facts of 8 bits, the scaling part's set
        "value_set": 256,
        "widths": [16, 24, 32, 40, 48],
        "seeds": [0, 1, 2],
        "epochs": 240,
        "every": 5,
        "sweep": {"widths": [16, 48], "multipliers": list(MULTIPLIERS), "epochs": 60, "seed": 0},
        "recipe": RECIPE,
        "bootstrap": 200,  # residual-bootstrap refits per epoch-law fit (the size laws use OLS)
    }


def job_name(job: dict) -> str:
    if job["kind"] == "main":
        return f"main_seed{job['seed']}_w{job['hidden']}"
    return f"sweep_w{job['hidden']}_x{job['multiplier']:g}"


def job_queue(config: dict, only: str) -> list[dict]:
    """The jobs in the order they run: seed 0's widths, the sweep, then the other seeds (widest first within each
    group, so that a pool of workers ends together)."""

    def main_jobs(seed):
        return [
            {"kind": "main", "seed": seed, "hidden": h, "multiplier": 1.0, "epochs": config["epochs"]}
            for h in sorted(config["widths"], reverse=True)
        ]

    sweep = config["sweep"]
    sweep_jobs = [
        {"kind": "sweep", "seed": sweep["seed"], "hidden": h, "multiplier": m, "epochs": sweep["epochs"]}
        for h in sorted(sweep["widths"], reverse=True)
        for m in sweep["multipliers"]
    ]
    seeds = list(config["seeds"])
    queue = []
    if only in ("all", "main"):
        queue += main_jobs(seeds[0])
    if only in ("all", "sweep"):
        queue += sweep_jobs
    if only in ("all", "main"):
        for seed in seeds[1:]:
            queue += main_jobs(seed)
    for job in queue:
        job.update(
            entities=config["entities"],
            value_set=config["value_set"],
            every=config["every"],
            lr=fact_scaling.learning_rate(job["hidden"]) * job["multiplier"],
            recipe=config["recipe"],
        )
    return queue


def run_job(job: dict) -> dict:
    """Train one model on one thread; its capacity every `every` epochs (in a worker process or the main one)."""
    from hf_memory.fact_scaling import fact_capacity, non_embedding_parameters, train_on_facts

    torch.set_num_threads(1)
    start, cpu_start = time.time(), time.process_time()
    facts = fact_scaling.scaling_fact_set(job["entities"], job["value_set"])
    tok = facts.build_tokenizer()
    model = fact_scaling.tiny_llama(len(tok), job["hidden"], seed=job["seed"])
    curve = [(0, fact_capacity(model, tok, facts, batch_size=4096).count)]

    def measure(epoch, model):
        if epoch % job["every"] == 0 or epoch == job["epochs"]:
            curve.append((epoch, fact_capacity(model, tok, facts, batch_size=4096).count))
        if epoch % 20 == 0:
            print(f"  {job_name(job)}: epoch {epoch}, {curve[-1][1]} facts, {time.time() - start:.0f} s", flush=True)

    history = train_on_facts(
        model, tok, facts, epochs=job["epochs"], lr=job["lr"], **job["recipe"], seed=job["seed"], on_epoch_end=measure
    )
    return {
        "job": job,
        "facts": len(facts),
        "non_embedding_params": non_embedding_parameters(model),
        "curve": curve,
        "capacity": curve[-1][1],
        "final_loss": round(history.losses[-1], 5),
        "seconds": round(time.time() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }


def _write_json(path: str, value) -> None:
    """Write atomically: a run killed while writing leaves the old file or none, never half of one."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


RESULT_KEYS = {"job", "facts", "non_embedding_params", "curve", "capacity", "seconds"}  # what `run_job` writes


def load_finished(folder: str, queue: list[dict]) -> dict[str, dict]:
    """The finished jobs of the queue found in `folder`, by name. A file whose job settings differ from the queue's
    (another mode, another epoch count) is refused rather than mixed in."""
    finished = {}
    for job in queue:
        path = os.path.join(folder, job_name(job) + ".json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                result = json.load(f)
        except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
            raise SystemExit(f"{path}: not a job file this script wrote ({error}); delete it to run the job again.")
        missing = RESULT_KEYS - set(result) if isinstance(result, dict) else RESULT_KEYS
        if missing:
            raise SystemExit(
                f"{path}: not a job file this script wrote (no {', '.join(sorted(missing))}); delete it to run the "
                "job again."
            )
        if result["job"] != json.loads(json.dumps(job)):
            raise SystemExit(
                f"{path} was made with other settings ({result['job']}) than this run's ({job}): use another "
                "--output-dir, or delete the jobs folder to start over."
            )
        finished[job_name(job)] = result
    return finished


def run_queue(queue: list[dict], folder: str, workers: int):
    """Run the jobs, `workers` at a time, in queue order; yield each result as it ends, after saving it."""

    def save(result):
        _write_json(os.path.join(folder, job_name(result["job"]) + ".json"), result)
        return result

    if workers <= 1:
        for job in queue:
            yield save(run_job(job))
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for result in pool.imap_unordered(run_job, queue, chunksize=1):
            yield save(result)


# ------------------------------------------------------------------------------------------------------- analysis


def loglog_exponent(params, capacities, confidence: float = CONFIDENCE) -> dict | None:
    """OLS of log capacity on log parameters: the exponent with a t-interval on n - 2 degrees of freedom, the
    intercept and R² of the log fit. None with fewer than 3 points or a capacity <= 0 (no logarithm)."""
    import numpy as np
    from scipy import stats

    x, y = np.log(np.asarray(params, dtype=float)), np.asarray(capacities, dtype=float)
    if len(x) < 3 or (y <= 0).any() or len(np.unique(x)) < 2:
        return None
    y = np.log(y)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    dof = len(x) - 2
    se = math.sqrt(float(residual @ residual) / dof / float(((x - x.mean()) ** 2).sum()))
    t = float(stats.t.ppf(0.5 + confidence / 2, dof))
    total = float(((y - y.mean()) ** 2).sum())
    low, high = float(slope - t * se), float(slope + t * se)
    return {
        "exponent": float(slope),
        "se": se,
        "ci": [low, high],
        "interval": f"OLS t-interval, {dof} dof, {confidence:.0%}",
        "covers_1": bool(low <= 1.0 <= high),
        "log_intercept": float(intercept),
        "r2_loglog": 1.0 - float(residual @ residual) / total if total else float("nan"),
    }


_EPOCH_LAWS: dict = {}  # a finished job's curve does not change: fit it once per process


def epoch_law(curve, from_inflection: bool, n_bootstrap: int) -> dict | None:
    """The epoch law fitted to a curve (every point, or from `fact_scaling._inflection` on); None where the points
    are too few or the fit fails."""
    key = (tuple(map(tuple, curve)), from_inflection, n_bootstrap)
    if key not in _EPOCH_LAWS:
        _EPOCH_LAWS[key] = _fit_epoch_law(curve, from_inflection, n_bootstrap)
    return _EPOCH_LAWS[key]


def _fit_epoch_law(curve, from_inflection: bool, n_bootstrap: int) -> dict | None:
    import warnings

    from hf_memory.fact_scaling import fit_epoch_capacity

    epochs, counts = zip(*curve)
    start = fact_scaling._inflection(counts) if from_inflection else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unidentified beta gets (nan, nan) and the summary shows it
            fit = fit_epoch_capacity(epochs[start:], counts[start:], n_bootstrap=n_bootstrap)
    except ValueError:
        return None
    return {"from_epoch": epochs[start], "params": fit.params, "ci": fit.ci, "r2": fit.r2}


EXPONENTS = ("exponent", "exponent_of_limits")  # of the counts at the last epoch, of the epoch law's limits


def across_seeds(values: list[float]) -> dict | None:
    """The mean of one exponent over seeds with its t-interval (n - 1 degrees of freedom); None below 2 seeds."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean = statistics.mean(values)
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=stats.sem(values))
    return {
        "values": values,
        "mean": mean,
        "sd": statistics.stdev(values),
        "ci": [float(low), float(high)],
        "interval": f"t-interval over {len(values)} seeds, {len(values) - 1} dof, {CONFIDENCE:.0%}",
        "covers_1": bool(low <= 1 <= high),
    }


def analyse(config: dict, finished: dict[str, dict]) -> dict:
    """The summary of the finished jobs (any subset of the queue)."""
    from hf_memory.fact_scaling import fit_linear_capacity

    bits_per_fact = math.log2(config["value_set"])
    main = {name: r for name, r in finished.items() if r["job"]["kind"] == "main"}
    jobs = {}
    for name, result in sorted(main.items()):
        jobs[name] = {
            "seed": result["job"]["seed"],
            "hidden": result["job"]["hidden"],
            "lr": result["job"]["lr"],
            "non_embedding_params": result["non_embedding_params"],
            "capacity": result["capacity"],
            "bits_per_param": result["capacity"] * bits_per_fact / result["non_embedding_params"],
            "gain_last_20pct": result["capacity"]
            - next(c for e, c in result["curve"] if e >= 0.8 * result["job"]["epochs"]),
            "seconds": result["seconds"],
            "epoch_law": epoch_law(result["curve"], False, config["bootstrap"]),
            "epoch_law_from_inflection": epoch_law(result["curve"], True, config["bootstrap"]),
        }
    per_seed = {}
    for seed in config["seeds"]:
        sizes = sorted((j for j in jobs.values() if j["seed"] == seed), key=lambda j: j["hidden"])
        done = [j["hidden"] for j in sizes]
        entry = {"widths_done": done, "complete": done == sorted(config["widths"])}
        if entry["complete"]:
            params = [j["non_embedding_params"] for j in sizes]
            capacities = [j["capacity"] for j in sizes]
            entry["capacities"] = capacities
            entry["exponent"] = loglog_exponent(params, capacities)
            linear = fit_linear_capacity(params, capacities, n_bootstrap=max(config["bootstrap"], 100))
            entry["linear"] = {
                "params": linear.params,
                "ci": linear.ci,
                "r2": linear.r2,
                "bits_per_param": linear.params["slope"] * bits_per_fact,
                "bits_per_param_ci": [v * bits_per_fact for v in linear.ci["slope"]],
            }
            limits = [(j["epoch_law_from_inflection"] or {}).get("params", {}).get("c_max") for j in sizes]
            entry["limits"] = limits
            entry["exponent_of_limits"] = None if None in limits else loglog_exponent(params, limits)
        per_seed[str(seed)] = entry
    complete = [s for s in per_seed.values() if s["complete"]]
    pooled = None
    if len(complete) >= 2:  # every complete seed's points in one fit: 5 x seeds points
        points = [
            (j["non_embedding_params"], j["capacity"]) for j in jobs.values() if per_seed[str(j["seed"])]["complete"]
        ]
        pooled = loglog_exponent(*zip(*points))
        if pooled is not None:
            pooled["seeds"] = [int(k) for k, s in per_seed.items() if s["complete"]]
    fits = [j[key] for j in jobs.values() for key in ("epoch_law", "epoch_law_from_inflection")]
    across = {key: across_seeds([s[key]["exponent"] for s in complete if s.get(key)]) for key in EXPONENTS}
    summary = {
        "settings": config,
        "facts": next(iter(finished.values()))["facts"] if finished else None,
        "bits_per_fact": bits_per_fact,
        "jobs_finished": sorted(finished),
        "main": jobs,
        "per_seed": per_seed,
        "pooled_exponent": pooled,
        "across_seeds": across,
        "reproduction": {
            "seeds_complete": len(complete),
            "exponent_covers_1_at_every_complete_seed": bool(complete)
            and all(s["exponent"] is not None and s["exponent"]["covers_1"] for s in complete),
            "min_r2_epoch_law_all_points": min((f["r2"] for f in fits[0::2] if f), default=None),
            "min_r2_epoch_law_from_inflection": min((f["r2"] for f in fits[1::2] if f), default=None),
        },
        "sweep": analyse_sweep(config, finished),
        "seconds": {
            "jobs": round(sum(r["seconds"] for r in finished.values()), 1),
            "cpu": round(sum(r.get("cpu_seconds", 0.0) for r in finished.values()), 1),
        },
    }
    return summary


def analyse_sweep(config: dict, finished: dict[str, dict]) -> dict:
    """Per sweep width: capacity at each rate, the best multiplier, the rule's count as a share of the best; and
    the two-point exponent between the narrowest and widest swept widths at the rule's rate and at each width's
    best rate (whether the rule's rate could make the exponent)."""
    sweep = {name: r for name, r in finished.items() if r["job"]["kind"] == "sweep"}
    out: dict = {"widths": {}}
    for hidden in config["sweep"]["widths"]:
        runs = sorted((r for r in sweep.values() if r["job"]["hidden"] == hidden), key=lambda r: r["job"]["lr"])
        if not runs:
            continue
        entry = {
            "non_embedding_params": runs[0]["non_embedding_params"],
            "rule_lr": fact_scaling.learning_rate(hidden),
            "runs": [
                {
                    "multiplier": r["job"]["multiplier"],
                    "lr": r["job"]["lr"],
                    "capacity": r["capacity"],
                    "curve": r["curve"],
                }
                for r in runs
            ],
        }
        if len(runs) == len(config["sweep"]["multipliers"]):
            best = max(entry["runs"], key=lambda r: r["capacity"])
            rule = next(r for r in entry["runs"] if r["multiplier"] == 1.0)
            entry["best_multiplier"] = best["multiplier"]
            entry["rule_share_of_best"] = rule["capacity"] / best["capacity"] if best["capacity"] else None
            # with a constant rate, the first 60 epochs of the main grid's seed-0 job are this run: the same count
            main = finished.get(f"main_seed{config['sweep']['seed']}_w{hidden}")
            if main is not None and config["epochs"] >= config["sweep"]["epochs"]:
                at = dict(tuple(p) for p in main["curve"]).get(config["sweep"]["epochs"])
                entry["main_grid_at_sweep_epochs"] = at
        out["widths"][str(hidden)] = entry
    widths = [str(h) for h in sorted(config["sweep"]["widths"])]
    ends = [out["widths"].get(w) for w in (widths[0], widths[-1])]
    if len(widths) >= 2 and all(e and "best_multiplier" in e for e in ends):
        ratio = math.log(ends[1]["non_embedding_params"] / ends[0]["non_embedding_params"])

        def two_point(pick):
            a, b = (pick(e) for e in ends)
            return math.log(b / a) / ratio if a > 0 and b > 0 else None

        out["two_point_exponent"] = {
            "at_rule_rate": two_point(lambda e: next(r["capacity"] for r in e["runs"] if r["multiplier"] == 1.0)),
            "at_best_rates": two_point(lambda e: max(r["capacity"] for r in e["runs"])),
            "epochs": config["sweep"]["epochs"],
        }
    return out


# ------------------------------------------------------------------------------------------------------- figures


def plot(summary: dict, folder: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    jobs = list(summary["main"].values())
    if jobs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, seed in enumerate(summary["settings"]["seeds"]):
            sizes = sorted((j for j in jobs if j["seed"] == seed), key=lambda j: j["hidden"])
            if not sizes:
                continue
            p = np.array([j["non_embedding_params"] for j in sizes], dtype=float)
            c = [j["capacity"] for j in sizes]
            fit = summary["per_seed"][str(seed)].get("exponent")
            label = f"seed {seed}"
            if fit:
                lo, hi = fit["ci"]
                label += f": exponent {fit['exponent']:.2f} [{lo:.2f}, {hi:.2f}]"
                axes[0].plot(p, np.exp(fit["log_intercept"]) * p ** fit["exponent"], "-", color=colors[i % 10])
            elif len(sizes) < len(summary["settings"]["widths"]):
                label += f" ({len(sizes)} of {len(summary['settings']['widths'])} widths)"
            axes[0].plot(p, c, "o", color=colors[i % 10], label=label)
        p_all = np.array(sorted({j["non_embedding_params"] for j in jobs}), dtype=float)
        c_mid = math.exp(np.mean([math.log(max(j["capacity"], 1)) for j in jobs]))
        p_mid = math.exp(np.mean([math.log(j["non_embedding_params"]) for j in jobs]))
        axes[0].plot(p_all, c_mid * p_all / p_mid, ":", color="grey", label="exponent 1 (linear law), for reference")
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="non-embedding parameters",
            ylabel=f"facts known at epoch {summary['settings']['epochs']}",
            title="capacity vs size, constant rate, per seed (95% t-interval)",
        )
        axes[0].legend(fontsize=8)
        widths = sorted({j["hidden"] for j in jobs})
        middle = summary["settings"]["widths"][len(summary["settings"]["widths"]) // 2]
        shown = middle if middle in widths else widths[-1]
        for i, seed in enumerate(summary["settings"]["seeds"]):
            job = summary["main"].get(f"main_seed{seed}_w{shown}")
            if job is None:
                continue
            curve = summary["curves"][f"main_seed{seed}_w{shown}"]
            e, c = zip(*curve)
            axes[1].plot(e, c, "-", color=colors[i % 10], label=f"seed {seed}")
            law = job["epoch_law_from_inflection"]
            if law:
                grid = np.linspace(law["from_epoch"], e[-1], 100)
                q = law["params"]
                axes[1].plot(
                    grid,
                    q["c_max"] - q["alpha"] * np.exp(-q["beta"] * grid),
                    "--",
                    color="black",
                    lw=1,
                    label=f"seed {seed}: C*−αe^(−βE) from epoch {law['from_epoch']}, R²={law['r2']:.3f}",
                )
        axes[1].set(xlabel="epochs", ylabel="facts known", title=f"capacity vs epochs, width {shown}, constant rate")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(folder, "fact_capacity_seeds.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    sweep = summary["sweep"]["widths"]
    if sweep:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for hidden, entry in sorted(sweep.items(), key=lambda item: int(item[0])):
            lr = [r["lr"] for r in entry["runs"]]
            line = ax.plot(lr, [r["capacity"] for r in entry["runs"]], "o-", label=f"width {hidden}")[0]
            rule = [r for r in entry["runs"] if r["multiplier"] == 1.0]
            if rule:
                ax.plot(rule[0]["lr"], rule[0]["capacity"], "*", ms=16, color=line.get_color(), mec="black")
        ax.plot([], [], "*", ms=12, color="white", mec="black", label="the rule's rate, 3e-3·sqrt(32/width)")
        ax.set(
            xscale="log",
            yscale="log",  # the widths' counts differ tenfold; a log axis shows both peaks
            xlabel="learning rate (constant after warm-up)",
            ylabel=f"facts known at epoch {summary['settings']['sweep']['epochs']} (log)",
            title="learning-rate sweep, seed 0",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(folder, "fact_capacity_lr_sweep.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------- command line


def _int_list(text: str, name: str, minimum: int, parser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--{name} must be a comma-separated list of integers, got {text!r}")
    if not values or min(values) < minimum or len(set(values)) != len(values):
        parser.error(f"--{name} needs distinct integers >= {minimum}, got {text!r}")
    return values


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smoke run with tiny settings (well under a minute)")
    parser.add_argument("--output-dir", default=DEFAULT_DIR, help="where the job files and summary.json go")
    parser.add_argument("--workers", type=int, default=1, help="processes training one model each, on one thread")
    parser.add_argument("--only", choices=("all", "main", "sweep"), default="all", help="which jobs to run")
    parser.add_argument("--widths", default="", help="main-grid widths, comma-separated (default 16,24,32,40,48)")
    parser.add_argument("--seeds", default="", help="main-grid seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=None, help="main-grid epochs (default 240)")
    parser.add_argument("--analyse", action="store_true", help="refit and replot the finished jobs; train nothing")
    args = parser.parse_args(argv)
    config = settings(args.small)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.widths:
        widths = _int_list(args.widths, "widths", 8, parser)
        bad = [w for w in widths if w % 8]
        if bad:  # 4 attention heads with an even head size (rotary embeddings)
            parser.error(f"--widths must be multiples of 8 (4 heads of an even size), got {bad}")
        if len(widths) < 3:
            parser.error(f"--widths needs at least 3 widths for an exponent with an interval, got {widths}")
        config["widths"] = sorted(widths)
    if args.seeds:
        config["seeds"] = _int_list(args.seeds, "seeds", 0, parser)
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        config["epochs"] = args.epochs
        config["every"] = min(config["every"], args.epochs)
    return args, config


def main(argv: list[str] | None = None) -> dict:
    args, config = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = os.path.join(args.output_dir, "jobs")
    os.makedirs(folder, exist_ok=True)
    everything = job_queue(config, "all")
    finished = load_finished(folder, everything)
    queue = [] if args.analyse else [j for j in job_queue(config, args.only) if job_name(j) not in finished]
    print(f"{len(finished)} jobs finished earlier, {len(queue)} to run: {[job_name(j) for j in queue]}", flush=True)
    figures = args.output_dir if args.small or os.path.abspath(args.output_dir) != DEFAULT_DIR else DOCS_DIR
    threads = torch.get_num_threads()
    summary = None
    plotted = [time.time()]

    def refresh(last: bool = False):
        summary = analyse(config, finished)
        summary["curves"] = {name: r["curve"] for name, r in sorted(finished.items()) if r["job"]["kind"] == "main"}
        if last or time.time() - plotted[0] > 60:  # a few seconds of plotting: not after every short job
            summary["plots"] = [os.path.relpath(p, ROOT) for p in plot(summary, figures)]
            plotted[0] = time.time()
        _write_json(os.path.join(args.output_dir, "summary.json"), summary)
        return summary

    try:
        for result in run_queue(queue, folder, args.workers):
            name = job_name(result["job"])
            finished[name] = result
            print(
                f"{name}: {result['capacity']} facts, {result['seconds']} s ({len(finished)} of {len(everything)})",
                flush=True,
            )
            summary = refresh()
    finally:
        torch.set_num_threads(threads)
    summary = refresh(last=True)
    report = {k: summary[k] for k in ("per_seed", "pooled_exponent", "reproduction", "seconds")}
    report["sweep"] = {k: v for k, v in summary["sweep"].items() if k != "widths"}
    print(json.dumps(report, indent=1, default=str)[:5000])
    return summary


if __name__ == "__main__":
    main()
