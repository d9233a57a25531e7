"""Exact top-k latency: the pruned search (``retrieval.topk``, jpq/prune.py) against PQTopK and faiss IndexPQ.

Queries come from trained models, not random vectors (pruning depends on real score distributions): for
each ``--items`` size a SASRec-JPQ (d=128, M=8, ksub=256, svd codes) trained to its validation plateau on a
``recjpq synth`` catalogue (``benchmarks/topk_models.py``: made once, cached in ``--cache``; each row's
``trained`` says how it stopped), plus every ``--model FILE`` (a run folder
or a model file) with its dataset ``--data DIR``. The queries are ``--users`` sampled users, each encoded
from their whole known sequence with their seen items excluded, as ``recommend`` does. Timed on the same
queries in one run, top-``--k``:

- pruned: ``retrieval.topk`` (what ``recommend`` calls: the pruned kernel when ``prune.worthwhile``, else
  PQTopK), one user per call and in batches of ``--batch``;
- PQTopK: ``ranking.topk`` (the exhaustive compiled kernel), the same calls;
- faiss: ``IndexPQ`` (inner product) holding the same codes and centroids, one user per call (``search`` of
  k + the user's seen items, then the seen ones dropped); skipped when faiss-cpu is missing
  (``pip install -e .[bench]``) or ksub is not 256.

Single-user calls run with one torch / faiss thread (a server with one request per core); pruned and PQTopK
alternate per user so machine load hits both alike. The lists must be identical (ids, and scores bit for
bit) between pruned and PQTopK; faiss sums in another order, so its agreement is reported, not required.
Everything runs holding the machine's CPU lock (``--no-lock`` to skip).

    python benchmarks/bench_topk.py --items 1000000 --json out/bench_topk.json
    python benchmarks/bench_topk.py --items 1000000 --model RUN --data DS

Exits 1 when a goal is missed: at 1M items pruned median <= 1 ms and >= 2.5x faster than PQTopK; at 10M
items median <= 6 ms; on every set pruned p95 <= 3x its median and median <= 1.1x PQTopK's; identical lists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from topk_models import TRAIN_CAP_S, cpu_lock, synth_model, train_facts  # noqa: E402

from recjpq_cli import ranking, retrieval  # noqa: E402
from recjpq_cli.artifact import load_model  # noqa: E402
from recjpq_cli.data import sequences  # noqa: E402
from recjpq_cli.data.schema import load_dataset  # noqa: E402
from recjpq_cli.jpq import prune  # noqa: E402
from recjpq_cli.jpq.embedding import JPQEmbedding  # noqa: E402

GOALS = {"ms_1m": 1.0, "speedup_1m": 2.5, "ms_10m": 6.0, "p95_over_median": 3.0, "max_slowdown": 1.1}


def queries(source: Path, data: Path, n_users: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, list]:
    """(model, h (U, d), per-user seen items as int64 tensors) for ``n_users`` sampled users."""
    ds = load_dataset(data)
    lm = load_model(source, data=data, fingerprint=ds.fingerprint, device="cpu")
    model = lm.model.eval()
    users = np.sort(np.random.default_rng(seed).choice(ds.n_users, min(n_users, ds.n_users), replace=False))
    end = ds.offsets[users + 1]
    with torch.no_grad():
        h = model.encode(sequences.histories(ds, users, end, int(lm.model_args["max_len"]))).float()
    rows, items = sequences.seen_items(ds, users, end)
    seen = [items[rows == i] for i in range(len(users))]
    return model, h, seen


def _call(fn, items, h, k, seen_rows: list) -> tuple[float, tuple]:
    rows, seen = _pairs(seen_rows)
    t0 = time.perf_counter()
    out = fn(items, h, k, rows, seen)
    return time.perf_counter() - t0, out


def same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[1], b[1]) and torch.equal(a[0].view(torch.int32), b[0].view(torch.int32))


def faiss_index(items):
    """An IndexPQ over the model's codes and centroids, or a reason it is skipped."""
    try:
        import faiss
    except ImportError:
        return None, "faiss skipped (faiss-cpu not installed: pip install -e .[bench])"
    if items.ksub != 256:
        return None, f"faiss skipped (ksub={items.ksub}, IndexPQ here takes 8-bit codes)"
    index = faiss.IndexPQ(items.d, items.M, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(items.centroids.detach().numpy().astype(np.float32).ravel(), index.pq.centroids)
    faiss.copy_array_to_vector(np.ascontiguousarray(items.codes.numpy()[1:]).ravel(), index.codes)
    index.ntotal, index.is_trained = items.n_items, True
    return index, None


def time_faiss(index, h: torch.Tensor, k: int, seen: list) -> tuple[list, list]:
    """Per-user seconds and id lists (item ids 1..n) of IndexPQ, seen items dropped."""
    import faiss

    faiss.omp_set_num_threads(1)
    times, lists = [], []
    x = h.numpy()
    for i in range(x.shape[0]):
        t0 = time.perf_counter()
        _, ids = index.search(x[i:i + 1], k + len(seen[i]))
        ids = ids[0] + 1
        ids = ids[~np.isin(ids, seen[i].numpy())][:k]
        times.append(time.perf_counter() - t0)
        lists.append(ids)
    return times, lists


def ms(xs: list) -> tuple[float, float]:
    return 1000 * statistics.median(xs), 1000 * float(np.percentile(xs, 95))


@torch.no_grad()
def bench_set(name: str, model, h: torch.Tensor, seen: list, args: argparse.Namespace) -> dict:
    items = model.items
    k = args.k
    t0 = time.perf_counter()
    retrieval.topk(items, h[:1], k)
    uses = isinstance(items, JPQEmbedding) and prune.worthwhile(items.n_items)
    row: dict = {"set": name, "items": items.n_items, "users": h.shape[0], "M": items.M, "ksub": items.ksub,
                 "uses_pruning": uses, "first_call_s": time.perf_counter() - t0}  # index build and compile
    ranking.topk(items, h[:2], k)
    torch.set_num_threads(1)
    pr_t, pq_t, identical, touched = [], [], True, []
    for i in range(h.shape[0]):
        order = (retrieval.topk, ranking.topk) if i % 2 == 0 else (ranking.topk, retrieval.topk)
        res = {fn: _call(fn, items, h[i:i + 1], k, seen[i:i + 1]) for fn in order}
        pr_t.append(res[retrieval.topk][0])
        pq_t.append(res[ranking.topk][0])
        identical &= same(res[retrieval.topk][1], res[ranking.topk][1])
    if uses:  # the work the pruned search did (outside the timings)
        tabs = ranking._fast_tables(items, h).numpy()
        ptr, ex = ranking._csr(h.shape[0], *_pairs(seen))
        touched = prune.search(tabs, items.codes.numpy(), retrieval.prune_index(items), k, ptr, ex)[2]
        row["touched_share_median"] = float(np.median(touched) / items.n_items)
        row["fallback_share"] = float(np.mean(touched > prune.FALLBACK_SHARE * items.n_items))
    row["pruned_ms_median"], row["pruned_ms_p95"] = ms(pr_t)
    row["pqtopk_ms_median"], row["pqtopk_ms_p95"] = ms(pq_t)
    index, why = faiss_index(items)
    if index is None:
        row["faiss_ms_median"], row["faiss"] = None, why
    else:
        f_t, f_lists = time_faiss(index, h, k, seen)
        row["faiss_ms_median"], row["faiss_ms_p95"] = ms(f_t)
        want = [ranking.topk(items, h[i:i + 1], k, *_pairs(seen[i:i + 1]))[1][0].numpy() for i in range(len(f_lists))]
        row["faiss_identical_share"] = float(np.mean([np.array_equal(a, b) for a, b in zip(f_lists, want, strict=True)]))
    torch.set_num_threads(args.threads)
    b_pr, b_pq = [], []
    for r in range(args.reps):
        lo = (r * args.batch) % h.shape[0]
        hb, sb = h[lo:lo + args.batch], seen[lo:lo + args.batch]
        tp, outp = _call(retrieval.topk, items, hb, k, sb)
        tq, outq = _call(ranking.topk, items, hb, k, sb)
        b_pr.append(tp / hb.shape[0])
        b_pq.append(tq / hb.shape[0])
        identical &= same(outp, outq)
    row["batch64_pruned_ms_per_user"] = 1000 * statistics.median(b_pr)
    row["batch64_pqtopk_ms_per_user"] = 1000 * statistics.median(b_pq)
    row["speedup"] = row["pqtopk_ms_median"] / row["pruned_ms_median"]
    row["identical"] = bool(identical)
    return row


def _pairs(seen: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([torch.full_like(s, i) for i, s in enumerate(seen)]), torch.cat(seen)


def missed_goals(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        tag = r["set"]
        if not r["identical"]:
            out.append(f"{tag}: pruned and PQTopK lists differ")
        if r["pruned_ms_p95"] > GOALS["p95_over_median"] * r["pruned_ms_median"]:
            out.append(f"{tag}: p95 {r['pruned_ms_p95']:.2f} ms > {GOALS['p95_over_median']}x the median")
        if r["pruned_ms_median"] > GOALS["max_slowdown"] * r["pqtopk_ms_median"]:
            out.append(f"{tag}: pruned {r['pruned_ms_median']:.2f} ms > {GOALS['max_slowdown']}x PQTopK")
        if r["items"] == 1_000_000 and tag.startswith("synth"):
            if r["pruned_ms_median"] > GOALS["ms_1m"]:
                out.append(f"{tag}: median {r['pruned_ms_median']:.2f} ms > {GOALS['ms_1m']} ms")
            if r["speedup"] < GOALS["speedup_1m"]:
                out.append(f"{tag}: {r['speedup']:.2f}x < {GOALS['speedup_1m']}x faster than PQTopK")
        if r["items"] == 10_000_000 and tag.startswith("synth") and r["pruned_ms_median"] > GOALS["ms_10m"]:
            out.append(f"{tag}: median {r['pruned_ms_median']:.2f} ms > {GOALS['ms_10m']} ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="1000000,10000000", help="synthetic catalogue sizes ('' for none)")
    ap.add_argument("--model", type=Path, action="append", default=[], help="a run folder or model file too")
    ap.add_argument("--data", type=Path, action="append", default=[], help="the dataset of each --model")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/recjpq-bench/topk"), help="trained models' folder")
    ap.add_argument("--train-seconds", type=float, default=TRAIN_CAP_S,
                    help="training time cap per synthetic model (it stops earlier at its validation plateau)")
    ap.add_argument("--users", type=int, default=300, help="single-user queries per set")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=4, help="batches timed")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-lock", dest="lock", action="store_false", help="do not take the CPU lock")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--prune-min-items", type=int, default=None,
                    help="override prune.MIN_ITEMS (0: the pruned kernel on every set, to see how it prunes there)")
    args = ap.parse_args()
    if args.prune_min_items is not None:
        prune.MIN_ITEMS = args.prune_min_items
    if len(args.model) != len(args.data):
        ap.error("give one --data DIR per --model")
    rows = []
    with cpu_lock(args.lock):
        sets = [(f"synth-{n}", *synth_model(args.cache, n, args.train_seconds))
                for n in (int(x) for x in args.items.split(",") if x)]
        sets += [(Path(m).name, m, d) for m, d in zip(args.model, args.data, strict=True)]
        load = os.getloadavg()
        for name, source, data in sets:
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            model, h, seen = queries(source, data, args.users, args.seed)
            rows.append(bench_set(name, model, h, seen, args))
            rows[-1]["trained"] = train_facts(Path(source))
            rows[-1]["load_average"] = [load[0], os.getloadavg()[0]]
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del model
    print("| set | items | pruned median ms | p95 | PQTopK median ms | speed-up | faiss median ms | "
          "batch64 pruned ms/user | batch64 PQTopK ms/user | identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        fa = f"{r['faiss_ms_median']:.2f}" if r["faiss_ms_median"] is not None else r["faiss"]
        print(f"| {r['set']} | {r['items']:,} | {r['pruned_ms_median']:.3f} | {r['pruned_ms_p95']:.3f} | "
              f"{r['pqtopk_ms_median']:.3f} | {r['speedup']:.2f}x | {fa} | {r['batch64_pruned_ms_per_user']:.3f} | "
              f"{r['batch64_pqtopk_ms_per_user']:.3f} | {r['identical']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    missed = missed_goals(rows)
    for m in missed:
        print(f"goal missed: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
