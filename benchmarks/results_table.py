"""Markdown tables for docs/results.md from the files benchmarks/paper_table.sh writes.

    python benchmarks/results_table.py OUT_DIR/DATASET

Prints, per row: test NDCG@10, Recall@10, MRR, the t-test mark against the dense row of the same model,
model size and item-table ratio (from compress), epochs, steps, seconds per step and wall time of training;
then the long-tail / head breakdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def main() -> int:
    d = Path(sys.argv[1])
    marks: dict[str, str] = {}
    for model in ("sasrec", "gsasrec", "bert4rec"):
        sub = _load(d / f"eval-{model}.json")
        for r in sub.get("runs", [])[1:]:
            sig = r.get("significance") or {}
            marks[r["name"]] = sig.get("mark", "")
    table = _load(d / "eval-all.json")
    print("| row | NDCG@10 | Recall@10 | MRR | vs dense | model MB | item-table ratio | epochs | steps | s/step | train min |")
    print("|---|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|")
    for r in table.get("runs", []):
        name, m = r["name"], r["metrics"]
        tr = _load(d / "runs" / f"{name}.train.json")
        size = r.get("size") or {}
        mb = f"{size['model_bytes'] / 1e6:.2f}" if size.get("model_bytes") else ""
        ratio = f"{size['item_table_ratio']:.1f}x" if size.get("item_table_ratio") else ""
        step_s = f"{tr['step_s']:.2f}" if isinstance(tr.get("step_s"), (int, float)) else ""
        minutes = f"{tr['elapsed_s'] / 60:.1f}" if tr.get("elapsed_s") else ""
        cells = [name, f"{m['NDCG@10']:.4f}", f"{m['Recall@10']:.4f}", f"{m['MRR']:.4f}", marks.get(name) or "",
                 mb, ratio, str(tr.get("epochs", "")), str(tr.get("steps", "")), step_s, minutes]
        print("| " + " | ".join(cells) + " |")
    print()
    print("| row | long-tail share | long-tail NDCG@10 | head NDCG@10 |")
    print("|---|---:|---:|---:|")
    for r in table.get("runs", []):
        lt, hd = r.get("long_tail", {}), r.get("head", {})
        print(f"| {r['name']} | {lt.get('share', 0):.3f} | {lt.get('metrics', {}).get('NDCG@10', 0):.4f} | "
              f"{hd.get('metrics', {}).get('NDCG@10', 0):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
