"""Predictor: raw JSON records / columns -> the run's encoders -> probabilities; every kind of bad
input is a RequestError naming the record and the field, never a crash or a silent change."""
from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest

from ctrlab.data.readers import read_split
from ctrlab.data.schema import OOV_ID
from ctrlab.serve.predictor import Predictor, RequestError


@pytest.fixture(scope="module")
def mixed(mixed_export):
    predictor = Predictor(mixed_export[1])
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).select(predictor.columns)
    return predictor, frame


def _records(frame: pl.DataFrame) -> list[dict]:
    """File rows as a JSON client would send them: text cells as in the file."""
    return frame.to_dicts()


def test_records_in_every_accepted_form_score_like_the_file(mixed):
    predictor, frame = mixed
    expected = predictor.predict_frame(frame)
    assert expected.shape == (frame.height,) and np.all((expected > 0) & (expected < 1))
    text = _records(frame)
    np.testing.assert_array_equal(predictor.predict_records(text), expected)
    # arrays instead of text, numbers for numbers, null for a missing price, integers for tokens
    typed = []
    for r in text:
        typed.append({
            "user": r["user"], "item": r["item"],
            "price": r["price"],  # already a float or None: the reader parsed the numeric-only column
            "hist": [t for t in (r["hist"] or "").split("^") if t],
            "tags": (r["tags"] or "").split("|") if r["tags"] else None,
            "emb": [float(v) for v in r["emb"].split(" ")],
        })
    np.testing.assert_allclose(predictor.predict_records(typed), expected, rtol=0, atol=1e-6)
    columns = {c: [r[c] for r in typed] for c in predictor.columns}
    np.testing.assert_allclose(predictor.run(predictor.encode(predictor.columns_to_frame(columns))), expected,
                               rtol=0, atol=1e-6)


def test_unseen_values_map_to_oov_and_integers_are_tokens(mixed):
    predictor, frame = mixed
    rec = _records(frame.head(1))[0]
    unseen = {**rec, "user": "nobody-ever", "item": "no-such-item", "hist": "i1^zzz", "tags": ["purple"]}
    feeds = predictor.encode_records([unseen])
    assert feeds["cat"][0, :2].tolist() == [OOV_ID, OOV_ID]
    assert feeds["seq__hist"][0, -1] == OOV_ID and feeds["seq__hist"][0, -2] > OOV_ID
    assert feeds["seq__tags"][0].tolist() == [0, 0, OOV_ID]
    assert np.isfinite(predictor.run(feeds)).all()
    as_int = predictor.encode_records([{**rec, "user": 7}])["cat"][0, 0]
    assert as_int == predictor.encode_records([{**rec, "user": "7"}])["cat"][0, 0]


BAD = [
    # (what, change to records[1], field, message fragment)
    ("missing field", lambda r: r.pop("item"), "item", "missing field"),
    ("extra field", lambda r: r.update(colour="red"), "colour", "unknown field"),
    ("float token", lambda r: r.update(user=1.5), "user", "expected string, integer or null, got number 1.5"),
    ("boolean", lambda r: r.update(user=True), "user", "got boolean"),
    ("object", lambda r: r.update(item={"a": 1}), "item", "got object"),
    ("text number", lambda r: r.update(price="3.5"), "price", "expected integer, number or null, got string"),
    ("infinite", lambda r: r.update(price=float("inf")), "price", "out of range"),
    # finite JSON, but inf once normalised and cast to the model's float32
    ("beyond float32", lambda r: r.update(price=1e300), "price", "beyond the range of float32"),
    ("short vector", lambda r: r.update(emb=[1.0, 2.0]), "emb", "does not have dim=3 values"),
    ("text in vector", lambda r: r.update(emb=["a", 1, 2]), "emb", "array elements must be numbers"),
    ("nan in vector text", lambda r: r.update(emb="1 2 nan"), "emb", "not a finite number"),
    ("word in vector text", lambda r: r.update(emb="1 2 x"), "emb", "holds a non-number"),
    ("null vector", lambda r: r.update(emb=None), "emb", "expected string or array, got null"),
    ("nested sequence", lambda r: r.update(hist=[["i1"]]), "hist", "array elements must be strings or integers"),
]


@pytest.mark.parametrize("what,change,field,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_record_and_field(mixed, what, change, field, fragment):
    predictor, frame = mixed
    records = copy.deepcopy(_records(frame.head(3)))
    change(records[1])
    with pytest.raises(RequestError) as info:
        predictor.predict_records(records)
    err = info.value
    assert (err.status, err.field, err.row) == (422, field, 1), str(err)
    assert fragment in str(err) and str(err).startswith(f"records[1], field {field!r}: "), str(err)


def test_bad_shapes(mixed):
    predictor, frame = mixed
    rec = _records(frame.head(1))[0]
    for body, fragment in [({"a": 1}, "must be an array of objects"), ([], "empty"), ([rec, 3], "must be an object")]:
        with pytest.raises(RequestError, match=fragment):
            predictor.records_to_frame(body)
    # text and array cells may be mixed in one request
    mixed_forms = predictor.encode_records([{**rec, "hist": "i1^i2"}, {**rec, "hist": ["i1", "i2"]}])
    assert mixed_forms["seq__hist"][0].tolist() == mixed_forms["seq__hist"][1].tolist()
    assert mixed_forms["seq__hist"][0, -1] > OOV_ID
    cols = {c: [rec[c], rec[c]] for c in predictor.columns}
    assert predictor.columns_to_frame(cols).height == 2
    for change, fragment, field in [(lambda c: c.pop("user"), "missing field", "user"),
                                    (lambda c: c.update(x=[1, 2]), "unknown field", "x"),
                                    (lambda c: c["item"].pop(), "has 1 cells", "item"),
                                    (lambda c: c.update(price=3.0), "must be an array", "price")]:
        bad = copy.deepcopy(cols)
        change(bad)
        with pytest.raises(RequestError, match=fragment) as info:
            predictor.columns_to_frame(bad)
        assert info.value.field == field


def test_score_frames_isolates_a_bad_request(mixed):
    """Micro-batched requests are encoded together; a request the encoders reject gets its own error
    (with its own row number) and the others are still scored, with the numbers they get alone."""
    predictor, frame = mixed
    recs = _records(frame.head(7))
    bad = copy.deepcopy(recs[2:5])
    bad[1]["emb"] = "1 2"  # text: passes the type check, the encoder rejects the length
    frames = [predictor.records_to_frame(recs[:2]), predictor.records_to_frame(bad),
              predictor.records_to_frame(recs[5:])]
    results = predictor.score_frames(frames)
    assert isinstance(results[1], RequestError)
    assert (results[1].field, results[1].row) == ("emb", 1) and "dim=3" in str(results[1])
    alone = predictor.predict_frame(frame.head(7))
    np.testing.assert_allclose(results[0].probabilities, alone[:2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[2].probabilities, alone[5:], rtol=0, atol=1e-6)


def test_requests_with_null_only_columns_batch_with_others(mixed):
    """A request whose numeric column is all null has the same schema as one with numbers, so that
    micro-batched requests concatenate (a mismatch would fail the whole batch)."""
    predictor, frame = mixed
    recs = _records(frame.head(4))
    nulls = [{**r, "price": None, "user": None} for r in recs[:2]]
    frames = [predictor.records_to_frame(nulls), predictor.records_to_frame(recs[2:])]
    assert frames[0].schema == frames[1].schema
    together = predictor.score_frames(frames)
    np.testing.assert_allclose(together[0].probabilities, predictor.predict_records(nulls), rtol=0, atol=1e-6)
    np.testing.assert_allclose(together[1].probabilities, predictor.predict_records(recs[2:]), rtol=0, atol=1e-6)


def test_a_probability_that_is_not_a_number_is_a_request_error(mixed, monkeypatch):
    """A numeric input far beyond the training data can overflow the model's arithmetic (the server's
    fuzz test found a 200 answer with a null probability): the row is refused, naming the numeric
    field furthest from zero."""
    predictor, frame = mixed
    records = copy.deepcopy(_records(frame.head(3)))
    records[1]["price"] = 1e30
    real = predictor.run

    def nan_for_row_1(feeds):
        probs = real(feeds).copy()
        probs[1] = np.nan
        return probs

    monkeypatch.setattr(predictor, "run", nan_for_row_1)
    with pytest.raises(RequestError) as info:
        predictor.predict_records(records)
    err = info.value
    assert (err.status, err.field, err.row) == (422, "price", 1)
    assert "not a number for this row" in str(err) and "far outside the training data" in str(err)
