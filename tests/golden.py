"""The golden runs: fixed-seed trainings on the sample data whose test metrics must not move.

``python tests/golden.py`` records them into ``tests/golden.json`` (run it only on purpose: a change that alters
the maths updates the numbers in the same commit and says why); ``tests/test_golden.py`` reproduces them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
SETTINGS = ["--set", "d=32", "--set", "max_len=20", "--max-steps", "200", "--device", "cpu", "-q"]
RUNS: dict[str, list[str]] = {
    "sasrec-jpq": ["--model", "sasrec", "--codes", "{codes}"],
    "gsasrec-jpq": ["--model", "gsasrec", "--codes", "{codes}"],
    "bert4rec-jpq": ["--model", "bert4rec", "--codes", "{codes}"],
    "sasrec-full": ["--model", "sasrec", "--embedding", "full"],
}
METRICS = ("NDCG@10", "Recall@10", "MRR")


def codes_command(ds: Path, codes: Path) -> list[Any]:
    return ["assign", ds, "--strategy", "svd", "--dim", 32, "-b", 64, "--out", codes, "-q"]


def train_command(name: str, ds: Path, codes: Path, run: Path) -> list[Any]:
    extra = [a.format(codes=codes) for a in RUNS[name]]
    return ["train", ds, *extra, "--out", run, *SETTINGS]


def measure(invoke, ds: Path, root: Path, names: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train and evaluate each golden run under ``root``; {name: {metric: value, "steps": n}}.

    On one CPU thread: torch splits its sums by the thread count, and the machines the suite runs on differ
    (one or two cores), so with the default the same code gives other numbers on another machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(invoke, ds, root, names)
    finally:
        torch.set_num_threads(threads)


def _measure(invoke, ds: Path, root: Path, names: list[str] | None) -> dict[str, dict[str, float]]:
    codes = root / "codes.npy"
    if not codes.exists():
        res = invoke(codes_command(ds, codes))
        assert res.exit_code == 0, res.output
    out: dict[str, dict[str, float]] = {}
    for name in names or list(RUNS):
        run = root / name
        res = invoke(train_command(name, ds, codes, run))
        assert res.exit_code == 0, res.output
        steps = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        res = invoke(["evaluate", run, "--data", ds, "--json", "-", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        metrics = json.loads(res.stdout)["runs"][0]["metrics"]
        out[name] = {m: metrics[m] for m in METRICS} | {"steps": steps}
    return out


if __name__ == "__main__":  # record
    import tempfile

    sys.path.insert(0, str(HERE))
    from conftest import SAMPLE_CSV, invoke

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = root / "ds"
        assert invoke(["prepare", SAMPLE_CSV, "--out", ds, "-q"]).exit_code == 0
        numbers = measure(invoke, ds, root)
    GOLDEN.write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))
