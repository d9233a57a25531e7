"""A run knows its dataset: compress, evaluate and recommend need no --data, and say so when it moved.

Also `--resume --set`: patience is honoured, any other changed key is refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import error_line, invoke
from test_evaluate import make_run

TINY = ["--set", "d=16", "--set", "max_len=10", "--set", "val_users=100", "--set", "num_blocks=1",
        "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_ds) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("record")
    ds, codes, run = root / "ds", root / "codes.npy", root / "run"
    shutil.copytree(sample_ds, ds)  # this module moves it about
    assert invoke(["assign", ds, "--strategy", "random", "-m", "4", "-b", "16", "--out", codes, "-q"]).exit_code == 0
    res = invoke(["train", ds, "--codes", codes, "--out", run, "--max-epochs", "1", "--set", "steps_per_epoch=2",
                  *TINY])
    assert res.exit_code == 0, res.output
    return {"root": root, "ds": ds, "run": run}


def _ok(args: list) -> dict:
    res = invoke([*args, "-q", "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_train_records_the_dataset_folder(trained) -> None:
    ds, run = trained["ds"], trained["run"]
    fp = yaml.safe_load((ds / "dataset.yaml").read_text())["fingerprint"]
    conf = yaml.safe_load((run / "config.yaml").read_text())
    assert conf["dataset"] == str(ds.resolve()) and conf["dataset_fingerprint"] == fp
    for name in ("best.pt", "last.pt"):
        ck = torch.load(run / name, weights_only=True)
        assert ck["dataset"] == str(ds.resolve()) and ck["dataset_fingerprint"] == fp
        # the checkpoint's config is config.yaml's training keys, the codes path resolved the same way
        assert ck["config"] == {k: v for k, v in conf.items() if k not in ("dataset", "dataset_fingerprint")}


def test_no_data_needed_and_a_moved_dataset_is_one_error_naming_data(trained) -> None:
    root, ds, run = trained["root"], trained["ds"], trained["run"]
    model, recs = root / "model.safetensors", root / "recs.parquet"
    with_data = _ok(["evaluate", run, "--data", ds])
    assert _ok(["evaluate", run])["runs"][0]["metrics"] == with_data["runs"][0]["metrics"]
    _ok(["compress", run, "--out", model])
    from safetensors import safe_open

    with safe_open(str(model), framework="pt") as f:
        assert f.metadata()["dataset"] == str(ds.resolve())
    assert _ok(["evaluate", model])["runs"][0]["metrics"] == with_data["runs"][0]["metrics"]
    assert _ok(["recommend", run, "--out", recs])["rows"] > 0
    assert _ok(["recommend", model, "--out", recs, "--overwrite"])["rows"] > 0

    moved = root / "ds-moved"
    ds.rename(moved)
    try:
        for args in (["compress", run, "--out", root / "m2.safetensors"], ["evaluate", run], ["evaluate", model],
                     ["recommend", run, "--out", root / "r2.parquet"], ["recommend", model, "--out", root / "r3.pq"]):
            res = invoke(args)
            assert res.exit_code == 1, res.output
            line = error_line(res)
            assert "--data" in line and str(ds.resolve()) in line and "not there any more" in line, line
        assert not (root / "m2.safetensors").exists() and not (root / "r2.parquet").exists()
        _ok(["evaluate", run, "--data", moved])  # --data still overrides
        # another dataset where the run's was: changed, say so
        shutil.copytree(moved, ds)
        meta = yaml.safe_load((ds / "dataset.yaml").read_text())
        (ds / "dataset.yaml").write_text(yaml.safe_dump(meta | {"fingerprint": "0" * 64}))
        line = error_line(invoke(["evaluate", run]))
        assert "changed since training" in line and "--data" in line, line
    finally:
        shutil.rmtree(ds, ignore_errors=True)
        moved.rename(ds)


def test_runs_written_before_the_record_still_need_data(tmp_path, sample_ds) -> None:
    old = make_run(tmp_path / "old", sample_ds)  # config.yaml and checkpoints as before: no dataset path
    for args in (["evaluate", old], ["compress", old, "--out", tmp_path / "m"], ["recommend", old, "--out",
                                                                                tmp_path / "r.parquet"]):
        line = error_line(invoke(args))
        assert "records no dataset folder" in line and "--data" in line, line
    assert invoke(["evaluate", old, "--data", sample_ds, "-q"]).exit_code == 0
    line = error_line(invoke(["evaluate", "--baseline", "popularity"]))
    assert "--data" in line, line


def test_resume_honours_a_new_patience_and_refuses_other_changes(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    ds = trained["ds"]
    before = (run / "last.pt").read_bytes()
    res = invoke(["train", ds, "--out", run, "--resume", "--set", "lr=0.5", "--max-epochs", "2"])
    assert res.exit_code == 1 and "lr=0.5" in error_line(res)
    assert (run / "last.pt").read_bytes() == before
    res = invoke(["train", ds, "--out", run, "--resume", "--set", "patience=5", "--max-epochs", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert torch.load(run / "last.pt", weights_only=True)["config"]["patience"] == 5
    # --patience (the flag) still wins over --set
    res = invoke(["train", ds, "--out", run, "--resume", "--set", "patience=5", "--patience", "7",
                  "--max-epochs", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert torch.load(run / "last.pt", weights_only=True)["config"]["patience"] == 7
