"""Two-stage serving (issue 17): a user's behaviour state computed once (SDIM's SimHash bucket tables,
the paper's BSE; SUAN's cached history) and its candidates scored against it, through the exported
artifact, the Predictor and the HTTP server, equal to scoring whole rows."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctrlab import api
from ctrlab.data.readers import read_split
from ctrlab.serve.artifact import export_run
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor, RequestError
from ctrlab.serve.server import create_app


SDIM_PARAMS = {"num_hashes": 8, "hash_bits": 3, "l2_norm": True, "dnn_hidden_units": [32]}
SUAN_PARAMS = {"n_layers": 1, "dnn_hidden_units": [32]}


@pytest.fixture(scope="module", params=["SDIM", "SUAN", "LightSUAN"])
def exported(request, data_dir, tmp_path_factory):
    """(model name, torch Predictor, raw test frame) of the model trained one epoch on movielens_100k."""
    name = request.param
    params = SDIM_PARAMS if name == "SDIM" else dict(SUAN_PARAMS, attention_window=4) if name == "LightSUAN" \
        else SUAN_PARAMS
    tmp = tmp_path_factory.mktemp(name)
    api.train(output=str(tmp / "run"), dataset="movielens_100k", model=name, model_params=params, log=lambda *a: None,
              overrides=["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=4096"])
    art = export_run(tmp / "run", tmp / "artifact")
    predictor = Predictor(art, backend="torch")
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).select(predictor.columns)
    return name, predictor, frame


def _user_and_candidates(predictor, frame, n: int = 12):
    """A test row with a long history as the user (the whole row: SUAN's history tokens also attend to
    the profile columns), and n candidates: that row with other rows' items, as whole rows and without
    the sequence columns."""
    lengths = frame["history"].str.split("^").list.len()
    row = frame.row(int(lengths.arg_max()), named=True)
    user = dict(row)
    items = frame.select("item_id").unique(maintain_order=True)["item_id"].to_list()[:n]
    whole = [{**row, "item_id": item} for item in items]
    candidates = [{k: v for k, v in r.items() if k not in predictor.user_columns} for r in whole]
    return user, whole, candidates


def test_stored_user_state_scores_like_whole_rows(exported):
    name, predictor, frame = exported
    assert predictor.supports_users and predictor.user_columns == ["history"]
    user, whole, candidates = _user_and_candidates(predictor, frame)
    assert len(user["history"].split("^")) >= 10  # a real history, not an empty one
    expected = predictor.predict_records(whole)
    assert expected.std() > 1e-4  # the candidates differ, so equality below means something
    state = predictor.encode_user(user)
    got = predictor.score_user(state, candidates)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # another user's history gives other scores: the state is what the candidates are scored with
    other = frame.row(0, named=True)
    assert other["history"] != user["history"]
    assert not np.allclose(predictor.score_user(predictor.encode_user(other), candidates), expected, atol=1e-6)


def test_server_user_endpoints(exported):
    name, predictor, frame = exported
    user, whole, candidates = _user_and_candidates(predictor, frame)
    with TestClient(create_app(predictor, ServeConfig(max_users=1))) as client:
        expected = client.post("/predict", json={"records": whole}).json()["probabilities"]
        r = client.put("/users/u1", json={"record": user})
        assert r.status_code == 200 and r.json() == {"user": "u1", "stored": True, "users": 1}
        r = client.post("/users/u1/predict", json={"records": candidates})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], expected, rtol=0, atol=1e-6)
        assert r.json()["rows"] == len(candidates) and r.json()["model"] == name
        # a candidate that carries the history is refused, naming the column and row
        r = client.post("/users/u1/predict", json={"records": [whole[0]]})
        assert r.status_code == 422 and r.json()["field"] == "history" and r.json()["row"] == 0
        # a user record without its sequence columns is refused
        r = client.put("/users/u2", json={"record": {"genres": "Drama"}})
        assert r.status_code == 422 and r.json()["field"] == "history"
        # max_users=1: storing u2 drops u1 (least recently used); its next request says what to do
        assert client.put("/users/u2", json={"record": user}).status_code == 200
        r = client.post("/users/u1/predict", json={"records": candidates})
        assert r.status_code == 404 and "PUT /users/{user}" in r.json()["error"]
        assert client.delete("/users/u2").json() == {"user": "u2", "deleted": True}
        assert client.post("/users/u2/predict", json={"records": candidates}).status_code == 404
        assert client.put("/users/u3", json={"wrong": {}}).status_code == 422


def test_models_or_backends_without_user_state_say_so(movielens_export):
    _, art = movielens_export  # DIN: no per-user state
    din = Predictor(art, backend="torch")
    assert not din.supports_users
    with pytest.raises(RequestError, match="no per-user state"):
        din.encode_user({"genres": "Drama", "history": "1^2"})
    onnx = Predictor(art, backend="onnx")
    with pytest.raises(RequestError, match="torch backend"):
        onnx.encode_user({"genres": "Drama", "history": "1^2"})
    with TestClient(create_app(onnx, ServeConfig())) as client:
        r = client.put("/users/u1", json={"record": {"genres": "Drama", "history": "1^2"}})
        assert r.status_code == 404 and "--backend torch" in r.json()["error"]


def test_whole_rows_are_scored_in_chunks_for_long_sequences(exported):
    """The predictor splits a large call into chunk_rows-sized ones (SUAN's attention grows as rows·L²):
    the probabilities do not depend on the split."""
    _, predictor, frame = exported
    records = frame.head(10).to_dicts()
    whole = predictor.predict_records(records)
    chunk = predictor._chunk
    try:
        predictor._chunk = 3
        np.testing.assert_allclose(predictor.predict_records(records), whole, rtol=0, atol=1e-6)
    finally:
        predictor._chunk = chunk
