"""HTTP prediction server: FastAPI app, served by uvicorn, with micro-batching.

    ctrlab serve artifacts/finalmlp --port 8000
    curl -s localhost:8000/predict -d '{"records": [{"user": "12", "item": "7", ...}]}'
    -> {"probabilities": [0.8312], "model": "FinalMLP", "rows": 1}
    curl -s localhost:8000/predict -d '{"columns": {"user": ["12", "40"], "item": ["7", "9"], ...}}'
    -> {"probabilities": [0.8312, 0.1207], "model": "FinalMLP", "rows": 2}

Records are the natural form for a few rows; columns (one array per field) skip the transposition
and the repeated keys, for large batches.

Endpoints: ``POST /predict`` (raw records in, probabilities out, in request order), ``GET /health``,
``GET /metadata`` (model, raw schema, run metrics, versions, serving limits).

Each request is parsed and checked on its own (column-wise, see :mod:`ctrlab.serve.predictor`);
its raw columns then wait in a bounded queue, and a single batching task takes every request
queued, waits at most ``max_wait_ms`` for requests still being checked, and encodes and scores
them together (one encode, one model call of up to ``max_batch_rows`` rows): a Polars encode
costs about the same for 1 row as for 100. A lone client pays no wait (nothing else is in flight); concurrent
single-row clients share model calls. When the queue is full the server answers 503 with
``Retry-After`` rather than queueing without bound.

Bad input is a 4xx naming the record and field: 400 for a body that is not strict JSON (NaN,
Infinity and numbers beyond the float range included), 413 for a body over ``max_body_bytes`` or more than ``max_request_rows``
records, 422 for content that does not fit the schema.
"""
from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .config import ServeConfig
from .predictor import Predictor, RequestError

SMALL_BODY_BYTES = 32 << 10
"""Bodies up to this size are parsed and checked on the event loop (cheaper than a thread hop);
larger ones in a worker thread, so that a big request does not stall the others."""


class Overloaded(RuntimeError):
    """The batch queue is full."""


class MicroBatcher:
    """Collects checked requests (raw frames) from the event loop; encodes and scores them together in a
    worker thread."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig):
        self.predictor = predictor
        self.max_rows = cfg.max_batch_rows
        self.max_wait = cfg.max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.queue_size)
        self.arriving = 0
        """Requests that have arrived and are being read and checked (not yet queued)."""
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctrlab-model")
        self.task: asyncio.Task | None = None
        self._carry: tuple[Any, int, asyncio.Future] | None = None
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

    async def submit(self, frame) -> np.ndarray:
        """Queue one request's validated raw frame; returns its probabilities (or raises its RequestError)."""
        fut = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((frame, frame.height, fut))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests are waiting for the model") from None
        return await fut

    async def _collect(self) -> list[tuple[Any, int, asyncio.Future]]:
        if self._carry is not None:  # the request that did not fit the previous batch goes first
            first, self._carry = self._carry, None
        else:
            first = await self.queue.get()
        batch = [first]
        rows = first[1]
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_rows:
            if not self.queue.empty():
                item = self.queue.get_nowait()
            elif self.arriving > 0 and (left := deadline - time.perf_counter()) > 0:
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            else:
                break  # nobody else is coming soon: do not make this batch wait
            if rows + item[1] > self.max_rows:
                self._carry = item
                break
            batch.append(item)
            rows += item[1]
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [b for b in batch if not b[2].done()]  # a client that went away is not scored
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.model_thread, self.predictor.score_frames,
                                                     [b[0] for b in live])
            except Exception as exc:  # the model failed: every waiting request gets the error (a 500)
                results = [exc] * len(live)
            else:
                self.batches += 1
                self.rows += sum(len(r) for r in results if isinstance(r, np.ndarray))
            for (_, _, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


BODY_FORMS = '{"records": [{...}, ...]} or {"columns": {"field": [...], ...}}'


def parse_body(body: bytes, max_rows: int) -> tuple[str, Any]:
    """The request body -> ``("records", list)`` or ``("columns", dict)``, or a RequestError
    (400 not JSON, 413 too many rows, 422 wrong shape)."""
    if not body.strip():
        raise RequestError(f"the body is empty; send {BODY_FORMS}", status=400)
    try:
        doc = orjson.loads(body)  # strict JSON: NaN, Infinity and numbers beyond float range are errors
    except orjson.JSONDecodeError as exc:
        hint = ("; NaN and Infinity are not JSON: send null for a missing value"
                if re.search(rb"NaN|Infinity", body) else "")
        raise RequestError(f"the body is not valid JSON: {exc}{hint}", status=400) from None
    if not isinstance(doc, dict):
        raise RequestError(f"the body must be a JSON object: {BODY_FORMS}")
    unknown = sorted(set(doc) - {"records", "columns"})
    if unknown:
        raise RequestError(f"unknown top-level key; the body is {BODY_FORMS}", field=str(unknown[0]))
    if len(doc) != 1:
        raise RequestError(f"give exactly one of 'records' and 'columns'; the body is {BODY_FORMS}")
    form, payload = next(iter(doc.items()))
    rows = len(payload) if form == "records" and isinstance(payload, list) else max(
        (len(v) for v in payload.values() if isinstance(v, list)), default=0) if isinstance(payload, dict) else 0
    if rows > max_rows:
        raise RequestError(f"{rows} rows in one request; the limit is {max_rows} (split the request, or start "
                           "the server with a larger --max-request-rows)", status=413, field=form)
    return form, payload


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
        state["started"] = time.time()
        yield
        await batcher.stop()

    app = FastAPI(title=f"ctrlab: {predictor.artifact.manifest['model']['name']}", lifespan=lifespan,
                  description="Click probabilities for raw feature records.")
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

    def _validate(body: bytes):
        form, payload = parse_body(body, cfg.max_request_rows)
        return predictor.records_to_frame(payload) if form == "records" else predictor.columns_to_frame(payload)

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": request_schema}}}})
    async def predict(request: Request):
        batcher: MicroBatcher = state["batcher"]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return _too_large(cfg)
        batcher.arriving += 1
        queued = False
        try:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > cfg.max_body_bytes:
                    return _too_large(cfg)
            if len(body) <= SMALL_BODY_BYTES:
                frame = _validate(bytes(body))
            else:
                frame = await run_in_threadpool(_validate, bytes(body))
            batcher.arriving -= 1
            queued = True
            probs = await batcher.submit(frame)
        except RequestError as exc:
            return _json_response(exc.status, exc.detail())
        except Overloaded as exc:
            return _json_response(503, {"error": f"server busy: {exc}; retry shortly"}, {"Retry-After": "1"})
        finally:
            if not queued:
                batcher.arriving -= 1
        return _json_response(200, {"probabilities": probs, "model": predictor.metadata_model,
                                    "rows": len(probs)})

    @app.get("/health")
    async def health():
        batcher: MicroBatcher = state["batcher"]
        return {"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches,
                "rows_scored": batcher.rows, "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/metadata")
    async def metadata():
        return {**predictor.metadata(), "serving": asdict(cfg)}

    return app


def _too_large(cfg: ServeConfig):
    return _json_response(413, {"error": f"the body is larger than {cfg.max_body_bytes} bytes "
                                         "(split the request, or start the server with a larger --max-body-mb)",
                                "field": None, "row": None})


def serve(artifact: str, cfg: ServeConfig | None = None) -> None:
    """Load the artifact and serve it until interrupted."""
    import uvicorn

    cfg = cfg or ServeConfig()
    predictor = Predictor(artifact, backend=cfg.backend, threads=cfg.threads)
    predictor.warm_up()
    app = create_app(predictor, cfg)
    print(f"[ctrlab] serving {predictor.metadata_model} ({predictor.backend_name}) from {artifact} "
          f"on http://{cfg.host}:{cfg.port}  (POST /predict, GET /health, GET /metadata)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=cfg.access_log, log_level="warning")
