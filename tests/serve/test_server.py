"""The HTTP server: predictions over HTTP equal the Predictor's, bad input is a clear 4xx (never a
5xx, shown by a property-based fuzz test), limits answer 413, and concurrent requests are
micro-batched without mixing up their answers."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrlab.data.readers import read_split
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor
from ctrlab.serve.server import MicroBatcher, create_app


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
    assert "oneOf" in json.dumps(client.get("/openapi.json").json()["paths"]["/predict"])


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
    for frame, probs in zip(frames, results):
        np.testing.assert_allclose(probs, predictor.predict_frame(frame), rtol=0, atol=1e-6)


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
