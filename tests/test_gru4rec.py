"""GRU4Rec, the model added through the model interface alone: train, evaluate, compress and recommend
with RecJPQ and dense items on the sample data; left padding changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import error_line, invoke

from recjpq_cli.models.registry import build_model, model_args_from_config


def test_left_padding_does_not_change_the_states() -> None:
    from recjpq_cli.config import build_config

    cfg = build_config("gru4rec", overrides={"d": 8, "max_len": 12, "num_blocks": 2}, flags={"embedding": "full"})
    torch.manual_seed(0)
    m = build_model(model_args_from_config(cfg, 30, None, None)).eval()
    seq = torch.tensor([[3, 7, 1, 9, 4]])
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), seq], dim=1)
    with torch.no_grad():
        a, b = m.hidden(seq), m.hidden(padded)
    assert torch.allclose(a, b[:, 7:], atol=1e-6)
    assert torch.count_nonzero(b[:, :7]) == 0
    assert torch.allclose(m.encode(seq), m.encode(padded), atol=1e-6)


@pytest.mark.parametrize("embedding", ["jpq", "full"])
def test_gru4rec_trains_evaluates_compresses_and_recommends(trained: dict[str, Path], tmp_path: Path,
                                                            embedding: str) -> None:
    ds, codes = trained["ds"], trained["codes"]
    run, model, recs = tmp_path / "run", tmp_path / "m.safetensors", tmp_path / "recs.parquet"
    items = ["--codes", codes] if embedding == "jpq" else ["--embedding", "full"]
    res = invoke(["train", ds, "--model", "gru4rec", *items, "--out", run, "--max-steps", 8, "--set", "d=16",
                  "--set", "max_len=10", "--set", "val_users=200", "--device", "cpu", "--json", "-", "-q"])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["model"] == "gru4rec" and facts["steps"] == 8
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["loss"] == "ce" and saved["negatives"] == 256 and saved["negatives_per"] == "sequence"
    assert "num_heads" not in saved and "mask_prob" not in saved  # only the keys GRU4Rec reads
    compress = ["compress", run, "--data", ds, "--out", model, "-q"] + (["--from-dense", "--centroids", 16]
                                                                       if embedding == "full" else [])
    res = invoke(compress)
    assert res.exit_code == 0, res.output
    for source in (run, model):
        res = invoke(["evaluate", source, "--data", ds, "--json", "-", "--device", "cpu", "-q"])
        assert res.exit_code == 0, res.output
        assert 0 <= json.loads(res.stdout)["runs"][0]["metrics"]["NDCG@10"] <= 1
    res = invoke(["recommend", model, "--data", ds, "--k", 5, "--out", recs, "-q"])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(recs).height == 5 * 1000
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 10, "--device", "cpu", "--json", "-", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 10


def test_another_models_key_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    res = invoke(["train", trained["ds"], "--model", "gru4rec", "--codes", trained["codes"], "--out",
                  tmp_path / "r", "--set", "num_heads=2"])
    assert res.exit_code == 1
    line = error_line(res)
    assert "num_heads" in line and "gru4rec" in line and "num_blocks" in line
    assert not (tmp_path / "r").exists()
