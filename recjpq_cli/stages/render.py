"""Rich summary tables for people (stderr). Stages return results; these only draw them."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from recjpq_cli.console import console


def kv_table(title: str, rows: list[tuple[str, Any]]) -> None:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    console().print(t)


def prepare_table(r: Any) -> None:
    s = r.stats
    rows = [
        ("format", f"{r.format} ({'detected' if r.detected else 'given'})"),
        ("users", r.n_users), ("items", r.n_items), ("interactions", r.n_interactions),
        ("sequence length min / median / max",
         f"{s['sequence_length']['min']} / {s['sequence_length']['median']:g} / {s['sequence_length']['max']}"),
        ("long-tail share (< 5 train interactions)", f"{s['long_tail_share']:.1%}"),
        ("train / val / test", " / ".join(f"{v:,}" for v in s["split_sizes"].values())),
    ]
    rows += [(f"dropped: {k.replace('_', ' ')}", v) for k, v in s["dropped_rows"].items()]
    rows += [("fingerprint", r.fingerprint[:16] + "…"), ("written", str(r.out)), ("seconds", round(r.seconds, 2))]
    kv_table("prepare", rows)


def train_table(r: Any) -> None:
    rows = [("model", f"{r.model} ({r.embedding} embeddings)"), ("device", r.device),
            ("epochs / steps", f"{r.epochs} / {r.steps}"), ("stopped by", r.stop_reason),
            ("best validation NDCG@10", round(r.best_metric, 4)),
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
    if "final_loss" in m:
        rows.append((f"final BPR loss ({m['epochs']} epochs)", round(float(m["final_loss"]), 4)))
    rows += [
        ("collisions before / after", f"{m['collisions_before']:,} / {m['collisions_after']:,}"
         + ("" if m.get("unique", True) else " (--no-unique)")),
        ("items per centroid, min / max per split", "  ".join(f"{a}/{b}" for a, b in zip(occ["min"], occ["max"], strict=True))),
        ("written", f"{r.out} (+ {r.sidecar.name}, {m['dtype']})"), ("seconds", round(float(m["seconds"]), 2)),
    ]
    kv_table("assign", rows)
