"""The leaf types of code assignment, shared by the strategies (``jpq/assignment.py``), BPR (``jpq/bpr.py``),
k-means (``jpq/pq.py``) and the assign stage, so none of them imports another for its types; and the strategy
names, spelled once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the CLI imports STRATEGIES at start-up: keep this module free of numpy at run time
    import numpy as np

# Every `assign --strategy` name (the order error messages list them), and the default one.
STRATEGIES = ("random", "svd", "bpr", "svd-kmeans")
DEFAULT_STRATEGY = "svd-kmeans"

ProgressFn = Callable[[int, int, float], None]  # (epoch done, epochs, mean loss)
StepFn = Callable[[str, int, int], None]  # (phase: "svd", "k-means" or "assignment", steps done, steps in all)


@dataclass(frozen=True)
class TrainData:
    """The training interactions only: one row per interaction (repeats kept)."""

    user: np.ndarray  # (N,) int64, 0..n_users-1
    item: np.ndarray  # (N,) int64, 1..n_items (0 is padding and never appears)
    n_users: int
    n_items: int
