"""Concurrent requests answered together: a small batch per model call, gathered in a short wait window.

Each request hands its queries to ``Batcher.submit`` and awaits its answers. One worker task takes the
waiting requests in arrival order, up to ``max_rows`` queries (a larger ``/recommend/batch`` goes alone),
and answers them in one ``Engine.answer`` call on one worker thread, so the event loop keeps reading and
parsing requests meanwhile. The oldest waiting request waits at most ``window_s`` for company before its batch
starts (none when the batch is full); requests that arrive while a batch is being ranked simply form the next
batch. ``max_rows=1`` turns batching off: every request is encoded and ranked alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    def __init__(self, answer: Callable[[list[Any]], list[Any]], *, window_s: float, max_rows: int):
        if max_rows < 1 or window_s < 0:
            raise ValueError("max_rows >= 1 and window_s >= 0")
        self._answer, self.window_s, self.max_rows = answer, window_s, max_rows
        self._pending: deque[tuple[list[Any], asyncio.Future, float]] = deque()
        self._rows = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recjpq-serve")
        self._task: asyncio.Task | None = None
        self.batches = 0  # model calls so far (for /info)
        self.queries = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, queries: list[Any]) -> list[Any]:
        """The answers to these queries, in order (raises what ``answer`` raised)."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((queries, fut, time.monotonic()))
        self._rows += len(queries)
        self._wake.set()
        if self._rows >= self.max_rows:
            self._full.set()
        return await fut

    def _take(self) -> list[tuple[list[Any], asyncio.Future, float]]:
        """The oldest waiting requests, up to max_rows queries (at least one request)."""
        units = [self._pending.popleft()]
        rows = len(units[0][0])
        while self._pending and rows + len(self._pending[0][0]) <= self.max_rows:
            units.append(self._pending.popleft())
            rows += len(units[-1][0])
        self._rows -= rows
        if not self._pending:
            self._wake.clear()
        if self._rows < self.max_rows:
            self._full.clear()
        return units

    async def _gather(self) -> None:
        """Wait until the oldest request has waited window_s, or the batch is full."""
        left = self._pending[0][2] + self.window_s - time.monotonic()
        if left > 0 and self._rows < self.max_rows:
            try:
                await asyncio.wait_for(self._full.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            await self._gather()
            units = self._take()
            flat = [q for qs, _, _ in units for q in qs]
            try:
                answers = await loop.run_in_executor(self._executor, self._answer, flat)
            except Exception as e:  # noqa: BLE001 - handed to the waiting requests, the worker goes on
                for _, fut, _ in units:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.queries += len(flat)
            i = 0
            for qs, fut, _ in units:
                if not fut.done():  # a client that went away cancelled its future
                    fut.set_result(answers[i:i + len(qs)])
                i += len(qs)
