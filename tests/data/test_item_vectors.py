"""Item vectors (issue 18): a dense-vector feature looked up by item id, from a user-supplied
table or fitted from item text by TF-IDF + TruncatedSVD on the train split's items only."""
from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl
import pytest
import yaml

from ctrlab.config import ConfigError, from_dict
from ctrlab.data.errors import DataError, DataWarning
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.item_vectors import ItemVectorEncoder, item_texts
from ctrlab.data.pipeline import encode_frame, prepare
from ctrlab.data.schema import DenseVectorSpec, load_dataset_config

GROUPS = {
    "fruit": ["apple", "banana", "cherry", "sweet", "juice"],
    "tool": ["hammer", "wrench", "steel", "drill", "bolt"],
    "music": ["guitar", "piano", "song", "drum", "melody"],
}
ITEMS = {f"i{k}": (group, k) for k, group in enumerate(list(GROUPS) * 5)}  # i0..i14, 5 per group


def item_text(item: str) -> str:
    group, k = ITEMS[item]
    words = GROUPS[group]
    return f"{group} {words[k % 5]} {words[(k + 2) % 5]} model{k}"


def write_dataset(folder, vectors: dict, valid_items=("i0", "i1"), text_items=None, dim=4, extra=None):
    """Click rows over items i0..i13 in train (i14 only in valid: it is never a train item), an item
    text table ``items.csv`` (``text_items``: which items it lists, default all 15) and the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_items = [f"i{k}" for k in range(14)]
    for split, items, n in (("train", train_items, 200), ("valid", list(valid_items) + ["i14"], 30),
                            ("test", train_items + ["nosuch"], 30)):
        rows = [(f"u{rng.integers(9)}", items[rng.integers(len(items))], int(rng.random() < 0.5)) for _ in range(n)]
        pl.DataFrame(rows, schema=["user", "item", "label"], orient="row").write_csv(folder / f"{split}.csv")
    listed = list(ITEMS) if text_items is None else list(text_items)
    pl.DataFrame({"item_id": listed, "title": [item_text(i) for i in listed],
                  "kind": [ITEMS[i][0].upper() for i in listed]}).write_csv(folder / "items.csv")
    spec = {"name": "item_vec", "kind": "dense_vector", "dim": dim, "key": "item", "vectors": vectors, **(extra or {})}
    cfg = {"name": "itemvec", "format": "csv", "files": {s: f"{s}.csv" for s in ("train", "valid", "test")},
           "labels": ["label"], "features": [{"name": "user"}, {"name": "item"}, spec]}
    (folder / "data.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "data.yaml"


TEXT = {"text": [{"file": "items.csv", "key_column": "item_id", "columns": ["title", "kind"]}]}


def quiet(*_):
    pass


def _prepare(config, tmp_path, **kwargs):
    return prepare(load_dataset_config(config), cache_dir=tmp_path / "cache", log=quiet, **kwargs)


def _encoder(data) -> ItemVectorEncoder:
    return ItemVectorEncoder.from_state(data.feature_map.encoders["item_vec"])


def _table(data) -> dict[str, np.ndarray]:
    enc = _encoder(data)
    return dict(zip(enc.keys, enc.vectors))


# ---- TF-IDF + SVD -------------------------------------------------------------------------------
def test_text_vectors_are_fitted_on_train_items_only(tmp_path):
    """i14 occurs only in valid: its text (with a word no other item has) must not change the fit. The
    vectors of the other items equal those of a fit whose text table lacks i14 altogether, and i14
    still gets a vector, transformed from its text by the fitted model."""
    with_it = _prepare(write_dataset(tmp_path / "a", TEXT), tmp_path)
    without = _prepare(write_dataset(tmp_path / "b", TEXT, text_items=[f"i{k}" for k in range(14)]), tmp_path)
    a, b = _table(with_it), _table(without)
    assert sorted(a) == sorted([*b, "i14"])
    for item in b:
        np.testing.assert_array_equal(a[item], b[item])
    report = with_it.feature_map.encoders["item_vec"]["report"]
    assert report["fit_items"] == 14 and report["train_items"] == 14 and report["items"] == 15
    assert report["terms"] == without.feature_map.encoders["item_vec"]["report"]["terms"]
    # i14's own word (model14) is not in the fitted vocabulary, its others are: a non-zero vector
    assert np.abs(a["i14"]).sum() > 0 and np.isclose(np.linalg.norm(a["i14"]), 1.0, atol=1e-5)
    valid = with_it.splits["valid"].arrays["dense:item_vec"]
    assert valid.shape[1] == 4 and (np.abs(valid).sum(axis=1) > 0).all()  # every valid row got its vector

    # what a fit on every listed item (leakage) would give is different: the check above can fail
    enc = ItemVectorEncoder(from_dict(DenseVectorSpec, yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())
                                      ["features"][2]), root=tmp_path / "a")
    leaky = enc.fit_keys([f"i{k}" for k in range(15)])
    assert not np.allclose(dict(zip(leaky.keys, leaky.vectors))["i0"], a["i0"])


def test_text_vectors_are_deterministic_and_of_the_asked_dim(tmp_path):
    config = write_dataset(tmp_path / "d", TEXT, dim=6)
    first = _prepare(config, tmp_path / "one")
    second = _prepare(config, tmp_path / "two")
    for split in ("train", "valid", "test"):
        x = first.splits[split].arrays["dense:item_vec"]
        assert x.dtype == np.float32 and x.shape == (len(first.splits[split]), 6)
        np.testing.assert_array_equal(x, second.splits[split].arrays["dense:item_vec"])


def test_rows_get_their_items_vector_and_unknown_items_zeros(tmp_path):
    data = _prepare(write_dataset(tmp_path / "r", TEXT), tmp_path)
    table = _table(data)
    test = pl.read_csv(tmp_path / "r" / "test.csv")
    got = data.splits["test"].arrays["dense:item_vec"]
    for i, item in enumerate(test["item"].to_list()):
        np.testing.assert_array_equal(got[i], table.get(item, np.zeros(4, np.float32)))
    unknown = (test["item"] == "nosuch").to_numpy()
    assert unknown.any() and not got[unknown].any()
    # the split's share of rows without a vector is reported with the OOV rates
    assert data.oov_rates["test"]["item_vec"] == pytest.approx(unknown.mean(), abs=1e-6)
    assert data.oov_rates["train"]["item_vec"] == 0.0


def test_fit_report_is_logged_and_most_items_without_vector_warn(tmp_path):
    lines = []
    prepare(load_dataset_config(write_dataset(tmp_path / "l", TEXT)), cache_dir=tmp_path / "c", log=lines.append)
    fit = next(x for x in lines if "item vectors 'item_vec'" in x)
    assert "tfidf_svd fitted on the text of 14 train items" in fit and "15 items have vectors" in fit
    assert "all 14 train items have one" in fit
    # a table whose ids are written differently ("I0" for "i0"): most train items have none -> warning
    folder = tmp_path / "w"
    write_dataset(folder, TEXT)
    items = pl.read_csv(folder / "items.csv")
    items.with_columns(pl.col("item_id").str.to_uppercase()).vstack(items.head(5)).write_csv(folder / "items.csv")
    lines = []
    with pytest.warns(DataWarning, match="9 of 14 train items have no vector"):
        prepare(load_dataset_config(folder / "data.yaml"), cache_dir=tmp_path / "c", log=lines.append)
    assert any("WARNING" in x and "e.g. i10, i11, i12" in x for x in lines)


def test_several_text_tables_and_joined_duplicates(tmp_path):
    folder = tmp_path / "t"
    write_dataset(folder, TEXT)
    pl.DataFrame({"item_id": ["i1", "i2", "i1"], "tag": ["loud", "quiet", "bright"]}).write_csv(folder / "tags.csv")
    vspec = from_dict(DenseVectorSpec, {"name": "v", "dim": 4, "key": "item", "vectors": {"text": [
        TEXT["text"][0], {"file": "tags.csv", "key_column": "item_id", "columns": ["tag"], "duplicates": "join"}]}})
    keys, texts = item_texts(vspec.vectors, folder, "v")
    assert keys == list(ITEMS) and texts[1] == f"{item_text('i1')} TOOL loud bright"
    assert texts[2].endswith("MUSIC quiet") and texts[0] == f"{item_text('i0')} FRUIT"


# ---- real data ----------------------------------------------------------------------------------
def _cosines(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    a, b = vectors[pairs[:, 0]], vectors[pairs[:, 1]]
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def test_movielens_movies_sharing_genres_are_closer_than_random_pairs(data_dir):
    """ml-latest-small titles + genres + tags, fitted on the movies of the first 40,000 ratings: movies
    with the same genre list are much more similar than random pairs."""
    src = data_dir / "movielens_latest_small"
    with gzip.open(src / "ratings.csv.gz", "rt") as fh:
        train = {line.split(",")[1] for _, line in zip(range(40_000), fh) if not line.startswith("userId")}
    spec = from_dict(DenseVectorSpec, {"name": "movie_vec", "dim": 32, "key": "item_id", "vectors": {"text": [
        {"file": str(src / "movies.csv.gz"), "key_column": "movieId", "columns": ["title", "genres"]},
        {"file": str(src / "tags.csv.gz"), "key_column": "movieId", "columns": ["tag"], "duplicates": "join"}]}})
    enc = ItemVectorEncoder(spec).fit_keys(train)
    assert enc.vectors.shape == (9742, 32) and enc.report["fit_items"] == len(train)
    genres = pl.read_csv(src / "movies.csv.gz")  # movieId, title, genres, in the table's order
    assert genres["movieId"].cast(pl.String).to_list() == enc.keys
    codes = genres["genres"].cast(pl.Categorical).to_physical().to_numpy()
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(0, len(codes), (20_000, 2))
    cand = rng.integers(0, len(codes), (200_000, 2))
    same = cand[(codes[cand[:, 0]] == codes[cand[:, 1]]) & (cand[:, 0] != cand[:, 1])][:20_000]
    assert len(same) > 1000
    sim_same, sim_random = _cosines(enc.vectors, same).mean(), _cosines(enc.vectors, random_pairs).mean()
    assert sim_same > 2 * sim_random and sim_same > sim_random + 0.2, (sim_same, sim_random)


def test_s3rec_amazon_attributes_give_similar_vectors_to_items_sharing_attributes(data_dir):
    """S3-Rec Beauty's item -> attribute ids JSON (categories, brand) as item text: items with the same
    attribute set are closer than random pairs; one-character attribute ids are tokens too."""
    path = data_dir / "s3rec_sequences" / "Beauty_item2attributes.json.gz"
    with gzip.open(path, "rt") as fh:
        attrs = json.load(fh)
    train = list(attrs)[: len(attrs) // 2]
    spec = from_dict(DenseVectorSpec, {"name": "v", "dim": 16, "key": "item", "vectors": {"text": [{"file": str(path)}]}})
    enc = ItemVectorEncoder(spec).fit_keys(train)
    assert enc.keys == list(attrs) and enc.report["fit_items"] == len(train)
    sets = pl.Series([" ".join(map(str, sorted(attrs[k]))) for k in enc.keys]).cast(pl.Categorical).to_physical()
    codes = sets.to_numpy()
    rng = np.random.default_rng(1)
    cand = rng.integers(0, len(codes), (200_000, 2))
    same = cand[(codes[cand[:, 0]] == codes[cand[:, 1]]) & (cand[:, 0] != cand[:, 1])]
    assert len(same) > 200
    sim_same, sim_random = _cosines(enc.vectors, same).mean(), _cosines(enc.vectors, cand[:20_000]).mean()
    assert sim_same > 2 * sim_random and sim_same > sim_random + 0.2, (sim_same, sim_random)


# ---- user-supplied tables -----------------------------------------------------------------------
def _vectors(keys):
    return np.stack([np.arange(4, dtype=np.float32) + 10 * int(k[1:]) for k in keys])


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_user_supplied_table_gives_rows_their_items_vector(tmp_path, fmt):
    folder = tmp_path / fmt
    folder.mkdir()
    keys = [f"i{k}" for k in range(12)]  # i12, i13 (train) and i14 (valid) have none
    if fmt == "parquet":
        pl.DataFrame({"movie": keys, "emb": _vectors(keys).tolist()}).write_parquet(folder / "vecs.parquet")
        vectors = {"file": "vecs.parquet", "key_column": "movie", "value_column": "emb"}
    else:
        np.savez(folder / "vecs.npz", key=np.array(keys), value=_vectors(keys))
        vectors = {"file": "vecs.npz"}
    data = _prepare(write_dataset(folder, vectors), tmp_path)
    report = data.feature_map.encoders["item_vec"]["report"]
    assert report["method"] == "file" and report["items"] == 12
    assert report["train_items_without_vector"] == 2 and report["examples_without_vector"] == ["i12", "i13"]
    for split in ("train", "valid", "test"):
        items = pl.read_csv(folder / f"{split}.csv")["item"].to_list()
        want = np.stack([_vectors([i])[0] if i in keys else np.zeros(4, np.float32) for i in items])
        np.testing.assert_array_equal(data.splits[split].arrays["dense:item_vec"], want)


def test_integer_item_ids_match_a_tables_string_keys(tmp_path):
    """Item ids are tokens: an integer column's 7 is the table's "7" (and a float 7.0 too)."""
    enc = ItemVectorEncoder(from_dict(DenseVectorSpec, {"name": "v", "dim": 4, "key": "item",
                                                        "vectors": {"file": "v.npz"}}))
    np.savez(tmp_path / "v.npz", key=np.array([7, 8]), value=np.ones((2, 4)))
    enc.root = tmp_path
    enc.fit_keys(["7"])
    for column in (pl.Series("item", [7, 9]), pl.Series("item", [7.0, None]), pl.Series("item", ["7", "8.5"])):
        out = enc.transform(column.to_frame())
        assert out[0].tolist() == [1.0] * 4 and not out[1].any()


BAD_TABLES = [
    # (what, table, vectors option, error fragments)
    ("missing key column", lambda: pl.DataFrame({"id": ["i0"], "value": [[1.0] * 4]}), {},
     ["need columns 'key' and 'value'", "missing ['key']", "columns: ['id', 'value']"]),
    ("duplicate keys", lambda: pl.DataFrame({"key": ["i0", "i1", "i0"], "value": [[1.0] * 4] * 3}), {},
     ["repeat keys ['i0']"]),
    ("wrong dim", lambda: pl.DataFrame({"key": ["i0"], "value": [[1.0] * 3]}), {},
     ["have 3 values, the feature's dim is 4", "Fix: set dim: 3 on the feature"]),
    ("nan vector", lambda: pl.DataFrame({"key": ["i0", "i1"], "value": [[1.0] * 4, [1.0, float("nan"), 0, 0]]}), {},
     ["vector of key 'i1'", "NaN or infinity"]),
    ("ragged vectors", lambda: pl.DataFrame({"key": ["i0", "i1"], "value": [[1.0] * 4, [1.0]]}), {},
     ["vector of key 'i1'", "1 long"]),
]


@pytest.mark.parametrize("what, table, option, fragments", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_bad_vector_files_give_clear_errors(tmp_path, what, table, option, fragments):
    folder = tmp_path / "bad"
    folder.mkdir()
    table().write_parquet(folder / "vecs.parquet")
    with pytest.raises(DataError) as err:
        _prepare(write_dataset(folder, {"file": "vecs.parquet", **option}), tmp_path)
    msg = str(err.value)
    assert str(folder / "vecs.parquet") in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_missing_vectors_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.npz.*item vectors of feature 'item_vec'.*Fix: check"):
        _prepare(write_dataset(tmp_path / "m", {"file": "nowhere.npz"}), tmp_path)


def test_bad_item_text_tables_give_clear_errors(tmp_path, check_error):
    folder = tmp_path / "x"
    config = write_dataset(folder, {"text": [{"file": "items.csv", "key_column": "movieId", "columns": ["title"]}]})
    with pytest.raises(DataError) as err:
        _prepare(config, tmp_path)
    check_error(err.value, folder / "items.csv", 1, "movieId", "set key_column and columns")
    assert "['item_id', 'title', 'kind']" in str(err.value)
    items = pl.read_csv(folder / "items.csv")
    items.vstack(items.head(1)).write_csv(folder / "items.csv")  # i0 on lines 2 and 17
    config.write_text(config.read_text().replace("movieId", "item_id"))
    with pytest.raises(DataError) as err:
        _prepare(config, tmp_path)
    msg = check_error(err.value, folder / "items.csv", 17, "item_id", "set duplicates: join")
    assert "item id 'i0' is on lines 2 and 17" in msg
    config.write_text(config.read_text().replace("key_column: item_id", "key_column: item_id\n      duplicates: join"))
    _prepare(config, tmp_path)  # joined: no error
    # too few train items / terms for the dim
    with pytest.raises(DataError, match=r"dim 20 needs at least 20 train items.*Fix: lower dim to at most 14"):
        _prepare(write_dataset(tmp_path / "y", TEXT, dim=20), tmp_path)


@pytest.mark.parametrize("content, fragment", [
    ('[["i0", "apple"]]', "expected a JSON object of item id -> text, got list"),
    ('{"i0": {"a": 1}}', "item 'i0': expected text or a list of tokens"),
    ('{"i0": "apple",', "not a readable JSON file"),
])
def test_bad_json_item_text_is_named(tmp_path, content, fragment):
    (tmp_path / "attrs.json").write_text(content)
    spec = from_dict(DenseVectorSpec, {"name": "v", "dim": 2, "key": "item",
                                       "vectors": {"text": [{"file": "attrs.json"}]}})
    with pytest.raises(DataError, match=fragment) as err:
        ItemVectorEncoder(spec, root=tmp_path).fit_keys(["i0"])
    assert str(tmp_path / "attrs.json") in str(err.value) and "Fix: write" in str(err.value)


@pytest.mark.parametrize("vectors, fragment", [
    ({}, "give either file"),
    ({"file": "a.npz", "text": TEXT["text"]}, "give either file"),
    ({"text": [{"file": "items.csv"}]}, "name the item id column and the text columns"),
    ({"text": [{"file": "attrs.json.gz", "key_column": "id"}]}, "drop key_column and columns"),
    ({"text": []}, "list at least one item text table"),
])
def test_config_errors(vectors, fragment):
    spec = {"name": "v", "kind": "dense_vector", "dim": 4, "key": "item", "vectors": vectors}
    with pytest.raises(ConfigError, match=fragment):
        load_dataset_config({"files": {"train": "t.csv"}, "features": [spec]})


def test_key_and_vectors_go_together():
    spec = {"name": "v", "kind": "dense_vector", "dim": 4, "key": "item", "vectors": {"file": "a.npz"}}
    with pytest.raises(ConfigError, match="needs both key"):
        load_dataset_config({"files": {"train": "t.csv"}, "features": [{**spec, "key": None}]})
    with pytest.raises(ConfigError, match="needs both key"):
        load_dataset_config({"files": {"train": "t.csv"}, "features": [{**spec, "vectors": None}]})
    with pytest.raises(ConfigError, match="drop source/splitter"):
        load_dataset_config({"files": {"train": "t.csv"}, "features": [{**spec, "source": "x"}]})


# ---- cache ------------------------------------------------------------------------------------
def _npz_dataset(folder):
    """A dataset whose item vectors come from ``folder/vecs.npz`` (items i0..i14): (config, keys)."""
    keys = [f"i{k}" for k in range(15)]
    folder.mkdir()
    np.savez(folder / "vecs.npz", key=np.array(keys), value=_vectors(keys))
    return write_dataset(folder, {"file": "vecs.npz"}), keys


def test_cache_is_rebuilt_when_the_vectors_file_or_the_settings_change(tmp_path):
    folder = tmp_path / "c"
    config, keys = _npz_dataset(folder)
    first = _prepare(config, tmp_path)
    again = _prepare(config, tmp_path)
    assert again.reused and again.path == first.path
    np.savez(folder / "vecs.npz", key=np.array(keys), value=_vectors(keys) + 1)  # same shape, new values
    changed = _prepare(config, tmp_path)
    assert not changed.reused and changed.path != first.path
    np.testing.assert_array_equal(changed.splits["train"].arrays["dense:item_vec"],
                                  first.splits["train"].arrays["dense:item_vec"] + 1)

    text = write_dataset(tmp_path / "t", TEXT)
    base = _prepare(text, tmp_path)
    for change in ({"seed": 3}, {"max_features": 10}, {"min_df": 2}, {"normalize": False}):
        other = _prepare(write_dataset(tmp_path / "t", {**TEXT, **change}), tmp_path)
        assert not other.reused and other.path != base.path, change
        if "seed" not in change:  # another SVD start may converge to the same vectors
            assert not np.array_equal(other.splits["train"].arrays["dense:item_vec"],
                                      base.splits["train"].arrays["dense:item_vec"]), change
    write_dataset(tmp_path / "t", TEXT)
    assert _prepare(text, tmp_path).reused
    items = pl.read_csv(tmp_path / "t" / "items.csv")  # the text table edited: refit
    items.with_columns(pl.col("title").str.replace("model", "variant")).write_csv(tmp_path / "t" / "items.csv")
    assert not _prepare(text, tmp_path).reused


def test_a_runs_feature_map_encodes_without_the_source_files(tmp_path):
    """Evaluation and prediction encode with the run's map, which holds the table: the vectors file
    may be gone, and a changed one is not used."""
    folder = tmp_path / "e"
    config, _ = _npz_dataset(folder)
    fitted = _prepare(config, tmp_path)
    fmap = FeatureMap.load(fitted.path / "feature_map.json")
    (folder / "vecs.npz").unlink()
    again = _prepare(config, tmp_path, feature_map=fmap)
    np.testing.assert_array_equal(again.splits["test"].arrays["dense:item_vec"],
                                  fitted.splits["test"].arrays["dense:item_vec"])
    with pytest.raises(DataError, match="item vectors of feature 'item_vec': the file does not exist"):
        _prepare(config, tmp_path, rebuild=True)
    frame = pl.DataFrame({"user": ["u1", "u2"], "item": ["i3", "zzz"]})
    out = encode_frame(frame, fmap, with_labels=False).arrays["dense:item_vec"]
    np.testing.assert_array_equal(out, np.stack([_vectors(["i3"])[0], np.zeros(4, np.float32)]))


def test_streaming_gives_the_same_arrays_and_table(tmp_path):
    config = write_dataset(tmp_path / "s", TEXT)
    whole = _prepare(config, tmp_path / "one")
    streamed = _prepare(config, tmp_path / "two", streaming=True, block_rows=37)
    assert streamed.feature_map.encoders["item_vec"] == whole.feature_map.encoders["item_vec"]
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.asarray(streamed.splits[split].arrays["dense:item_vec"]),
                                      whole.splits[split].arrays["dense:item_vec"])


def test_feature_map_state_is_checked_on_load(tmp_path):
    data = _prepare(write_dataset(tmp_path / "f", TEXT), tmp_path)
    state = dict(data.feature_map.encoders["item_vec"])
    enc = ItemVectorEncoder.from_state(state)
    assert len(enc.keys) == 15 and enc.vectors.shape == (15, 4)
    with pytest.raises(DataError, match="does not hold one 4-value vector per key"):
        ItemVectorEncoder.from_state({**state, "keys": state["keys"][:-1]})
    with pytest.raises(DataError, match="not base64"):
        ItemVectorEncoder.from_state({**state, "vectors": "###"})


# ---- built-in datasets --------------------------------------------------------------------------
def test_movielens_latest_small_adds_an_item_text_vector_on_request(data_dir, tmp_path):
    from ctrlab.data.datasets import get_dataset

    plain = get_dataset("movielens_latest_small", data_dir=str(data_dir))
    assert not [f for f in plain.features if f.kind == "dense_vector"]
    cfg = get_dataset("movielens_latest_small", data_dir=str(data_dir), item_text_dim=8)
    assert cfg.files == plain.files  # the same prepared splits
    data = prepare(cfg, cache_dir=tmp_path / "cache", log=quiet)
    report = data.feature_map.encoders["item_text_vec"]["report"]
    assert [s.rsplit("/", 1)[-1] for s in report["sources"]] == ["movies.csv.gz", "tags.csv.gz"]
    train_items = set(pl.read_parquet(cfg.resolve("train"), columns=["item_id"])["item_id"])
    assert report["train_items"] == report["fit_items"] == len(train_items) and report["items"] == 9742
    assert data.splits["valid"].arrays["dense:item_text_vec"].shape == (10_049, 8)
    assert data.oov_rates["valid"]["item_text_vec"] == 0.0 < data.oov_rates["valid"]["item_id"]
    no_tags = get_dataset("movielens_latest_small", data_dir=str(data_dir), item_text_dim=8, item_text_tags=False)
    assert len(no_tags.features[-1].vectors.text) == 1
    with pytest.raises(ConfigError, match="item_text_dim must be >= 1"):
        get_dataset("movielens_latest_small", data_dir=str(data_dir), item_text_dim=-1)
