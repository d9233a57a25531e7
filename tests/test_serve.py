"""`recjpq serve`: the real server in a subprocess on a free loopback port, spoken to over HTTP.

Answers equal `recommend`'s rows for the same users (by user id, by history, in a batch, concurrently);
every bad request gets its 4xx JSON error naming the field and the next good request succeeds; unknown items
are reported and skipped; /health, /info; SIGTERM answers the request in flight and exits 0; a corrupt or
foreign model file, a taken port and a missing extra are one `Error:` line. The batcher and the 503 before
loading are checked in process.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from conftest import REPO, error_line, invoke
from test_evaluate import make_run

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from recjpq_cli.data.schema import load_dataset  # noqa: E402
from recjpq_cli.serve.batcher import Batcher  # noqa: E402

HOST = "127.0.0.1"


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory, sample_ds: Path) -> Path:
    """A tiny RecJPQ model file of the sample dataset (random weights, d=16, M=4, ksub=16)."""
    home = tmp_path_factory.mktemp("serve")
    run = make_run(home / "run", sample_ds)
    out = home / "model.safetensors"
    res = invoke(["compress", run, "--data", sample_ds, "--out", out, "-q"])
    assert res.exit_code == 0, res.output
    return out


def _recs(model_file: Path, ds: Path, out: Path, *extra: str) -> pl.DataFrame:
    res = invoke(["recommend", model_file, "--data", ds, "--k", "10", "--out", out, "-q", *extra])
    assert res.exit_code == 0, res.output
    return pl.read_parquet(out)


@pytest.fixture(scope="session")
def recs(model_file: Path, sample_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    return _recs(model_file, sample_ds, tmp_path_factory.mktemp("recs") / "recs.parquet")


class Server:
    """`recjpq serve ... --port 0` in a subprocess; the port is read from its ready line."""

    def __init__(self, *args: Any, timeout: float = 180):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "recjpq_cli", "serve", *map(str, args), "--host", HOST,
                                      "--port", "0"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"serve exited with {self.proc.wait()} before it was ready"
            m = re.search(r"ready on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                return

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(model_file: Path, sample_ds: Path):
    s = Server(model_file, "--data", sample_ds)
    yield s
    s.stop()


def _user_rows(recs: pl.DataFrame, user: str) -> tuple[list[str], np.ndarray]:
    rows = recs.filter(pl.col("user") == user).sort("rank")
    return rows["item"].to_list(), rows["score"].to_numpy()


def _same(answer: dict[str, Any], recs: pl.DataFrame, user: str) -> None:
    """The same items in the same order; scores to float32 rounding (the transformer's matmuls round the
    last bit differently for other batch sizes: recommend encodes 256 users at once)."""
    items, scores = _user_rows(recs, user)
    assert answer["items"] == items, user
    assert np.allclose(np.array(answer["scores"], dtype=np.float32), scores, rtol=1e-5, atol=1e-6), user


def _history(ds_path: Path, user: str) -> list[str]:
    ds = load_dataset(ds_path)
    u = ds.raw_users().to_list().index(user)
    raw = ds.raw_items()
    return raw.gather(pl.Series(ds.item[ds.offsets[u]:ds.offsets[u + 1]])).to_list()


# ------------------------------------------------------------------------------------- the answers


def test_answers_equal_recommend(server: Server, recs: pl.DataFrame, sample_ds: Path) -> None:
    users = recs["user"].unique(maintain_order=True).to_list()[:12]
    for u in users[:4]:
        status, ans = server.request("POST", "/recommend", {"user": u})
        assert status == 200, ans
        _same(ans, recs, u)
        status, ans = server.request("POST", "/recommend", {"history": _history(sample_ds, u), "k": 10})
        assert status == 200, ans
        _same(ans, recs, u)
        assert ans["dataset"] == load_dataset(sample_ds).fingerprint and ans["unknown_items"] == []
    status, ans = server.request("POST", "/recommend/batch", {"requests": [{"user": u} for u in users]})
    assert status == 200, ans
    assert len(ans["results"]) == len(users)
    for u, a in zip(users, ans["results"], strict=True):
        _same(a, recs, u)
    with ThreadPoolExecutor(8) as pool:  # concurrent requests, encoded together by the batcher
        answers = list(pool.map(lambda u: server.request("POST", "/recommend", {"user": u}), users))
    for u, (status, a) in zip(users, answers, strict=True):
        assert status == 200
        _same(a, recs, u)


def test_k_and_exclude_seen_as_recommend(server: Server, model_file: Path, sample_ds: Path, tmp_path: Path) -> None:
    unfiltered = _recs(model_file, sample_ds, tmp_path / "all.parquet", "--no-filter-seen")
    u = unfiltered["user"][0]
    status, ans = server.request("POST", "/recommend", {"user": u, "exclude_seen": False})
    assert status == 200
    _same(ans, unfiltered, u)
    status, ans = server.request("POST", "/recommend", {"user": int(u), "k": 3, "exclude_seen": False})
    assert status == 200 and ans["items"] == _user_rows(unfiltered, u)[0][:3]  # numbers compare as text


def test_unknown_items_are_reported_and_skipped(server: Server, sample_ds: Path) -> None:
    hist = _history(sample_ds, load_dataset(sample_ds).raw_users()[0])
    status, plain = server.request("POST", "/recommend", {"history": hist})
    status2, ans = server.request("POST", "/recommend", {"history": ["no-such-item", *hist, 10**12]})
    assert status == status2 == 200
    assert ans["unknown_items"] == ["no-such-item", str(10**12)]
    assert ans["items"] == plain["items"] and ans["scores"] == plain["scores"]


def test_health_and_info(server: Server, sample_ds: Path) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    status, info = server.request("GET", "/info")
    ds = load_dataset(sample_ds)
    assert status == 200
    assert (info["items"], info["M"], info["ksub"], info["d"]) == (ds.n_items, 4, 16, 16)
    assert info["dataset"] == ds.fingerprint and info["users"] == ds.n_users and info["version"]
    assert info["file_bytes"] > 0 and info["model_bytes"] > 0


# --------------------------------------------------------------------------------- bad requests


def _bad_requests(n_items: int) -> list[tuple[str, str, Any, int, str]]:
    """(method, path, body, status, the start of the error) for every client mistake."""
    h = ["1"]
    return [
        ("POST", "/recommend", b'{"history": [1', 400, "body: malformed JSON"),
        ("POST", "/recommend", b"\xff\xfe", 400, "body: not UTF-8"),
        ("POST", "/recommend", b"", 400, "body: malformed JSON"),
        ("POST", "/recommend", [1, 2], 400, "body: must be a JSON object"),
        ("POST", "/recommend", {}, 422, "history: missing"),
        ("POST", "/recommend", {"history": "1"}, 422, "history: must be an array"),
        ("POST", "/recommend", {"history": [True]}, 422, "history[0]: must be a string or an integer"),
        ("POST", "/recommend", {"history": ["1", 2.5]}, 422, "history[1]: must be a string or an integer"),
        ("POST", "/recommend", {"history": []}, 422, "history: is empty"),
        ("POST", "/recommend", {"history": ["nope", "never"]}, 422, "history: none of its 2 item ids"),
        ("POST", "/recommend", {"history": h, "k": 0}, 422, "k: must be between 1 and"),
        ("POST", "/recommend", {"history": h, "k": n_items + 1}, 422, "k: must be between 1 and"),
        ("POST", "/recommend", {"history": h, "k": "5"}, 422, "k: must be an integer"),
        ("POST", "/recommend", {"history": h, "k": True}, 422, "k: must be an integer"),
        ("POST", "/recommend", {"history": h, "exclude_seen": "yes"}, 422, "exclude_seen: must be true or false"),
        ("POST", "/recommend", {"history": h, "kk": 3}, 422, "kk: unknown field"),
        ("POST", "/recommend", {"history": h, "user": "1"}, 422, "history: give either history or user"),
        ("POST", "/recommend", {"user": "no-such-user"}, 404, "user: unknown user id"),
        ("POST", "/recommend", {"user": None}, 422, "user: must be a string or an integer"),
        ("POST", "/recommend", b'{"history": ["' + b"1" * (1 << 20) + b'"]}', 413, "body: larger than"),
        ("POST", "/recommend/batch", {}, 422, "requests: missing"),
        ("POST", "/recommend/batch", {"requests": {}}, 422, "requests: must be an array"),
        ("POST", "/recommend/batch", {"requests": []}, 422, "requests: is empty"),
        ("POST", "/recommend/batch", {"requests": [{"history": h}] * 1001}, 422, "requests: 1,001 requests; at most"),
        ("POST", "/recommend/batch", {"requests": [{"history": h}, 7]}, 422, "requests[1]: must be a JSON object"),
        ("POST", "/recommend/batch", {"requests": [{"history": h}, {"history": h, "k": -1}]}, 422,
         "requests[1].k: must be between"),
        ("POST", "/recommend/batch", {"requests": [{"history": h}], "extra": 1}, 422, "extra: unknown field"),
        ("GET", "/recommend", None, 405, "/recommend: Method Not Allowed"),
        ("POST", "/health", None, 405, "/health: Method Not Allowed"),
        ("GET", "/nowhere", None, 404, "/nowhere: Not Found"),
    ]


def test_every_bad_request_gets_its_4xx_and_the_server_goes_on(server: Server, sample_ds: Path) -> None:
    n_items = load_dataset(sample_ds).n_items
    good = {"history": ["1", "2"], "k": 5}
    _, expected = server.request("POST", "/recommend", good)
    for method, path, body, status, start in _bad_requests(n_items):
        got, ans = server.request(method, path, body)
        assert (got, list(ans)) == (status, ["error"]), (path, body if not isinstance(body, bytes) else body[:40], ans)
        assert ans["error"].startswith(start), ans
        assert server.request("POST", "/recommend", good) == (200, expected)
    assert server.proc.poll() is None


def test_a_body_over_the_limit_declared_in_advance_is_413(server: Server) -> None:
    """A client that announces a huge body gets its 413 without sending it."""
    with socket.create_connection((HOST, server.port), timeout=30) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert server.request("GET", "/health")[0] == 200


# --------------------------------------------------------------------------- errors at start


def test_corrupt_or_foreign_model_file_is_one_error_line(model_file: Path, tmp_path: Path, sample_csv: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(model_file.read_bytes()[:-100])
    res = invoke(["serve", cut, "--port", "0"])
    assert res.exit_code == 1 and "corrupt or truncated model file" in error_line(res)
    foreign = tmp_path / "foreign.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(foreign))
    res = invoke(["serve", foreign, "--port", "0"])
    assert res.exit_code == 1 and "not a recjpq model file" in error_line(res)
    res = invoke(["serve", tmp_path / "missing.safetensors", "--port", "0"])
    assert res.exit_code == 1 and "model file not found" in error_line(res)
    other = tmp_path / "other"
    assert invoke(["prepare", sample_csv, "--out", other, "--min-user-interactions", "6", "-q"]).exit_code == 0
    res = invoke(["serve", model_file, "--data", other, "--port", "0"])
    assert res.exit_code == 1 and "trained on another dataset" in error_line(res)


def test_taken_port_and_missing_extra(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        res = invoke(["serve", model_file, "--host", HOST, "--port", s.getsockname()[1]])
    assert res.exit_code == 1 and error_line(res).startswith("Error: --port: cannot listen on")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    res = invoke(["serve", model_file])
    assert res.exit_code == 1 and "pip install 'recjpq[serve]'" in error_line(res)


# ---------------------------------------------------------------------------------- in process


def _asgi(app: Any, method: str, path: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [], "client": (HOST, 1), "server": (HOST, 80)}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        await app(scope, receive, send)
        return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return asyncio.run(go())


def test_without_data_requests_name_no_user(model_file: Path) -> None:
    from recjpq_cli.serve.engine import Engine, ServeConfig
    from recjpq_cli.serve.payload import RequestError, parse_query

    engine = Engine.load(ServeConfig(model=model_file))
    assert engine.info()["users"] is None and not engine.has_users
    with pytest.raises(RequestError) as e:
        parse_query({"user": "1"}, engine)
    assert e.value.status == 422 and e.value.message.startswith("user: this server knows no users")
    threads = torch.get_num_threads()
    try:
        (a,) = engine.answer([parse_query({"history": ["1", "2"], "k": 3}, engine)])
    finally:
        torch.set_num_threads(threads)  # answer runs torch on one thread (a server setting)
    assert len(a.items) == 3 and "1" not in a.items and "2" not in a.items


def test_503_until_the_model_is_loaded(model_file: Path) -> None:
    from recjpq_cli.serve.app import create_app
    from recjpq_cli.serve.engine import ServeConfig

    app = create_app(ServeConfig(model=model_file))  # lifespan not started: the model never loads
    for method, path in (("GET", "/health"), ("GET", "/info"), ("POST", "/recommend"), ("POST", "/recommend/batch")):
        status, body = _asgi(app, method, path)
        assert status == 503 and body["error"].startswith("model: still loading"), (path, body)


def test_batcher_gathers_concurrent_requests() -> None:
    calls: list[list[int]] = []

    def answer(qs: list[int]) -> list[int]:
        calls.append(list(qs))
        if -1 in qs:
            raise RuntimeError("boom")
        return [q * 10 for q in qs]

    async def go(window_s: float, max_rows: int, units: list[list[int]]) -> list[Any]:
        b = Batcher(answer, window_s=window_s, max_rows=max_rows)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(u) for u in units), return_exceptions=True)
        finally:
            await b.stop()

    units = [[i] for i in range(10)]
    assert asyncio.run(go(0.05, 64, units)) == [[i * 10] for i in range(10)]
    assert calls == [list(range(10))]  # one batch
    calls.clear()
    assert asyncio.run(go(0.05, 1, units)) == [[i * 10] for i in range(10)]
    assert calls == [[i] for i in range(10)]  # batching off: one call each
    calls.clear()
    out = asyncio.run(go(0.05, 4, [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9, 10, 11]]))
    assert out == [[0, 10], [20, 30, 40], [50], [60, 70, 80, 90, 100, 110]]
    assert calls == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]  # up to 4 rows; a larger unit alone
    calls.clear()
    out = asyncio.run(go(0.05, 64, [[1], [-1]]))
    assert isinstance(out[0], RuntimeError) and isinstance(out[1], RuntimeError)


# ------------------------------------------------------------------- SIGTERM (last: it stops the server)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(server: Server) -> None:
    body = json.dumps({"history": ["1", "2", "3"], "k": 4}).encode()
    with socket.create_connection((HOST, server.port), timeout=60) as c:  # a request in flight: half sent
        c.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None  # still waiting for the rest of the request
        c.sendall(body[10:])
        raw = b""
        while chunk := c.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert len(json.loads(payload)["items"]) == 4
    assert server.proc.wait(timeout=60) == 0
