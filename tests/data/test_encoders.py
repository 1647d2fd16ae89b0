"""Encoders: fitted on train only; ids 0 = padding, 1 = OOV; numeric normalisers and buckets;
stable hashing; sequences (split, truncate, pad, shared vocabularies); dense vectors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from ctrlab.data.encoders import (
    CategoricalEncoder,
    DenseVectorEncoder,
    NumericEncoder,
    SequenceEncoder,
    encode_labels,
    stable_hash,
)
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import fit_feature_map, load_encoders, raw_columns
from ctrlab.data.readers import LINE, read_split
from ctrlab.data.schema import (
    OOV_ID,
    PAD_ID,
    CategoricalSpec,
    DenseVectorSpec,
    NumericSpec,
    SequenceSpec,
    load_dataset_config,
)


def frame(first_line: int = 2, **cols) -> pl.DataFrame:
    """A raw frame as the readers return it (String cells + __line__)."""
    n = len(next(iter(cols.values())))
    return pl.DataFrame(cols).with_columns(pl.Series(LINE, range(first_line, first_line + n), dtype=pl.Int64))


# ---- categorical -------------------------------------------------------------------------------
def test_vocab_fitted_on_train_only_ordered_by_frequency():
    train = frame(c=["b", "a", "b", "c", "a", "b"])
    enc = CategoricalEncoder(CategoricalSpec("c")).fit(train)
    assert enc.vocab == ["b", "a", "c"]  # by count, ties by value
    assert enc.vocab_size == 5  # pad + OOV + 3
    assert enc.transform(train).tolist() == [2, 3, 2, 4, 3, 2]
    test = frame(c=["a", "zzz", "c", "b"])  # 'zzz' only in test
    out = enc.transform(test)
    assert out.dtype == np.int32 and out.tolist() == [3, OOV_ID, 4, 2]
    assert "zzz" not in enc.vocab


def test_min_count_threshold():
    train = frame(c=["x", "x", "y", "y", "y", "z"])
    enc = CategoricalEncoder(CategoricalSpec("c", min_count=2)).fit(train)
    assert enc.vocab == ["y", "x"]  # z seen once < 2
    assert enc.transform(frame(c=["z", "x", "y"])).tolist() == [OOV_ID, 3, 2]
    enc3 = CategoricalEncoder(CategoricalSpec("c", min_count=3)).fit(train)
    assert enc3.vocab == ["y"] and enc3.vocab_size == 3


def test_padding_id_never_assigned_to_a_value():
    values = ["0", "", None, "1", "pad", "0", None]
    train = frame(c=values)
    enc = CategoricalEncoder(CategoricalSpec("c")).fit(train)
    ids = enc.transform(train)
    assert PAD_ID not in ids and OOV_ID not in ids  # every train value has an id >= 2
    assert ids.min() == 2 and ids.max() == enc.vocab_size - 1
    # a missing cell is the empty string: null and "" share one id
    assert ids[1] == ids[2] == ids[6]
    hashed = CategoricalEncoder(CategoricalSpec("c", hash_buckets=3)).fit(train).transform(train)
    assert hashed.min() >= 2 and hashed.max() <= 4


# ---- numeric -----------------------------------------------------------------------------------
TRAIN_X = ["1", "", "4", None, "9", " 16 ", "nan"]  # "nan": missing with non_finite: fill
TEST_X = ["0", "25", "", "-3"]


def _np(values, fill):
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = fill
        out.append(fill if not np.isfinite(f) else f)
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("fill", [0.0, 5.0])
def test_missing_numeric_is_filled_then_normalised(fill):
    enc = NumericEncoder(NumericSpec("x", fill_value=fill, normalizer="standard", non_finite="fill")).fit(frame(x=TRAIN_X))
    x = np.array([1, fill, 4, fill, 9, 16, fill])
    assert enc.stats["mean"] == pytest.approx(x.mean()) and enc.stats["std"] == pytest.approx(x.std())
    out = enc.transform(frame(x=TEST_X))
    t = np.array([0, 25, fill, -3])
    np.testing.assert_allclose(out, (t - x.mean()) / x.std(), rtol=1e-6)
    assert out.dtype == np.float32


def test_normalisers_match_numpy_with_train_stats():
    train, test = frame(x=TRAIN_X), frame(x=TEST_X)
    x, t = _np(TRAIN_X, 0.0), _np(TEST_X, 0.0)

    none = NumericEncoder(NumericSpec("x", non_finite="fill")).fit(train)
    np.testing.assert_array_equal(none.transform(test), t.astype(np.float32))

    std = NumericEncoder(NumericSpec("x", non_finite="fill", normalizer="standard")).fit(train)
    np.testing.assert_allclose(std.transform(test), (t - x.mean()) / x.std(), rtol=1e-6)

    mm = NumericEncoder(NumericSpec("x", non_finite="fill", normalizer="minmax")).fit(train)
    np.testing.assert_allclose(mm.transform(test), (t - x.min()) / (x.max() - x.min()), rtol=1e-6)
    np.testing.assert_allclose(mm.transform(test), [0.0, 25 / 16, 0.0, -3 / 16], rtol=1e-6)

    log = NumericEncoder(NumericSpec("x", non_finite="fill", normalizer="log")).fit(train)
    np.testing.assert_allclose(log.transform(test), np.sign(t) * np.log1p(np.abs(t)), rtol=1e-6)
    assert log.transform(test)[3] == pytest.approx(-np.log(4.0))


@pytest.mark.parametrize("normalizer", ["none", "standard"])
def test_a_number_beyond_float32_is_an_error_or_filled(normalizer):
    """1e39 is finite in float64 but inf in float32, the model's input type: before, it reached the
    model as inf (a served probability of null). Now an error naming the row, or with
    ``non_finite: fill`` the fill value, normalised like any other."""
    train = frame(x=["1", "2", "3"])
    enc = NumericEncoder(NumericSpec("x", normalizer=normalizer)).fit(train)
    with pytest.raises(DataError, match="beyond the range of float32") as err:
        enc.transform(frame(x=["2", "1e39"]))
    assert err.value.line == 3  # the header is line 1
    fill = NumericEncoder(NumericSpec("x", normalizer=normalizer, non_finite="fill", fill_value=2.0)).fit(train)
    out = fill.transform(frame(x=["1e39", "2"]))
    assert np.isfinite(out).all() and out[0] == out[1]


def test_constant_column_does_not_divide_by_zero():
    enc = NumericEncoder(NumericSpec("x", normalizer="standard")).fit(frame(x=["3", "3"]))
    assert enc.transform(frame(x=["3", "5"])).tolist() == [0.0, 2.0]
    enc = NumericEncoder(NumericSpec("x", normalizer="minmax")).fit(frame(x=["3", "3"]))
    assert enc.transform(frame(x=["3", "5"])).tolist() == [0.0, 2.0]


def test_bucketize_explicit_boundaries():
    spec = NumericSpec("age", bucketize=[0.0, 10.0, 100.0])
    enc = NumericEncoder(spec).fit(frame(age=["1", "2"]))
    out = enc.transform(frame(age=["-5", "0", "5", "10", "99.9", "100", "1000", ""]))
    # buckets (-inf,0) [0,10) [10,100) [100,inf) -> ids 2..5; missing -> fill 0.0 -> bucket [0,10)
    assert out.dtype == np.int32 and out.tolist() == [2, 3, 3, 4, 4, 5, 5, 3]
    assert enc.vocab_size == 6


def test_n_buckets_quantiles_and_feature_map_origin():
    cfg = load_dataset_config(
        {"features": [{"name": "q", "kind": "numeric", "n_buckets": 4},
                      {"name": "b", "kind": "numeric", "bucketize": [0.5]},
                      {"name": "n", "kind": "numeric", "normalizer": "minmax"}]}
    )
    vals = [str(v) for v in range(1, 101)]
    train = frame(q=vals, b=["0", "1"] * 50, n=vals, label=["0", "1"] * 50)
    fmap = fit_feature_map(cfg, train)
    assert fmap.encoders["q"]["boundaries"] == pytest.approx(np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]).tolist())
    assert [(f.name, f.vocab_size, f.origin) for f in fmap.categorical] == [("q", 6, "bucketized"), ("b", 4, "bucketized")]
    assert [f.name for f in fmap.numeric] == ["n"]
    ids = load_encoders(fmap)["q"].transform(train)
    assert np.bincount(ids).tolist() == [0, 0, 25, 25, 25, 25]  # four equal quantile buckets


# ---- hashing -----------------------------------------------------------------------------------
# blake2b(value, digest_size=8), little-endian, mod buckets; computed once with hashlib.
HASHED = {"05db9164": 438, "170301": 807, "": 756, "ü": 525}


def test_stable_hash_hard_values():
    for value, expected in HASHED.items():
        assert stable_hash(value, 1000) == expected
    enc = CategoricalEncoder(CategoricalSpec("c", hash_buckets=1000))
    assert enc.vocab_size == 1002
    out = enc.fit(frame(c=["x"])).transform(frame(c=list(HASHED) + [None]))
    assert out.tolist() == [2 + v for v in HASHED.values()] + [2 + HASHED[""]]
    assert enc.vocab == []  # nothing fitted


def test_stable_hash_same_in_another_process():
    code = (
        "import json, polars as pl\n"
        "from ctrlab.data.encoders import CategoricalEncoder\n"
        "from ctrlab.data.schema import CategoricalSpec\n"
        "enc = CategoricalEncoder(CategoricalSpec('c', hash_buckets=1000))\n"
        f"print(json.dumps(enc.transform(pl.DataFrame({{'c': {list(HASHED)!r}}})).tolist()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [2 + v for v in HASHED.values()]


# ---- sequences ---------------------------------------------------------------------------------
SEQ = ["a^b^c^d^e", "b", "", None, "c ^ a"]


def test_sequence_split_truncate_pre_pad_pre():
    enc = SequenceEncoder(SequenceSpec("s", max_len=3)).fit(frame(s=SEQ))
    assert enc.vocab == ["a", "b", "c", "d", "e"]  # a, b, c seen twice; d, e once
    a, b, c, d, e = 2, 3, 4, 5, 6
    out = enc.transform(frame(s=SEQ + ["a^zzz"]))
    assert out.dtype == np.int32 and out.shape == (6, 3)
    assert out.tolist() == [
        [c, d, e],  # too long: the oldest tokens are cut, the latest kept
        [0, 0, b],  # padding first, the latest item last
        [0, 0, 0],
        [0, 0, 0],
        [0, c, a],  # tokens are stripped
        [0, a, OOV_ID],  # unseen token -> OOV
    ]
    assert enc.vocab_size == 7


def test_sequence_truncate_post_pad_post():
    enc = SequenceEncoder(SequenceSpec("s", max_len=3, padding="post", truncating="post")).fit(frame(s=SEQ))
    assert enc.transform(frame(s=SEQ)).tolist() == [[2, 3, 4], [3, 0, 0], [0, 0, 0], [0, 0, 0], [4, 2, 0]]
    pre_pad = SequenceEncoder(SequenceSpec("s", max_len=3, padding="pre", truncating="post")).fit(frame(s=SEQ))
    assert pre_pad.transform(frame(s=SEQ[:2])).tolist() == [[2, 3, 4], [0, 0, 3]]


def test_sequence_splitter_min_count_and_list_input():
    enc = SequenceEncoder(SequenceSpec("s", splitter="|", max_len=4, min_count=2)).fit(frame(s=["x|y|x", "y|z"]))
    assert enc.vocab == ["x", "y"]
    assert enc.transform(frame(s=["x|z|y"])).tolist() == [[0, 2, OOV_ID, 3]]
    lists = pl.DataFrame({"s": [["x", "y"], [], None]}).with_columns(pl.Series(LINE, [1, 2, 3]))
    assert enc.transform(lists).tolist() == [[0, 0, 2, 3], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_sequence_shares_categorical_vocab_real_taobao(data_dir):
    path = data_dir / "small_samples/FuxiCTR/data/tiny_csv/train_sample.csv.gz"
    cfg = load_dataset_config(
        {
            "labels": ["clk"],
            "features": [
                {"name": "adgroup_id"},
                {"name": "click_sequence", "kind": "sequence", "max_len": 4, "share_vocab_with": "adgroup_id"},
            ],
        }
    )
    df = read_split(cfg, path, raw_columns(cfg))
    assert df.height == 100
    fmap = fit_feature_map(cfg, df, path)
    encoders = load_encoders(fmap)
    item, seq = encoders["adgroup_id"], encoders["click_sequence"]
    assert seq.shared is item and seq.vocab == []
    assert fmap.sequences[0].shares == "adgroup_id" and fmap.sequences[0].vocab_size == item.vocab_size
    vocab = fmap.encoders["adgroup_id"]["vocab"]
    cat_ids = item.transform(df)
    seq_ids = seq.transform(df)
    # line 9: adgroup_id 170301, click_sequence 170301^573514 -> same id for the same token
    row = df[LINE].to_list().index(9)
    id_170301 = 2 + vocab.index("170301")
    assert cat_ids[row] == id_170301
    assert seq_ids[row].tolist() == [0, 0, id_170301, 2 + vocab.index("573514")]
    # line 4: six tokens, max_len 4 keeps the last four: 158525^633154^383937^431258
    row4 = df[LINE].to_list().index(4)
    last4 = ["158525", "633154", "383937", "431258"]
    assert seq_ids[row4].tolist() == [2 + vocab.index(t) if t in vocab else OOV_ID for t in last4]
    assert item.transform(frame(adgroup_id=last4)).tolist() == seq_ids[row4].tolist()
    # a token id means the same thing in both fields
    both = set(df["adgroup_id"].to_list()) & set(df["click_sequence"].str.split("^").explode().to_list())
    assert both >= {"170301", "573514", "680144", "756739"}
    for tok in both:
        assert item.transform(frame(adgroup_id=[tok]))[0] == seq.transform(frame(click_sequence=[tok]))[0, -1] >= 2


# ---- dense vectors -----------------------------------------------------------------------------
def test_dense_vector_text_and_list():
    enc = DenseVectorEncoder(DenseVectorSpec("v", dim=3))
    out = enc.transform(frame(v=["0.5 1 -2", " 3e-1  4 5 "]))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.5, 1, -2], [0.3, 4, 5]])
    lists = pl.DataFrame({"v": [[1.0, 2.0, 3.0]]}).with_columns(pl.Series(LINE, [1]))
    assert enc.transform(lists).tolist() == [[1.0, 2.0, 3.0]]


def test_dense_vector_wrong_length_names_line(check_error, tmp_path):
    path = tmp_path / "train.csv"
    with pytest.raises(DataError) as ei:
        DenseVectorEncoder(DenseVectorSpec("emb", dim=3, splitter=";")).transform(
            frame(emb=["1;2;3", "4;5;6", "7;8", "1;1;1"]), path
        )
    msg = check_error(ei.value, path, 4, "emb", "give every row exactly 3 values")
    assert "vector '7;8' does not have dim=3 values" in msg


def test_dense_vector_list_wrong_length_and_text(check_error, tmp_path):
    path = tmp_path / "x.parquet"
    lists = pl.DataFrame({"v": [[1.0, 2.0], [3.0]]}).with_columns(pl.Series(LINE, [1, 2]))
    with pytest.raises(DataError) as ei:
        DenseVectorEncoder(DenseVectorSpec("v", dim=2)).transform(lists, path)
    assert "vector [3.0] does not have dim=2" in check_error(ei.value, path, 2, "v", "exactly 2 values")
    with pytest.raises(DataError) as ei:
        DenseVectorEncoder(DenseVectorSpec("v", dim=2)).transform(frame(v=["1 2", "1 x"]), path)
    assert "vector '1 x' holds a non-number" in check_error(ei.value, path, 3, "v", "write numbers only")
    with_null = pl.DataFrame({"v": [[1.0, 2.0], [3.0, None]]}).with_columns(pl.Series(LINE, [1, 2]))
    with pytest.raises(DataError) as ei:
        DenseVectorEncoder(DenseVectorSpec("v", dim=2)).transform(with_null, path)
    assert "vector [3.0, None] holds a non-number" in check_error(ei.value, path, 2, "v", "write numbers only")


# ---- labels ------------------------------------------------------------------------------------
def test_labels_text_numbers_and_bools():
    df = frame(click=["1", "0", " 1.0 ", "0.0"], buy=["0", "0", "1", "0"])
    out = encode_labels(df, ["click", "buy"], None)
    assert out.dtype == np.float32 and out.tolist() == [[1, 0], [0, 0], [1, 1], [0, 0]]
    parquet_like = pl.DataFrame({"click": [True, False], "conv": [1, 0]})
    assert encode_labels(parquet_like, ["click", "conv"], None).tolist() == [[1, 1], [0, 0]]


@pytest.mark.parametrize("bad", ["-1", "", "yes", "0.5"])
def test_label_not_binary(check_error, tmp_path, bad):
    path = tmp_path / "t.csv"
    with pytest.raises(DataError) as ei:
        encode_labels(frame(label=["0", "1", bad]), ["label"], path)
    assert f"label {bad!r} is not 0 or 1" in check_error(ei.value, path, 4, "label", "binarise the label")


def test_few_token_dict_lookup_equals_replace_strict():
    """Small frames (served requests) and frames much smaller than the vocabulary take a dict lookup;
    it gives exactly the ids of the replace_strict path, for known, unseen, empty and missing cells."""
    from ctrlab.data import encoders as E
    from ctrlab.data.pipeline import encode_frame

    rng = np.random.default_rng(0)
    train = pl.DataFrame({"c": [f"t{int(v)}" for v in rng.zipf(1.3, 20_000) % 5000] + [""] * 5})
    spec = CategoricalSpec("c")
    enc = CategoricalEncoder(spec).fit(train)
    assert "" in enc.vocab and len(enc.vocab) > 1000
    cells = [f"t{int(v)}" for v in rng.integers(0, 8000, 3000)] + ["", None, "never"] * 10
    frame = pl.DataFrame({"c": pl.Series(cells, dtype=pl.String)})
    reference = frame.select(enc.transform_expr(frame.schema["c"])).to_series().to_numpy()  # replace_strict, whole vocabulary
    assert not E.few_tokens(frame.height, len(enc.vocab))
    for rows in (1, 7, 256, 3030):
        part = frame.head(rows)
        np.testing.assert_array_equal(enc.transform(part), reference[:rows])
        sub_vocab = E._map_tokens(part["c"].fill_null(""), enc.vocab, None).to_numpy()
        np.testing.assert_array_equal(sub_vocab, reference[:rows])
    # the None cell is the "" token (a missing CSV cell), unseen is OOV
    assert enc.transform(pl.DataFrame({"c": pl.Series([None, "", "never"], dtype=pl.String)})).tolist() == [
        reference[cells.index("")]] * 2 + [OOV_ID]
    # through encode_frame, as a served request goes: one row and many rows agree
    fmap = fit_feature_map(load_dataset_config({"features": [{"name": "c"}]}), train)
    one = np.concatenate([encode_frame(frame.slice(i, 1), fmap, with_labels=False).arrays["cat"] for i in range(40)])
    np.testing.assert_array_equal(one[:, 0], encode_frame(frame.head(40), fmap, with_labels=False).arrays["cat"][:, 0])
    np.testing.assert_array_equal(one[:, 0], reference[:40])


# ---- issue 14.5: a token does not depend on the column's dtype ---------------------------------
def test_whole_number_floats_are_integer_tokens():
    enc = CategoricalEncoder(CategoricalSpec("c")).fit(pl.DataFrame({"c": pl.Series([10, 11, 10, -3], dtype=pl.Int64)}))
    assert enc.vocab == ["10", "-3", "11"]
    floats = pl.DataFrame({"c": pl.Series([10.0, None, 11.0, 10.5, float("nan"), -3.0, -0.0], dtype=pl.Float64)})
    want = [2, 1, 4, 1, 1, 3, 1]  # null and NaN are missing ("" is not in train): OOV
    assert enc.transform(floats).tolist() == want  # few rows: the dict lookup
    big = pl.concat([floats] * 100)  # many rows: the Polars expression
    assert big.select(enc.transform_expr(pl.Float64)).to_series().to_list() == want * 100
    assert enc.transform(floats.with_columns(pl.col("c").cast(pl.Float32))).tolist() == want
    from ctrlab.data.encoders import categorical_tokens

    assert categorical_tokens(floats["c"]).to_list() == ["10", "", "11", "10.5", "", "-3", "0"]
    assert categorical_tokens(pl.Series([1e300])).to_list() == [str(pl.Series([1e300]).cast(pl.String)[0])]


def test_sequence_of_float_lists_uses_integer_tokens():
    spec = SequenceSpec("h", max_len=3)
    enc = SequenceEncoder(spec).fit(pl.DataFrame({"h": [[10, 11], [10]]}))
    out = enc.transform(pl.DataFrame({"h": pl.Series([[10.0, 11.0], [11.5], None], dtype=pl.List(pl.Float64))}))
    assert out.tolist() == [[0, 2, 3], [0, 0, 1], [0, 0, 0]]


def test_nan_in_train_is_an_error_by_default():
    with pytest.raises(DataError, match=r"line 8, column 'x': value 'nan' is not a finite number.*non_finite: fill"):
        NumericEncoder(NumericSpec("x")).fit(frame(x=TRAIN_X))
