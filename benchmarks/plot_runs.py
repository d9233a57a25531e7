"""Validation NDCG@10 against training time for run folders, from their metrics.jsonl (PNG).

    python benchmarks/plot_runs.py OUT.png RUN_DIR [RUN_DIR ...] [--title TITLE]

Needs matplotlib (`pip install 'recjpq[plot]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--title", default="validation NDCG@10")
    a = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install 'recjpq[plot]'", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in a.runs:
        path = run / "metrics.jsonl"
        if not path.is_file():
            print(f"{path}: missing, skipped", file=sys.stderr)
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        ax.plot([r["elapsed_s"] / 60 for r in rows], [r["NDCG@10"] for r in rows], marker=".", label=run.name)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(a.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
