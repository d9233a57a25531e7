"""`recjpq train` under hostile conditions: divergence, two writers, full disks, tampered runs, kills, signals.

Each case checks the exit code, the one ``Error:`` line (no traceback) and the run folder before and after.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import error_line, invoke

TINY = ["--set", "d=16", "--set", "max_len=20", "--set", "val_users=100", "--set", "num_heads=1", "--device", "cpu"]


@pytest.fixture(scope="module")
def ds_codes(tmp_path_factory, sample_ds) -> tuple[Path, Path]:
    codes = tmp_path_factory.mktemp("hostile-train") / "codes.npy"
    res = invoke(["assign", sample_ds, "--strategy", "random", "-m", "4", "-b", "64", "--out", codes, "-q"])
    assert res.exit_code == 0, res.output
    return sample_ds, codes


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _train(ds: Path, codes: Path, out: Path, *extra) -> list:
    return ["train", ds, "--codes", codes, "--out", out, *TINY, "-q", *extra]


def _cmd(args: list) -> list[str]:
    return [sys.executable, "-m", "recjpq_cli", *[str(a) for a in args]]


def _env(**extra: str) -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1"} | extra


def _sub(args: list) -> None:
    """Run in a subprocess with the same thread count as the killed one: bit-for-bit comparisons need it."""
    proc = subprocess.run(_cmd(args), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _same_weights(a: Path, b: Path) -> None:
    """Same step, same RNG state bit for bit (the same dropout masks from here on), and the same weights.

    Weights are compared to 1e-4: a resumed process may differ from an uninterrupted one in the last bits
    of a few biases (about 1e-10 after one step, 7e-6 after six: a validation earlier in the same process
    changes the CPU kernels' summation in the last bit; the code before this change did the same), while a
    wrong RNG state or a half-done step moves weights by about the learning rate (1e-3) in a step.
    """
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert ca["step"] == cb["step"] and torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    wa, wb = ca["state_dict"], cb["state_dict"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].double(), wb[k].double(), rtol=0, atol=1e-4), (k, (wa[k] - wb[k]).abs().max())


# ------------------------------------------------------------------------------------------- divergence
def test_a_diverged_run_is_an_error_not_a_score(sample_ds, tmp_path) -> None:
    """The issue's command: lr=1e30 gives NaN losses; before, exit 0 and validation NDCG@10 0.93."""
    out = tmp_path / "div"
    res = invoke(["train", sample_ds, "--embedding", "full", "--out", out, "--max-steps", 5, *TINY,
                  "--set", "lr=1e30", "--set", "log_every=1"])
    assert res.exit_code == 1
    line = error_line(res)
    assert "diverged" in line and "step" in line and "lr" in line and "no checkpoint was kept" in line, line
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing finite to keep, nothing half-written


def test_divergence_keeps_the_last_finite_checkpoint(ds_codes, tmp_path, monkeypatch) -> None:
    """Losses turn NaN after step 3 (of 2-step epochs): the run stops at the next read with last.pt at step 2."""
    import recjpq_cli.stages.train as st

    ds, codes = ds_codes
    forward = st.LossModule.forward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        loss = forward(self, *a, **k)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(st.LossModule, "forward", poisoned)
    out = tmp_path / "run"
    res = invoke(_train(ds, codes, out, "--max-steps", 8, "--set", "steps_per_epoch=2"))
    assert res.exit_code == 1
    line = error_line(res)
    assert "not finite at step 4" in line and "keeps step 2" in line, line
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values()
                                     if v.is_floating_point())
    assert (out / "best.pt").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]  # never a step the checkpoints do not have
    assert not list(out.glob(".*.tmp-*"))


def test_non_finite_weights_with_a_finite_loss_are_caught_at_validation(ds_codes, tmp_path, monkeypatch) -> None:
    import recjpq_cli.stages.train as st

    ds, codes = ds_codes
    step = torch.optim.Adam.step

    def poison_step(self, *a, **k):
        out = step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(st.torch.optim.Adam, "step", poison_step)
    out = tmp_path / "run"
    res = invoke(_train(ds, codes, out, "--max-steps", 1))  # one step: its loss was finite, its update not
    assert res.exit_code == 1 and "weight was not finite after step 1" in error_line(res)
    assert not out.exists()


# --------------------------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_while_a_run_trains(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(_train(ds, codes, run, "--set", "steps_per_epoch=2", "--max-steps", 10 ** 6)),
                            env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (run / "metrics.jsonl").is_file(), proc, "the first validation")
        config = (run / "config.yaml").read_bytes()
        for extra in (["--overwrite"], ["--resume"]):
            args = _train(ds, codes, run, "--max-steps", 1, *extra)
            if extra == ["--resume"]:
                args = ["train", ds, "--out", run, "--resume", "--max-steps", 10 ** 7, "-q"]
            res = invoke(args)
            assert res.exit_code == 1, res.output
            assert "in use by another recjpq process" in error_line(res) and f"pid {proc.pid}" in res.stderr
        res = invoke(["compress", run, "--data", ds, "--out", run / "model.safetensors"])  # into the run
        assert res.exit_code == 1 and "in use by another recjpq process" in error_line(res)
        assert (run / "config.yaml").read_bytes() == config  # the first run's folder is the first run's alone
        assert not (run / "model.safetensors").exists()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = torch.load(run / "last.pt", weights_only=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == last["step"] and len({r["step"] for r in rows}) == len(rows)


def test_json_may_not_name_a_file_of_the_run(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    run = tmp_path / "run"
    assert invoke(_train(ds, codes, run, "--max-steps", 1)).exit_code == 0
    before = _snapshot(run)
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 2, "--json", run / "metrics.jsonl"])
    assert res.exit_code == 1 and "--json and --out" in error_line(res)
    assert _snapshot(run) == before


def test_a_lock_left_by_a_dead_process_is_not_held(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    run = tmp_path / "run"
    assert invoke(_train(ds, codes, run, "--max-steps", 1)).exit_code == 0
    (run / ".lock").write_text("999999999\n")  # as a killed process leaves it: the OS released its flock
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 2, "-q"])
    assert res.exit_code == 0, res.stderr
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2


def test_overwrite_refuses_a_folder_that_is_not_a_run(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    res = invoke(_train(ds, codes, victim, "--max-steps", 1, "--overwrite"))
    assert res.exit_code == 1 and "not a recjpq run folder" in error_line(res)
    assert _snapshot(victim) == {"thesis.tex": b"years of work"}


def test_overwrite_swaps_the_new_run_in_whole(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    run = tmp_path / "run"
    assert invoke(_train(ds, codes, run, "--max-steps", 1)).exit_code == 0
    assert invoke(_train(ds, codes, run, "--max-steps", 2, "--overwrite")).exit_code == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary or old folder left


# ------------------------------------------------------------------------------------ disks and tampering
def test_a_full_disk_at_the_first_checkpoint_leaves_nothing(ds_codes, tmp_path, monkeypatch) -> None:
    import recjpq_cli.checkpoint as ck

    ds, codes = ds_codes

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(ck.torch, "save", full)
    out = tmp_path / "run"
    res = invoke(_train(ds, codes, out, "--max-steps", 2))
    assert res.exit_code == 1
    line = error_line(res)
    assert "last.pt" in line and "cannot write the checkpoint" in line
    assert not list(tmp_path.iterdir())  # neither the run folder nor a temporary file: a rerun is not refused
    monkeypatch.undo()
    assert invoke(_train(ds, codes, out, "--max-steps", 1)).exit_code == 0


def test_a_full_disk_later_keeps_a_resumable_run(ds_codes, tmp_path, monkeypatch) -> None:
    import recjpq_cli.checkpoint as ck

    ds, codes = ds_codes
    real, calls = ck.torch.save, {"n": 0}

    def full_on_second(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_on_second)
    out = tmp_path / "run"
    res = invoke(_train(ds, codes, out, "--max-steps", 4, "--set", "steps_per_epoch=2"))
    assert res.exit_code == 1 and "No space left on device" in error_line(res)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2 and not list(out.glob(".*tmp*"))
    monkeypatch.undo()
    res = invoke(["train", ds, "--out", out, "--resume", "--max-steps", 4, "-q"])
    assert res.exit_code == 0, res.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]


def test_a_read_only_destination_is_one_line(ds_codes, tmp_path, monkeypatch) -> None:
    ds, codes = ds_codes

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    res = invoke(_train(ds, codes, tmp_path / "run", "--max-steps", 1))
    assert res.exit_code == 1 and "Read-only file system" in error_line(res)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def one_step_run(ds_codes, tmp_path) -> Path:
    ds, codes = ds_codes
    run = tmp_path / "run"
    assert invoke(_train(ds, codes, run, "--max-steps", 1)).exit_code == 0
    return run


def test_resume_after_config_yaml_was_edited_is_one_line(ds_codes, one_step_run) -> None:
    ds, _ = ds_codes
    run = one_step_run
    conf = yaml.safe_load((run / "config.yaml").read_text())
    conf["d"] = 64
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    before = _snapshot(run)
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 2])
    assert res.exit_code == 1
    line = error_line(res)
    assert "config.yaml" in line and "d=64" in line and "d=16" in line
    assert _snapshot(run) == before


def test_resume_with_a_wrong_shaped_tensor_is_one_line(ds_codes, one_step_run) -> None:
    ds, _ = ds_codes
    run = one_step_run
    ck = torch.load(run / "last.pt", weights_only=True)
    key = next(k for k, v in ck["state_dict"].items() if v.dim() == 2)
    ck["state_dict"][key] = torch.zeros(3, 3)
    torch.save(ck, run / "last.pt")
    before = _snapshot(run)
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 2])
    assert res.exit_code == 1
    line = error_line(res)
    assert "last.pt" in line and "do not match" in line
    assert _snapshot(run) == before


def test_a_pickle_checkpoint_is_one_line_and_never_unpickled(ds_codes, one_step_run) -> None:
    import pickle

    ds, _ = ds_codes
    run = one_step_run
    marker = run.parent / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (run / "last.pt").write_bytes(pickle.dumps({"format_version": 1, "x": Payload()}))
    before = _snapshot(run)
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 2])
    assert res.exit_code == 1
    line = error_line(res)  # one line: no torch warnings, no advice to load with weights_only=False
    assert "never loaded" in line and "weights_only" not in line
    assert not marker.exists() and _snapshot(run) == before


def test_a_resume_whose_budget_is_spent_says_so_and_writes_nothing(ds_codes, one_step_run, tmp_path) -> None:
    ds, _ = ds_codes
    run = one_step_run
    before = _snapshot(run)
    res = invoke(["train", ds, "--out", run, "--resume", "--max-steps", 1, "--json", tmp_path / "t.json"])
    assert res.exit_code == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "nothing to do" in lines[0] and "--max-steps 1" in lines[0], res.stderr
    assert _snapshot(run) == before and not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------------------- kills and signals
def test_sigkill_while_last_pt_is_written_resumes_exactly(ds_codes, tmp_path) -> None:
    ds, codes = ds_codes
    run, ref = tmp_path / "run", tmp_path / "ref"
    common = ["--set", "steps_per_epoch=2", "--set", "dropout=0.3", "--set", "batch_size=64"]
    proc = subprocess.Popen(_cmd(_train(ds, codes, run, *common, "--max-steps", 8)),
                            env=_env(RECJPQ_TEST_SLOW_CHECKPOINT="2"), stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (run / "last.pt").is_file() and bool(list(run.glob(".last.pt.tmp-*"))), proc,
              "the second checkpoint write")
        proc.kill()
    finally:
        proc.wait(timeout=60)
    saved = torch.load(run / "last.pt", weights_only=True)["step"]
    rows = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert saved == 2 and max(rows) <= saved  # the metrics never run ahead of the checkpoints
    _sub(["train", ds, "--out", run, "--resume", "--max-steps", 8, "-q"])
    assert not list(run.glob(".*.tmp-*"))
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6, 8]
    _sub(_train(ds, codes, ref, *common, "--max-steps", 8))
    _same_weights(run / "last.pt", ref / "last.pt")


def test_sigint_in_the_middle_of_an_epoch_resumes_exactly(ds_codes, tmp_path) -> None:
    """The signal is honoured between two steps, so the saved RNG state is the one the next step uses."""
    ds, codes = ds_codes
    run, ref = tmp_path / "run", tmp_path / "ref"
    common = ["--set", "batch_size=8", "--set", "dropout=0.3"]  # ~125 steps an epoch: the signal lands inside one
    proc = subprocess.Popen(_cmd(_train(ds, codes, run, *common, "--max-steps", 10 ** 6)), env=_env(),
                            stderr=subprocess.PIPE, text=True)
    _wait(lambda: (run / ".lock").is_file(), proc, "the run folder")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    stop = torch.load(run / "last.pt", weights_only=True)["step"]
    assert stop >= 1
    _sub(["train", ds, "--out", run, "--resume", "--max-steps", stop + 3, "-q"])
    _sub(_train(ds, codes, ref, *common, "--max-steps", stop + 3))
    _same_weights(run / "last.pt", ref / "last.pt")
