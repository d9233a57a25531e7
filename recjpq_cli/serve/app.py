"""The starlette application of ``recjpq serve`` (routes, body limit, JSON errors, background loading).

The model is loaded on a thread after the server starts listening: until it is ready (kernels compiled),
``/health`` and every other route answer 503. Every error body is JSON ``{"error": "<field>: <problem>"}``;
client mistakes are 4xx and never stop the server.
"""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from recjpq_cli.serve.batcher import Batcher
from recjpq_cli.serve.engine import Answer, Engine, ServeConfig
from recjpq_cli.serve.payload import MAX_BODY, RequestError, parse_batch, parse_json, parse_query

DRAIN_LIMIT = 8 * MAX_BODY  # an oversized body up to this size is read to its end before the 413


class State:
    """What the routes share: the engine and the batcher once loaded (None before)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None

    def ready(self) -> tuple[Engine, Batcher]:
        if self.engine is None or self.batcher is None:
            raise RequestError(503, "model: still loading; retry when GET /health answers 200")
        return self.engine, self.batcher


def _answer_json(a: Answer, fingerprint: str) -> dict[str, Any]:
    return {"items": a.items, "scores": a.scores, "dataset": fingerprint, "unknown_items": a.unknown}


async def read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY bytes (413 beyond; a moderately larger one is drained first, so the
    client reads the 413 instead of a reset connection)."""
    declared = request.headers.get("content-length", "")
    too_big = RequestError(413, f"body: larger than the limit of {MAX_BODY:,} bytes (1 MiB)")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_LIMIT:
                raise too_big
            if size <= MAX_BODY:
                chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "body: the client went away before sending all of it") from None
    if size > MAX_BODY:
        raise too_big
    return b"".join(chunks)


def create_app(cfg: ServeConfig, *, on_ready: Callable[[Engine, float], None] | None = None,
               on_fatal: Callable[[BaseException], None] | None = None,
               load: Callable[[ServeConfig], Engine] = Engine.load) -> Starlette:
    """The application; ``load`` runs on a thread at startup, ``on_fatal`` gets what it raised."""
    state = State(cfg)

    async def recommend(request: Request) -> JSONResponse:
        engine, batcher = state.ready()
        query = parse_query(parse_json(await read_body(request)), engine)
        (answer,) = await batcher.submit([query])
        return JSONResponse(_answer_json(answer, engine.fingerprint))

    async def recommend_batch(request: Request) -> JSONResponse:
        engine, batcher = state.ready()
        queries = parse_batch(parse_json(await read_body(request)), engine)
        answers = await batcher.submit(queries)
        return JSONResponse({"results": [_answer_json(a, engine.fingerprint) for a in answers]})

    async def health(request: Request) -> JSONResponse:
        state.ready()
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> JSONResponse:
        engine, batcher = state.ready()
        return JSONResponse({**engine.info(), "batching": {"window_ms": cfg.batch_window_ms,
                                                           "max_batch": cfg.max_batch,
                                                           "batches": batcher.batches,
                                                           "queries": batcher.queries}})

    def loaded(engine: Engine, seconds: float) -> None:  # on the event loop
        batcher = Batcher(engine.answer, window_s=cfg.batch_window_ms / 1000, max_rows=cfg.max_batch)
        batcher.start()
        state.engine, state.batcher = engine, batcher
        if on_ready is not None:
            on_ready(engine, seconds)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import asyncio

        loop = asyncio.get_running_loop()

        def work() -> None:
            t0 = time.perf_counter()
            try:
                engine = load(cfg)
                engine.warm_up()
            except BaseException as e:  # noqa: BLE001 - reported by the command, which stops the server
                if on_fatal is not None:
                    on_fatal(e)
                return
            try:
                loop.call_soon_threadsafe(loaded, engine, time.perf_counter() - t0)
            except RuntimeError:  # the server stopped (SIGTERM) while the model was loading
                pass

        threading.Thread(target=work, name="recjpq-serve-load", daemon=True).start()
        yield
        if state.batcher is not None:
            await state.batcher.stop()

    return Starlette(
        routes=[Route("/recommend", recommend, methods=["POST"]),
                Route("/recommend/batch", recommend_batch, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
                Route("/info", info, methods=["GET"])],
        exception_handlers={RequestError: _request_error, HTTPException: _http_error, Exception: _internal},
        lifespan=lifespan,
    )


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": f"{request.url.path}: {exc.detail}"}, status_code=exc.status_code,
                        headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not the client's mistake: 500 with its type (uvicorn logs the traceback); serving goes on."""
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
