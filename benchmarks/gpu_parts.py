"""The parts of the GPU check (issue 20), each run by benchmarks/gpu_check.sh as its own time-boxed process.

    python benchmarks/gpu_parts.py part NAME OUT_DIR [--smoke]   # writes OUT_DIR/parts/NAME.json
    python benchmarks/gpu_parts.py report OUT_DIR [--smoke]      # OUT_DIR/report.json and report.md
    python benchmarks/gpu_parts.py peak PEAK_FILE -- CLI ARGS    # `recjpq CLI ARGS`, then its peak GPU bytes

Parts: `pytest` (`pytest -m cuda`), `ml1m` (gSASRec, svd-kmeans codes, d=512, about 150 s of training, then
evaluate: test NDCG@10, steps/s, peak GPU memory; 140 s so that the script stays under 5 minutes), `scale` (training step time and peak GPU memory, RecJPQ vs
dense SASRec d=512, B=128, L=200 at 10k, 1M and 10M synthetic items, the step of benchmarks/bench_train.py;
a dense run that train's memory estimate refuses is recorded as refused, not run), `ranking` (whole-catalogue
top-10 over 1M JPQ items: the torch path on the GPU vs the compiled PQTopK kernel on the CPU, users/s).
`--smoke` runs every part on the CPU with tiny sizes (CI runs it: tests/test_gpu_check.py). A part that
fails writes status "failed" and its error; the shell script writes "failed" for a part that timed out.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import platform
import runpy
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
PARTS = ("pytest", "ml1m", "scale", "ranking")
ML1M = REPO / ".gpu" / "ml-1m.txt.gz"  # benchmarks/gpu_prepare.sh gzips it (the carry limit)
SAMPLE = REPO / "sample_data" / "interactions.csv"
GB = 1e9
# Goals for the H200 run (issue 20); each is recorded as met or missed, never hidden.
NDCG_GOAL, STEPS_GOAL, MEMORY_GOAL, GROWTH_GOAL = 0.16, 20.0, 10e9, 1.2
# Real sizes, and the tiny ones of --smoke (CPU, under a minute in all).
SIZES = {"real": {"train_s": 140, "d": 512, "scale_items": (10_000, 1_000_000, 10_000_000), "B": 128, "L": 200,
                  "steps": 10, "warmup": 3, "rank_items": 1_000_000, "rank_users": 1024, "ksub": 256},
         "smoke": {"train_s": 0, "d": 16, "scale_items": (1_000, 5_000), "B": 8, "L": 20, "steps": 2, "warmup": 1,
                   "rank_items": 5_000, "rank_users": 64, "ksub": 16}}


def device(smoke: bool) -> str:
    return "cpu" if smoke else "cuda"


def cli(args: list[Any], facts: Path, peak: Path | None = None, log: Path | None = None) -> dict[str, Any]:
    """`recjpq ARGS --json FACTS` in a child; its facts, or RuntimeError with its `Error:` line."""
    head = [sys.executable, __file__, "peak", str(peak), "--"] if peak else [sys.executable, "-m", "recjpq_cli"]
    facts.unlink(missing_ok=True)
    res = subprocess.run([*head, *map(str, args), "--json", str(facts), "-q"], cwd=REPO, capture_output=True,
                         text=True)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ recjpq {' '.join(map(str, args))}\n{res.stderr}")
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        err = next((ln for ln in reversed(lines) if ln.startswith("Error:")), lines[-1] if lines else "")
        raise RuntimeError(f"recjpq {args[0]} exit {res.returncode}: {err}")
    return json.loads(facts.read_text())


def peak_main(peak_file: str, args: list[str]) -> None:
    """Run the CLI in this process; at exit write torch.cuda.max_memory_allocated (0 without CUDA)."""
    def write() -> None:
        import torch

        used = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
        Path(peak_file).write_text(str(used))

    atexit.register(write)
    sys.argv = ["recjpq", *args]
    runpy.run_module("recjpq_cli", run_name="__main__")


def part_pytest(out: Path, smoke: bool) -> dict[str, Any]:
    """`pytest -m cuda`: counts from its JUnit XML. On the CPU (smoke) every test skips; on a GPU at least one
    must pass (all skipped means CUDA was not usable), and the skipped ones are listed with their reasons."""
    xml = out / "logs" / "pytest.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q",
                          f"--junitxml={xml}", "tests"], cwd=REPO, capture_output=True, text=True)
    (out / "logs" / "pytest.log").write_text(res.stdout + res.stderr)
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or
              c.find("error") is not None]
    skipped = {c.get("name"): (c.find("skipped").get("message") or "") for c in suite.iter("testcase")
               if c.find("skipped") is not None}
    ok = res.returncode == 0 and n["tests"] > 0 and (smoke or n["passed"] > 0)
    why = "" if ok else (f"pytest exit {res.returncode}; failed: {failed}" if failed else
                         f"pytest exit {res.returncode}, {n['skipped']} of {n['tests']} cuda tests skipped")
    return {"status": "ok" if ok else "failed", "error": why, **n, "failed_tests": failed, "skipped_tests": skipped}


def part_ml1m(out: Path, smoke: bool) -> dict[str, Any]:
    """ML-1M gSASRec-JPQ (svd-kmeans codes) at d=512: train for a fixed time, then evaluate on the test split."""
    s, work, log = SIZES["smoke" if smoke else "real"], out / "work" / "ml1m", out / "logs" / "ml1m.log"
    work.mkdir(parents=True, exist_ok=True)
    fell_back = smoke or not ML1M.exists()
    raw = SAMPLE if fell_back else work / "ml-1m.txt"
    if not fell_back:
        with gzip.open(ML1M, "rb") as src, raw.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    ds, codes, run, peak = work / "data", work / "codes.npy", work / "run", work / "peak"
    prep = cli(["prepare", raw, "--out", ds, "--overwrite"], work / "prepare.json", log=log)
    cli(["assign", ds, "--strategy", "svd-kmeans", "--dim", s["d"], "--centroids", s["ksub"], "--out", codes,
         "--overwrite"], work / "assign.json", log=log)
    budget = ["--max-steps", 3] if smoke else ["--time-limit", s["train_s"]]
    tiny = [f"max_len={s['L']}", f"batch_size={s['B']}", "negatives=16", "val_users=64"] if smoke else []
    tiny = [x for kv in tiny for x in ("--set", kv)]
    t = cli(["train", ds, "--codes", codes, "--model", "gsasrec", "--out", run, "--overwrite", *budget,
             "--set", f"d={s['d']}", "--set", "negatives_per=sequence", *tiny, "--device", device(smoke)],
            work / "train.json", peak=peak, log=log)
    train_peak = int(peak.read_text())
    e = cli(["evaluate", run, "--data", ds, "--device", device(smoke)], work / "evaluate.json", peak=peak, log=log)
    ndcg = e["runs"][0]["metrics"]["NDCG@10"]
    data = "sample_data/interactions.csv" if fell_back else ".gpu/ml-1m.txt.gz"
    return {"status": "ok", "dataset": data, "fell_back_to_sample_data": fell_back,
            "warning": ("NOT ML-1M: .gpu/ml-1m.txt.gz was missing, so this ran on sample_data (run "
                        "benchmarks/gpu_prepare.sh and carry .gpu)") if fell_back and not smoke else "",
            "users": prep["n_users"], "items": prep["n_items"], "d": s["d"], "steps": t["steps"],
            "train_s": t["elapsed_s"], "stop_reason": t["stop_reason"], "step_s": t["step_s"],
            "steps_per_s": 1 / t["step_s"] if t["step_s"] else None, "test_NDCG@10": ndcg,
            "best_val_NDCG@10": t["best_NDCG@10"], "train_peak_gpu_bytes": train_peak,
            "evaluate_peak_gpu_bytes": int(peak.read_text()), "evaluate_s": e["runs"][0].get("seconds")}


def step_time(emb: str, n: int, s: dict[str, Any], dev: str) -> dict[str, Any]:
    """Median step time and peak GPU bytes of SASRec training steps (LossModule + Adam) on random batches;
    a dense run that train's estimate refuses on this device is recorded as refused, not run."""
    import torch

    from recjpq_cli.config import build_config
    from recjpq_cli.memory import GIB, available_bytes, estimate
    from recjpq_cli.models.registry import build_model, model_args_from_config
    from recjpq_cli.negatives import uniform_negatives
    from recjpq_cli.stages.train import LossModule

    B, L, m, ksub = s["B"], s["L"], 8, 256
    cfg = build_config("sasrec", overrides={"d": s["d"], "batch_size": B, "max_len": L}, flags={"embedding": emb})
    est = estimate(cfg, n, 2 * n, m if emb == "jpq" else None, ksub if emb == "jpq" else None)
    row: dict[str, Any] = {"embedding": emb, "items": n, "estimate_gib": round(est.total / GIB, 2)}
    if est.total > available_bytes(dev):
        return {**row, "status": "refused", "error": f"estimate {est.describe()} > free memory"}
    torch.manual_seed(0)
    codes = torch.randint(0, ksub, (n + 1, m), dtype=torch.uint8) if emb == "jpq" else None
    model = build_model(model_args_from_config(cfg, n, (n + 1, m) if codes is not None else None, ksub), codes)
    model = model.to(dev)
    step = LossModule(model, cfg, torch.device(dev))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator(device=dev).manual_seed(1)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(s["steps"] + s["warmup"]):
        inp, tgt = (torch.randint(1, n + 1, (B, L), generator=g, device=dev) for _ in range(2))
        negs = uniform_negatives(0, i, torch.arange(B, device=dev), L, 1, n, True)
        t = time.perf_counter()
        loss = step(inp=inp, tgt=tgt, negs=negs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if dev.startswith("cuda") else None
    del model, step, opt
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    med = statistics.median(times[s["warmup"]:])
    return {**row, "status": "ok", "step_s": med, "steps_per_s": 1 / med, "peak_gpu_bytes": peak}


def part_scale(out: Path, smoke: bool) -> dict[str, Any]:
    s = SIZES["smoke" if smoke else "real"]
    rows = []
    for n in s["scale_items"]:
        for emb in ("jpq", "full"):
            try:
                rows.append(step_time(emb, n, s, device(smoke)))
            except Exception as e:  # noqa: BLE001 - one failed row (e.g. out of memory) must not hide the others
                rows.append({"embedding": emb, "items": n, "status": "failed", "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), file=sys.stderr)
    failed = [r for r in rows if r["status"] == "failed" and r["embedding"] == "jpq"]
    return {"status": "failed" if failed else "ok", "error": "; ".join(r["error"] for r in failed),
            "d": s["d"], "batch": s["B"], "max_len": s["L"], "rows": rows}


def part_ranking(out: Path, smoke: bool) -> dict[str, Any]:
    """Top-10 over the whole catalogue: ranking.topk's torch path on the device vs PQTopK on the CPU."""
    import torch

    from recjpq_cli import ranking
    from recjpq_cli.jpq import pqtopk
    from recjpq_cli.jpq.embedding import JPQEmbedding

    s, dev = SIZES["smoke" if smoke else "real"], device(smoke)
    n, users, d = s["rank_items"], s["rank_users"], s["d"]
    torch.manual_seed(0)
    codes = torch.randint(0, 256, (n + 1, 8), dtype=torch.uint8)
    items = JPQEmbedding(codes=codes, ksub=256, d=d).eval()
    h = torch.randn(users, d)
    if not pqtopk.available():
        raise RuntimeError("numba is missing: no compiled PQTopK kernel to compare with")

    def timed(emb: JPQEmbedding, x: torch.Tensor, torch_path: bool) -> tuple[float, torch.Tensor]:
        with mock.patch.object(pqtopk, "available", lambda: False) if torch_path else mock.MagicMock():
            ranking.topk(emb, x[:8], 10)  # warm-up (compilation, CUDA context)
            if x.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            _, ids = ranking.topk(emb, x, 10)
            if x.is_cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t, ids.cpu()

    cpu_s, cpu_ids = timed(items, h, torch_path=False)
    dev_s, dev_ids = timed(items.to(dev), h.to(dev), torch_path=True)
    agree = float((cpu_ids == dev_ids).float().mean())
    return {"status": "ok" if agree > 0.99 else "failed",
            "error": "" if agree > 0.99 else f"the two paths' top-10 ids agree on only {agree:.3f}",
            "items": n, "users": users, "d": d, "device_users_per_s": users / dev_s,
            "cpu_pqtopk_users_per_s": users / cpu_s, "speedup": cpu_s / dev_s, "cpu_threads": torch.get_num_threads(),
            "top10_agreement": agree}


def run_part(name: str, out: Path, smoke: bool) -> int:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        got = globals()[f"part_{name}"](out, smoke)
    except Exception as e:  # noqa: BLE001 - a part's failure is reported, the others still run
        traceback.print_exc()
        got = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    got = {"name": name, **got, "seconds": round(time.perf_counter() - t0, 2)}
    (out / "parts" / f"{name}.json").write_text(json.dumps(got, indent=2))
    return 0 if got["status"] == "ok" else 1


def goals(parts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ml, sc = parts.get("ml1m", {}), parts.get("scale", {})
    ndcg = ml.get("test_NDCG@10") if ml.get("status") == "ok" and not ml.get("fell_back_to_sample_data") else None
    rows = {(r["embedding"], r["items"]): r for r in sc.get("rows", []) if r.get("status") == "ok"}
    big, small = rows.get(("jpq", 10_000_000)), rows.get(("jpq", 10_000))
    growth = big["step_s"] / small["step_s"] if big and small else None
    return [
        {"goal": f"ML-1M gSASRec-JPQ d=512 test NDCG@10 >= {NDCG_GOAL}", "value": ndcg,
         "met": ndcg is not None and ndcg >= NDCG_GOAL},
        {"goal": f"RecJPQ SASRec d=512 at 10M items >= {STEPS_GOAL:g} steps/s", "value": big and big["steps_per_s"],
         "met": bool(big) and big["steps_per_s"] >= STEPS_GOAL},
        {"goal": f"RecJPQ SASRec d=512 at 10M items < {MEMORY_GOAL / GB:g} GB GPU memory",
         "value": big and big["peak_gpu_bytes"], "met": bool(big) and (big["peak_gpu_bytes"] or 1e30) < MEMORY_GOAL},
        {"goal": f"RecJPQ step time at 10M items within {GROWTH_GOAL}x of 10k", "value": growth,
         "met": growth is not None and growth <= GROWTH_GOAL},
    ]


def device_line() -> tuple[str, str]:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return name, torch.__version__


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def markdown(rep: dict[str, Any]) -> str:
    lines = [f"# GPU check ({rep['mode']})", "", f"device: {rep['device']}; torch {rep['torch']}; "
             f"python {rep['python']}; {rep['started']}", ""]
    ml = next((p for p in rep["parts"] if p["name"] == "ml1m"), {})
    if ml.get("warning"):
        lines += [f"**WARNING: {ml['warning']}**", ""]
    lines += ["| part | status | seconds | error |", "| --- | --- | ---: | --- |"]
    lines += [f"| {p['name']} | {p['status']} | {fmt(p.get('seconds'))} | {p.get('error') or ''} |"
              for p in rep["parts"]]
    for p in rep["parts"]:
        figs = {k: v for k, v in p.items() if k not in ("name", "status", "seconds", "error", "rows")}
        lines += ["", f"## {p['name']}", ""] + [f"- {k}: {fmt(v)}" for k, v in figs.items()]
        if p.get("rows"):
            lines += ["", "| embedding | items | status | ms/step | steps/s | peak GPU GB | estimate GiB |",
                      "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {r['embedding']} | {r['items']:,} | {r['status']} | "
                      f"{fmt(r['step_s'] * 1e3) if r.get('step_s') else '-'} | {fmt(r.get('steps_per_s'))} | "
                      f"{fmt(r['peak_gpu_bytes'] / GB) if r.get('peak_gpu_bytes') else '-'} | "
                      f"{fmt(r.get('estimate_gib'))} |" for r in p["rows"]]
    lines += ["", "## goals", ""]
    lines += [f"- {'n/a (smoke sizes)' if g['met'] is None else 'met' if g['met'] else 'MISSED'}: {g['goal']} "
              f"(measured {fmt(g['value'])})" for g in rep["goals"]]
    return "\n".join(lines) + "\n"


def report(out: Path, smoke: bool) -> int:
    """Gather the parts' JSON (a missing one is a part that timed out or crashed) into both reports."""
    parts = []
    for name in PARTS:
        f = out / "parts" / f"{name}.json"
        parts.append(json.loads(f.read_text()) if f.exists() else
                     {"name": name, "status": "failed", "error": "no result (timed out or killed)", "seconds": None})
    by = {p["name"]: p for p in parts}
    gs = goals(by)
    if smoke:
        gs = [{**g, "met": None} for g in gs]
    name, version = device_line()
    rep = {"device": name, "torch": version, "python": platform.python_version(), "mode": "smoke" if smoke else "real",
           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "parts": parts, "goals": gs}
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    (out / "report.md").write_text(markdown(rep))
    print(markdown(rep))
    return 0 if all(p["status"] == "ok" for p in parts) else 1


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "peak":
        rest = sys.argv[3:]
        peak_main(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("part", "report"))
    ap.add_argument("args", nargs="+", help="part: NAME OUT_DIR; report: OUT_DIR")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    a = ap.parse_args()
    if a.what == "part":
        name, out = a.args[0], Path(a.args[1])
        if name not in PARTS:
            ap.error(f"unknown part {name}; one of {', '.join(PARTS)}")
        return run_part(name, out, a.smoke)
    return report(Path(a.args[0]), a.smoke)


if __name__ == "__main__":
    sys.exit(main())
