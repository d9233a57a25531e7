"""``recjpq serve``: next-item recommendations over HTTP from a model file (optional extra ``recjpq[serve]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from recjpq_cli.commands.common import user_errors


def serve(
    model: Annotated[Path, typer.Argument(help="Model file from `recjpq compress`.", show_default=False, metavar="MODEL_FILE")],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset folder: requests may then name a known user (their whole sequence is the history).", show_default=False)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one, shown when ready).")] = 8080,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", min=0.0, help="How long a request may wait for others to be encoded with it.")] = 2.0,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most queries ranked together (a batch request counts its elements; 1: no batching).")] = 64,
) -> None:
    """Answer POST /recommend (a history or a known user) with the top-k next items, until SIGTERM."""
    from recjpq_cli.serve.engine import ServeConfig
    from recjpq_cli.serve.server import run

    with user_errors():
        run(ServeConfig(model=model, data=data, host=host, port=port, batch_window_ms=batch_window_ms,
                        max_batch=max_batch))
