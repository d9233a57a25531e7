"""The one scoring loop: training's validation and ``evaluate --split val`` compute the same figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import invoke


@pytest.mark.parametrize("model", ["sasrec", "bert4rec", "gru4rec"])
def test_validation_equals_evaluate_on_the_validation_split(trained: dict[str, Path], tmp_path: Path,
                                                             model: str) -> None:
    ds, codes = trained["ds"], trained["codes"]
    run = tmp_path / "run"
    res = invoke(["train", ds, "--model", model, "--codes", codes, "--out", run, "--max-steps", 6,
                  "--set", "d=16", "--set", "max_len=10", "--set", "val_users=100000", "--set", "steps_per_epoch=4",
                  "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6
    res = invoke(["evaluate", run, "--data", ds, "--checkpoint", "last", "--split", "val", "--json", "-",
                  "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["users"] == out["users_total"] == 1000  # every validation user, no sample
    metrics = out["runs"][0]["metrics"]
    assert metrics["NDCG@10"] == pytest.approx(last["NDCG@10"], abs=1e-6)
    assert metrics["Recall@10"] == pytest.approx(last["Recall@10"], abs=1e-6)
    assert last["NDCG@10"] > 0
