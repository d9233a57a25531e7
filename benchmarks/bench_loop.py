"""CPU step time of the training loop now against an earlier commit (issue 20: "no slower"). Not run in CI.

The loop changes of issue 20 (one device-to-host read per progress update, pinned non-blocking copies, fused
Adam on CUDA, BERT4Rec's masked positions found on the host) are for GPUs; on the CPU they must cost nothing.
This checks out ``--before`` (default d9b94dd, the last commit before the loop changes: every step then read
its loss with ``.item()``) into a temporary worktree and trains the same short runs with both trees, in turn
(before, after, after, before, ...), each in its own process: the sample data (or ``--data``), random codes
(M=8, ksub 256), d=64, max_len 50, batch 128, ``--max-steps`` steps. The figure is train's own ``step_s`` (mean
seconds per optimiser step, validation excluded). Exits 1 when a model's median after / before ratio is above
``--tolerance`` (default 1.05).

    python benchmarks/bench_loop.py [--before REV] [--models sasrec,gsasrec,bert4rec] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--set", "d=64", "--set", "max_len=50", "--set", "batch_size=128", "--set", "val_users=64",
            "--set", "steps_per_epoch=100000", "--device", "cpu", "--overwrite", "-q"]


def cli(tree: Path, args: list, cwd: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, "-m", "recjpq_cli", *map(str, args)], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed in {tree}: {' '.join(map(str, args))}\n{res.stderr[-2000:]}")


def prepare(tree: Path, data: str, home: Path) -> None:
    """The dataset and random codes, made by ``tree`` itself (formats may differ between the commits)."""
    home.mkdir()
    cli(tree, ["prepare", data, "--out", home / "ds", "-q"], home)
    cli(tree, ["assign", home / "ds", "--strategy", "random", "-m", 8, "-b", 256, "--out", home / "codes.npy", "-q"],
        home)


def step_s(tree: Path, home: Path, model: str, steps: int) -> float:
    facts = home / "train.json"
    cli(tree, ["train", home / "ds", "--codes", home / "codes.npy", "--model", model, "--out", home / "run",
               "--max-steps", steps, *SETTINGS, "--json", facts], home)
    return float(json.loads(facts.read_text())["step_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="d9b94dd")
    ap.add_argument("--models", default="sasrec,gsasrec,bert4rec")
    ap.add_argument("--data", default=str(REPO / "sample_data" / "interactions.csv"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=1.05)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work, before = Path(tmp), Path(tmp) / "before"
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", "-q", before, a.before], check=True)
        try:
            trees = {"before": (before, work / "b"), "after": (REPO, work / "a")}
            for tree, home in trees.values():
                prepare(tree, a.data, home)
            rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
            print(f"CPU step time, {a.steps} steps, d=64, max_len 50, batch 128, M=8 ksub 256; before {a.before}, "
                  f"after {rev} (working tree); {a.rounds} rounds; load {os.getloadavg()[0]:.1f}")
            print(f"{'model':>10} {'before s/step':>14} {'after s/step':>13} {'after/before':>13}")
            ok = True
            for model in a.models.split(","):
                times: dict[str, list[float]] = {"before": [], "after": []}
                for r in range(a.rounds):
                    order = ("before", "after") if r % 2 == 0 else ("after", "before")
                    for side in order:
                        times[side].append(step_s(*trees[side], model, a.steps))
                b, f = statistics.median(times["before"]), statistics.median(times["after"])
                print(f"{model:>10} {b:>14.4f} {f:>13.4f} {f / b:>12.3f}x   (before {times['before']}, "
                      f"after {times['after']})")
                ok &= f / b <= a.tolerance
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", before], check=False)
    print(f"{'met   ' if ok else 'MISSED'} the loop is no slower on the CPU (after / before <= {a.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
