"""benchmarks/gpu_check.sh --smoke: every part of the GPU check runs on the CPU and reports ok (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ["pytest", "ml1m", "scale", "ranking"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}


def test_smoke_writes_both_reports_with_every_part_ok(tmp_path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", str(out)], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    rep = json.loads((out / "report.json").read_text())
    parts = {p["name"]: p for p in rep["parts"]}
    assert [p["name"] for p in rep["parts"]] == PARTS
    for name, p in parts.items():
        assert p["status"] == "ok", (name, p.get("error"), res.stderr[-2000:])
        assert p["seconds"] > 0
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "logs" / "pip.log").exists()  # polars and pytest importable here: nothing installed
    assert rep["device"] and rep["torch"] and rep["mode"] == "smoke"
    assert parts["pytest"]["tests"] >= 1 and parts["pytest"]["failures"] == 0
    ml = parts["ml1m"]
    assert ml["fell_back_to_sample_data"] is True and ml["steps"] == 3
    assert 0 <= ml["test_NDCG@10"] <= 1 and ml["steps_per_s"] > 0 and ml["train_peak_gpu_bytes"] == 0
    rows = parts["scale"]["rows"]
    assert {(r["embedding"], r["items"]) for r in rows} == {(e, n) for e in ("jpq", "full") for n in (1_000, 5_000)}
    assert all(r["status"] == "ok" and r["step_s"] > 0 for r in rows)
    rk = parts["ranking"]
    assert rk["device_users_per_s"] > 0 and rk["cpu_pqtopk_users_per_s"] > 0 and rk["top10_agreement"] == 1.0
    assert len(rep["goals"]) == 4 and all(g["met"] is None for g in rep["goals"])  # smoke sizes: n/a
    md = (out / "report.md").read_text()
    for name in PARTS:
        assert f"| {name} | ok |" in md
    assert "MISSED" not in md and md.count("n/a (smoke sizes)") == 4


def test_a_part_without_result_is_failed_and_goals_are_missed(tmp_path) -> None:
    """The report marks a part that left no result (timed out) as failed, exits 1, and lists missed goals."""
    (tmp_path / "parts").mkdir()
    for name in PARTS[:-1]:
        (tmp_path / "parts" / f"{name}.json").write_text(json.dumps({"name": name, "status": "ok", "seconds": 1}))
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_parts.py"), "report", str(tmp_path)],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    rep = json.loads((tmp_path / "report.json").read_text())
    last = rep["parts"][-1]
    assert last["name"] == "ranking" and last["status"] == "failed" and "timed out" in last["error"]
    assert [g["met"] for g in rep["goals"]] == [False] * 4
    assert (tmp_path / "report.md").read_text().count("MISSED") == 4
