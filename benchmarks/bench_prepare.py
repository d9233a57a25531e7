"""Benchmark of `recjpq prepare` (and of `recjpq synth` at scale). Not run in CI.

    python benchmarks/bench_prepare.py [--data ../shared/data] [--work /tmp/recjpq-bench] [--repeats 3]

Each measurement runs the real command in a child process; wall time is the best of ``--repeats`` runs and
peak memory is the child's maximum resident set size (``ru_maxrss`` from ``os.wait4``), the largest of the
runs. Rows:

- ML-1M and Amazon Beauty (`sasrec` files under --data): the issue's counts must match; ML-1M under 5 s.
- 20M synthetic interactions (1M users, 1M items, made once by `recjpq synth` and cached in --work):
  at least 2M rows/s and at most 2 GB peak; the same log in time order (rows of all users interleaved, so
  prepare must sort) is shown for information (no goal); and a bare polars pipeline of similar steps (read csv, dense-rank ids,
  sort by user and time, group counts, write parquet) as the baseline the ratio is taken against.
- `recjpq synth` of 50M interactions over 10M items (2M users) to Parquet: peak memory at most 6 GB.

Prints a Markdown table; exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1024**3

BASELINE = """
import sys, polars as pl
src, dst = sys.argv[1], sys.argv[2]
df = (pl.scan_csv(src)
      .with_columns((pl.col("user_id").rank("dense") - 1).cast(pl.Int32).alias("user"),
                    pl.col("item_id").rank("dense").cast(pl.Int32).alias("item"))
      .sort(["user", "timestamp"], maintain_order=True)
      .select("user", "item", "timestamp")
      .collect())
counts = df.group_by("user").len()
df.write_parquet(dst)
print(df.height, counts.height)
"""


@dataclass
class Row:
    what: str
    rows: int
    seconds: float
    peak_bytes: int
    cpu: float  # user + system seconds of the child (less sensitive than wall time to other load)
    goal: str
    ok: bool | None  # None: no goal

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def run_child(cmd: list[str], cleanup: Path | None = None) -> tuple[float, int, float, str]:
    """One run of ``cmd`` with its own peak RSS (wait4 on exactly this child)."""
    if cleanup is not None and cleanup.exists():
        shutil.rmtree(cleanup) if cleanup.is_dir() else cleanup.unlink()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        out = p.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, out.decode()


def best_of(cmd: list[str], repeats: int, cleanup: Path | None = None) -> tuple[float, int, float, str]:
    """Best wall time, largest peak RSS, least CPU time, stdout of the last run."""
    runs = [run_child(cmd, cleanup) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs), runs[-1][3]


def recjpq(*args: object) -> list[str]:
    return [sys.executable, "-m", "recjpq_cli", *map(str, args)]


def synth_log(work: Path, name: str, users: int, items: int, interactions: int) -> Path:
    """A cached synthetic log; made again when the generator's source changed."""
    out = work / name
    stamp = hashlib.sha256((REPO / "recjpq_cli" / "stages" / "synth.py").read_bytes()).hexdigest()[:16]
    sidecar = out.with_suffix(".json")
    want = {"users": users, "items": items, "interactions": interactions, "seed": 0, "synth": stamp}
    if out.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == want:
        return out
    print(f"making {out} ...", file=sys.stderr)
    subprocess.run(recjpq("synth", "--users", users, "--items", items, "--interactions", interactions,
                          "--seed", 0, "--out", out, "--overwrite", "-q"), check=True, cwd=REPO)
    sidecar.write_text(json.dumps(want))
    return out


def time_ordered(src: Path) -> Path:
    """The same log with all users' rows interleaved in time order (prepare has to sort it)."""
    out = src.with_name(src.stem + "-by-time.csv")
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        import polars as pl

        pl.scan_csv(src).sort("timestamp", maintain_order=True).sink_csv(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recjpq-bench"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-big-synth", action="store_true", help="skip the 50M-interaction synth row")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    ds = args.work / "ds"
    rows: list[Row] = []
    failures: list[str] = []

    for name, path, counts, limit in (
        ("ML-1M prepare", args.data / "ml-1m" / "ml-1m.txt", (6040, 3416, 999611), 5.0),
        ("Beauty prepare", args.data / "beauty" / "beauty.txt", (40226, 54542, 353962), None),
    ):
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        sec, peak, cpu, out = best_of(recjpq("prepare", path, "--out", ds, "-q", "--json", "-"), args.repeats, ds)
        facts = json.loads(out)
        got = (facts["n_users"], facts["n_items"], facts["n_interactions"])
        if got != counts:
            failures.append(f"{name}: users/items/interactions {got}, expected {counts}")
        ok = None if limit is None else sec < limit
        rows.append(Row(name, facts["n_interactions"], sec, peak, cpu, f"< {limit:g} s" if limit else "counts", ok))

    log = synth_log(args.work, "synth-20m.csv", 1_000_000, 1_000_000, 20_000_000)
    base_sec, base_peak, base_cpu, _ = best_of([sys.executable, "-c", BASELINE, str(log), str(args.work / "baseline.parquet")],
                                     args.repeats)
    rows.append(Row("20M bare polars baseline", 20_000_000, base_sec, base_peak, base_cpu, "reference", None))
    for name, src, goal in (("20M synthetic prepare", log, True),
                            ("20M synthetic, time order (info)", time_ordered(log), False)):
        sec, peak, cpu, out = best_of(recjpq("prepare", src, "--out", ds, "-q", "--json", "-"), args.repeats, ds)
        n = json.loads(out)["n_interactions"]
        ok = n / sec >= 2e6 and peak <= 2 * GB
        rows.append(Row(name, n, sec, peak, cpu, ">= 2M rows/s, <= 2 GB" if goal else "", ok if goal else None))

    if not args.skip_big_synth:
        big = args.work / "synth-50m.parquet"
        sec, peak, cpu, _ = run_child(recjpq("synth", "--users", 2_000_000, "--items", 10_000_000, "--interactions",
                                        50_000_000, "--out", big, "--overwrite", "-q"))
        rows.append(Row("synth 50M rows, 10M items", 50_000_000, sec, peak, cpu, "<= 6 GB", peak <= 6 * GB))
        big.unlink(missing_ok=True)
    shutil.rmtree(ds, ignore_errors=True)
    (args.work / "baseline.parquet").unlink(missing_ok=True)

    load = " / ".join(f"{x:.1f}" for x in load_start + os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs; best of {args.repeats} runs (wall, CPU), largest peak RSS; "
          f"load average (1 min, 5 min, 15 min) before / after: {load}\n")
    print("| what | rows | wall s | CPU s | rows/s | vs baseline | peak RSS | goal | met |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        ratio = f"{base_sec / r.seconds:.2f}x" if r.what.startswith("20M") and "baseline" not in r.what else ""
        met = "" if r.ok is None else ("yes" if r.ok else "**NO**")
        print(f"| {r.what} | {r.rows:,} | {r.seconds:.2f} | {r.cpu:.2f} | {r.rate / 1e6:.2f}M | {ratio} | "
              f"{r.peak_bytes / GB:.2f} GB | {r.goal} | {met} |")
    failures += [f"{r.what}: goal {r.goal} missed" for r in rows if r.ok is False]
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
