"""Issue 15.3: a validation split carved out of the train file when the dataset config lists no valid
file (a seeded random ``valid_fraction``, or the latest rows by ``valid_time_column``), fitted on the
remaining train rows only and the same in memory and streamed; ``column_names`` with a header renames
the columns; columns the config does not use are named once in the log.
Real data: the first MovieLens-100k ratings (user, item, rating, timestamp) written as small files."""
from __future__ import annotations

import datetime as dt
import gzip

import numpy as np
import polars as pl
import pytest

from ctrlab.config import ConfigError
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import prepare
from ctrlab.data.readers import read_split
from ctrlab.data.schema import load_dataset_config

TRAIN_ROWS, TEST_ROWS = 600, 200
# The latest MovieLens ratings come from users not seen earlier (real cold start): the OOV warning of a
# time split is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::ctrlab.data.errors.DataWarning")


def ratings(data_dir, rows: int = TRAIN_ROWS + TEST_ROWS) -> pl.DataFrame:
    """The first ``rows`` MovieLens-100k ratings: user, item, label (rating >= 4), ts, rating."""
    with gzip.open(data_dir / "movielens_100k" / "u.data.gz", "rt") as fh:
        lines = [next(fh).split("\t") for _ in range(rows)]
    return pl.DataFrame({
        "user": [f"u{p[0]}" for p in lines],
        "item": [f"i{p[1]}" for p in lines],
        "label": [int(int(p[2]) >= 4) for p in lines],
        "ts": [int(p[3]) for p in lines],
        "rating": [int(p[2]) for p in lines],
    })


def write(frame: pl.DataFrame, path, fmt: str) -> None:
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)


def config(tmp_path, fmt: str = "csv", **extra):
    ext = "parquet" if fmt == "parquet" else "csv"
    return load_dataset_config({
        "name": "ml_head", "format": fmt, "root": str(tmp_path),
        "files": {"train": f"train.{ext}", "test": f"test.{ext}"},
        "group_field": "user",
        "features": [{"name": "user"}, {"name": "item"}, {"name": "rating_n", "source": "rating", "kind": "numeric",
                                                           "normalizer": "standard"}],
        **extra,
    })


def expected_valid(frame: pl.DataFrame, how: str) -> np.ndarray:
    """The rows the docs promise: a seeded sample of round(0.1 n), or the round(0.1 n) latest by ts."""
    n, k = frame.height, round(0.1 * frame.height)
    mask = np.zeros(n, dtype=bool)
    if how == "random":
        mask[np.random.default_rng(2021).choice(n, size=k, replace=False)] = True
    else:
        mask[np.argsort(frame["ts"].to_numpy(), kind="stable")[n - k:]] = True
    return mask


def same_arrays(a, b) -> None:
    """Same splits, vocabularies and arrays (statistics and floats: up to the streamed fit's rounding)."""
    assert sorted(a.splits) == sorted(b.splits)
    for name, state in a.feature_map.encoders.items():
        other = b.feature_map.encoders[name]
        assert state.get("vocab") == other.get("vocab"), name
        for k, v in (state.get("stats") or {}).items():
            assert other["stats"][k] == pytest.approx(v, rel=1e-9), (name, k)
    for split in a.splits:
        x, y = a.splits[split].arrays, b.splits[split].arrays
        assert sorted(x) == sorted(y), split
        for key in x:
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(np.asarray(y[key]), np.asarray(x[key]), rtol=1e-6, err_msg=f"{split} {key}")
            else:
                np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=f"{split} {key}")


class Log(list):
    def __call__(self, msg):
        self.append(msg)


@pytest.mark.parametrize("how", ["random", "time"])
def test_carved_valid_equals_explicit_files_with_those_rows(data_dir, tmp_path, how):
    """The carved split is the documented rows, and vocabularies/statistics come from the other train
    rows only: the arrays equal those of a config whose train and valid files hold exactly those rows."""
    frame = ratings(data_dir)
    train, test = frame.head(TRAIN_ROWS), frame.tail(TEST_ROWS)
    write(train, tmp_path / "train.csv", "csv")
    write(test, tmp_path / "test.csv", "csv")
    extra = {"valid_time_column": "ts"} if how == "time" else {}
    log = Log()
    carved = prepare(config(tmp_path, **extra), tmp_path / "cache", log=log)
    assert {s: len(x) for s, x in carved.splits.items()} == {"train": 540, "valid": 60, "test": 200}
    want_line = ("valid: 10% of train.csv (seed 2021), 60 rows" if how == "random"
                 else "valid: the latest 10% of train.csv by 'ts', 60 rows")
    assert [m for m in log if m.startswith("[ctrlab] valid:")] == [f"[ctrlab] {want_line}"]

    mask = expected_valid(train, how)
    own = tmp_path / "own"
    own.mkdir()
    write(train.filter(~mask), own / "train.csv", "csv")
    write(train.filter(mask), own / "valid.csv", "csv")
    write(test, own / "test.csv", "csv")
    cfg = config(own)
    cfg.files["valid"] = "valid.csv"
    explicit = prepare(cfg, tmp_path / "cache_own", log=Log())
    same_arrays(carved, explicit)
    # an item seen only in valid rows is out of vocabulary there (no leak from valid into the fit)
    only_valid = set(train.filter(mask)["item"]) - set(train.filter(~mask)["item"])
    assert only_valid and not only_valid & set(carved.feature_map.encoders["item"]["vocab"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("how", ["random", "time"])
def test_streamed_split_equals_in_memory_and_is_cached(data_dir, tmp_path, fmt, how):
    frame = ratings(data_dir)
    ext = "parquet" if fmt == "parquet" else "csv"
    write(frame.head(TRAIN_ROWS), tmp_path / f"train.{ext}", fmt)
    write(frame.tail(TEST_ROWS), tmp_path / f"test.{ext}", fmt)
    extra = {"valid_time_column": "ts"} if how == "time" else {}
    whole = prepare(config(tmp_path, fmt, **extra), tmp_path / "whole", log=Log())
    streamed = prepare(config(tmp_path, fmt, **extra), tmp_path / "streamed", log=Log(), streaming=True,
                       block_rows=64)
    same_arrays(whole, streamed)
    again = Log()
    reused = prepare(config(tmp_path, fmt, **extra), tmp_path / "whole", log=again)
    assert reused.reused and any(m.startswith("[ctrlab] valid:") for m in again)  # the cache says how valid was made
    same_arrays(whole, reused)
    if how == "random":  # the seed is part of the key: another seed, other rows, another folder
        other = prepare(config(tmp_path, fmt, split_seed=7), tmp_path / "whole", log=Log())
        assert other.path != whole.path and not other.reused
        assert not np.array_equal(other.splits["valid"].arrays["cat"], whole.splits["valid"].arrays["cat"])


def test_time_column_of_iso_datetimes_orders_like_timestamps(data_dir, tmp_path):
    frame = ratings(data_dir)
    write(frame.head(TRAIN_ROWS), tmp_path / "train.csv", "csv")
    write(frame.tail(TEST_ROWS), tmp_path / "test.csv", "csv")
    by_number = prepare(config(tmp_path, valid_time_column="ts"), tmp_path / "a", log=Log())
    iso = frame.with_columns(pl.col("ts").map_elements(
        lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), return_dtype=pl.String))
    write(iso.head(TRAIN_ROWS), tmp_path / "train.csv", "csv")
    by_date = prepare(config(tmp_path, valid_time_column="ts"), tmp_path / "b", log=Log())
    same_arrays(by_number, by_date)


def test_no_validation_split_with_fraction_zero(data_dir, tmp_path):
    frame = ratings(data_dir)
    write(frame.head(TRAIN_ROWS), tmp_path / "train.csv", "csv")
    write(frame.tail(TEST_ROWS), tmp_path / "test.csv", "csv")
    data = prepare(config(tmp_path, valid_fraction=0), tmp_path / "cache", log=Log())
    assert {s: len(x) for s, x in data.splits.items()} == {"train": 600, "test": 200}


@pytest.mark.parametrize("extra,fragment", [
    ({"valid_fraction": 0.2}, "valid_fraction: the dataset has a valid file"),
    ({"valid_time_column": "ts"}, "valid_time_column: the dataset has a valid file"),
])
def test_split_options_beside_a_valid_file_are_an_error(extra, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_dataset_config({"files": {"train": "t.csv", "valid": "v.csv"}, **extra})


@pytest.mark.parametrize("fraction", [1, 1.0, 1.5, -0.1])
def test_fraction_outside_0_1_is_an_error(fraction):
    with pytest.raises(ConfigError, match=r"valid_fraction: must be in \(0, 1\)"):
        load_dataset_config({"files": {"train": "t.csv"}, "valid_fraction": fraction})


def test_train_too_small_to_split_names_file_and_fix(data_dir, tmp_path, check_error):
    write(ratings(data_dir, 4), tmp_path / "train.csv", "csv")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "features": [{"name": "item"}]})
    for streaming in (False, True):
        with pytest.raises(DataError) as info:
            prepare(cfg, tmp_path / "cache", log=Log(), streaming=streaming)
        msg = check_error(info.value, tmp_path / "train.csv", None, None, "change valid_fraction")
        assert "4 rows leaves 0 for valid" in msg


@pytest.mark.parametrize("cell,line,fragment", [
    ("abc", 5, "'abc' is neither a number nor an ISO date/datetime"),
    ("", 3, "the cell is empty"),
])
def test_time_column_that_cannot_be_ordered_names_the_line(data_dir, tmp_path, check_error, cell, line, fragment):
    frame = ratings(data_dir, 50).with_columns(pl.col("ts").cast(pl.String))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == line - 2).then(pl.lit(cell)).otherwise("ts")
                               .alias("ts"))
    write(frame, tmp_path / "train.csv", "csv")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_time_column": "ts",
                               "features": [{"name": "item"}]})
    for streaming in (False, True):
        with pytest.raises(DataError) as info:
            prepare(cfg, tmp_path / "cache", log=Log(), streaming=streaming)
        assert fragment in check_error(info.value, tmp_path / "train.csv", line, "ts", "choose another valid_time_column")


def test_absent_time_column_is_named(data_dir, tmp_path, check_error):
    write(ratings(data_dir, 50), tmp_path / "train.csv", "csv")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_time_column": "when",
                               "features": [{"name": "item"}]})
    with pytest.raises(DataError) as info:
        prepare(cfg, tmp_path / "cache", log=Log())
    msg = check_error(info.value, tmp_path / "train.csv", None, "when", "set valid_time_column to a column")
    assert "valid_time_column 'when' is not a column of the train file" in msg


# ---- column_names with a header; columns the config leaves out ---------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
def test_column_names_with_a_header_rename_the_columns(data_dir, tmp_path, streaming):
    frame = ratings(data_dir)
    write(frame.head(TRAIN_ROWS), tmp_path / "train.csv", "csv")
    write(frame.tail(TEST_ROWS), tmp_path / "test.csv", "csv")
    base = config(tmp_path, valid_fraction=0)
    renamed = config(tmp_path, valid_fraction=0, column_names=["uid", "iid", "click", "time", "stars"], labels=["click"],
                     group_field="uid", features=[{"name": "user", "source": "uid"}, {"name": "item", "source": "iid"},
                                                  {"name": "rating_n", "source": "stars", "kind": "numeric",
                                                   "normalizer": "standard"}])
    kw = {"streaming": streaming, "block_rows": 100}
    a = prepare(base, tmp_path / "a", log=Log(), **kw)
    b = prepare(renamed, tmp_path / "b", log=Log(), **kw)
    for split in a.splits:
        for key in a.splits[split].arrays:
            np.testing.assert_array_equal(np.asarray(a.splits[split].arrays[key]),
                                          np.asarray(b.splits[split].arrays[key]))
    # the header's own names are gone (predict reads files with read_split too)
    assert read_split(renamed, tmp_path / "test.csv", ["iid"])["iid"].to_list() == frame.tail(TEST_ROWS)["item"].to_list()
    with pytest.raises(DataError, match=r"column\(s\) \['item'\] not found"):
        read_split(renamed, tmp_path / "test.csv", ["item"])


def test_column_names_of_another_length_than_the_header(data_dir, tmp_path, check_error):
    write(ratings(data_dir, 20), tmp_path / "train.csv", "csv")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
                               "column_names": ["a", "b", "label"], "features": [{"name": "a"}]})
    for streaming in (False, True):
        with pytest.raises(DataError) as info:
            prepare(cfg, tmp_path / "cache", log=Log(), streaming=streaming)
        msg = check_error(info.value, tmp_path / "train.csv", 1, None, "give one name per header column")
        assert "the header has 5 columns but column_names lists 3" in msg


def test_column_names_with_parquet_is_an_error():
    with pytest.raises(ConfigError, match="column_names: parquet files name their own columns"):
        load_dataset_config({"format": "parquet", "files": {"train": "t.parquet"}, "column_names": ["a"]})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ignored_columns_are_logged_once_per_file(data_dir, tmp_path, fmt):
    frame = ratings(data_dir)
    ext = "parquet" if fmt == "parquet" else "csv"
    write(frame.head(TRAIN_ROWS), tmp_path / f"train.{ext}", fmt)
    write(frame.tail(TEST_ROWS).drop("rating"), tmp_path / f"test.{ext}", fmt)
    cfg = config(tmp_path, fmt, features=[{"name": "user"}, {"name": "item"}])
    log = Log()
    prepare(cfg, tmp_path / "cache", log=log, streaming=True, block_rows=50)
    assert [m for m in log if "ignored columns" in m] == [
        f"[ctrlab] ignored columns in train.{ext}: ts, rating (not in the dataset config)",
        f"[ctrlab] ignored columns in test.{ext}: ts (not in the dataset config)",
    ]
    # a cache hit says it again: preset auto's first prepare is silent, training's then finds the cache
    again = Log()
    assert prepare(cfg, tmp_path / "cache", log=again, streaming=True, block_rows=50).reused
    assert [m for m in again if "ignored columns" in m] == [m for m in log if "ignored columns" in m]
    # the time column that carves valid is used, not ignored
    log = Log()
    prepare(config(tmp_path, fmt, valid_time_column="ts", features=[{"name": "user"}, {"name": "item"}]),
            tmp_path / "cache", log=log)
    assert f"[ctrlab] ignored columns in train.{ext}: rating (not in the dataset config)" in log
