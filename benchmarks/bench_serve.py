"""``recjpq serve`` under load: a 1M-item model (d=128) answering a real HTTP client on the loopback.

Not run in CI. The model is built once and cached in --work: ``synth`` (100,000 users, 1,000,000 items,
2,000,000 interactions), ``prepare``, ``assign --strategy random`` (M=8, ksub=256), ``train`` a few steps (d=128,
max_len 50) and ``compress``. The server runs as ``recjpq serve MODEL --data DS --port 0`` in a subprocess,
the client (standard library: threads and http.client, one keep-alive connection per thread) in this one;
every byte goes to 127.0.0.1. Request bodies are ``{"history": [...], "k": 10}`` with the last 50 items of
randomly chosen users (seeded).

- open loop: requests are sent at a fixed rate (150 per second) for 60 s, each at its scheduled time; latency
  counts from the scheduled time to the complete answer (a late send is counted as waiting, no coordinated
  omission). Goal: zero errors and p99 under 100 ms.
- closed loop: 32 clients, each sending its next request when the previous answer arrived, 10,000 requests in
  all. Goal: zero errors; reported: throughput, p50 and p99.

Both loops run against the default server (batching on: ``--batch-window-ms 2 --max-batch 64``) and against
the same server with batching off (``--max-batch 1``), in the same run. Each phase is bounded in time
(``--phase-limit``). Exits 1 when a goal is missed (the goals apply to the default server).

    flock /tmp/recjpq-cpu.lock python benchmarks/bench_serve.py --json out/bench_serve.json
    python benchmarks/bench_serve.py --rate 50 --seconds 10 --requests 1000     # a quick look
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # the only address this benchmark talks to
SHAPE = {"users": 100_000, "items": 1_000_000, "interactions": 2_000_000, "d": 128, "M": 8, "ksub": 256,
         "max_len": 50, "steps": 20, "seed": 0}
GOALS = {"open_p99_ms": 100.0, "errors": 0}
SERVERS = {"batching on": ["--batch-window-ms", "2", "--max-batch", "64"], "batching off": ["--max-batch", "1"]}


def cli(args: list[Any]) -> None:
    cmd = [sys.executable, "-m", "recjpq_cli", *map(str, args)]
    print("  $ recjpq " + " ".join(map(str, args)), file=sys.stderr)
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")


def build(work: Path) -> tuple[Path, Path]:
    """The cached 1M-item model file and its dataset folder (rebuilt when SHAPE changes)."""
    work.mkdir(parents=True, exist_ok=True)
    model, ds, stamp = work / "model.safetensors", work / "ds", work / "shape.json"
    if model.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == SHAPE:
        return model, ds
    s = SHAPE
    print(f"building the {s['items']:,}-item model in {work} (once) ...", file=sys.stderr)
    t0 = time.perf_counter()
    cli(["synth", "--users", s["users"], "--items", s["items"], "--interactions", s["interactions"],
         "--seed", s["seed"], "--out", work / "log.parquet", "--overwrite", "-q"])
    cli(["prepare", work / "log.parquet", "--out", ds, "--overwrite", "-q"])
    cli(["assign", ds, "--strategy", "random", "-m", s["M"], "-b", s["ksub"], "--out", work / "codes.npy",
         "--overwrite", "-q"])
    cli(["train", ds, "--codes", work / "codes.npy", "--out", work / "run", "--set", f"d={s['d']}",
         "--set", f"max_len={s['max_len']}", "--set", "val_users=256", "--max-steps", s["steps"],
         "--device", "cpu", "--overwrite", "-q"])
    cli(["compress", work / "run", "--data", ds, "--out", model, "--overwrite", "-q"])
    stamp.write_text(json.dumps(SHAPE))
    print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return model, ds


def bodies(ds: Path, n: int, seed: int) -> list[bytes]:
    """n request bodies: the last max_len raw items of randomly chosen users."""
    from recjpq_cli.data.schema import load_dataset

    d = load_dataset(ds)
    raw = d.raw_items().to_list()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.randrange(d.n_users)
        items = d.item[max(d.offsets[u], d.offsets[u + 1] - SHAPE["max_len"]):d.offsets[u + 1]]
        out.append(json.dumps({"history": [raw[i] for i in items.tolist()], "k": 10}).encode())
    return out


class Server:
    """``recjpq serve`` in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(self, model: Path, ds: Path, extra: list[str], timeout: float = 600):
        cmd = [sys.executable, "-m", "recjpq_cli", "serve", str(model), "--data", str(ds), "--host", HOST,
               "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        t0 = time.monotonic()
        for line in self.proc.stderr:
            m = re.search(r"ready on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.ready_line = line.strip()
                break
            if time.monotonic() - t0 > timeout:
                break
        else:
            sys.exit(f"serve did not start: exit {self.proc.wait()}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def one(conn: http.client.HTTPConnection, body: bytes) -> bool:
    conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status == 200 and len(json.loads(data)["items"]) == 10


def summary(lat_s: list[float], errors: int, wall: float, sent: int) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in lat_s)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) >= 2 else [float("nan")] * 99
    return {"requests": sent, "answered": len(ms), "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(ms) / wall, 1) if wall else None, "p50_ms": round(q[49], 2),
            "p90_ms": round(q[89], 2), "p99_ms": round(q[98], 2), "max_ms": round(ms[-1], 2) if ms else None}


def open_loop(port: int, bodies_: list[bytes], rate: float, seconds: float, workers: int, limit: float) -> dict:
    """Requests at a fixed rate; latency from each request's scheduled time."""
    n = int(rate * seconds)
    todo: queue.Queue = queue.Queue()
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + limit

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while True:
            item = todo.get()
            if item is None:
                return
            i, at = item
            try:
                ok = one(conn, bodies_[i % len(bodies_)])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            done = time.monotonic()
            with lock:
                if ok:
                    lat.append(done - at)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    sent = 0
    for i in range(n):
        at = t0 + i / rate
        pause = at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if time.monotonic() > deadline:
            break
        todo.put((i, at))
        sent += 1
    for _ in threads:
        todo.put(None)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out = summary(lat, errors[0] + (sent - len(lat) - errors[0]), time.monotonic() - t0, sent)
    out["rate"] = rate
    return out


def closed_loop(port: int, bodies_: list[bytes], clients: int, total: int, limit: float) -> dict:
    """``clients`` threads, each sending its next request when its answer came, ``total`` in all."""
    counter = iter(range(total))
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + limit

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.monotonic()
            try:
                ok = one(conn, bodies_[i % len(bodies_)])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            with lock:
                if ok:
                    lat.append(time.monotonic() - t)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    out = summary(lat, errors[0] + max(0, total - len(lat) - errors[0]), wall, total)
    out["clients"] = clients
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "out" / "bench_serve", help="cache of the 1M-item model")
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--phase-limit", type=float, default=300.0, help="seconds at most per phase")
    ap.add_argument("--servers", default=",".join(SERVERS), help="which of: " + ", ".join(SERVERS))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--build-only", action="store_true", help="make the cached model and stop")
    ap.add_argument("--model", type=Path, default=None, help="serve this model file instead (with --data)")
    ap.add_argument("--data", type=Path, default=None, help="the dataset folder of --model")
    a = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # finally: stops the server
    model, ds = (a.model, a.data) if a.model is not None and a.data is not None else build(a.work)
    if a.build_only:
        return 0
    reqs = bodies(ds, 2000, seed=0)
    results: dict[str, Any] = {"shape": SHAPE, "model_bytes": model.stat().st_size, "cpus": os.cpu_count(),
                               "load_average": os.getloadavg(), "servers": {}}
    for name in a.servers.split(","):
        print(f"{name}: starting recjpq serve {' '.join(SERVERS[name])} ...", file=sys.stderr)
        srv = Server(model, ds, SERVERS[name])
        try:
            conn = http.client.HTTPConnection(HOST, srv.port, timeout=30)
            for b in reqs[:50]:  # warm the connection paths
                one(conn, b)
            conn.close()
            print(f"{name}: open loop, {a.rate:g} req/s for {a.seconds:g} s ...", file=sys.stderr)
            ol = open_loop(srv.port, reqs, a.rate, a.seconds, workers=a.clients, limit=a.phase_limit)
            print(f"  {ol}", file=sys.stderr)
            print(f"{name}: closed loop, {a.clients} clients, {a.requests:,} requests ...", file=sys.stderr)
            cl = closed_loop(srv.port, reqs, a.clients, a.requests, limit=a.phase_limit)
            print(f"  {cl}", file=sys.stderr)
        finally:
            rc = srv.stop()
        results["servers"][name] = {"args": SERVERS[name], "open_loop": ol, "closed_loop": cl, "exit_code": rc}
    results["load_average_after"] = os.getloadavg()
    return report(results, a.json)


def report(results: dict[str, Any], json_path: Path | None) -> int:
    print("| server | open loop: rate | errors | p50 | p99 | closed loop: clients | errors | throughput "
          "| p50 | p99 | exit on SIGTERM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results["servers"].items():
        o, c = r["open_loop"], r["closed_loop"]
        print(f"| {name} | {o['rate']:g}/s x {o['seconds']:.0f} s | {o['errors']} | {o['p50_ms']} ms "
              f"| {o['p99_ms']} ms | {c['clients']} x {c['requests']:,} | {c['errors']} | "
              f"{c['throughput_rps']} req/s | {c['p50_ms']} ms | {c['p99_ms']} ms | {r['exit_code']} |")
    missed = []
    srv = results["servers"]
    if "batching on" in srv:
        on = srv["batching on"]
        if on["open_loop"]["p99_ms"] >= GOALS["open_p99_ms"]:
            missed.append(f"open-loop p99 {on['open_loop']['p99_ms']} ms >= {GOALS['open_p99_ms']} ms")
        if "batching off" in srv:
            off = srv["batching off"]
            results["closed_throughput_ratio_on_off"] = round(
                on["closed_loop"]["throughput_rps"] / off["closed_loop"]["throughput_rps"], 2)
            print(f"closed-loop throughput, batching on / off: {results['closed_throughput_ratio_on_off']}x")
    for name, r in srv.items():
        for phase in ("open_loop", "closed_loop"):
            if r[phase]["errors"] != GOALS["errors"]:
                missed.append(f"{name} {phase}: {r[phase]['errors']} errors")
        if r["exit_code"] != 0:
            missed.append(f"{name}: exit code {r['exit_code']} after SIGTERM")
    results["missed"] = missed
    print(f"load average before / after: {results['load_average']} / {results['load_average_after']}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
    for m in missed:
        print(f"GOAL MISSED: {m}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
