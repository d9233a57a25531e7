"""Rich summary tables for people (stderr). Stages return results; these only draw them.

Every column folds a value too long for it onto the next line (rich's default would cut it with an
ellipsis), and ``console.show`` draws a table at the width it needs when stderr is not a terminal, so no
value, header or column is ever cut.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from recjpq_cli.console import show
from recjpq_cli.metrics import LONG_TAIL_THRESHOLD


def kv_table(title: str, rows: list[tuple[str, Any]]) -> None:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold", overflow="fold")
    t.add_column("value", overflow="fold")
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    show(t)


def prepare_table(r: Any) -> None:
    s = r.stats
    rows = [
        ("format", f"{r.format} ({'detected' if r.detected else 'given'})"),
        ("users", r.n_users), ("items", r.n_items), ("interactions", r.n_interactions),
        ("sequence length min / median / max",
         f"{s['sequence_length']['min']} / {s['sequence_length']['median']:g} / {s['sequence_length']['max']}"),
        (f"long-tail share (< {LONG_TAIL_THRESHOLD} train interactions)", f"{s['long_tail_share']:.1%}"),
        ("train / val / test", " / ".join(f"{v:,}" for v in s["split_sizes"].values())),
    ]
    rows += [(f"dropped: {k.replace('_', ' ')}", v) for k, v in s["dropped_rows"].items()]
    rows += [("fingerprint (first 16 hex digits)", r.fingerprint[:16]), ("written", str(r.out)),
             ("seconds", round(r.seconds, 2))]
    kv_table("prepare", rows)


def train_table(r: Any) -> None:
    rows = [("model", f"{r.model} ({r.embedding} embeddings)"), ("device", r.device),
            ("epochs / steps", f"{r.epochs} / {r.steps}"), ("stopped by", r.stop_reason),
            ("best validation NDCG@10", f"{r.best_metric:.4f}"),
            ("last validation NDCG@10 / Recall@10",
             f"{r.last_metrics.get('NDCG@10', float('nan')):.4f} / {r.last_metrics.get('Recall@10', float('nan')):.4f}"),
            ("item parameters", r.parameters["item"]), ("backbone parameters", r.parameters["backbone"]),
            ("processes", r.world_size), ("seconds", round(r.elapsed_s, 1)), ("run folder", str(r.run_dir))]
    kv_table("train", rows)


def assign_table(r: Any) -> None:
    m = r.meta
    occ = m["occupancy"]
    rows: list[tuple[str, Any]] = [
        ("strategy", m["strategy"]), ("code length M / centroids ksub", f"{m['M']} / {m['ksub']:,}"),
        ("items", m["n_items"]), ("seed", m["seed"]),
    ]
    if "explained_variance" in m:
        rows.append(("explained variance", f"{m['explained_variance']:.2%}"))
    if "kmeans_iters" in m:
        rows.append(("SVD dimension d / k-means iterations", f"{m['d']} / {m['kmeans_iters']}"))
    if "final_loss" in m:
        rows.append((f"final BPR loss ({m['epochs']} epochs)", round(float(m["final_loss"]), 4)))
    rows += [
        ("collisions before / after", f"{m['collisions_before']:,} / {m['collisions_after']:,}"
         + ("" if m.get("unique", True) else " (--no-unique)")),
        ("items per centroid, min / max per split", "  ".join(f"{a}/{b}" for a, b in zip(occ["min"], occ["max"], strict=True))),
        ("written", f"{r.out} (+ {r.sidecar.name}" + (f", {m['centroids_file']}" if "centroids_file" in m else "")
         + f", {m['dtype']})"), ("seconds", round(float(m["seconds"]), 2)),
    ]
    kv_table("assign", rows)


def _mib(b: Any) -> str:
    """Bytes for people: B, KiB, MiB or GiB."""
    if b is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:,.2f} {unit}"
    return f"{b:,} B"


def _ratio(x: Any) -> str:
    return "-" if x is None else f"{x:,.1f}x"


def evaluate_table(r: Any) -> None:
    """Rows = runs, columns = metrics and model size, as the paper's table; + = - from the paired t-tests.
    Every k is in --json; the table keeps to the paper's columns so it fits a terminal."""
    k = 10 if 10 in r.ks else r.ks[-1]
    t = Table(title=f"evaluate: {r.split}, {r.users:,} users"
              + (f" (sampled from {r.users_total:,}, seed {r.seed})" if r.sampled_users else "")
              + (", seen items filtered" if r.filter_seen else ", seen items kept"), title_justify="left")
    t.add_column("run", style="bold", min_width=10, overflow="fold")
    for name in (f"NDCG@{k}", f"Recall@{k}", "MRR", f"tail NDCG@{k}", "size", "item ratio"):
        t.add_column(name, justify="right", overflow="fold")
    for run in r.runs:
        m = run.metrics
        mark = run.significance.get("mark") or ""
        t.add_row(run.name, f"{m[f'NDCG@{k}']:.4f}{mark if k == 10 else ''}", f"{m[f'Recall@{k}']:.4f}",
                  f"{m['MRR']:.4f}", f"{run.long_tail['metrics'].get(f'NDCG@{k}', float('nan')):.4f}",
                  _mib(run.size.get("model_bytes")), _ratio(run.size.get("item_table_ratio")))
    show(t)
    alpha = r.runs[0].significance.get("alpha_corrected", 0.05) if r.runs else 0.05
    notes = [f"long tail (< {LONG_TAIL_THRESHOLD} training interactions): {r.long_tail_share:.1%} of targets"]
    if len(r.runs) > 1:
        notes.append(f"+ = -: paired t-test on NDCG@10 against {r.runs[0].name} (alpha 0.05, Bonferroni: {alpha:.3g})")
    verb = "counted as misses" if r.filter_seen else "kept in the ranking"
    notes.append(f"targets repeating an input item: {r.repeated_targets:,} ({verb})")
    if r.per_user:
        notes.append(f"per-user rows of {r.runs[0].name}: {r.per_user}")
    for note in notes:
        show(note)


def compress_table(r: Any) -> None:
    s = r.size
    c = s["components"]
    eq = s["dense_equivalent"]
    t = Table(title=f"compress: {r.out} ({r.method}, M={r.M}, ksub={r.ksub:,})", title_justify="left")
    t.add_column("component", style="bold", overflow="fold")
    for name in ("parameters / entries", "stored as", "size", "dense equivalent"):
        t.add_column(name, justify="right", overflow="fold")
    t.add_row("codes", f"{c['codes']['count']:,}", r.codes_dtype, _mib(c["codes"]["bytes"]), "")
    t.add_row("centroids", f"{c['centroids']['parameters']:,}", r.centroid_dtype, _mib(c["centroids"]["bytes"]), "")
    t.add_row("item tables", "", "", _mib(s["item_table_bytes"]),
              f"{_mib(eq['item_table_bytes'])} (2 x {s['n_items'] + 1:,} x {s['d']} fp32)")
    t.add_row("backbone", f"{c['backbone']['parameters']:,}", "fp32", _mib(c["backbone"]["bytes"]),
              _mib(c["backbone"]["bytes"]))
    t.add_row("model", "", "", _mib(s["model_bytes"]), _mib(eq["model_bytes"]))
    t.add_row("id maps", "", "parquet", _mib(c["id_maps"]["bytes"]), "")
    t.add_row("file on disk", "", "safetensors", _mib(s["file_bytes"]),
              f"checkpoint {_mib(s['checkpoint_bytes'])}")
    show(t)
    line = (f"item-table ratio {_ratio(s['item_table_ratio'])}, model ratio {_ratio(s['model_ratio'])}, "
            f"file {_ratio(s['checkpoint_ratio'])} smaller than the checkpoint")
    if r.quantisation_error:
        line += "; relative squared error " + ", ".join(f"{k} {v:.3g}" for k, v in r.quantisation_error.items())
    show(line)


def recommend_summary(r: Any) -> None:
    show(f"wrote {r.out}: top-{r.k} for {r.users:,} users ({r.rows:,} rows"
                    + (", seen items filtered" if r.filter_seen else "") + f") in {r.seconds:.1f} s")
