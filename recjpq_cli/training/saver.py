"""Saving a validation's results into the run folder, in the order that survives a kill."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from recjpq_cli.checkpoint import save_checkpoint
from recjpq_cli.data.io import atomic_file
from recjpq_cli.runfolder import BEST, LAST, write_metrics


class Saver:
    """Writes a validation's results in the order that keeps the run folder consistent after a kill:
    ``last.pt``, then ``best.pt`` (both atomic), then ``metrics.jsonl`` (rewritten atomically)."""

    def __init__(self, run: Path, rows: list[dict[str, Any]], is_main: bool):
        self.run, self.rows, self.is_main = run, rows, is_main
        self.saved_step: int | None = None

    def save(self, ckpt: dict[str, Any], row: dict[str, Any], improved: bool) -> None:
        if not self.is_main:
            return
        last, best = self.run / LAST, self.run / BEST
        save_checkpoint(last, ckpt | {"metrics_row": row})
        if improved or not best.exists():
            with atomic_file(best) as tmp:  # data.io turns a failed write into one error naming ``best``
                shutil.copyfile(last, tmp)
        self.rows = [r for r in self.rows if r.get("step") != row["step"]] + [row]
        write_metrics(self.run, self.rows)
        self.saved_step = int(row["step"])
