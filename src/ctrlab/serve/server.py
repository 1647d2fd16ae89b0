"""HTTP prediction server: FastAPI app, served by uvicorn, with micro-batching.

    ctrlab serve artifacts/finalmlp --port 8000
    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"records": [{"user": "12", "item": "7", ...}]}'
    -> {"probabilities": [0.8312], "model": "FinalMLP", "rows": 1, "unseen_fields": [0]}
    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"columns": {"user": ["12", "40"], ...}}'
    -> {"probabilities": [0.8312, 0.1207], "model": "FinalMLP", "rows": 2, "unseen_fields": [0, 0]}

A multi-task model (e.g. ESMM) answers its main task in ``probabilities`` and every task's in
``tasks`` (``{"ctr": [...], "cvr": [...], "ctcvr": [...]}``).

``unseen_fields``: per row, how many of its categorical and sequence fields hold values the training
vocabularies do not know (:mod:`ctrlab.data.unseen`); a request that is mostly such values is logged
(rate-limited, :mod:`ctrlab.serve.unseen`) and counted in ``/health``.

Records are the natural form for a few rows; columns (one array per field) skip the transposition
and the repeated keys, for large batches.

Endpoints: ``POST /predict`` (raw records in, probabilities out, in request order), ``GET /health``,
``GET /metadata`` (model, raw schema, run metrics, versions, serving limits). ``/docs``, ``/redoc``
and ``/openapi.json`` only with ``api_docs`` (``--api-docs``).

Two-stage scoring (models with ``supports_user_state``: SDIM, SUAN, LightSUAN; torch backend):
``PUT /users/{user}`` with ``{"record": {...}}`` (the user's raw behaviour-sequence columns) computes the
candidate-independent state once (SDIM's SimHash bucket tables, the paper's BSE; SUAN's cached history
tokens) and keeps it (at most ``max_users``, least recently used dropped); ``POST /users/{user}/predict``
with ``{"records": [...]}`` (candidates without the sequence columns) scores them against it, at a cost
that does not grow with the history (SDIM) or without re-encoding it (SUAN); ``DELETE /users/{user}``.

Each request is parsed and checked on its own (column-wise, see :mod:`ctrlab.serve.predictor`):
small bodies on the event loop, larger ones (over 32 KiB) one at a time in the parse worker process
(:mod:`ctrlab.serve.parse_worker`; with ``parse_process`` off, in a thread), passed to it and back in
pieces so that the event loop never copies a whole large body at once. The checked raw columns then go
to :class:`MicroBatcher`, which schedules model calls by rows: requests that fit are encoded and
scored together (a Polars encode costs about the same for 1 row as for 100), a request larger
than ``max_batch_rows`` is scored in slices that take turns with the small requests. It waits at
most ``max_wait_ms`` for small requests still being checked; a lone client pays no wait.

Memory is bounded by two budgets: ``max_body_bytes_in_flight`` for large bodies (received, parsed
or waiting; further ones wait in TCP) and ``max_rows_in_flight`` for parsed rows (waiting for or in
the model). When more than ``queue_size`` requests wait, the server answers 503 with ``Retry-After``.

Bad input is a 4xx naming the record and field: 400 for a body that is not strict JSON (NaN,
Infinity and numbers beyond the float range included), 413 for a body over ``max_body_bytes`` or more
than ``max_request_rows`` records, 415 for a Content-Type other than JSON, 422 for content that does
not fit the schema. A client that goes away during its upload costs one log line, not a traceback.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from ..config import ConfigError
from .config import ServeConfig
from .parse_worker import ParseWorker, ParseWorkerFailed
from .parsing import BODY_FORMS, check_body, parse_body  # noqa: F401 - parse_body, BODY_FORMS: public here too
from .predictor import Predictor, RequestError, main_task, task_columns
from .unseen import Scores, UnseenLog

log = logging.getLogger("ctrlab.serve")

SMALL_TRAFFIC_WINDOW_S = 1.0
"""Small requests count as arriving for this long after the last one (see ``ServeConfig.interleave_rows``)."""

LARGE_ANSWER_ROWS = 16384
"""Answers of more rows are serialised in a thread (65,536 probabilities take about 2.5 ms of orjson,
which on the event loop every single-row request in flight would wait for)."""

SMALL_BODY_BYTES = 32 << 10
"""Bodies up to this size are parsed and checked on the event loop (cheaper than a thread hop) and
take nothing from ``max_body_bytes_in_flight``; larger ones go to the parse worker process."""


class Overloaded(RuntimeError):
    """The batch queue is full."""


class Budget:
    """A count of units (rows, bytes) that coroutines take and give back, with waiting when it is spent.

    ``fifo``: waiters are served strictly in arrival order (a later, smaller request does not pass an
    earlier, larger one). Otherwise a request that fits goes ahead of waiting larger ones, so that a
    big request waiting for room never holds up single rows; the waiters are then served oldest first
    as room frees."""

    def __init__(self, capacity: int, fifo: bool):
        self.capacity = capacity
        self.fifo = fifo
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    async def acquire(self, n: int) -> None:
        if n > self.capacity:
            raise ValueError(f"{n} exceeds the whole budget of {self.capacity}")
        if self.used + n <= self.capacity and not (self.fifo and self._waiters):
            self._take(n)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as the waiter was cancelled
                self.release(n)
            else:
                try:
                    self._waiters.remove((n, fut))
                except ValueError:  # _wake already dropped the cancelled waiter
                    pass
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        for item in list(self._waiters):
            n, fut = item
            if self.used + n > self.capacity:
                if self.fifo:
                    break
                continue
            self._waiters.remove(item)
            if not fut.done():
                self._take(n)
                fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


@dataclass(eq=False)
class _Job:
    """One admitted request: its raw frame, how many of its rows went to the model, the answers so far."""

    frame: Any
    fut: asyncio.Future
    taken: int = 0
    parts: list = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.frame.height

    @property
    def rest(self) -> int:
        return self.rows - self.taken


class MicroBatcher:
    """Schedules model calls by rows: requests that fit are scored together (one encode, one model call
    of at most ``max_batch_rows`` rows); a larger request is scored in slices of ``max_batch_rows``
    rows. Calls with small requests and slices of large ones alternate, so that a single row waits
    for at most about one slice, however large the requests in flight. Rows admitted at once are
    bounded by ``max_rows_in_flight``. The model runs in a worker thread."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig):
        self.predictor = predictor
        self.max_rows = cfg.max_batch_rows
        self.interleave_rows = min(cfg.interleave_rows, cfg.max_batch_rows)
        self.last_small = -float("inf")
        """When the last request of at most ``interleave_rows`` rows was submitted (perf_counter)."""
        self.max_wait = cfg.max_wait_ms / 1000.0
        self.queue_size = cfg.queue_size
        self.rows_in_flight = Budget(cfg.max_rows_in_flight, fifo=False)
        self.jobs: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self.arriving = 0
        """Small requests that have arrived and are being read and checked on the event loop (not yet queued)."""
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrlab-model")
        self.task: asyncio.Task | None = None
        self._slice_owed = False
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    async def submit(self, frame, admitted: Callable[[], None] | None = None) -> Scores:
        """Queue one request's validated raw frame; returns its scores (or raises its RequestError).
        Waits while its rows do not fit into ``max_rows_in_flight``; calls ``admitted`` once they do."""
        rows = frame.height
        if rows > self.rows_in_flight.capacity:
            raise RequestError(f"{rows} rows in one request; at most {self.rows_in_flight.capacity} rows may be "
                               "in flight (split the request, or raise --max-rows-in-flight)", status=413)
        if len(self.jobs) + self.rows_in_flight.waiting >= self.queue_size:
            raise Overloaded(f"{self.queue_size} requests are waiting for the model")
        if rows <= self.interleave_rows:
            self.last_small = time.perf_counter()
        await self.rows_in_flight.acquire(rows)
        try:
            if admitted is not None:
                admitted()
            job = _Job(frame, asyncio.get_running_loop().create_future())
            self.jobs.append(job)
            self._wakeup.set()
            return await job.fut
        finally:
            self.rows_in_flight.release(rows)

    def call_rows(self) -> int:
        """Most rows for the next model call: ``interleave_rows`` while small requests are arriving
        (one came within :data:`SMALL_TRAFFIC_WINDOW_S`), so that they wait for short slices only;
        else ``max_batch_rows``."""
        small_traffic = self.arriving > 0 or time.perf_counter() - self.last_small < SMALL_TRAFFIC_WINDOW_S
        return self.interleave_rows if small_traffic else self.max_rows

    def _pending_rows(self) -> int:
        return sum(j.rest for j in self.jobs)

    async def _collect(self) -> list[tuple[_Job, int, int]]:
        """The next model call: (job, first row, end row) slices, at most :meth:`call_rows` rows in all."""
        while True:
            while self.jobs and self.jobs[0].fut.done():  # a client that went away is not scored
                self.jobs.popleft()
            if self.jobs:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = time.perf_counter() + self.max_wait
        while self.arriving > 0 and self._pending_rows() < self.call_rows():
            left = deadline - time.perf_counter()
            if left <= 0:
                break  # nobody else is coming soon: do not make this batch wait
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                break
        limit = self.call_rows()
        live = [j for j in self.jobs if not j.fut.done()]
        whole, budget = [], limit
        for job in live:  # requests (or the last part of one) that fit whole, oldest first
            if job.rest <= budget:
                whole.append((job, job.taken, job.rows))
                budget -= job.rest
        large = [j for j in live if j.rest > limit]
        if whole and not (self._slice_owed and large):
            picks = whole
            self._slice_owed = bool(large)  # the next call goes to a large request
        else:
            picks, budget = [], limit
            for job in live:
                if budget <= 0:
                    break
                if job.rest > 0 and (job.rest > limit or not whole):
                    n = min(budget, job.rest)
                    picks.append((job, job.taken, job.taken + n))
                    budget -= n
            self._slice_owed = False
        for job, _, end in picks:
            job.taken = end
        self.jobs = deque(j for j in self.jobs if j.rest > 0 and not j.fut.done())
        return picks

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            picks = await self._collect()
            frames = [job.frame.slice(lo, hi - lo) for job, lo, hi in picks]
            try:
                results = await loop.run_in_executor(self.model_thread, self.predictor.score_frames, frames)
            except Exception as exc:  # the model failed: every request in the call gets the error (a 500)
                results = [exc] * len(picks)
            else:
                self.batches += 1
                self.rows += sum(r.rows for r in results if isinstance(r, Scores))
            for (job, lo, hi), res in zip(picks, results):
                if job.fut.done():
                    continue
                if isinstance(res, RequestError):
                    row = None if res.row is None else res.row + lo  # the row number within the request
                    job.fut.set_exception(RequestError(res.message, res.status, res.field, row))
                elif isinstance(res, Exception):
                    job.fut.set_exception(res)
                else:
                    job.parts.append(res)
                    if hi == job.rows:
                        job.fut.set_result(Scores.concat(job.parts))
            self.jobs = deque(j for j in self.jobs if not j.fut.done())


def _json_response(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
    # orjson writes a float32 array directly (shortest round-trip digits): 25x faster than
    # json.dumps(array.tolist()) for a 4096-row answer
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def create_app(predictor: Predictor, cfg: ServeConfig | None = None):
    """The FastAPI app serving ``predictor``."""
    cfg = cfg or ServeConfig()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = MicroBatcher(predictor, cfg)
        batcher.start()
        state["batcher"] = batcher
        state["bodies"] = Budget(cfg.max_body_bytes_in_flight, fifo=True)
        state["parse_thread"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrlab-parse")
        state["parse_worker"] = ParseWorker(predictor.artifact.path, cfg.max_request_rows) if cfg.parse_process else None
        if state["parse_worker"] is not None:
            await state["parse_worker"].start()  # it loads while the server starts
        app.state.parse_worker = state["parse_worker"]
        state["started"] = time.time()
        state["aborted_uploads"] = 0
        state["unseen"] = UnseenLog(predictor.unseen, log)
        yield
        await batcher.stop()
        if state["parse_worker"] is not None:
            await state["parse_worker"].stop()
        state["parse_thread"].shutdown(wait=False, cancel_futures=True)

    docs = {} if cfg.api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title=f"ctrlab: {predictor.artifact.manifest['model']['name']}", lifespan=lifespan,
                  description="Click probabilities for raw feature records.", **docs)
    cell = {c["name"]: {"type": c["accepts"]} for c in predictor.schema}
    records = {"type": "array", "minItems": 1, "maxItems": cfg.max_request_rows, "items": {
        "type": "object", "additionalProperties": False, "required": predictor.columns, "properties": cell}}
    columns = {"type": "object", "additionalProperties": False, "required": predictor.columns, "properties": {
        name: {"type": "array", "minItems": 1, "maxItems": cfg.max_request_rows, "items": c}
        for name, c in cell.items()}}
    request_schema = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["records"], "properties": {"records": records}},
        {"type": "object", "additionalProperties": False, "required": ["columns"], "properties": {"columns": columns}},
    ]}

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": request_schema}}}})
    async def predict(request: Request):
        batcher: MicroBatcher = state["batcher"]
        kind = request.headers.get("content-type")
        if kind is not None and not _is_json(kind):
            return _json_response(415, {"error": f"Content-Type {kind.split(';')[0].strip()!r} is not JSON; send "
                                                 "Content-Type: application/json", "field": None, "row": None})
        declared_text = request.headers.get("content-length")
        declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else None
        if declared is not None and declared > cfg.max_body_bytes:
            return _too_large(cfg)
        bodies: Budget = state["bodies"]
        reserved = 0
        try:
            body = bytearray()
            stream = request.stream()
            small = declared is None or declared <= SMALL_BODY_BYTES
            frame = None
            if small:
                batcher.arriving += 1  # the batcher may wait a moment for it (max_wait_ms)
                try:
                    async for chunk in stream:  # until it turns out large (a chunked upload declares no length)
                        body += chunk
                        if len(body) > SMALL_BODY_BYTES:
                            small = False
                            break
                    if small:
                        frame = check_body(predictor, bytes(body), cfg.max_request_rows)
                finally:
                    batcher.arriving -= 1
            if frame is None:
                need = declared if declared is not None else cfg.max_body_bytes  # chunked: assume the worst
                await bodies.acquire(need)
                reserved = need
                # kept as the chunks received: growing one buffer would copy the whole body now and then,
                # on the event loop, while single-row requests wait
                chunks, size = [bytes(body)], len(body)
                del body
                async for chunk in stream:
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cfg.max_body_bytes:
                        return _too_large(cfg)
                if state["parse_worker"] is not None:
                    frame = await state["parse_worker"].check(chunks)
                else:
                    frame = await asyncio.get_running_loop().run_in_executor(
                        state["parse_thread"], _check_chunks, predictor, chunks, cfg.max_request_rows)
                del chunks

            def admitted():  # the body's bytes are held until its rows are admitted: waiting frames stay bounded
                nonlocal reserved
                if reserved:
                    bodies.release(reserved)
                    reserved = 0

            scores = await batcher.submit(frame, admitted)
        except RequestError as exc:
            return _json_response(exc.status, exc.detail())
        except (Overloaded, ParseWorkerFailed) as exc:
            return _json_response(503, {"error": f"server busy: {exc}; retry shortly"}, {"Retry-After": "1"})
        except ClientDisconnect:
            state["aborted_uploads"] += 1
            log.warning("ctrlab serve: a client closed its connection during its upload of /predict "
                        "(%d aborted so far); nothing was scored", state["aborted_uploads"])
            return Response(status_code=400)  # nobody reads it
        finally:
            if reserved:
                bodies.release(reserved)
        state["unseen"].note(scores, frame)
        answer = {"probabilities": main_task(scores.probabilities), "model": predictor.metadata_model,
                  "rows": scores.rows, "unseen_fields": scores.unseen_fields}
        if predictor.tasks:  # a multi-task model: every task's probabilities too (the main one is "probabilities")
            answer["tasks"] = task_columns(scores.probabilities, predictor.tasks)
        if scores.rows > LARGE_ANSWER_ROWS:
            return await asyncio.to_thread(_json_response, 200, answer)
        return _json_response(200, answer)

    # ---- two-stage scoring: a user's behaviour state once, then candidates (SDIM's BSE, SUAN) --------
    users: OrderedDict[str, Any] = OrderedDict()  # least recently used first

    async def _json_body(request: Request, field: str) -> Any:
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            raise RequestError(f"body over {cfg.max_body_bytes} bytes", status=413)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"body is not JSON: {exc}") from None
        if not isinstance(payload, dict) or field not in payload or len(payload) != 1:
            raise RequestError(f"send an object with one key {field!r}", field=field)
        return payload[field]

    @app.put("/users/{user}")
    async def put_user(user: str, request: Request):
        """Store a user's state from its raw behaviour-sequence columns: ``{"record": {...}}``."""
        try:
            record = await _json_body(request, "record")
            user_state = await asyncio.to_thread(predictor.encode_user, record)
        except RequestError as exc:
            return _json_response(exc.status, exc.detail())
        users[user] = user_state
        users.move_to_end(user)
        while len(users) > cfg.max_users:
            users.popitem(last=False)
        return {"user": user, "stored": True, "users": len(users)}

    @app.post("/users/{user}/predict")
    async def predict_user(user: str, request: Request):
        """Probabilities of candidates ``{"records": [...]}`` (no behaviour-sequence columns) of a stored user."""
        try:
            records = await _json_body(request, "records")
            if user not in users:
                raise RequestError(f"no stored state for user {user!r} (never sent, or dropped beyond max_users="
                                   f"{cfg.max_users}); PUT /users/{{user}} with its record first", status=404)
            if isinstance(records, list) and len(records) > cfg.max_request_rows:
                raise RequestError(f"{len(records)} records; at most {cfg.max_request_rows} per request", status=413)
            users.move_to_end(user)
            probs = await asyncio.to_thread(predictor.score_user, users[user], records)
        except RequestError as exc:
            return _json_response(exc.status, exc.detail())
        return {"probabilities": probs.tolist(), "model": predictor.metadata_model, "rows": len(probs)}

    @app.delete("/users/{user}")
    async def delete_user(user: str):
        return {"user": user, "deleted": users.pop(user, None) is not None}

    @app.get("/health")
    async def health():
        batcher: MicroBatcher = state["batcher"]
        return {"status": "ok", "queued": len(batcher.jobs), "rows_in_flight": batcher.rows_in_flight.used,
                "body_bytes_in_flight": state["bodies"].used,
                "batches": batcher.batches, "rows_scored": batcher.rows, "aborted_uploads": state["aborted_uploads"],
                "unseen_requests": state["unseen"].requests,
                "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/metadata")
    async def metadata():
        return {**predictor.metadata(), "serving": asdict(cfg)}

    return app


def _check_chunks(predictor: Predictor, chunks: list[bytes], max_rows: int):
    return check_body(predictor, b"".join(chunks), max_rows)


def _is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (parameters such as charset aside)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _too_large(cfg: ServeConfig):
    return _json_response(413, {"error": f"the body is larger than {cfg.max_body_bytes} bytes "
                                         "(split the request, or start the server with a larger --max-body-mb)",
                                "field": None, "row": None})


_BIND_REASONS = {
    errno.EADDRINUSE: "the address is already in use (another server on this port?); choose another --port",
    errno.EACCES: "permission denied (ports below 1024 need privileges); choose a port above 1023",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's; check --host",
}


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``, or a :class:`ConfigError` that says why it cannot be
    (bound before the model is loaded, so that a taken port fails in a second, not after the load)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"serve: port {port!r} is not a TCP port; choose one in 1..65535 (--port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"serve: cannot listen on {host}:{port}: {host!r} is not a known address "
                          f"({getattr(exc, 'strerror', None) or exc}); check --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = _BIND_REASONS.get(exc.errno, exc.strerror or str(exc))
        raise ConfigError(f"serve: cannot listen on {host}:{port}: {reason}") from None
    return sock


def serve(artifact: str, cfg: ServeConfig | None = None) -> None:
    """Bind the port, load the artifact and serve it until interrupted."""
    import uvicorn

    cfg = cfg or ServeConfig()
    sock = bind_socket(cfg.host, cfg.port)
    try:
        predictor = Predictor(artifact, backend=cfg.backend, threads=cfg.threads)
        predictor.warm_up()
        app = create_app(predictor, cfg)
        # A thread holding the interpreter lock (a large request being checked) hands it over after this
        # long when the event loop asks: 1 ms instead of Python's 5 ms keeps single-row latency low.
        sys.setswitchinterval(0.001)
        server = uvicorn.Server(uvicorn.Config(app, access_log=cfg.access_log, log_level="warning"))
        print(f"[ctrlab] serving {predictor.metadata_model} ({predictor.backend_name}) from {artifact} "
              f"on http://{cfg.host}:{cfg.port}  (POST /predict, GET /health, GET /metadata)", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
