"""The HTTP server: predictions over HTTP equal the Predictor's, bad input is a clear 4xx (never a
5xx, shown by a property-based fuzz test), limits answer 413, and concurrent requests are
micro-batched without mixing up their answers."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ctrlab.config import ConfigError
from ctrlab.data.readers import read_split
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor, RequestError
from ctrlab.serve.parsing import RECORDS_CHUNK
from ctrlab.serve.server import MicroBatcher, create_app
from ctrlab.serve.unseen import Scores


@pytest.fixture(scope="module")
def served(mixed_export):
    predictor = Predictor(mixed_export[1])
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).select(predictor.columns)
    cfg = ServeConfig(max_body_bytes=64 << 10, max_request_rows=100)
    with TestClient(create_app(predictor, cfg)) as client:
        yield client, predictor, frame.to_dicts()


def test_predict_health_metadata(served):
    client, predictor, records = served
    r = client.post("/predict", json={"records": records[:20]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == 20 and body["model"] == "DNN"
    np.testing.assert_allclose(body["probabilities"], predictor.predict_records(records[:20]), rtol=1e-6)
    cols = {c: [x[c] for x in records[:20]] for c in predictor.columns}
    r = client.post("/predict", json={"columns": cols})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["probabilities"], body["probabilities"], rtol=1e-6)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["rows_scored"] >= 40
    meta = client.get("/metadata").json()
    assert meta["model"] == "DNN" and meta["backend"] == "onnx" and meta["serving"]["host"] == "127.0.0.1"
    assert [c["name"] for c in meta["schema"]] == predictor.columns


@pytest.mark.parametrize("body,status,fragment", [
    (b"", 400, "the body is empty"),
    (b"{not json", 400, "not valid JSON"),
    (b'{"records": [{"price": NaN}]}', 400, "NaN and Infinity are not JSON"),
    (b'{"records": [{"price": 1e400}]}', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'{"records": []}', 422, "empty"),
    (b'{"records": [], "columns": {}}', 422, "exactly one of"),
    (b'{"rows": []}', 422, "unknown top-level key"),
    (b'{"records": [{"user": "u1"}]}', 422, "missing field"),
    (b'{"records": ' + json.dumps([{"x": 1}] * 101).encode() + b"}", 413, "the limit is 100"),
    (b'{"records": "' + b"x" * (70 << 10) + b'"}', 413, "larger than"),
])
def test_bad_requests_get_clear_4xx(served, body, status, fragment):
    client, _, _ = served
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()


def test_oversized_body_without_content_length_is_cut_off(served):
    client, _, _ = served

    def chunks():
        for _ in range(100):
            yield b" " * 4096  # streamed (chunked): no Content-Length to check up front

    r = client.post("/predict", content=chunks())
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_error_names_record_and_field_over_http(served):
    client, _, records = served
    bad = [dict(r) for r in records[:3]]
    bad[2]["price"] = "cheap"
    r = client.post("/predict", json={"records": bad})
    assert r.status_code == 422
    assert r.json() == {"error": "records[2], field 'price': expected integer, number or null, got string 'cheap'",
                        "field": "price", "row": 2}


def test_micro_batcher_scores_queued_requests_together(served):
    """Requests queued together are scored in fewer model calls, each getting its own rows back."""
    _, predictor, records = served
    frames = [predictor.records_to_frame(records[i:i + 1 + i % 3]) for i in range(24)]

    async def go():
        batcher = MicroBatcher(predictor, ServeConfig(max_batch_rows=20, max_wait_ms=5))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(f) for f in frames)), batcher.batches
        finally:
            await batcher.stop()

    results, batches = asyncio.run(go())
    assert 1 < batches < len(frames)  # batched, and max_batch_rows split them
    for frame, scores in zip(frames, results):
        np.testing.assert_allclose(scores.probabilities, predictor.predict_frame(frame), rtol=0, atol=1e-6)


# ---- fuzz: no input makes the server answer 5xx ----------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
FIELDS = ["user", "item", "price", "hist", "tags", "emb"]


@st.composite
def near_valid_bodies(draw):
    """Records that are mostly right: every field present with a plausible or random value,
    sometimes a field dropped or an extra one added, sometimes in the columns form."""
    plausible = {
        "user": st.sampled_from(["u1", "u7", "zz", ""]) | st.integers(-5, 50) | st.none(),
        "item": st.sampled_from(["i1", "i3", "nope"]) | st.none(),
        "price": st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-10**6, 10**6) | st.none(),
        "hist": st.text(alphabet="i1^ 2", max_size=10) | st.lists(st.sampled_from(["i1", "i2", "x"]), max_size=6),
        "tags": st.sampled_from(["red|blue", "", "green"]) | st.lists(st.text(max_size=4), max_size=3) | st.none(),
        "emb": st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3)
        | st.sampled_from(["1 2 3", "1 2", "a b c", " 0.5  1 2 ", "1 2 nan"])
        | st.lists(st.integers(-3, 3) | st.floats(-1e30, 1e30, allow_nan=False), min_size=2, max_size=4),
    }
    records = []
    for _ in range(draw(st.integers(1, 4))):
        rec = {f: draw(json_values if draw(st.integers(0, 39)) == 0 else plausible[f]) for f in FIELDS}
        if draw(st.integers(0, 19)) == 0:
            rec.pop(draw(st.sampled_from(FIELDS)))
        if draw(st.integers(0, 19)) == 0:
            rec[draw(st.text(max_size=5))] = draw(json_values)
        records.append(rec)
    if draw(st.booleans()):
        return {"columns": {f: [r.get(f) for r in records] for f in FIELDS}}
    return {"records": records}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=near_valid_bodies() | json_values.map(lambda v: {"records": v}) | json_values)
# found by this test: a 200 with a null probability (price far beyond the training data)
@example(body={"records": [{"user": None, "item": None, "price": 1.0078206636805869e+39, "hist": None, "tags": None,
                            "emb": [0.0, 0.0, 0.0]}]})
@example(body={"records": [{"user": None, "item": None, "price": 1e300, "hist": None, "tags": None,
                            "emb": [0.0, 0.0, 0.0]}]})
def test_fuzz_json_bodies_never_5xx(served, body):
    client, _, _ = served
    r = client.post("/predict", content=json.dumps(body).encode())
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text, body)
    payload = r.json()
    if r.status_code == 200:
        probs = np.asarray(payload["probabilities"])
        assert len(probs) == payload["rows"] and np.all((probs >= 0) & (probs <= 1))
    else:
        assert payload["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_fuzz_raw_bytes_never_5xx(served, body):
    client, _, _ = served
    r = client.post("/predict", content=body)
    assert r.status_code in (400, 413, 422), (r.status_code, r.text, body)


# ---- issue 14.23: availability --------------------------------------------------------------------
def test_api_docs_are_off_by_default(served, mixed_export):
    """/docs, /redoc and /openapi.json describe the service to anyone: off unless asked for."""
    client, predictor, _ = served
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path
    with TestClient(create_app(predictor, ServeConfig(api_docs=True))) as docs_client:
        assert docs_client.get("/docs").status_code == 200
        assert "oneOf" in json.dumps(docs_client.get("/openapi.json").json()["paths"]["/predict"])


@pytest.mark.parametrize("content_type,status", [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    ("application/xml", 415), ("application/json", 200), ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200), ("application/vnd.ctrlab+json", 200), (None, 200),
])
def test_non_json_content_types_get_415(served, content_type, status):
    client, _, records = served
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post("/predict", content=json.dumps({"records": records[:2]}).encode(), headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert "is not JSON; send Content-Type: application/json" in r.json()["error"]


async def _asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], messages: list[dict]):
    """Call the ASGI app directly with the given receive messages; returns (status, body)."""
    sent: list[dict] = []
    incoming = iter(messages)

    async def receive():
        try:
            return next(incoming)
        except StopIteration:
            await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": headers, "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "root_path": ""}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("declared", [1000, 200_000, None], ids=["small", "large", "chunked"])
def test_an_aborted_upload_logs_one_line_not_a_traceback(served, caplog, declared):
    """A client that closes its connection mid-upload must not make the app raise (uvicorn logs a full
    traceback for each, a log flood); one warning line, and the body budget is given back."""
    _, predictor, _ = served
    app = create_app(predictor, ServeConfig(max_body_bytes=1 << 20))
    headers = [(b"content-type", b"application/json")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    part = b'{"records": [' + b" " * 40_000
    messages = [{"type": "http.request", "body": part, "more_body": True}, {"type": "http.disconnect"}]

    async def go():
        async with app.router.lifespan_context(app):
            await _asgi_call(app, "POST", "/predict", headers, messages)
            status, body = await _asgi_call(app, "GET", "/health", [], [{"type": "http.request", "body": b""}])
            return json.loads(body)

    with caplog.at_level(logging.DEBUG):
        health = asyncio.run(go())
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in lines]
    assert "closed its connection during its upload" in lines[0].getMessage()
    assert health["aborted_uploads"] == 1 and health["body_bytes_in_flight"] == 0 and health["rows_in_flight"] == 0


class FakePredictor:
    """Scores a frame's ``x`` column as its probabilities and logs each model call's frame sizes. The
    first call blocks until ``gate`` is set, so that a test can queue requests while it runs."""

    def __init__(self, bad_x: int | None = None):
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.bad_x = bad_x

    def score_frames(self, frames):
        self.calls.append([f.height for f in frames])
        self.started.set()
        self.gate.wait(30)
        out = []
        for f in frames:
            x = f["x"].to_numpy()
            bad = np.flatnonzero(x == self.bad_x)
            out.append(RequestError("bad value", field="x", row=int(bad[0])) if bad.size
                       else Scores.of(x.astype(np.float32), np.zeros((len(x), 0), dtype=bool)))
        return out


def _frame(start: int, rows: int) -> pl.DataFrame:
    return pl.DataFrame({"x": np.arange(start, start + rows)})


async def _run_with_blocked_first_call(fake, cfg, first, later):
    """Submit ``first``; once its first model call runs, submit ``later`` and let the model go on.
    Returns the batcher, each request's result (or exception) and the order in which they finished."""
    batcher = MicroBatcher(fake, cfg)
    batcher.start()
    finished: list[int] = []

    async def one(i, frame):
        try:
            return await batcher.submit(frame)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc
        finally:
            finished.append(i)

    try:
        tasks = [asyncio.ensure_future(one(0, first))]
        await asyncio.to_thread(fake.started.wait, 30)
        tasks += [asyncio.ensure_future(one(i + 1, f)) for i, f in enumerate(later)]
        for _ in range(5):
            await asyncio.sleep(0)  # let them queue (or wait for room)
        snapshot = (batcher.rows_in_flight.used, batcher.rows_in_flight.waiting)
        fake.gate.set()
        results = await asyncio.gather(*tasks)
    finally:
        await batcher.stop()
    return batcher, results, finished, snapshot


def test_a_large_request_is_scored_in_slices_that_take_turns_with_small_ones():
    """issue 14.23: one 1000-row request must not hold single rows up for its whole scoring: it is
    scored in slices of max_batch_rows, and small requests queued meanwhile go in the next call."""
    fake = FakePredictor()
    cfg = ServeConfig(max_batch_rows=100, max_wait_ms=0)
    singles = [_frame(5000 + i, 1) for i in range(3)]
    _, results, finished, _ = asyncio.run(_run_with_blocked_first_call(fake, cfg, _frame(0, 1000), singles))
    assert fake.calls[0] == [100] and fake.calls[1] == [1, 1, 1], fake.calls
    assert all(max(c) <= 100 for c in fake.calls) and sum(map(sum, fake.calls)) == 1003
    assert finished.index(0) == 3, finished  # the singles finished first
    np.testing.assert_array_equal(results[0].probabilities, np.arange(1000))  # slices put back together in order
    assert [r.probabilities.tolist() for r in results[1:]] == [[5000], [5001], [5002]]


def test_while_small_requests_arrive_large_ones_are_scored_in_shorter_slices():
    """issue 14.23: a single row waits for about one slice, so while small requests are arriving the
    slices shrink to interleave_rows (the p99 target); a large request alone keeps max_batch_rows
    slices (its rows/s)."""
    cfg = ServeConfig(max_batch_rows=100, interleave_rows=25, max_wait_ms=0)
    alone = FakePredictor()
    asyncio.run(_run_with_blocked_first_call(alone, cfg, _frame(0, 1000), []))
    assert alone.calls == [[100]] * 10, alone.calls

    fake = FakePredictor()
    _, results, finished, _ = asyncio.run(_run_with_blocked_first_call(fake, cfg, _frame(0, 1000), [_frame(5000, 1)]))
    assert fake.calls[:3] == [[100], [1], [25]], fake.calls  # after the single row came: slices of 25
    assert all(c == [25] for c in fake.calls[2:]) and sum(map(sum, fake.calls)) == 1001
    assert finished == [1, 0]
    np.testing.assert_array_equal(results[0].probabilities, np.arange(1000))
    with pytest.raises(ConfigError, match="interleave_rows must be a positive integer"):
        ServeConfig(interleave_rows=0)


def test_rows_in_flight_are_bounded_and_small_requests_pass_a_waiting_large_one():
    """issue 14.23: at most max_rows_in_flight rows are held; a request that does not fit waits (it is
    not dropped), and a small one that fits goes ahead of it."""
    fake = FakePredictor()
    cfg = ServeConfig(max_batch_rows=100, max_wait_ms=0, max_request_rows=1000, max_rows_in_flight=1500)
    later = [_frame(1000, 1000), _frame(9000, 1)]
    batcher, results, finished, (used, waiting) = asyncio.run(
        _run_with_blocked_first_call(fake, cfg, _frame(0, 1000), later))
    assert (used, waiting) == (1001, 1)  # the second 1000-row request waits, the single row is in
    assert batcher.rows_in_flight.peak <= 1500 and batcher.rows_in_flight.used == 0
    assert finished.index(2) < finished.index(0) < finished.index(1), finished
    np.testing.assert_array_equal(results[1].probabilities, np.arange(1000, 2000))
    with pytest.raises(ConfigError, match="max_request_rows .* exceeds max_rows_in_flight"):
        ServeConfig(max_request_rows=2000, max_rows_in_flight=1500)

    async def too_many():
        batcher = MicroBatcher(FakePredictor(), ServeConfig(max_request_rows=10, max_rows_in_flight=10))
        return await batcher.submit(_frame(0, 11))

    with pytest.raises(RequestError, match="at most 10 rows may be in flight") as info:
        asyncio.run(too_many())
    assert info.value.status == 413


def test_a_cancelled_waiter_gives_its_place_back():
    """A request waiting for room that goes away (its client left) takes nothing from the budget, and
    the next waiter that fits is admitted when room frees."""
    from ctrlab.serve.server import Budget

    async def go():
        budget = Budget(10, fifo=True)
        await budget.acquire(8)
        gone = asyncio.ensure_future(budget.acquire(5))
        later = asyncio.ensure_future(budget.acquire(2))
        await asyncio.sleep(0)
        assert budget.waiting == 2 and not later.done()  # fifo: 2 would fit, but waits behind 5
        gone.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        assert later.done() and budget.used == 10 and budget.waiting == 0
        budget.release(8)
        budget.release(2)
        return budget.used, budget.peak

    assert asyncio.run(go()) == (0, 10)


def test_an_error_in_a_later_slice_names_the_row_within_the_request():
    fake = FakePredictor(bad_x=250)
    cfg = ServeConfig(max_batch_rows=100, max_wait_ms=0)
    _, results, _, _ = asyncio.run(_run_with_blocked_first_call(fake, cfg, _frame(0, 1000), []))
    assert isinstance(results[0], RequestError) and (results[0].row, results[0].field) == (250, "x")
    assert len(fake.calls) == 3  # the rest of the request is not scored


@pytest.mark.parametrize("parse_process", [True, False], ids=["worker process", "thread"])
def test_a_large_records_request_is_checked_in_chunks_with_request_row_numbers(served, parse_process):
    """Records bodies over 32 KiB are checked (in the parse worker process, or a thread) chunk by
    chunk; an error names the row within the whole request, and a good request scores like the
    Predictor."""
    _, predictor, records = served
    many = (records * 40)[:RECORDS_CHUNK + 500]
    bad = [dict(r) for r in many]
    bad[RECORDS_CHUNK + 97]["price"] = "cheap"
    with TestClient(create_app(predictor, ServeConfig(parse_process=parse_process))) as client:
        r = client.post("/predict", content=json.dumps({"records": bad}).encode())
        assert r.status_code == 422 and r.json()["row"] == RECORDS_CHUNK + 97, r.text
        assert r.json()["error"].startswith(f"records[{RECORDS_CHUNK + 97}], field 'price': expected"), r.text
        r = client.post("/predict", content=json.dumps({"records": many}).encode())
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], predictor.predict_records(many), rtol=1e-6)
        r = client.post("/predict", content=b'{"records": [' + b" " * (40 << 10) + b"]}")
        assert r.status_code == 422 and "empty" in r.json()["error"]


def test_the_parse_worker_is_restarted_after_it_dies(served):
    """A parse worker that died (killed, out of memory) is started again for the next large body."""
    _, predictor, records = served
    body = json.dumps({"records": (records * 40)[:3000]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def go():
        app = create_app(predictor, ServeConfig())
        statuses = []
        async with app.router.lifespan_context(app):
            worker = app.state.parse_worker
            statuses.append((await _asgi_call(app, "POST", "/predict", headers, [{"type": "http.request", "body": body}]))[0])
            first_pid = worker.pid
            worker.proc.kill()
            await worker.proc.wait()
            statuses.append((await _asgi_call(app, "POST", "/predict", headers, [{"type": "http.request", "body": body}]))[0])
            return statuses, first_pid, worker.pid

    statuses, first_pid, second_pid = asyncio.run(go())
    assert statuses == [200, 200] and first_pid != second_pid


# ---- issue 14.22: the port ---------------------------------------------------------------------------
def test_serve_refuses_a_port_out_of_range_and_a_taken_one(mixed_export, capsys):
    """`ctrlab serve --port 99999` hung silently; a taken port printed "serving" before failing."""
    from ctrlab.cli import main

    art = str(mixed_export[1])
    for port in ("99999", "0", "-1"):
        assert main(["serve", art, "--port", port]) == 2
        assert "is not a TCP port; choose one in 1..65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", art, "--port", str(port)]) == 2
        captured = capsys.readouterr()
        assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in captured.err
        assert "serving" not in captured.out
    assert main(["serve", art, "--host", "no-such-host.invalid", "--port", "8000"]) == 2
    assert "is not a known address" in capsys.readouterr().err
