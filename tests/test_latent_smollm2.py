"""`examples/latent_smollm2.py --small`: the latent-memorization trajectory, scan and CE diagnostic run end to end,
and the summary's counts and tests are right."""

import json

from tests.testing_utils import run_example


def test_latent_example_runs_small_and_summarizes(tmp_path):
    output = tmp_path / "small.json"
    out = run_example("latent_smollm2", "--small", "--output", str(output), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.loads(output.read_text())["seeds"]["0"]
    assert run["groups"].count("once") == run["groups"].count("never") == 6
    assert list(run["trajectory"]) == ["before", "after exposure", "after segment 2 (no re-exposure)"]
    assert all(len(d) == 12 and all(0 <= x <= 12 for x in d) for d in run["trajectory"].values())
    assert all(b <= 12 for b in run["scan"]["best"]) and len(run["ce_calibrated"]) == 12
    assert "| pooled | once |" in out.stdout and "CE AUC once vs never" in out.stdout


def test_latent_counts_and_fisher_test():
    from tests.testing_utils import load_example

    example = load_example("latent_smollm2")
    run = {
        "groups": ["once"] * 4 + ["never"] * 4,
        "trajectory": {"before": [5, 5, 5, 0, 5, 5, 5, 5]},
        "scan": {"unperturbed": [5, 5, 5, 0, 5, 5, 5, 5], "best": [0, 0, 3, 0, 5, 5, 6, 4]},
        "ce_loss_after": [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0],
        "ce_calibrated": [-1.0] * 4 + [0.0] * 4,
    }
    numbers = example.seed_numbers(run)
    # the extractable window (distance 0 unperturbed) is left out of the scan's counts
    assert numbers["scan"]["once"] == {"not_extractable": 3, "recovered_exactly": 2, "closer": 3}
    assert numbers["scan"]["never"] == {"not_extractable": 4, "recovered_exactly": 0, "closer": 1}
    assert numbers["trajectory"]["before"]["exact_once"] == 1
    assert numbers["ce_auc_once_vs_never"] == 1.0 and numbers["ce_calibrated_auc_once_vs_never"] == 1.0
    # 2 of 3 against 0 of 4: one-sided Fisher p = C(3,2)C(4,0)/C(7,2) = 3/21
    assert abs(example.fisher(numbers["scan"]["once"], numbers["scan"]["never"], "recovered_exactly") - 1 / 7) < 1e-9
