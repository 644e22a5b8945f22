"""`examples/goldfish_cost.py --small`: the goldfish downstream-cost experiment runs, resumes and summarizes."""

import json

from tests.testing_utils import run_example


def test_goldfish_cost_runs_small_resumes_and_plots(tmp_path):
    output = tmp_path / "small.json"

    def run(*extra):
        return run_example("goldfish_cost", "--small", "--output", str(output), *extra, timeout=600)

    out = run("--plot")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(output.read_text())
    names = {f"lr{lr:g}/seed0/{arm}" for lr in (3e-3, 3e-4) for arm in ("standard", "goldfish")}
    assert set(results["runs"]) == names
    assert all(r["finished"] and set(r["checkpoints"]) == {"1", "2"} for r in results["runs"].values())
    base = results["base"]["seed0"]
    fast, slow = results["runs"]["lr0.003/seed0/standard"], results["runs"]["lr0.0003/seed0/standard"]
    # fine-tuning lowers the members' loss below the base model's, the higher learning rate more so, and the
    # members' loss falls below the held-out documents' (what the loss attack reads)
    assert fast["checkpoints"]["2"]["nll_members"] < slow["checkpoints"]["2"]["nll_members"] < base["nll_members"]
    assert fast["checkpoints"]["2"]["nll_members"] < fast["checkpoints"]["2"]["nll_held_out"]
    assert fast["checkpoints"]["2"]["loss_auc"] > 0.5
    assert "| 0.003 | standard | 2 |" in out.stdout and "Goldfish's cost" in out.stdout
    assert (tmp_path / "small.png").stat().st_size > 10_000
    # a run cut off is redone whole; the finished ones are kept
    results["runs"]["lr0.0003/seed0/goldfish"] = {"checkpoints": {}, "finished": False}
    kept = results["runs"]["lr0.003/seed0/standard"]
    output.write_text(json.dumps(results))
    out = run()
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads(output.read_text())
    assert again["runs"]["lr0.0003/seed0/goldfish"]["finished"] and again["runs"]["lr0.003/seed0/standard"] == kept
    assert "[lr0.0003/seed0/goldfish]" in out.stdout and "[lr0.003/seed0/standard]" not in out.stdout
    # other settings in the same file are refused rather than mixed
    out = run("--lrs", "1e-3")
    assert out.returncode != 0 and "other settings" in out.stderr
