"""``run(cfg)``: listen on the socket, serve the application with uvicorn, stop gracefully on SIGTERM.

The socket is bound first (a taken port is one ``Error:`` line), then uvicorn starts and the model loads on a
thread (``/health`` answers 503 meanwhile). A model file that cannot be loaded stops the server and ``run``
raises its ``InputError`` (one ``Error:`` line at the CLI). SIGTERM or Ctrl-C: no new connections, the
requests in flight are answered, then ``run`` returns (exit 0).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Any

from recjpq_cli.errors import ConfigError
from recjpq_cli.serve.engine import Engine, ServeConfig

EXTRA = "serve"
GRACE_S = 30  # the longest SIGTERM waits for requests in flight


def require_extra() -> None:
    """The web server packages of the optional extra, or a ConfigError saying how to install them."""
    missing = []
    for name in ("uvicorn", "starlette"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"recjpq serve: needs {' and '.join(missing)}, which are not installed; "
                          f"install the extra: pip install 'recjpq[{EXTRA}]'")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free port chosen by the system)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ConfigError(f"--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _announce(address: str) -> Any:
    def on_ready(engine: Engine, seconds: float) -> None:
        sys.stderr.write(f"recjpq serve: ready on {address} ({engine.path.name}: {engine.n_items:,} items, "
                         f"d {engine.model_args['d']}, dataset {engine.fingerprint[:12]}; "
                         f"loaded in {seconds:.1f} s)\n")
        sys.stderr.flush()
    return on_ready


def run(cfg: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT; raises the loader's error when the model cannot be loaded."""
    require_extra()
    import uvicorn

    from recjpq_cli.serve.app import create_app

    if cfg.max_batch < 1 or cfg.batch_window_ms < 0:
        raise ConfigError("--max-batch must be at least 1 and --batch-window-ms at least 0")
    sock = bind(cfg.host, cfg.port)
    fatal: list[BaseException] = []
    box: dict[str, uvicorn.Server] = {}

    def stop(*_: Any) -> None:
        if "server" in box:
            box["server"].should_exit = True

    def on_fatal(e: BaseException) -> None:
        fatal.append(e)
        stop()

    app = create_app(cfg, on_ready=_announce(url(sock)), on_fatal=on_fatal)
    box["server"] = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                                  timeout_graceful_shutdown=GRACE_S))
    # uvicorn handles SIGTERM/SIGINT while it runs and re-raises them afterwards: ours then only stops it.
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        box["server"].run(sockets=[sock])
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        sock.close()
    if fatal:
        raise fatal[0]
