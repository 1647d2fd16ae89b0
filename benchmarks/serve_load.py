"""Load test of `ctrlab serve`: a bounded load on loopback, then throughput, latency and errors.

    .venv/bin/python benchmarks/serve_load.py                  # the full test -> docs/performance.md
    .venv/bin/python benchmarks/serve_load.py --smoke          # a few hundred requests (CI)

It exports the run (default: the FinalMLP run of `make demo` on frappe_x1_subset, trained first if
missing), starts `ctrlab serve` on a free 127.0.0.1 port in its own process, and sends real
`frappe_x1_subset` test rows as raw JSON records in scenarios each bounded by a request count
and a duration: single-row requests at concurrency 1 and 32, and 4096-row batches (one client,
as records and as columns: two clients gain nothing on 2 cores, measured). Then two availability
scenarios (issue 14.23): head-of-line, single rows sent at a fixed rate (latency counted from
the planned send time, so that a stalled server cannot hide by slowing the client) while one
client sends 65,536-row requests back to back; and memory, 8 clients sending 65,536-row
requests at once, with the server's peak RSS (VmHWM) against the bound that its
--max-body-mb-in-flight and --max-rows-in-flight settings give (docs/serving.md). It then stops the
server and measures, in this process, eager PyTorch against the exported ONNX model on the same
encoded rows. The report (a section of docs/performance.md between the serve-load markers, which
`make bench-peers` keeps) gives requests/s, rows/s, p50/p99 latency, non-200 answers and 5xx.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams, with request bodies
serialised once up front: on a 2-core machine the load generator shares the CPU with the server,
and a full-featured client (httpx) costs several times more CPU per request than the server's own
work for a single row, which would measure the client rather than the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO_RUN = REPO / "runs" / "demo" / "FinalMLP-frappe_x1_subset"
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, write_section  # noqa: E402

BEGIN, END = markers("serve-load")
TARGETS = {"single_p99_ms": 5.0, "batch_rows_per_s": 100_000, "hol_single_p99_ms": 10.0}
LARGE_ROWS = 65536
WRITE_PIECE = 256 << 10


def memory_bound_mib(body_mb_in_flight: float, max_body_mb: float, rows_in_flight: int) -> float:
    """The documented bound on what the server holds above its idle RSS (docs/serving.md): the large
    bodies it holds, the Python objects of the one body being parsed (≤ 8× the body; 6× measured for
    Frappe records), and about 100 bytes per row in flight (raw columns, encoded slice, answer)."""
    return body_mb_in_flight + 8 * max_body_mb + rows_in_flight * 100 / 2**20


# ---- a small keep-alive HTTP client ---------------------------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection: send a prepared request, read status and body."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        # A large body goes out by pieces: one write of 11 MB would copy most of it into the transport's
        # buffer at once and stall this client's event loop (and the single rows it times) for ms.
        view = memoryview(raw)
        for at in range(0, len(view), WRITE_PIECE):
            self.writer.write(view[at:at + WRITE_PIECE])
            if len(view) > WRITE_PIECE:
                await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        if re.search(rb"(?i)\r\nconnection:\s*close", head):
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def post(host: str, port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Scenario:
    name: str
    concurrency: int
    rows_per_request: int
    requests: int
    max_seconds: float


@dataclass
class Outcome:
    scenario: Scenario
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    """Requests that got no HTTP answer (connection errors) or a wrong answer (row count)."""
    seconds: float = 0.0

    def record(self, status: int, since: float) -> None:
        """One answer: its latency from ``since`` (a perf_counter time) and its status."""
        self.latencies_ms.append((time.perf_counter() - since) * 1000)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        ok = self.statuses.get(200, 0)
        sent = sum(self.statuses.values()) + self.failures
        return {
            "scenario": self.scenario.name, "concurrency": self.scenario.concurrency,
            "rows_per_request": self.scenario.rows_per_request, "requests": sent, "ok": ok,
            "errors": sent - ok, "http_5xx": sum(n for s, n in self.statuses.items() if s >= 500),
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(ok / self.seconds, 1) if self.seconds else 0.0,
            "rows_per_s": round(ok * self.scenario.rows_per_request / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(lat.max()), 3),
        }


async def run_scenario(host: str, port: int, sc: Scenario, bodies: list[bytes]) -> Outcome:
    """``sc.concurrency`` connections send requests back to back until ``sc.requests`` are sent
    or ``sc.max_seconds`` have passed, whichever is first."""
    raws = [post(host, port, "/predict", b) for b in bodies]
    out = Outcome(sc)
    counter = iter(range(sc.requests))
    start = time.perf_counter()
    deadline = start + sc.max_seconds

    async def worker():
        conn = Connection(host, port)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request(raws[i % len(raws)])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    out.failures += 1
                    conn.close()
                    continue
                out.record(status, t0)
                if status == 200 and sc.rows_per_request > 1 and len(json.loads(body)["probabilities"]) != sc.rows_per_request:
                    out.failures += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(sc.concurrency)))
    out.seconds = time.perf_counter() - start
    return out


async def run_head_of_line(host: str, port: int, singles: list[bytes], large: bytes, large_rows: int,
                           seconds: float, rate: float) -> tuple[Outcome, Outcome]:
    """Single-row requests at ``rate`` per second for ``seconds`` (latency from each one's planned
    send time, on a pool of connections), while one client sends ``large`` requests back to back."""
    single_raws = [post(host, port, "/predict", b) for b in singles]
    large_raw = post(host, port, "/predict", large)
    small = Outcome(Scenario("single rows during large requests", 1, 1, int(seconds * rate), seconds))
    big = Outcome(Scenario("large requests beside single rows", 1, large_rows, 0, seconds))
    stop = asyncio.Event()

    async def large_client():
        conn = Connection(host, port)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.request(large_raw)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    big.failures += 1
                    conn.close()
                    continue
                big.record(status, t0)
        finally:
            conn.close()

    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(Connection(host, port))

    async def one(raw: bytes, planned: float):
        conn = await pool.get()
        try:
            status, _ = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            small.failures += 1
            conn.close()
            return
        finally:
            pool.put_nowait(conn)
        small.record(status, planned)

    t_large = time.perf_counter()
    background = asyncio.ensure_future(large_client())
    await asyncio.sleep(0.5)  # the first large request is being read and parsed
    start = time.perf_counter()
    sent = []
    for k in range(small.scenario.requests):
        planned = start + k / rate
        await asyncio.sleep(max(0.0, planned - time.perf_counter()))
        sent.append(asyncio.ensure_future(one(single_raws[k % len(single_raws)], planned)))
    await asyncio.gather(*sent)
    small.seconds = time.perf_counter() - start
    stop.set()
    await background
    big.seconds = time.perf_counter() - t_large
    big.scenario.requests = sum(big.statuses.values()) + big.failures
    while not pool.empty():
        pool.get_nowait().close()
    return small, big


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), MiB (Linux), of the server and its child
    processes (the parse worker) together; the peaks are summed, which can only overstate."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0, "processes": {}}
    pids, seen = [pid], set()
    while pids:
        p = pids.pop()
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    mib = round(int(value.split()[0]) / 1024, 1)
                    out[key] = round(out[key] + mib, 1)
                    out["processes"].setdefault(str(p), {})[key] = mib
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split() if int(c) not in seen]
        except FileNotFoundError:
            continue
    return out


# ---- the server -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, port: int, extra: list[str] | None = None, timeout: float = 60.0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ctrlab.cli", "serve", str(artifact), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd + list(extra or []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# ---- data -----------------------------------------------------------------------------------------
def raw_records(artifact: Path, rows: int) -> list[dict]:
    """The first ``rows`` raw rows of the artifact's dataset's test split, as JSON records (strings,
    as the CSV holds them), label dropped."""
    from ctrlab.data.readers import read_split
    from ctrlab.serve.artifact import load_artifact

    art = load_artifact(artifact)
    dcfg = art.dataset_config
    columns = [c["name"] for c in art.manifest["schema"]]
    frame = read_split(dcfg, dcfg.resolve("test"), columns).select(columns).head(rows)
    return frame.to_dicts()


def ensure_artifact(run: Path, artifact: Path | None, log) -> Path:
    if artifact is not None and (artifact / "manifest.json").exists():
        return artifact
    if not (run / "model.safetensors").exists():
        log(f"[serve-load] training {run} first (make demo's run)")
        from ctrlab import api

        api.train(dataset="frappe_x1_subset", model="FinalMLP", output=str(run), overwrite=True, log=log)
    from ctrlab.serve.artifact import export_run

    out = artifact or run / "export-onnx"
    log(f"[serve-load] exporting {run} -> {out}")
    return export_run(run, out, overwrite=True)


# ---- eager vs exported, in process ------------------------------------------------------------------
def compare_runtimes(artifact: Path, records: list[dict], repeats: int) -> list[dict]:
    """rows/s of eager PyTorch and of ONNX Runtime on the same encoded rows (4096-row batches and
    single rows), plus the full Predictor path (validate + encode + ONNX) on raw records."""
    import torch

    from ctrlab.serve.predictor import Predictor

    onnx = Predictor(artifact, backend="onnx")
    eager = Predictor(onnx.artifact, backend="torch")
    torch.set_num_threads(os.cpu_count() or 1)
    feeds = onnx.encode_records(records)
    n = len(records)
    single = {k: v[:1] for k, v in feeds.items()}
    rows = []
    for name, pred in (("PyTorch eager", eager), ("ONNX Runtime", onnx)):
        pred.run(feeds), pred.run(single)  # warm-up
        best = min(_timed(lambda: pred.run(feeds)) for _ in range(repeats))
        lat = sorted(_timed(lambda: pred.run(single)) for _ in range(200 * repeats))
        rows.append({"runtime": name, "batch_rows": n, "rows_per_s": round(n / best, 1),
                     "single_row_p50_ms": round(lat[len(lat) // 2] * 1000, 4),
                     "single_row_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 4)})
    best = min(_timed(lambda: onnx.predict_records(records)) for _ in range(repeats))
    lat = sorted(_timed(lambda: onnx.predict_records(records[:1])) for _ in range(200 * repeats))
    rows.append({"runtime": "raw records -> Predictor (ONNX)", "batch_rows": n, "rows_per_s": round(n / best, 1),
                 "single_row_p50_ms": round(lat[len(lat) // 2] * 1000, 4),
                 "single_row_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 4)})
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- report -----------------------------------------------------------------------------------------
def render(result: dict) -> str:
    s = {o["scenario"]: o for o in result["scenarios"]}
    rt = {r["runtime"]: r for r in result["runtimes"]}
    lines = [BEGIN, "## Serving (`ctrlab serve`, issue 6)", "",
             f"`{result['command']}` ({result['date']}, {result['machine']}). Model: {result['model']} on "
             f"`{result['dataset']}`, ONNX backend, default server options. Requests carry real test rows as raw "
             "JSON records; the client is on the same 2 cores as the server.", "",
             "| scenario | concurrency | rows/request | requests | errors | 5xx | requests/s | rows/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in result["scenarios"]:
        lines.append(f"| {o['scenario']} | {o['concurrency']} | {o['rows_per_request']} | {o['requests']:,} | "
                     f"{o['errors']} | {o['http_5xx']} | {o['requests_per_s']:,.0f} | {o['rows_per_s']:,.0f} | "
                     f"{o['p50_ms']:.2f} | {o['p99_ms']:.2f} |")
    lines += ["", "Eager PyTorch against the exported model in one process, same encoded rows (best of "
              f"{result['repeats']} for batches, 200×{result['repeats']} single-row calls):", "",
              "| runtime | rows/s (4096-row batch) | single row p50 ms | single row p99 ms |", "|---|---|---|---|"]
    for r in result["runtimes"]:
        lines.append(f"| {r['runtime']} | {r['rows_per_s']:,.0f} | {r['single_row_p50_ms']:.3f} | "
                     f"{r['single_row_p99_ms']:.3f} |")
    single = s.get("single row, c=1")
    batch = s.get("4096-row batches, records")
    batch_columns = s.get("4096-row batches, columns")
    eager, onnx = rt.get("PyTorch eager"), rt.get("ONNX Runtime")
    errors = sum(o["errors"] for o in result["scenarios"])
    checks = [
        ("zero errors and zero 5xx under load", errors == 0, f"{errors} errors"),
        (f"single-row p99 ≤ {TARGETS['single_p99_ms']:g} ms at concurrency 1", single and single["p99_ms"] <= TARGETS["single_p99_ms"],
         f"{single['p99_ms']:.2f} ms" if single else "not run"),
        (f"≥ {TARGETS['batch_rows_per_s']:,} rows/s with 4096-row batches (records form)",
         batch and batch["rows_per_s"] >= TARGETS["batch_rows_per_s"],
         f"{batch['rows_per_s']:,.0f} rows/s" if batch else "not run"),
        (f"≥ {TARGETS['batch_rows_per_s']:,} rows/s with 4096-row batches (columns form)",
         batch_columns and batch_columns["rows_per_s"] >= TARGETS["batch_rows_per_s"],
         f"{batch_columns['rows_per_s']:,.0f} rows/s" if batch_columns else "not run"),
        ("exported model at least as fast as eager PyTorch", eager and onnx and onnx["rows_per_s"] >= eager["rows_per_s"],
         f"{onnx['rows_per_s'] / eager['rows_per_s']:.2f}× on batches, single row p50 "
         f"{eager['single_row_p50_ms'] / onnx['single_row_p50_ms']:.1f}× faster" if eager and onnx else "not run"),
    ]
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {what} |" for name, ok, what in checks]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def render_availability(result: dict) -> str:
    """The head-of-line and memory scenarios (issue 14.23): their own section of the report."""
    begin, end = markers("serve-availability")
    avail = {o["scenario"]: o for o in result["availability"]}
    hol, hol_big, burst = (avail["single rows during large requests"], avail["large requests beside single rows"],
                           avail["8 large requests at once"])
    mem, h = result["memory"], result["head_of_line"]
    lines = [begin, "## Serving: availability under large requests (issue 14.23)", "",
             f"`{result['command']}` ({result['date']}, {result['machine']}{result.get('note', '')}). "
             f"Default server options. Single rows are sent at {h['rate_per_s']:g}/s for {h['seconds']:g} s, latency "
             "counted from each one's planned send time, while one client sends "
             f"{h['large_rows']:,}-row requests ({mem['body_mb']} MB of records each) back to back. Then 8 clients "
             f"send {h['large_rows']:,}-row requests at once.", "",
             "| scenario | requests | errors | 5xx | rows/s | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|"]
    for o in (hol, hol_big, burst):
        lines.append(f"| {o['scenario']} | {o['requests']:,} | {o['errors']} | {o['http_5xx']} | "
                     f"{o['rows_per_s']:,.0f} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {o['max_ms']:.2f} |")
    lines += ["", f"Server memory (the server and its parse worker process): {mem['idle_mib']:,.0f} MiB resident before "
              f"these scenarios, peak (VmHWM) "
              f"{mem['VmHWM']:,.0f} MiB, {mem['VmRSS']:,.0f} MiB after them. The bound that "
              f"[serving.md](serving.md#memory) gives for the default settings is {mem['bound_mib']:,.0f} MiB: idle, "
              "plus the large bodies in flight, plus 8 times the largest body, plus 100 B per row in flight.", ""]
    errors = sum(o["errors"] for o in (hol, hol_big, burst))
    checks = [
        ("zero errors and zero 5xx", errors == 0, f"{errors} errors"),
        (f"single-row p99 ≤ {TARGETS['hol_single_p99_ms']:g} ms while large requests are scored",
         hol["p99_ms"] <= TARGETS["hol_single_p99_ms"], f"{hol['p99_ms']:.2f} ms"),
        ("peak RSS within the bound of the memory settings", mem["VmHWM"] <= mem["bound_mib"],
         f"{mem['VmHWM']:,.0f} MiB ≤ {mem['bound_mib']:,.0f} MiB" if mem["VmHWM"] <= mem["bound_mib"]
         else f"{mem['VmHWM']:,.0f} MiB > {mem['bound_mib']:,.0f} MiB"),
    ]
    lines += ["| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {what} |" for name, ok, what in checks]
    lines += ["", end]
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=DEMO_RUN, help="trained run to export (default: make demo's)")
    ap.add_argument("--artifact", type=Path, help="an exported artifact to serve (skips export)")
    ap.add_argument("--smoke", action="store_true", help="a few hundred requests; fails on any error (CI)")
    ap.add_argument("--output", type=Path, help="markdown file whose serve-load section is replaced "
                    "(default docs/performance.md; none with --smoke)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the in-process runtime comparison")
    ap.add_argument("--only-availability", action="store_true",
                    help="run only the head-of-line and memory scenarios (and write only their section)")
    ap.add_argument("--note", default="", help="a remark on the machine's state for the report (e.g. its load)")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    artifact = ensure_artifact(args.run, args.artifact, log)
    manifest = json.loads((artifact / "manifest.json").read_text())
    records = raw_records(artifact, 4096)
    singles = [json.dumps({"records": [r]}).encode() for r in records[:1000]]
    batches = [json.dumps({"records": records}).encode()]
    columnar = [json.dumps({"columns": {c: [r[c] for r in records] for c in records[0]}}).encode()]
    k = 0.05 if args.smoke else 1.0
    scenarios = [
        (Scenario("single row, c=1", 1, 1, int(5000 * k), 60 * k), singles),
        (Scenario("single row, c=32", 32, 1, int(40000 * k), 60 * k), singles),
        (Scenario("4096-row batches, records", 1, len(records), max(int(600 * k), 4), 60 * k), batches),
        (Scenario("4096-row batches, columns", 1, len(records), max(int(600 * k), 4), 60 * k), columnar),
    ]
    if args.only_availability:
        scenarios = []
    large_rows = 8192 if args.smoke else LARGE_ROWS
    large = (records * (large_rows // len(records) + 1))[:large_rows]
    large_body = json.dumps({"records": large}).encode()
    del large
    hol_seconds, hol_rate = (3.0, 50.0) if args.smoke else (20.0, 100.0)
    port = free_port()
    log(f"[serve-load] starting ctrlab serve {artifact} on 127.0.0.1:{port}")
    proc = start_server(artifact, port)
    outcomes, availability = [], []
    try:
        for sc, bodies in scenarios:
            asyncio.run(run_scenario("127.0.0.1", port, Scenario(sc.name + " warm-up", sc.concurrency,
                                                                 sc.rows_per_request, sc.concurrency * 5, 10), bodies))
            o = asyncio.run(run_scenario("127.0.0.1", port, sc, bodies)).summary()
            outcomes.append(o)
            log(f"[serve-load] {o}")
        # one large request first, so that the parse worker has loaded: idle then counts both processes
        asyncio.run(run_scenario("127.0.0.1", port, Scenario("large warm-up", 1, large_rows, 1, 300), [large_body]))
        rss_idle = rss_mib(proc.pid)["VmRSS"]
        small, big = asyncio.run(run_head_of_line("127.0.0.1", port, singles, large_body, large_rows,
                                                  hol_seconds, hol_rate))
        for o in (small.summary(), big.summary()):
            availability.append(o)
            log(f"[serve-load] {o}")
        burst = Scenario("8 large requests at once", 8, large_rows, 8 if args.smoke else 16, 300)
        o = asyncio.run(run_scenario("127.0.0.1", port, burst, [large_body])).summary()
        memory = {**rss_mib(proc.pid), "idle_mib": rss_idle, "body_mb": round(len(large_body) / 2**20, 1)}
        availability.append(o)
        log(f"[serve-load] {o} {memory}")
    finally:
        server_log = stop_server(proc)
    from ctrlab.serve.config import ServeConfig

    sc_default = ServeConfig()
    memory["bound_mib"] = round(rss_idle + memory_bound_mib(sc_default.max_body_bytes_in_flight / 2**20,
                                                            sc_default.max_body_bytes / 2**20,
                                                            sc_default.max_rows_in_flight), 1)
    runtimes = [] if args.only_availability else compare_runtimes(artifact, records, 1 if args.smoke else args.repeats)
    for r in runtimes:
        log(f"[serve-load] {r}")
    from ctrlab.bench.runner import cpu_name

    result = {
        "command": "python benchmarks/serve_load.py" + (" --smoke" if args.smoke else "")
                   + (" --only-availability" if args.only_availability else ""),
        "note": f"; {args.note}" if args.note else "",
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {cpu_name()}",
        "model": manifest["model"]["name"], "dataset": manifest["dataset"], "repeats": args.repeats,
        "scenarios": outcomes, "runtimes": runtimes, "availability": availability, "memory": memory,
        "head_of_line": {"seconds": hol_seconds, "rate_per_s": hol_rate, "large_rows": large_rows},
    }
    sections = ([] if args.only_availability else [render(result)]) + [render_availability(result)]
    print("\n".join(sections))
    output = args.output or (None if args.smoke else REPO / "docs" / "performance.md")
    if output:
        for section in sections:
            write_section(output, section)
        log(f"[serve-load] wrote the serving section of {output}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    bad = [o for o in outcomes + availability if o["errors"] or o["http_5xx"]]
    if bad:
        log(f"[serve-load] errors under load: {bad}\n{server_log[-3000:]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
