"""Stop signals: SIGINT and SIGTERM end a training run between two steps."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's time limit, ``kill``, ``timeout``) ask the loop to stop at
    the next step boundary, so that the saved weights, optimiser and RNG state are those the next step would
    start from and ``--resume`` continues exactly. A second signal stops at once, saving nothing more.

    Only in a single process, from the main thread (torchrun's agent manages its workers' signals itself).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
