"""Training step time and peak memory: SASRec with RecJPQ vs dense item embeddings (not run in CI).

Each (embedding, catalogue size) runs in its own process on the project's own training step
(`LossModule` + Adam) with batch 128, length 200, d=128 on the CPU; step time is the median of the timed
steps after warm-up; peak memory is the child's max RSS. Goals (issue 4): JPQ no slower than dense at
10k items, at least 2x faster at 1M items. Exits 1 when a goal is missed.

    python benchmarks/bench_train.py [--sizes 10000,100000,1000000] [--d 128] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time
import torch
from recjpq_cli.config import build_config
from recjpq_cli.models.registry import build_model, model_args_from_config
from recjpq_cli.negatives import uniform_negatives
from recjpq_cli.stages.train import LossModule
emb, n, d, steps, B, L = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 128, 200
cfg = build_config("sasrec", overrides={"d": d, "dropout": 0.2, "batch_size": B, "max_len": L}, flags={"embedding": emb})
torch.manual_seed(0)
codes = None
if emb == "jpq":
    codes = torch.randint(0, 256, (n + 1, 8), dtype=torch.uint8); codes[0] = 0
model = build_model(model_args_from_config(cfg, n, (n + 1, 8) if codes is not None else None, 256), codes)
step = LossModule(model, cfg, torch.device("cpu"))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(1)
times = []
for i in range(steps + 2):
    inp = torch.randint(1, n + 1, (B, L), generator=g)
    tgt = torch.randint(1, n + 1, (B, L), generator=g)
    negs = uniform_negatives(0, i, torch.arange(B), L, 1, n, True)
    t = time.perf_counter()
    loss = step(inp=inp, tgt=tgt, negs=negs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"step_s": statistics.median(times[2:]), "peak_bytes": peak}))
"""


def measure(emb: str, n: int, d: int, steps: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, emb, str(n), str(d), str(steps)], capture_output=True,
                         text=True, env=os.environ.copy())
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    rows, ok = [], True
    print(f"SASRec training step, batch 128, length 200, d={a.d}, CPU threads={os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'items':>10} {'dense s/step':>13} {'JPQ s/step':>11} {'speed-up':>9} {'dense peak GB':>14} {'JPQ peak GB':>12}")
    for n in sizes:
        full, jpq = measure("full", n, a.d, a.steps), measure("jpq", n, a.d, a.steps)
        if "error" in full or "error" in jpq:
            print(f"{n:>10} error: {full.get('error') or jpq.get('error')}")
            ok = False
            continue
        ratio = full["step_s"] / jpq["step_s"]
        rows.append({"items": n, "dense_step_s": full["step_s"], "jpq_step_s": jpq["step_s"], "speedup": ratio,
                     "dense_peak_gb": full["peak_bytes"] / 1e9, "jpq_peak_gb": jpq["peak_bytes"] / 1e9})
        print(f"{n:>10} {full['step_s']:>13.3f} {jpq['step_s']:>11.3f} {ratio:>8.2f}x "
              f"{full['peak_bytes'] / 1e9:>14.2f} {jpq['peak_bytes'] / 1e9:>12.2f}")
    goals = []
    by = {r["items"]: r for r in rows}
    if 10_000 in by:
        goals.append(("JPQ no slower than dense at 10k items", by[10_000]["speedup"] >= 0.95))
    if 1_000_000 in by:
        goals.append(("JPQ at least 2x faster than dense at 1M items", by[1_000_000]["speedup"] >= 2.0))
    for name, met in goals:
        print(f"{'met ' if met else 'MISSED'} {name}")
        ok &= met
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
