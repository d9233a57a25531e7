"""Shared fixtures: a CLI runner, the sample log and a dataset prepared from it once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner, Result

from recjpq_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CSV = REPO / "sample_data" / "interactions.csv"


def invoke(args: list[Any], runner: CliRunner | None = None) -> Result:
    """Run ``recjpq ARGS`` in-process; every argument may be a str, a Path or a number.

    ``result.stdout`` and ``result.stderr`` are separate (click >= 8.2); ``result.output`` is both.
    """
    from recjpq_cli.console import reset_console

    reset_console()  # a fresh stderr console bound to this run's captured stream
    return (runner or CliRunner()).invoke(app, [str(a) for a in args])


def error_line(result: Result) -> str:
    """The one ``Error:`` line of a failed run (asserts it is the only stderr line and no traceback)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return lines[0]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(name="invoke")
def invoke_fixture() -> Callable[[list[Any]], Result]:
    """``invoke(["prepare", path, "--out", out])`` -> click Result with stdout and stderr apart."""
    return invoke


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    """sample_data/interactions.csv (1,000 users, 2,000 items, 30,000 interactions)."""
    assert SAMPLE_CSV.is_file(), f"{SAMPLE_CSV} is missing"
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def sample_ds(tmp_path_factory: pytest.TempPathFactory, sample_csv: Path) -> Path:
    """A dataset folder prepared from sample_data with the default options, once per session.

    Read-only by convention: a test that changes it must copy it first.
    """
    out = tmp_path_factory.mktemp("sample") / "ds"
    res = invoke(["prepare", sample_csv, "--out", out, "-q"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_ds: Path) -> dict[str, Path]:
    """A 5-step RecJPQ run (d=16, M=4, ksub=16, max_len 10) on sample_ds, its codes and its model file,
    once per session. Read-only by convention: a test that changes one copies it first."""
    root = tmp_path_factory.mktemp("trained")
    codes, run, model = root / "codes.npy", root / "run", root / "model.safetensors"
    steps = [["assign", sample_ds, "--strategy", "random", "-m", 4, "-b", 16, "--out", codes, "-q"],
             ["train", sample_ds, "--codes", codes, "--out", run, "--max-steps", 5, "--set", "d=16",
              "--set", "max_len=10", "--set", "val_users=100", "--device", "cpu", "-q"],
             ["compress", run, "--data", sample_ds, "--out", model, "-q"]]
    for args in steps:
        res = invoke(args)
        assert res.exit_code == 0, res.output
    return {"ds": sample_ds, "codes": codes, "run": run, "model": model}
