"""Large-catalogue benchmark (issue 7): JPQ vs dense SASRec from 10k to 10M items, through the real CLI.

For each catalogue size a synthetic log is made by `recjpq synth` (cached in --work: users = items / 10
clamped to [2,000, 1M], interactions = max(20 x users, 2 x items), so 10M items have 20M interactions), then
`recjpq prepare` and `recjpq assign --strategy svd` (M=8, ksub=256). For each d and embedding (jpq, full):
`recjpq train` (SASRec, batch 128, max_len 200, --max-steps STEPS, val_users=256), `recjpq evaluate
--sample-users N --seed 0` and, for JPQ, `recjpq compress`. Every command is its own child process; peak memory
is its max RSS (`os.wait4`). Step time is train's `step_s` (mean seconds per optimiser step, validation
excluded); scoring per user is evaluate's per-run `seconds` / `users` (encoding + full-catalogue ranking, after
loading); the dense artefact is compress's `dense_equivalent.model_bytes` (fp32 dense model, same backbone).
A dense run that train refuses before allocating (exit 1, `Error: ... GiB ...`) is recorded as refused.

Goals (only for sizes that were run; exit 1 when one is missed or a command fails): JPQ at 10M items, d=512,
peak memory under 4 GB; JPQ step time at d=512 grows less than 1.5x from 10k to 10M items; JPQ scoring per
user grows at most 12x from 1M to 10M items. --path-10m instead times the whole path at 10M items (synth,
prepare, assign svd, train 200 steps at d=512, evaluate on 2,000 sampled users, compress) against one hour.

    python benchmarks/scale.py [--sizes 10000,100000,1000000,10000000] [--ds 128,512] [--steps 20]
        [--sample-users 2000] [--work /tmp/recjpq-scale] [--device cpu] [--json F] [--plot F.png]
    python benchmarks/scale.py --path-10m [--path-items 10000000] [--path-steps 200] [--sample-users 2000]
    python benchmarks/scale.py --objectives all [--sizes 10000,1000000,10000000] [--ds 128] [--steps 10]

--objectives (issue 18) trains every model's objective with RecJPQ codes instead of JPQ vs dense SASRec:
SASRec-BCE, SASRec-CE (sampled softmax, 256 negatives shared per sequence), gSASRec, gBERT4Rec (gBCE, 256
negatives shared per sequence) and GRU4Rec-CE (256 shared negatives), d=128, batch 128, max_len 200. Goals: peak memory under 4 GB
at every size, step time at 10M items within 1.5x of the same objective at 10k, gBERT4Rec not refused at 1M
items.
Not run in CI. Every run folder is deleted once measured (dense checkpoints hold Adam state).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GB = 1e9  # goals and tables in decimal GB
MEMORY_GOAL, STEP_GROWTH_GOAL, SCORING_GROWTH_GOAL, PATH_GOAL_S = 4e9, 1.5, 12.0, 3600.0
SHARED_256 = ["--set", "negatives=256", "--set", "negatives_per=sequence"]
OBJECTIVES: dict[str, list[str]] = {  # name -> train arguments (every other setting is the model's default)
    "sasrec-bce": ["--model", "sasrec"],
    "sasrec-ce": ["--model", "sasrec", "--set", "loss=ce", *SHARED_256],
    "gsasrec": ["--model", "gsasrec"],
    "gbert4rec": ["--model", "bert4rec", "--set", "loss=gbce", "--set", "negatives=256", "--set", "gbce_t=0.75",
                  "--set", "batch_size=128", *SHARED_256[2:]],
    "gru4rec-ce": ["--model", "gru4rec"],
}
REFUSAL = re.compile(r"needs about ([\d.]+) GiB")


@dataclass
class Child:
    """One CLI command run as its own process."""

    rc: int
    seconds: float
    peak_bytes: int
    facts: dict[str, Any] | None  # what --json wrote (None when it failed)
    error: str  # the `Error:` line or the stderr tail, when rc != 0


@dataclass
class Row:
    items: int
    d: int
    embedding: str
    objective: str = "sasrec-bce"
    status: str = "ok"  # ok, refused (train's memory estimate), failed
    message: str = ""
    estimate_gib: float | None = None
    train_peak_bytes: int | None = None
    train_s: float | None = None
    step_s: float | None = None
    eval_users: int | None = None
    eval_s: float | None = None
    eval_s_per_user: float | None = None
    eval_peak_bytes: int | None = None
    ndcg10: float | None = None
    artefact_bytes: int | None = None
    checkpoint_bytes: int | None = None
    item_table_ratio: float | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_cli(args: list[Any], facts: Path | None, show: bool = False) -> Child:
    """`python -m recjpq_cli ARGS [--json FACTS]`; stderr goes to the terminal when ``show`` (progress)."""
    cmd = [sys.executable, "-m", "recjpq_cli", *map(str, args)]
    if facts is not None:
        facts.unlink(missing_ok=True)
        cmd += ["--json", str(facts)]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=None if show else err)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - t0
        p.returncode = rc = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace").strip()
    lines = text.splitlines()
    error = next((ln for ln in reversed(lines) if ln.startswith("Error:")), lines[-1] if lines else f"exit {rc}")
    got = json.loads(facts.read_text()) if rc == 0 and facts is not None and facts.exists() else None
    return Child(rc, seconds, usage.ru_maxrss * 1024, got, "" if rc == 0 else error)


def record(row: Row, stage: str, c: Child) -> None:
    row.stages[stage] = {"rc": c.rc, "seconds": round(c.seconds, 3), "peak_bytes": c.peak_bytes}


def shape(items: int) -> tuple[int, int]:
    """(users, interactions) of the synthetic log for a catalogue size."""
    users = min(max(items // 10, 2000), 1_000_000)
    return users, max(20 * users, 2 * items)


def synth_log(work: Path, items: int) -> Path:
    """The cached synthetic log; made again when the sizes or the generator's source changed."""
    users, inter = shape(items)
    out = work / f"synth-{items}.parquet"
    stamp = hashlib.sha256((REPO / "recjpq_cli" / "stages" / "synth.py").read_bytes()).hexdigest()[:16]
    want = {"users": users, "items": items, "interactions": inter, "seed": 0, "synth": stamp}
    sidecar = out.with_suffix(".json")
    if out.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == want:
        return out
    print(f"making {out} ({users:,} users, {inter:,} interactions) ...", file=sys.stderr)
    c = run_cli(["synth", "--users", users, "--items", items, "--interactions", inter, "--seed", 0,
                 "--out", out, "--overwrite", "-q"], None)
    if c.rc != 0:
        sys.exit(f"synth failed: {c.error}")
    sidecar.write_text(json.dumps(want))
    return out


def catalogue(work: Path, items: int) -> tuple[Path, Path, dict[str, Any]]:
    """Synth (cached), prepare and assign svd: the dataset folder, the codes and the stages' facts."""
    log, home = synth_log(work, items), work / f"n{items}"
    home.mkdir(parents=True, exist_ok=True)
    ds, codes, info = home / "ds", home / "svd.npy", {"items": items}
    for stage, args in (("prepare", ["prepare", log, "--out", ds]),
                        ("assign", ["assign", ds, "--strategy", "svd", "--out", codes])):
        print(f"{items:,} items: {stage} ...", file=sys.stderr)
        c = run_cli([*args, "--overwrite", "-q"], home / f"{stage}.json")
        if c.rc != 0:
            sys.exit(f"{stage} failed at {items:,} items: {c.error}")
        info[stage] = {"seconds": round(c.seconds, 3), "peak_bytes": c.peak_bytes}
        if stage == "prepare":
            assert c.facts is not None
            info.update(users=c.facts["n_users"], interactions=c.facts["n_interactions"])
    return ds, codes, info


def measure(work: Path, ds: Path, codes: Path, row: Row, steps: int, users: int, device: str,
            dense_model_bytes: int | None) -> int | None:
    """Train, evaluate and (JPQ) compress one row; returns compress's dense-equivalent model bytes."""
    home = work / f"n{row.items}"
    run = home / f"run-{row.embedding}-d{row.d}-{row.objective}"
    emb = ["--codes", codes] if row.embedding == "jpq" else ["--embedding", "full"]
    print(f"{row.items:,} items, d={row.d}, {row.embedding}, {row.objective}: train ...", file=sys.stderr)
    c = run_cli(["train", ds, "--out", run, *emb, *OBJECTIVES[row.objective], "--max-steps", steps, "--set",
                 f"d={row.d}", "--set", "val_users=256", "--device", device, "--overwrite", "-q"], home / "train.json")
    record(row, "train", c)
    if c.rc != 0:
        refused = c.rc == 1 and c.error.startswith("Error:") and "GiB" in c.error
        row.status, row.message = ("refused" if refused else "failed"), c.error
        m = REFUSAL.search(c.error)
        row.estimate_gib = float(m.group(1)) if m else None
        row.artefact_bytes = dense_model_bytes if row.embedding == "full" else None
        return None
    assert c.facts is not None
    row.train_peak_bytes, row.train_s, row.step_s = c.peak_bytes, c.seconds, c.facts["step_s"]
    best = run / "best.pt"
    row.checkpoint_bytes = best.stat().st_size if best.exists() else None
    print(f"{row.items:,} items, d={row.d}, {row.embedding}: evaluate ...", file=sys.stderr)
    c = run_cli(["evaluate", run, "--data", ds, "--sample-users", users, "--seed", 0, "--device", device, "-q"],
                home / "evaluate.json")
    record(row, "evaluate", c)
    if c.rc != 0 or c.facts is None:
        row.status, row.message = "failed", c.error
        return None
    r = c.facts["runs"][0]
    row.eval_users, row.eval_s, row.eval_peak_bytes = r["users"], r["seconds"], c.peak_bytes
    row.eval_s_per_user, row.ndcg10 = r["seconds"] / r["users"], r["metrics"].get("NDCG@10")
    dense = dense_model_bytes
    if row.embedding == "jpq" and row.objective == "sasrec-bce":
        print(f"{row.items:,} items, d={row.d}, jpq: compress ...", file=sys.stderr)
        c = run_cli(["compress", run, "--data", ds, "--out", home / "jpq.safetensors", "--overwrite", "-q"],
                    home / "compress.json")
        record(row, "compress", c)
        if c.rc != 0 or c.facts is None:
            row.status, row.message = "failed", c.error
            return None
        row.artefact_bytes, row.item_table_ratio = c.facts["file_bytes"], c.facts["item_table_ratio"]
        dense = c.facts["dense_equivalent"]["model_bytes"]
        (home / "jpq.safetensors").unlink(missing_ok=True)
    else:
        row.artefact_bytes = dense_model_bytes
    shutil.rmtree(run, ignore_errors=True)  # dense checkpoints with Adam state are large
    return dense


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def fmt(x: float | None, scale: float, spec: str) -> str:
    return "-" if x is None else format(x / scale, spec)


def table(rows: list[Row]) -> None:
    print("| items | d | JPQ peak GB | dense peak GB | ratio | JPQ s/step | dense s/step | ratio | "
          "JPQ ms/user | dense ms/user | ratio | JPQ MB | dense MB | ratio | item-table ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for j in (r for r in rows if r.embedding == "jpq"):
        f = next((r for r in rows if r.embedding == "full" and (r.items, r.d) == (j.items, j.d)), Row(j.items, j.d, "full"))
        mem = {"refused": f"refused ({f.estimate_gib} GiB est.)", "failed": "failed"}.get(f.status,
                                                                                          fmt(f.train_peak_bytes, GB, ".2f"))
        print(f"| {j.items:,} | {j.d} | {fmt(j.train_peak_bytes, GB, '.2f') if j.status == 'ok' else j.status} | {mem} | "
              f"{ratio(j.train_peak_bytes, f.train_peak_bytes)} | {fmt(j.step_s, 1, '.3f')} | {fmt(f.step_s, 1, '.3f')} | "
              f"{ratio(j.step_s, f.step_s)} | {fmt(j.eval_s_per_user, 1e-3, '.2f')} | "
              f"{fmt(f.eval_s_per_user, 1e-3, '.2f')} | {ratio(j.eval_s_per_user, f.eval_s_per_user)} | "
              f"{fmt(j.artefact_bytes, 1e6, '.2f')} | {fmt(f.artefact_bytes, 1e6, '.2f')} | "
              f"{ratio(j.artefact_bytes, f.artefact_bytes)} | {fmt(j.item_table_ratio, 1, '.1f')} |")
    for r in rows:
        if r.status != "ok":
            print(f"{r.embedding} {r.items:,} items d={r.d} {r.status}: {r.message}")


def goals(rows: list[Row], sizes: list[int], ds: list[int]) -> list[tuple[str, bool]]:
    jpq = {(r.items, r.d): r for r in rows if r.embedding == "jpq" and r.status == "ok"}
    out: list[tuple[str, bool]] = []
    if 10_000_000 in sizes and 512 in ds:
        peak = jpq[(10_000_000, 512)].train_peak_bytes if (10_000_000, 512) in jpq else None
        out.append((f"JPQ trains at 10M items, d=512: peak {fmt(peak, GB, '.2f')} GB < 4 GB",
                    peak is not None and peak < MEMORY_GOAL))
    if {10_000, 10_000_000} <= set(sizes) and 512 in ds:
        a, b = jpq.get((10_000, 512)), jpq.get((10_000_000, 512))
        g = b.step_s / a.step_s if a and b and a.step_s and b.step_s else None
        out.append((f"JPQ step time (d=512) 10k -> 10M items grows {fmt(g, 1, '.2f')}x < {STEP_GROWTH_GOAL}x",
                    g is not None and g < STEP_GROWTH_GOAL))
    if {1_000_000, 10_000_000} <= set(sizes):
        for d in ds:
            a, b = jpq.get((1_000_000, d)), jpq.get((10_000_000, d))
            g = b.eval_s_per_user / a.eval_s_per_user if a and b and a.eval_s_per_user and b.eval_s_per_user else None
            out.append((f"JPQ scoring per user (d={d}) 1M -> 10M items grows {fmt(g, 1, '.2f')}x <= "
                        f"{SCORING_GROWTH_GOAL:g}x", g is not None and g <= SCORING_GROWTH_GOAL))
    return out


def objectives_table(rows: list[Row]) -> None:
    sizes = sorted({r.items for r in rows})
    print("| objective | " + " | ".join(f"{n:,} items: peak GB, s/step" for n in sizes) + " | 10M / 10k step |")
    print("| --- |" + " ---: |" * (len(sizes) + 1))
    for obj in dict.fromkeys(r.objective for r in rows):
        cells, by = [], {r.items: r for r in rows if r.objective == obj}
        for n in sizes:
            r = by.get(n)
            cells.append("-" if r is None else (f"{fmt(r.train_peak_bytes, GB, '.2f')}, {fmt(r.step_s, 1, '.3f')}"
                                                if r.status == "ok" else r.status))
        a, b = by.get(10_000), by.get(10_000_000)
        g = ratio(b.step_s, a.step_s) if a and b and a.status == b.status == "ok" else "-"
        print(f"| {obj} | " + " | ".join(cells) + f" | {g} |")
    for r in rows:
        if r.status != "ok":
            print(f"{r.objective} {r.items:,} items {r.status}: {r.message}")


def objective_goals(rows: list[Row], sizes: list[int]) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for obj in dict.fromkeys(r.objective for r in rows):
        by = {r.items: r for r in rows if r.objective == obj}
        peaks = [r.train_peak_bytes for r in by.values()]
        ok_all = all(r.status == "ok" for r in by.values())
        worst = max((p for p in peaks if p), default=None)
        out.append((f"{obj}: trains at every size with peak memory {fmt(worst, GB, '.2f')} GB < 4 GB",
                    ok_all and worst is not None and worst < MEMORY_GOAL))
        if {10_000, 10_000_000} <= set(sizes):
            a, b = by.get(10_000), by.get(10_000_000)
            g = b.step_s / a.step_s if a and b and a.step_s and b.step_s else None
            out.append((f"{obj}: step time 10k -> 10M items grows {fmt(g, 1, '.2f')}x <= {STEP_GROWTH_GOAL}x",
                        g is not None and g <= STEP_GROWTH_GOAL))
    if 1_000_000 in sizes:
        r = next((r for r in rows if r.objective == "gbert4rec" and r.items == 1_000_000), None)
        if r is not None:
            out.append((f"gbert4rec at 1M items is not refused ({r.status})", r.status == "ok"))
    return out


def run_objectives(a: argparse.Namespace) -> int:
    """--objectives: every objective with RecJPQ codes at each size."""
    names = list(OBJECTIVES) if a.objectives == "all" else a.objectives.split(",")
    sizes, d = [int(x) for x in a.sizes.split(",")], int(a.ds.split(",")[0])
    load0, rows = os.getloadavg(), []
    for n in sizes:
        data, codes, _ = catalogue(a.work, n)
        for obj in names:
            row = Row(n, d, "jpq", objective=obj)
            measure(a.work, data, codes, row, a.steps, a.sample_users, a.device, None)
            rows.append(row)
    load = " / ".join(f"{x:.1f}" for x in load0 + os.getloadavg())
    head = (f"RecJPQ (M=8, ksub=256 svd codes), d={d}, batch 128, max_len 200, {a.steps} steps; "
            f"{os.cpu_count()} CPUs; load average before / after: {load}")
    print(f"\n{head}\n")
    objectives_table(rows)
    met = objective_goals(rows, sizes)
    print()
    for name, ok in met:
        print(f"{'met   ' if ok else 'MISSED'} {name}")
    if a.json:
        a.json.write_text(json.dumps({"settings": head, "rows": [asdict(r) for r in rows],
                                      "goals": [{"goal": g, "met": ok} for g, ok in met]}, indent=2))
    if a.plot:
        plot_objectives(rows, a.plot, head)
    return 0 if all(ok for _, ok in met) else 1


def plot_objectives(rows: list[Row], path: Path, title: str) -> None:
    plt = _pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "train_peak_bytes", "train peak memory (GB)"), (axes[1], "step_s", "s per step")):
        for obj, marker in zip(dict.fromkeys(r.objective for r in rows), "osD^v", strict=False):
            pts = [(r.items, getattr(r, key) / (GB if key == "train_peak_bytes" else 1)) for r in rows
                   if r.objective == obj and r.status == "ok"]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker + "-", label=obj)
        if key == "train_peak_bytes":
            ax.axhline(MEMORY_GOAL / GB, color="grey", lw=0.8, ls=":", label="4 GB goal")
        ax.set(xscale="log", xlabel="catalogue size (items)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path, title)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None (said once) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'recjpq[plot]')", file=sys.stderr)
        return None
    return plt


def _save(fig: Any, path: Path, title: str) -> None:
    fig.suptitle(textwrap.fill(title, 140), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def plot(rows: list[Row], path: Path, title: str) -> None:
    plt = _pyplot()
    if plt is None:
        return
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "train_peak_bytes", "train peak memory (GB)"), (axes[1], "step_s", "s per step")):
        for emb, style, colour in (("jpq", "-", "tab:blue"), ("full", "--", "tab:orange")):
            for d, marker in zip(sorted({r.d for r in rows}), "osD^v", strict=False):
                pts = [(r.items, getattr(r, key) / (GB if key == "train_peak_bytes" else 1)) for r in rows
                       if r.embedding == emb and r.d == d and r.status == "ok"]
                name = "JPQ" if emb == "jpq" else "dense"
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker + style, color=colour, label=f"{name} d={d}")
                est = [(r.items, r.estimate_gib * 1024**3 / GB) for r in rows
                       if r.embedding == emb and r.d == d and r.status == "refused" and r.estimate_gib]
                if est and key == "train_peak_bytes":
                    ax.plot(*zip(*est, strict=True), "x", color=colour, ms=9,
                            label=f"{name} d={d}: refused (estimate)")
        if key == "train_peak_bytes":
            ax.axhline(MEMORY_GOAL / GB, color="grey", lw=0.8, ls=":", label="4 GB goal")
        ax.set(xscale="log", yscale="log", xlabel="catalogue size (items)", ylabel=label)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        lo, hi = ax.get_ylim()
        keep = "123456789" if hi / lo < 10 else "25"  # label every minor tick on a narrow axis
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _, k=keep: f"{v:.3g}" if f"{v:.1e}"[0] in k else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path, title)


def path_10m(a: argparse.Namespace) -> int:
    """The whole path at --path-items items, each stage's progress on stderr, against one hour."""
    n, home = a.path_items, a.work / f"path-{a.path_items}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    users, inter = shape(n)
    log, ds, codes, run = home / "synth.parquet", home / "ds", home / "svd.npy", home / "run"
    stages = [("synth", ["synth", "--users", users, "--items", n, "--interactions", inter, "--out", log]),
              ("prepare", ["prepare", log, "--out", ds]),
              ("assign svd", ["assign", ds, "--strategy", "svd", "--out", codes]),
              (f"train {a.path_steps} steps, d=512", ["train", ds, "--codes", codes, "--out", run, "--max-steps",
                                                      a.path_steps, "--set", "d=512", "--set", "val_users=256",
                                                      "--device", a.device]),
              (f"evaluate {a.sample_users:,} users", ["evaluate", run, "--data", ds, "--sample-users",
                                                      a.sample_users, "--seed", 0, "--device", a.device]),
              ("compress", ["compress", run, "--data", ds, "--out", home / "model.safetensors"])]
    load0, done, total = os.getloadavg(), [], 0.0
    for i, (name, args) in enumerate(stages):
        print(f"== {name} ({n:,} items, {users:,} users, {inter:,} interactions)", file=sys.stderr)
        c = run_cli(args, home / f"stage{i}.json", show=True)
        total += c.seconds
        done.append({"stage": name, "seconds": round(c.seconds, 2), "peak_bytes": c.peak_bytes, "rc": c.rc,
                     "facts": c.facts})
        print(f"{name}: {c.seconds:.1f} s, peak {c.peak_bytes / GB:.2f} GB, exit {c.rc}")
        if c.rc != 0:
            break
    ok = len(done) == len(stages) and all(s["rc"] == 0 for s in done) and total < PATH_GOAL_S
    load = " / ".join(f"{x:.1f}" for x in load0 + os.getloadavg())
    print(f"total {total:.1f} s ({total / 60:.1f} min); load average before / after: {load}")
    print(f"{'met   ' if ok else 'MISSED'} whole path at {n:,} items within one hour: {total:.0f} s < {PATH_GOAL_S:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({"items": n, "users": users, "interactions": inter, "stages": done,
                                      "total_s": total, "load": load, "met": ok}, indent=2))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000", help="catalogue sizes (items)")
    ap.add_argument("--ds", default="128,512", help="embedding sizes d")
    ap.add_argument("--steps", type=int, default=20, help="train --max-steps per run")
    ap.add_argument("--sample-users", type=int, default=2000, help="evaluate --sample-users")
    ap.add_argument("--work", type=Path, default=Path("/tmp/recjpq-scale"), help="cached logs, datasets, runs")
    ap.add_argument("--device", default="cpu", help="train/evaluate --device (peak memory is host RSS)")
    ap.add_argument("--json", type=Path, default=None, help="write every row (and the goals) as JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of peak memory and step time (needs matplotlib)")
    ap.add_argument("--path-10m", action="store_true", help="time the whole path at 10M items instead")
    ap.add_argument("--path-items", type=int, default=10_000_000, help="--path-10m catalogue (smaller to try it)")
    ap.add_argument("--path-steps", type=int, default=200, help="--path-10m train steps")
    ap.add_argument("--objectives", default=None,
                    help=f"'all' or some of {','.join(OBJECTIVES)}: every objective with RecJPQ codes instead")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.path_10m:
        return path_10m(a)
    if a.objectives:
        return run_objectives(a)
    sizes, ds = [int(x) for x in a.sizes.split(",")], [int(x) for x in a.ds.split(",")]
    load0, rows, datasets = os.getloadavg(), [], []
    for n in sizes:
        data, codes, info = catalogue(a.work, n)
        datasets.append(info)
        for d in ds:
            dense_bytes = None
            for emb in ("jpq", "full"):
                row = Row(n, d, emb)
                dense_bytes = measure(a.work, data, codes, row, a.steps, a.sample_users, a.device, dense_bytes) or dense_bytes
                rows.append(row)
    load = " / ".join(f"{x:.1f}" for x in load0 + os.getloadavg())
    head = (f"SASRec, batch 128, max_len 200, {a.steps} steps, M=8 ksub=256 svd codes, evaluate {a.sample_users:,} "
            f"sampled users; {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"load average (1, 5, 15 min) before / after: {load}")
    print(f"\n{head}\n")
    print("| items | users | interactions | prepare s | assign svd s |\n| ---: | ---: | ---: | ---: | ---: |")
    for i in datasets:
        print(f"| {i['items']:,} | {i['users']:,} | {i['interactions']:,} | {i['prepare']['seconds']:.1f} | "
              f"{i['assign']['seconds']:.1f} |")
    print()
    table(rows)
    met = goals(rows, sizes, ds)
    print()
    for name, ok in met:
        print(f"{'met   ' if ok else 'MISSED'} {name}")
    if not met:
        print("no goal applies to the sizes run (they need 10k, 1M and 10M items, d=512)")
    failed = [r for r in rows if r.status == "failed"]
    if a.json:
        a.json.write_text(json.dumps({"settings": head, "datasets": datasets, "rows": [asdict(r) for r in rows],
                                      "goals": [{"goal": g, "met": ok} for g, ok in met]}, indent=2))
    if a.plot:
        plot(rows, a.plot, head)
    return 1 if failed or not all(ok for _, ok in met) else 0


if __name__ == "__main__":
    sys.exit(main())
