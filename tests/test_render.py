"""Summaries sent to a log (stderr not a terminal) are whole: no cut cell, and the numbers are the JSON's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import invoke
from rich.console import Console

# Long enough that every summary's paths push its table past 80 columns, the width rich assumed for a log.
LONG = "a-folder-name-long-enough-to-push-every-summary-table-past-eighty-columns"
TINY = ["--set", "d=16", "--set", "max_len=10", "--set", "val_users=100", "--set", "num_blocks=1",
        "--device", "cpu"]


@pytest.fixture(autouse=True)
def _no_width_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


def _whole(stderr: str) -> None:
    assert "…" not in stderr and "..." not in stderr, stderr


def _run(args: list, json_path: Path) -> tuple[str, dict]:
    res = invoke([*args, "--json", json_path])
    assert res.exit_code == 0, res.output
    _whole(res.stderr)
    return res.stderr, json.loads(json_path.read_text())


def _row(stderr: str, label: str) -> str:
    """The one table line whose first cell starts with ``label``."""
    rows = [ln for ln in stderr.splitlines() if ln.lstrip("│┃ ").startswith(label)]
    assert len(rows) == 1, (label, stderr)
    return rows[0]


def test_every_summary_is_whole_in_a_log(tmp_path: Path, sample_csv: Path) -> None:
    root = tmp_path / LONG
    root.mkdir()
    ds, codes, run, model = root / "ds", root / "codes.npy", root / "sasrec-run", root / "model.safetensors"

    err, f = _run(["prepare", sample_csv, "--out", ds], tmp_path / "p.json")
    assert str(ds) in _row(err, "written")
    assert f"{f['n_interactions']:,}" in _row(err, "interactions")
    assert f["fingerprint"][:16] in _row(err, "fingerprint")
    assert f"{f['stats']['long_tail_share']:.1%}" in _row(err, "long-tail share")

    err, f = _run(["assign", ds, "--strategy", "svd", "-m", "4", "-b", "16", "--out", codes], tmp_path / "a.json")
    assert str(codes) in _row(err, "written")
    assert f"{f['collisions_before']:,} / {f['collisions_after']:,}" in _row(err, "collisions")
    assert f"{f['explained_variance']:.2%}" in _row(err, "explained variance")

    err, f = _run(["train", ds, "--codes", codes, "--out", run, "--max-steps", "3", *TINY], tmp_path / "t.json")
    assert str(run) in _row(err, "run folder")
    assert f"{f['best_NDCG@10']:.4f}" in _row(err, "best validation NDCG@10")
    last = f["last_validation"]
    assert f"{last['NDCG@10']:.4f} / {last['Recall@10']:.4f}" in _row(err, "last validation")

    err, f = _run(["compress", run, "--out", model, "--data", ds], tmp_path / "c.json")
    assert str(model) in err.splitlines()[0]
    assert f"{f['components']['codes']['count']:,}" in _row(err, "codes")
    assert f"{f['components']['backbone']['parameters']:,}" in _row(err, "backbone")
    assert f"item-table ratio {f['item_table_ratio']:,.1f}x" in err

    err, f = _run(["evaluate", run, model, "--data", ds, "--baseline", "popularity"], tmp_path / "e.json")
    header = _row(err, "run ")
    for name in ("run", "NDCG@10", "Recall@10", "MRR", "size", "item ratio"):
        assert name in header
    assert len(f["runs"]) == 3
    for r in f["runs"]:
        m = r["metrics"]
        row = _row(err, f"{r['name']} ")
        for value in (m["NDCG@10"], m["Recall@10"], m["MRR"], r["long_tail"]["metrics"]["NDCG@10"]):
            assert f"{value:.4f}" in row, (value, row)
        if r["significance"].get("mark"):
            assert f"{m['NDCG@10']:.4f}{r['significance']['mark']}" in row


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("width", [100, 40, 12])
def test_a_terminal_keeps_its_width_and_never_cuts_a_number(monkeypatch, width: int) -> None:
    """A wide terminal gets the table at its width; a narrow one gets it at the table's minimum width (the
    terminal wraps the long lines), so each number is still one piece."""
    from types import SimpleNamespace

    from recjpq_cli import console as console_mod
    from recjpq_cli.stages import render

    out = _Tty()
    monkeypatch.setattr(console_mod, "_console", Console(file=out, width=width, force_terminal=True,
                                                         color_system=None))
    run = SimpleNamespace(name="sasrec-svd", metrics={"NDCG@10": 0.123456, "Recall@10": 0.234567, "MRR": 0.345678},
                          significance={"mark": "+"}, long_tail={"metrics": {"NDCG@10": 0.0456}},
                          size={"model_bytes": 123_456_789, "item_table_ratio": 31.62})
    result = SimpleNamespace(ks=[10], split="test", users=6040, sampled_users=None, users_total=6040, seed=0,
                             filter_seen=True, runs=[run], long_tail_share=0.052, repeated_targets=98, per_user=None)
    render.evaluate_table(result)
    text = out.getvalue()
    _whole(text)
    for cell in ("0.1235+", "0.2346", "0.3457", "0.0456", "117.74", "31.6x", "sasrec-svd"):  # a word each
        assert cell in text, (cell, text)
    if width == 100:  # today's look: it fits, one line per row, no line past the terminal
        assert max(len(ln) for ln in text.splitlines()) <= 100
        assert all(c in _row(text, "sasrec-svd") for c in ("0.1235+", "0.0456", "117.74 MiB", "31.6x"))
