"""issue 15.5: the server says when input looks wrong. Tokens in another form than in training
("4:1" where the vocabulary holds "4") are counted per row in the answer's ``unseen_fields``, a
request that is mostly such values is logged (once per interval, rate-limited) and counted in
/health; missing values are not unseen; micro-batched requests each get their own counts."""
from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctrlab.data.readers import read_split
from ctrlab.data.schema import OOV_ID
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor
from ctrlab.serve.server import MicroBatcher, create_app
from ctrlab.serve.unseen import UnseenLog


def _known_rows(predictor: Predictor, split: str, n: int) -> list[dict]:
    """``n`` rows of a split whose categorical values are all in the training vocabulary."""
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve(split), predictor.columns).select(predictor.columns).head(2000)
    known = ~(predictor.encode(frame)["cat"] == OOV_ID).any(axis=1)
    rows = [r for r, ok in zip(frame.to_dicts(), known) if ok][:n]
    assert len(rows) == n
    return rows


@pytest.fixture(scope="module")
def frappe(frappe_export):
    predictor = Predictor(frappe_export[1])
    good = _known_rows(predictor, "test", 6)
    wrong = [{k: f"{v}:1" for k, v in r.items()} for r in good]  # libsvm's field:value form, as in the issue
    return predictor, good, wrong


def test_wrong_form_tokens_are_counted_per_row_and_logged_once(frappe, caplog):
    predictor, good, wrong = frappe
    fields = len(predictor.fmap.categorical)
    assert fields == 10 and predictor.unseen.names == [f.name for f in predictor.fmap.categorical]
    missing = {**good[1], "user": None, "city": None}  # null is a missing value, not an unseen one
    assert (predictor.encode_records([missing])["cat"][0] == OOV_ID).sum() == 2  # though its id is OOV
    cfg = ServeConfig()
    with caplog.at_level(logging.WARNING, logger="ctrlab.serve"), TestClient(create_app(predictor, cfg)) as client:
        r = client.post("/predict", json={"records": [good[0], wrong[0], missing]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["unseen_fields"] == [0, fields, 0]
        assert body["rows"] == 3 and body["model"] == "FinalMLP" and len(body["probabilities"]) == 3
        assert not [x for x in caplog.records if "unseen" in x.getMessage()]  # a third of the values: not mostly

        columns = {c: [w[c] for w in wrong[:3]] for c in predictor.columns}
        for _ in range(3):  # the same bad client, again and again: one line
            r = client.post("/predict", json={"columns": columns})
            assert r.json()["unseen_fields"] == [fields] * 3
        health = client.get("/health").json()
    lines = [x.getMessage() for x in caplog.records if "unseen" in x.getMessage()]
    assert len(lines) == 1, lines
    first = predictor.unseen.fields[0]
    example = f"field {first.name!r}: {wrong[0][first.column]!r} not in the training vocabulary " \
              f"(known values look like {first.known!r}) (3 of 3 rows)"
    assert example in lines[0] and "10.0 of 10 checked fields" in lines[0], lines[0]
    assert first.known == predictor.encoders[first.name].vocab[0] and ":" not in first.known
    assert health["unseen_requests"] == 3


def test_the_warning_is_rate_limited_with_a_count_of_those_not_logged(frappe, caplog):
    predictor, good, wrong = frappe
    bad = predictor.score_frames([predictor.records_to_frame(wrong[:2])])[0]
    fine = predictor.score_frames([predictor.records_to_frame(good[:2])])[0]
    now = [0.0]
    unseen_log = UnseenLog(predictor.unseen, logging.getLogger("test.unseen"), interval_s=10, clock=lambda: now[0])
    frame = predictor.records_to_frame(wrong[:2])
    with caplog.at_level(logging.WARNING, logger="test.unseen"):
        for t in (0, 1, 2, 5):
            now[0] = t
            assert unseen_log.note(bad, frame)
        assert not unseen_log.note(fine, predictor.records_to_frame(good[:2]))
        now[0] = 10.5
        unseen_log.note(bad, frame)
    lines = [x.getMessage() for x in caplog.records]
    assert len(lines) == 2 and "not logged" not in lines[0], lines
    assert "(3 more such requests since the last line were not logged)" in lines[1]
    assert unseen_log.requests == 5


def test_micro_batched_requests_each_get_their_own_counts(frappe):
    """Requests scored in one model call, and a request scored in slices, keep their own rows' counts."""
    predictor, good, wrong = frappe
    half = {**good[2], **{k: wrong[2][k] for k in list(good[2])[:5]}}  # 5 of 10 fields in the wrong form
    requests = [[good[0]], [wrong[0], good[1]], [half], [good[3], good[4], wrong[1], good[5], wrong[2]]]
    frames = [predictor.records_to_frame(r) for r in requests]
    expected = [[0], [10, 0], [5], [0, 0, 10, 0, 10]]
    together = predictor.score_frames(frames)
    assert [s.unseen_fields.tolist() for s in together] == expected

    async def go():
        batcher = MicroBatcher(predictor, ServeConfig(max_batch_rows=2, interleave_rows=2, max_wait_ms=5))
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(f) for f in frames)), batcher.batches
        finally:
            await batcher.stop()

    results, batches = asyncio.run(go())
    assert batches >= 5  # the 5-row request went in slices of at most 2 rows
    assert [s.unseen_fields.tolist() for s in results] == expected
    last = results[3]  # put back together from its slices: per field, rows unseen and the first such row
    assert last.unseen_rows.tolist() == [2] * 10 and last.first_unseen.tolist() == [2] * 10
    for scores, frame in zip(results, frames):
        np.testing.assert_allclose(scores.probabilities, predictor.predict_frame(frame), rtol=0, atol=1e-6)


def test_sequence_fields_count_when_all_their_tokens_are_unseen(mixed_export):
    """Sequences: unseen when every token is unseen; one known token, or an empty history, is not.
    Hashed fields have no vocabulary and bucketized numerics no OOV id: neither is checked."""
    predictor = Predictor(mixed_export[1])
    assert predictor.unseen.names == ["user", "item", "hist", "tags"]  # price_bucket is bucketized
    base = {"user": "u1", "item": "i1", "price": 2.0, "hist": "i1^i2", "tags": "red", "emb": [0.0, 1.0, 2.0]}
    rows = [
        base,
        {**base, "hist": "zz^yy", "tags": ["purple"]},           # both sequences all unseen
        {**base, "hist": "zz^i2", "tags": None, "user": ""},      # one known token; missing tags; empty user
        {**base, "hist": [], "item": "i1.0", "user": 7},          # empty history; wrong-form item; unseen user 7
    ]
    scores = predictor.score_frames([predictor.records_to_frame(rows)])[0]
    assert scores.unseen_fields.tolist() == [0, 2, 0, 2]
    assert scores.unseen_rows.tolist() == [1, 1, 1, 1] and scores.first_unseen.tolist() == [3, 3, 1, 1]
