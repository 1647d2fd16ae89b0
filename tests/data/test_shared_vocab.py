"""issue 17: a vocabulary shared by a candidate field and its sequences (``share_vocab_with``) is
fitted on the candidate column and every sharing sequence (train only, ``min_count`` on the
combined counts); sequences mostly OOV on train and splitters that leave cells one token warn."""
from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from ctrlab import api
from ctrlab.data import pipeline, streaming
from ctrlab.data.encoders import fit_vocabularies, splitter_suspect
from ctrlab.data.errors import DataWarning
from ctrlab.data.oov import HIGH_SEQUENCE_OOV_RATE, high_sequence_oov
from ctrlab.data.pipeline import ENCODING_CODE, prepare
from ctrlab.data.schema import OOV_ID, load_dataset_config


def _news(tmp_path, train_rows, test_rows=None, min_count=1, splitter="^", share=True):
    """A click log: ``news`` is the candidate, ``hist`` the clicked news before it (text cells)."""
    (tmp_path / "train.csv").write_text("click,news,hist\n" + "".join(f"{r}\n" for r in train_rows))
    files = {"train": "train.csv"}
    if test_rows is not None:
        (tmp_path / "test.csv").write_text("click,news,hist\n" + "".join(f"{r}\n" for r in test_rows))
        files["test"] = "test.csv"
    hist = {"name": "hist", "kind": "sequence", "max_len": 4, "splitter": splitter}
    if share:
        hist["share_vocab_with"] = "news"
    return load_dataset_config({
        "name": "news", "root": str(tmp_path), "files": files, "valid_fraction": 0, "labels": ["click"],
        "features": [{"name": "news", "min_count": min_count}, hist],
    })


def _prepare(cfg, tmp_path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare(cfg, tmp_path / "cache", log=lambda *a: None, **kw)
    return data, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


TRAIN = ["1,n1,h1^h2^n1", "0,n2,h1^h2", "1,n1,h1", "0,n3,h2^h3"]


@pytest.mark.parametrize("streamed", [False, True])
def test_history_only_ids_get_real_ids_and_counts_combine(tmp_path, streamed):
    """h1 x3, h2 x3, h3 x1 occur only in histories: before issue 17 they were all OOV. Order is
    the combined count, then the token (n1: 2 candidate + 1 history = 3)."""
    cfg = _news(tmp_path, TRAIN, test_rows=["1,n2,h3^h9^n1"])
    data, caught = _prepare(cfg, tmp_path, streaming=streamed, block_rows=2)
    vocab = data.feature_map.encoders["news"]["vocab"]
    assert vocab == ["h1", "h2", "n1", "h3", "n2", "n3"]
    assert data.feature_map.sequences[0].vocab_size == 2 + 6
    ids = {t: 2 + i for i, t in enumerate(vocab)}
    train = data.splits["train"].arrays
    assert train["seq:hist"].tolist() == [[0, ids["h1"], ids["h2"], ids["n1"]], [0, 0, ids["h1"], ids["h2"]],
                                          [0, 0, 0, ids["h1"]], [0, 0, ids["h2"], ids["h3"]]]
    assert train["cat"][:, 0].tolist() == [ids["n1"], ids["n2"], ids["n1"], ids["n3"]]
    # train only: h9 occurs only in the test split's history, so it is OOV there
    assert data.splits["test"].arrays["seq:hist"].tolist() == [[0, ids["h3"], OOV_ID, ids["n1"]]]
    assert data.oov_rates["train"]["hist"] == 0.0
    assert not [m for m in caught if "'hist'" in m]


def test_min_count_applies_to_the_combined_counts(tmp_path):
    """min_count 3: n1 (2 as candidate + 1 in a history) is kept although the candidate column
    alone has it twice; n2, n3 and h3 (once each) are OOV."""
    data, _ = _prepare(_news(tmp_path, TRAIN, min_count=3), tmp_path)
    assert data.feature_map.encoders["news"]["vocab"] == ["h1", "h2", "n1"]


def test_fit_vocabularies_counts_only_the_sequences_it_is_given():
    """fit_vocabularies is the one home of the rule: without the sharing sequences it counts the
    candidate column alone (CategoricalEncoder.fit), with them the combined counts."""
    cfg = load_dataset_config({"name": "x", "files": {"train": "t.csv"}, "features": [
        {"name": "news"}, {"name": "hist", "kind": "sequence", "share_vocab_with": "news"}]})
    df = pl.DataFrame({"news": ["a", "b", "a"], "hist": ["c^c^b", None, "c"]})
    encoders = pipeline._make_encoders(cfg)
    fit_vocabularies(df, [encoders["news"]])
    assert encoders["news"].vocab == ["a", "b"]
    fit_vocabularies(df, [encoders["news"]], [encoders["hist"]])
    assert encoders["news"].vocab == ["c", "a", "b"]


def test_vocabulary_rule_is_in_the_cache_key():
    """A cache fitted under the old rule is never reused: the key hashes the code of every module
    that fits vocabularies (pipeline.cache_key, code_fingerprint)."""
    for module in (fit_vocabularies.__module__, streaming.__name__):
        assert any(module.rsplit(".", 1)[0] == package for package in ENCODING_CODE), module


def test_mostly_oov_history_warns_on_train(tmp_path):
    """An own-vocabulary history with min_count above every token's count: the train split is
    all OOV, which the valid/test rule (a jump over train) never reports."""
    cfg = load_dataset_config({
        "name": "news", "root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
        "labels": ["click"],
        "features": [{"name": "news"}, {"name": "hist", "kind": "sequence", "min_count": 5}]})
    (tmp_path / "train.csv").write_text("click,news,hist\n" + "".join(f"{r}\n" for r in TRAIN))
    data, caught = _prepare(cfg, tmp_path)
    assert data.oov_rates["train"]["hist"] == 1.0
    [message] = [m for m in caught if "sequence field 'hist'" in m]
    assert "train split" in message and "100.0%" in message and "share_vocab_with" in message
    assert "splitter" in message and "min_count" in message
    assert high_sequence_oov({"train": {"hist": HIGH_SEQUENCE_OOV_RATE}}, ["hist"]) == []  # above, not at


def test_space_separated_history_with_default_splitter_warns(tmp_path):
    rows = ["1,n1,h1 h2 n1", "0,n2,h1 h2", "1,n1,h1", "0,n3,h2 h3"]
    _, caught = _prepare(_news(tmp_path, rows), tmp_path)
    [message] = [m for m in caught if "splitter" in m and "'hist'" in m and "single token" in m]
    assert "'^'" in message and "set splitter: ' '" in message
    # the right splitter: no warning, and the same vocabulary as the '^' history
    (tmp_path / "ok").mkdir()
    data, caught = _prepare(_news(tmp_path / "ok", rows, splitter=" "), tmp_path / "ok")
    assert not [m for m in caught if "single token" in m]
    assert data.feature_map.encoders["news"]["vocab"] == ["h1", "h2", "n1", "h3", "n2", "n3"]


def test_splitter_suspect():
    s = pl.Series(["a b c", "a", "b c", None, ""])
    assert splitter_suspect(s, "^") == " "
    assert splitter_suspect(s, " ") is None
    assert splitter_suspect(pl.Series(["1,2", "3,4", "5"]), "^") == ","
    assert splitter_suspect(pl.Series(["a", "b", "c d"]), "^") == " "  # no cell uses '^', one uses ' '
    assert splitter_suspect(pl.Series(["a"] * 20 + ["x y"]), "^") is None  # one cell in 21: not enough to tell
    assert splitter_suspect(pl.Series(["a^b", "c^d", "e f"]), "^") is None  # the splitter is in use
    assert splitter_suspect(pl.Series([["a b"], ["c"]]), "^") is None  # list cells are not split


def test_real_movielens_histories_are_covered(data_dir, tmp_path):
    """movielens_100k's ``history`` shares ``item_id``: every train history token has a real id
    (OOV rate 0 with min_count 1), the vocabulary holds every item of the histories, and no
    sequence warning fires on this healthy dataset."""
    dcfg = api.dataset_config(api.load_run_config(None, dataset="movielens_100k"))
    data, caught = _prepare(dcfg, tmp_path)
    assert data.oov_rates["train"]["history"] == 0.0
    assert not [m for m in caught if "sequence field" in m or "single token" in m]
    [history] = [f for f in data.feature_map.sequences if f.name == "history"]
    assert history.shares == "item_id"
    assert np.asarray(data.splits["train"].arrays["seq:history"]).max() < history.vocab_size


TINY = "small_samples/FuxiCTR/data/tiny_csv/train_sample.csv.gz"
"""A real ad-click sample (FuxiCTR's tiny Taobao csv): candidate ``adgroup_id``, ``^``-separated
``click_sequence`` of earlier clicked ad groups."""


def _tiny_taobao(data_dir, tmp_path, df, splitter="^"):
    df.write_csv(tmp_path / "train.csv")
    return load_dataset_config({
        "name": "taobao_tiny", "root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
        "labels": ["clk"],
        "features": [{"name": "userid"}, {"name": "adgroup_id"},
                     {"name": "click_sequence", "kind": "sequence", "max_len": 5, "splitter": splitter,
                      "share_vocab_with": "adgroup_id"}],
    })


def test_real_log_whose_histories_hold_no_candidate(data_dir, tmp_path):
    """The issue's case on real ids: the rows whose candidate never occurs in a history, so every
    history token is a history-only id. The candidate column alone (the old rule) knows none of
    them; the shared vocabulary gives each a real id."""
    df = pl.read_csv(data_dir / TINY, infer_schema_length=0)
    in_histories = set(df["click_sequence"].fill_null("").str.split("^").explode().to_list())
    rows = df.filter(~pl.col("adgroup_id").is_in(list(in_histories)))
    tokens = [t for t in rows["click_sequence"].fill_null("").str.split("^").explode().to_list() if t]
    assert len(tokens) >= 10 and not set(tokens) & set(rows["adgroup_id"].to_list())
    cfg = _tiny_taobao(data_dir, tmp_path, rows)
    encoders = pipeline._make_encoders(cfg)
    fit_vocabularies(rows, [encoders["adgroup_id"]])  # the candidate column alone
    assert not set(tokens) & set(encoders["adgroup_id"].vocab)
    data, caught = _prepare(cfg, tmp_path)
    assert set(tokens) <= set(data.feature_map.encoders["adgroup_id"]["vocab"])
    assert data.oov_rates["train"]["click_sequence"] == 0.0
    assert not [m for m in caught if "click_sequence" in m]


def test_real_log_written_space_separated_warns_about_the_splitter(data_dir, tmp_path):
    df = pl.read_csv(data_dir / TINY, infer_schema_length=0)
    spaced = df.with_columns(pl.col("click_sequence").str.replace_all("^", " ", literal=True))
    _, caught = _prepare(_tiny_taobao(data_dir, tmp_path, spaced), tmp_path)
    assert [m for m in caught if "'click_sequence'" in m and "set splitter: ' '" in m]
