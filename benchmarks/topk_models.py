"""Trained SASRec-JPQ models on synthetic catalogues for ``bench_topk.py``, cached between runs.

For a catalogue of N items: ``recjpq synth`` (users = N / 10 clamped to [2,000, 1M], interactions =
max(20 x users, 2 x N), seed 0: the log has sequential structure a model can learn), ``recjpq prepare``,
``recjpq assign --strategy svd`` (M=8, ksub=256) and ``recjpq train`` (SASRec, JPQ, d=128, max_len 50,
sampled-softmax CE over 256 negatives shared per sequence, validation on 1,024 users every 200 steps) to its
validation plateau: early stopping after 5 validations without a gain, or at ``--train-seconds`` (a cap,
default 3,600 s; ``train.json``'s ``stop_reason`` says which ended it: ``early_stop`` is the plateau). Every step
runs as its own ``python -m recjpq_cli`` child while the caller holds the machine's CPU lock (``cpu_lock``,
the file ``flock`` uses), so long runs happen one at a time. Each stage writes a sidecar with its parameters; a stage whose sidecar matches is not run
again, so a second benchmark run only loads the cached run folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK = "/tmp/recjpq-cpu.lock"
TRAIN_SET = {"d": 128, "max_len": 50, "val_users": 1024, "steps_per_epoch": 200, "patience": 5, "seed": 0,
             "loss": "ce", "negatives": 256, "negatives_per": "sequence", "dropout": 0.2}
TRAIN_CAP_S = 3600.0


def train_facts(run: Path) -> dict[str, Any] | None:
    """What trained a cached synthetic model (``train.json`` beside its run folder), or None."""
    facts = run.parent / "train.json"
    if not facts.exists():
        return None
    t = json.loads(facts.read_text())
    return {k: t.get(k) for k in ("stop_reason", "steps", "epochs", "elapsed_s", "best_NDCG@10")}


def shape(items: int) -> tuple[int, int]:
    """(users, interactions) of the synthetic log for a catalogue size (as benchmarks/scale.py)."""
    users = min(max(items // 10, 2000), 1_000_000)
    return users, max(20 * users, 2 * items)


@contextlib.contextmanager
def cpu_lock(enabled: bool = True):
    """Hold the machine's CPU lock (the file ``flock`` uses) for the block: long runs one at a time."""
    if not enabled:
        yield
        return
    with open(LOCK, "a") as f:
        print(f"waiting for {LOCK} ...", file=sys.stderr, flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cli(args: list[Any]) -> None:
    cmd = [sys.executable, "-m", "recjpq_cli", *map(str, args)]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, cwd=REPO).returncode
    if rc != 0:
        sys.exit(f"failed (exit {rc}): {' '.join(cmd)}")


def _cached(path: Path, want: dict[str, Any], make) -> None:
    """Run ``make()`` unless ``path`` exists with a sidecar equal to ``want``."""
    sidecar = path.parent / (path.name + ".bench.json")
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == want:
        return
    make()
    sidecar.write_text(json.dumps(want))


def synth_model(cache: Path, items: int, train_seconds: float) -> tuple[Path, Path]:
    """(run folder, dataset folder) of the trained model for ``items`` items, made when not cached.

    Call it holding ``cpu_lock()`` (the stages are long)."""
    home = cache / f"synth-{items}"
    home.mkdir(parents=True, exist_ok=True)
    users, inter = shape(items)
    log, ds, codes, run = home / "log.parquet", home / "ds", home / "svd.npy", home / "run"
    want: dict[str, Any] = {"users": users, "items": items, "interactions": inter, "seed": 0}
    _cached(log, want, lambda: _cli(["synth", "--users", users, "--items", items, "--interactions", inter,
                                     "--seed", 0, "--out", log, "--overwrite", "-q"]))
    _cached(ds, want, lambda: _cli(["prepare", log, "--out", ds, "--overwrite", "-q"]))
    want = {**want, "strategy": "svd", "M": 8, "ksub": 256}
    _cached(codes, want, lambda: _cli(["assign", ds, "--strategy", "svd", "-m", 8, "-b", 256, "--out", codes,
                                       "--overwrite", "-q"]))
    want = {**want, "train": TRAIN_SET, "seconds": train_seconds}
    sets = [x for k, v in TRAIN_SET.items() for x in ("--set", f"{k}={v}")]
    _cached(run, want, lambda: _cli(["train", ds, "--codes", codes, "--out", run, *sets, "--device", "cpu",
                                     "--time-limit", train_seconds, "--overwrite", "-q",
                                     "--json", home / "train.json"]))
    return run, ds


if __name__ == "__main__":  # python benchmarks/topk_models.py CACHE ITEMS [SECONDS]: make one model
    with cpu_lock():
        print(synth_model(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else TRAIN_CAP_S))
