"""Two data-parallel CPU processes (torchrun, gloo) drop exactly the same labels for the same data."""

from __future__ import annotations

import pytest
import torch

from hf_memory import GoldfishConfig, apply_goldfish
from tests.testing_utils import run_two_processes


pytestmark = pytest.mark.slow  # two processes: `make test-fast` skips it


@pytest.mark.parametrize("strategy", ["hash", "hash-table"])
def test_two_processes_drop_identical_labels(tmp_path, strategy):
    ranks = run_two_processes("distributed_goldfish.py", tmp_path / "ranks.json", strategy)

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["mask"] == ranks[1]["mask"]  # same data, same drops, whatever each rank's RNG did
    config = GoldfishConfig(k=4, h=6, strategy=strategy)
    dropped = kept = 0
    rows_per_rank = []
    for r in ranks:
        rows = set()
        for ids, labels in r["seen"]:
            ids, labels = torch.tensor(ids), torch.tensor(labels)
            assert torch.equal(labels, apply_goldfish(ids, ids, config))
            dropped += (labels[:, 1:] == -100).sum().item()
            kept += (labels[:, 1:] != -100).sum().item()
            rows |= {tuple(row) for row in ids.tolist()}
        rows_per_rank.append(rows)
    assert [len(rows) for rows in rows_per_rank] == [8, 8]  # each rank trained on 4 steps x 2 rows of its own
    # the logged fraction is reduced over both ranks
    assert ranks[0]["logged"] == ranks[1]["logged"] == [pytest.approx(dropped / (dropped + kept), abs=1e-4)]
