"""benchmarks/paper_table.sh end to end on sample_data with a budget of a second per run (shape, not numbers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROWS = ["sasrec-dense", "sasrec-random", "sasrec-svd", "sasrec-bpr", "sasrec-svd-kmeans", "gsasrec-dense",
        "gsasrec-svd", "bert4rec-dense", "bert4rec-svd"]
# MODEL+LOSS rows (issue 18): their own groups, each tested against its own dense row
LOSS_ROWS = ["sasrec+ce-dense", "sasrec+ce-svd-kmeans", "bert4rec+gbce-svd"]


@pytest.mark.skipif(shutil.which("recjpq") is None, reason="the recjpq command is not installed")
def test_paper_table_script_on_sample_data(tmp_path: Path, sample_csv: Path) -> None:
    data = tmp_path / "data" / "ml-1m"
    data.mkdir(parents=True)
    log = pl.read_csv(sample_csv).sort(["user_id", "timestamp"], maintain_order=True)
    log.select("user_id", "item_id").write_csv(data / "ml-1m.txt", separator=" ", include_header=False)
    out = tmp_path / "out"
    env = os.environ | {"DATASETS": "ml-1m", "EXTRA": "--set val_users=64 --set max_len=20 -q",
                        "DENSE_EXTRA": "--set tie_embeddings=true", "M": "4", "OMP_NUM_THREADS": "1",
                        "ROWS": " ".join(ROWS + LOSS_ROWS), "NEGATIVES": "16", "EXTRA_bert4rec": "--set lr=0.002"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "paper_table.sh"), str(tmp_path / "data"), str(out),
                          "1", "16"], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    d = out / "ml-1m"
    n_items = yaml.safe_load((d / "data" / "dataset.yaml").read_text())["n_items"]
    for s in ("random", "svd", "bpr", "svd-kmeans"):  # ksub = 131072 / D (the paper's 256 x 512), <= half the items
        side = yaml.safe_load((d / f"codes-{s}.yaml").read_text())
        assert side["ksub"] == min(131072 // 16, n_items // 2) and side["M"] == 4  # M from the environment
    side = yaml.safe_load((d / "codes-svd-kmeans.yaml").read_text())  # RecJPQ-HC: --dim is D, centroids beside
    assert side["d"] == 16 and (d / side["centroids_file"]).is_file()
    assert yaml.safe_load((d / "runs" / "sasrec-svd-kmeans" / "config.yaml").read_text())["codes"].endswith(
        "codes-svd-kmeans.npy")
    table = json.loads((d / "eval-all.json").read_text())
    names = [r["name"] for r in table["runs"]]
    assert names == ROWS + LOSS_ROWS + ["popularity"]
    for r in table["runs"]:
        assert {"NDCG@10", "Recall@10", "MRR"} <= set(r["metrics"])
        assert r["split"] == "test" and r["filter_seen"] is True
    assert [r["name"] for r in json.loads((d / "eval-sasrec+ce.json").read_text())["runs"]] == LOSS_ROWS[:2]
    assert [r["name"] for r in json.loads((d / "eval-bert4rec+gbce.json").read_text())["runs"]] == LOSS_ROWS[2:]
    for model in ("sasrec", "gsasrec", "bert4rec", "sasrec+ce"):
        sub = json.loads((d / f"eval-{model}.json").read_text())
        assert sub["runs"][0]["name"] == f"{model}-dense"
        ref = sub["runs"][0]
        for r in sub["runs"][1:]:  # a paired t-test against the dense row, its mark as the p-value says
            sig = r["significance"]
            assert sig["reference"] == ref["name"] and sig["is_reference"] is False, sig
            assert sig["alpha_corrected"] == pytest.approx(0.05 / (len(sub["runs"]) - 1)), sig
            assert 0 <= sig["p"] <= 1, sig
            better = r["metrics"]["NDCG@10"] > ref["metrics"]["NDCG@10"]
            assert sig["mark"] == ("=" if sig["p"] >= sig["alpha_corrected"] else "+" if better else "-"), sig
    for row in ROWS + LOSS_ROWS:
        facts = json.loads((d / "runs" / f"{row}.train.json").read_text())
        group = row.split("-")[0]
        assert facts["stop_reason"] == "time_limit" and facts["model"] == group.split("+")[0]
        run_cfg = yaml.safe_load((d / "runs" / row / "config.yaml").read_text())
        assert run_cfg["lr"] == (0.002 if group.startswith("bert4rec") else 1e-3)  # EXTRA_<MODEL>: its rows only
        if "+" in group:  # the row's loss, NEGATIVES negatives shared by a sequence's positions
            assert (run_cfg["loss"], run_cfg["negatives"], run_cfg["negatives_per"]) == (group.split("+")[1], 16,
                                                                                           "sequence")
            assert run_cfg["gbce_t"] == (0.75 if group.endswith("gbce") else 0.0)
        assert run_cfg["tie_embeddings"] is row.endswith("dense")  # DENSE_EXTRA reaches the dense rows only
        if row.startswith("gsasrec"):  # negatives shared per sequence by default (affordable at ksub 1,024)
            assert run_cfg["negatives_per"] == "sequence"
        if not row.endswith("dense"):
            size = json.loads((d / "models" / f"{row}.json").read_text())
            assert size["item_table_ratio"] > 1 and (d / "models" / f"{row}.safetensors").is_file()
