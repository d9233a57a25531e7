"""The CPU effect of `compile: true` (torch.compile of the training step), measured (not run in CI).

Two copies of the same model (same seed) train side by side in one process on the same random batches, one
eager and one through `torch.compile`, steps alternating so that machine noise falls on both alike: median
step time after warm-up (compilation excluded, and reported apart), and the largest loss difference (the
same maths: within 1e-3 relative). Default: SASRec-JPQ and gSASRec-JPQ (256 negatives shared per sequence),
d=128, batch 128, length 200, 3,416 items (ML-1M's catalogue), M=8, ksub=1,024. Exits 1 when the compiled
step's losses differ or a step fails; prints which is faster (the default stays off unless compile wins).

    python benchmarks/bench_compile.py [--models sasrec,gsasrec] [--steps 20] [--items 3416] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from recjpq_cli.config import build_config
from recjpq_cli.models.objective import LossModule
from recjpq_cli.models.registry import build_model, model_args_from_config
from recjpq_cli.negatives import uniform_negatives


def _pair(model: str, n: int, d: int, ksub: int):
    over = {"d": d, "dropout": 0.0, "batch_size": 128, "max_len": 200}
    if model == "gsasrec":
        over["negatives_per"] = "sequence"
    cfg = build_config(model, overrides=over, flags={"embedding": "jpq"})
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, ksub, (n + 1, 8), generator=g, dtype=torch.int32)
    codes[0] = 0
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_model(model_args_from_config(cfg, n, (n + 1, 8), ksub), codes)
        out.append((m, LossModule(m, cfg, torch.device("cpu")), torch.optim.Adam(m.parameters(), lr=1e-3)))
    return cfg, out


def _step(step, opt, batch) -> tuple[float, float]:
    t = time.perf_counter()
    loss = step(**batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t, float(loss.detach())


def measure(model: str, n: int, d: int, ksub: int, steps: int) -> dict:
    cfg, ((_, eager, opt_e), (_, step_c, opt_c)) = _pair(model, n, d, ksub)
    compiled = torch.compile(step_c)
    g = torch.Generator().manual_seed(1)
    te, tc, diff, first = [], [], 0.0, None
    for i in range(steps + 3):
        inp = torch.randint(1, n + 1, (128, 200), generator=g)
        batch = {"inp": inp, "tgt": torch.randint(1, n + 1, (128, 200), generator=g),
                 "negs": uniform_negatives(0, i, torch.arange(128), 200, cfg.negatives, n,
                                           per_position=cfg.negatives_per == "position")}
        a, la = _step(eager, opt_e, batch)
        b, lb = _step(compiled, opt_c, batch)
        if first is None:
            first = b  # compilation happens on the first call
        te.append(a)
        tc.append(b)
        diff = max(diff, abs(la - lb) / max(1e-9, abs(la)))
    e, c = statistics.median(te[3:]), statistics.median(tc[3:])
    return {"model": model, "items": n, "d": d, "ksub": ksub, "eager_step_s": e, "compiled_step_s": c,
            "speedup": e / c, "compile_s": first, "max_rel_loss_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sasrec,gsasrec")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--items", type=int, default=3416)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--ksub", type=int, default=1024)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    rows, ok = [], True
    for model in a.models.split(","):
        r = measure(model, a.items, a.d, a.ksub, a.steps)
        rows.append(r)
        same = r["max_rel_loss_diff"] <= 1e-3
        ok &= same
        print(f"{model:>8}: eager {r['eager_step_s']:.3f} s/step, compiled {r['compiled_step_s']:.3f} s/step "
              f"({r['speedup']:.2f}x; compilation {r['compile_s']:.0f} s), max relative loss difference "
              f"{r['max_rel_loss_diff']:.1e}{'' if same else ' (DIFFERS)'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
