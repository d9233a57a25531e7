"""Run folders and model files written by the release before the one-trainer redesign still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the fixtures whose run configs point at the copied codes."""
    root = tmp_path / "v1"
    shutil.copytree(FIXTURES, root)
    for run in root.glob("*-run"):
        cfg = run / "config.yaml"
        lines = [f"codes: {root / 'codes.npy'}" if ln.startswith("codes:") else ln
                 for ln in cfg.read_text().splitlines()]
        cfg.write_text("\n".join(lines) + "\n")
    return root


def _metrics(source: Path, ds: Path) -> dict[str, float]:
    res = invoke(["evaluate", source, "--data", ds, "--json", "-", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["runs"][0]["metrics"]


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_old_run_and_model_file_evaluate_as_they_did(old: Path, sample_ds: Path, model: str) -> None:
    for source in (old / f"{model}-run", old / f"{model}.safetensors"):
        m = _metrics(source, sample_ds)
        for key, value in EXPECTED[model].items():
            assert m[key] == pytest.approx(value, abs=1e-12), (source, key)


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_old_run_compresses_recommends_and_resumes(old: Path, sample_ds: Path, model: str, tmp_path: Path) -> None:
    run = old / f"{model}-run"
    out = tmp_path / "m.safetensors"
    res = invoke(["compress", run, "--data", sample_ds, "--out", out, "-q"])
    assert res.exit_code == 0, res.output
    assert _metrics(out, sample_ds)["NDCG@10"] == pytest.approx(EXPECTED[model]["NDCG@10"], abs=1e-12)
    recs = tmp_path / "recs.parquet"
    res = invoke(["recommend", old / f"{model}.safetensors", "--data", sample_ds, "--k", 5, "--out", recs, "-q"])
    assert res.exit_code == 0, res.output
    import polars as pl

    assert pl.read_parquet(recs).height == 5 * 1000
    steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    res = invoke(["train", sample_ds, "--out", run, "--resume", "--max-steps", steps + 4, "--device", "cpu",
                  "--json", "-", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == steps + 4
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == steps + 4


def test_a_config_without_loss_reads_as_what_it_trained_with() -> None:
    """Runs written before the ``loss`` key: gSASRec (gbce_t 0.75) reads as gbce, BERT4Rec as full-softmax ce,
    and a SASRec config as bce (the model's default), not the dataclass default."""
    import yaml

    from recjpq_cli.config import from_dict

    for model, loss in (("gsasrec", "gbce"), ("bert4rec", "ce")):
        saved = yaml.safe_load((FIXTURES / f"{model}-run" / "config.yaml").read_text())
        assert "loss" not in saved
        for key in ("codes", "dataset", "dataset_fingerprint"):
            saved.pop(key)
        cfg = from_dict(saved, "config.yaml")
        assert cfg.loss == loss and cfg.negatives == saved["negatives"]
    old_sasrec = saved | {"model": "sasrec", "negatives": 1, "gbce_t": 0.0, "dropout": 0.5}
    assert from_dict(old_sasrec, "config.yaml").loss == "bce"
    assert from_dict(old_sasrec | {"gbce_t": 0.5}, "config.yaml").loss == "gbce"
