"""Features derived from a timestamp column (issue 15.4): hour, weekday, ... from epoch numbers or
datetime strings, in a time zone; missing and bad cells; the same arrays in memory and streamed."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrlab.config import ConfigError
from ctrlab.data.derive import with_derived
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import encode_frame, fit_feature_map, prepare
from ctrlab.data.readers import read_split
from ctrlab.data.schema import encoded_column, load_dataset_config

T = 1_700_000_000  # 2023-11-14 22:13:20 UTC, a Tuesday, day 318 of the year


def _config(*features: dict, **extra):
    return load_dataset_config({"name": "ts", "labels": ["label"], "features": list(features), **extra})


def _derive(values, dtype=None, **options) -> list:
    """The derived values of one feature ``{name: f, source: ts, **options}`` over ``values``."""
    cfg = _config({"name": "f", "source": "ts", **options})
    frame = pl.DataFrame({"ts": pl.Series(values, dtype=dtype)})
    return with_derived(frame, cfg.features)[encoded_column(cfg.features[0])].to_list()


@pytest.mark.parametrize("part,expected", [("year", 2023), ("month", 11), ("day", 14), ("weekday", 2),
                                           ("dayofyear", 318), ("hour", 22), ("minute", 13)])
def test_parts_of_a_known_epoch_second(part, expected):
    assert _derive([T], derive=part) == [expected]


def test_timezone_moves_hour_day_and_weekday():
    assert _derive([T], derive="hour", timezone="Asia/Tokyo") == [7]  # UTC+9: the next morning
    assert _derive([T], derive="day", timezone="Asia/Tokyo") == [15]
    assert _derive([T], derive="weekday", timezone="Asia/Tokyo") == [3]
    assert _derive([T], derive="hour", timezone="America/New_York") == [17]  # EST in November
    assert _derive([1_690_000_000], derive="hour", timezone="America/New_York") == [0]  # EDT (UTC-4) in July


def test_milliseconds_and_every_column_type_give_the_same_instant():
    assert _derive([T * 1000 + 999], derive="minute", time_unit="ms") == [13]
    assert _derive([T * 1000 - 1], derive="minute", time_unit="ms") == [13]  # 22:13:19.999
    assert _derive([T - 1], derive="minute") == [13]
    assert _derive([T - 0.5], derive="hour") == [22]
    # a CSV's text, a Parquet integer, a float (pandas with a missing value) read alike
    for values, dtype in (([str(T), f" {T} "], pl.String), ([T, T], pl.Int64), ([float(T), float(T)], pl.Float64)):
        assert _derive(values, dtype, derive="hour") == [22, 22], dtype
    assert _derive([-1], derive="year") == [1969]  # before 1970: floored, not truncated


def test_datetime_strings_with_time_format():
    fmt = "%Y-%m-%d %H:%M:%S"
    assert _derive(["2023-11-14 22:13:20"], derive="hour", time_format=fmt) == [22]
    # no offset: the written fields are the local time in `timezone`
    assert _derive(["2023-11-14 22:13:20"], derive="hour", time_format=fmt, timezone="Asia/Tokyo") == [22]
    # with an offset: converted to `timezone`
    zoned = "%Y-%m-%dT%H:%M:%S%z"
    assert _derive(["2023-11-15T07:13:20+0900"], derive="hour", time_format=zoned) == [22]
    assert _derive(["2023-11-15T07:13:20+0900"], derive="weekday", time_format=zoned) == [2]
    assert _derive(["2023-11-14T22:13:20+0000"], derive="day", time_format=zoned, timezone="Asia/Tokyo") == [15]
    assert _derive(["14/11/2023"], derive="month", time_format="%d/%m/%Y") == [11]


def test_an_hour_without_minutes_is_read_and_a_bad_format_is_a_config_error():
    """Avazu's `hour` column is YYMMDDHH: Polars' parser refuses %H without %M (a ComputeError
    traceback before); the cells are read with minute 00. A format it cannot use names the source."""
    assert _derive(["14102100", "14102123", ""], derive="hour", time_format="%y%m%d%H") == [0, 23, None]
    assert _derive(["14102115"], derive="weekday", time_format="%y%m%d%H") == [2]  # 2014-10-21, a Tuesday
    with pytest.raises(DataError, match="'141021xx' does not match time_format"):
        _derive(["141021xx"], derive="hour", time_format="%y%m%d%H")
    with pytest.raises(ConfigError, match="feature source 'ts': time_format '%Y %I:%M' cannot be used .*meridiem"):
        _derive(["2023 10:10"], derive="year", time_format="%Y %I:%M")  # a 12-hour clock needs %p


def test_parquet_datetime_column_is_read_as_it_is():
    utc = pl.Series([T * 1_000_000], dtype=pl.Datetime("us", "UTC"))
    assert _derive(utc, derive="hour", timezone="Asia/Tokyo") == [7]
    assert _derive(pl.Series([T * 1_000_000], dtype=pl.Datetime("us")), derive="hour") == [22]


def test_missing_cells_are_missing_tokens_and_fill_values():
    assert _derive([None, "", "  ", str(T)], pl.String, derive="hour") == [None, None, None, 22]
    assert _derive([None, float("nan")], pl.Float64, derive="hour") == [None, None]
    assert _derive([None, ""], pl.String, derive="hour", time_format="%Y-%m-%d") == [None, None]
    cfg = _config({"name": "hour", "source": "ts", "derive": "hour"},
                  {"name": "hour_num", "kind": "numeric", "source": "ts", "derive": "hour", "fill_value": -1.0})
    train = pl.DataFrame({"ts": [str(T), str(T + 3600), ""], "label": ["0", "1", "0"]})
    fmap = fit_feature_map(cfg, train)
    enc = encode_frame(train, fmap).arrays
    vocab = fmap.encoders["hour"]["vocab"]
    assert sorted(vocab) == ["", "22", "23"]  # a missing time is the "" token, an ordinary value
    assert enc["cat"][2, 0] == 2 + vocab.index("")
    np.testing.assert_array_equal(enc["num"][:, 0], [22.0, 23.0, -1.0])  # missing: fill_value


@pytest.mark.parametrize("options,cell,problem", [
    ({}, "yesterday", "is not an epoch number"),
    ({}, "1e20", "is not a time"),
    ({"time_unit": "ms"}, "inf", "is not a time"),
    ({"time_format": "%Y-%m-%d %H:%M"}, "2023-11-14", "does not match time_format '%Y-%m-%d %H:%M'"),
])
def test_bad_cell_names_file_line_and_column(write, check_error, options, cell, problem):
    path = write("train.csv", f"label,ts\n0,{'2023-11-14 10:00' if options.get('time_format') else T}\n"
                              f"1,\n0,{cell}\n")
    cfg = _config({"name": "hour", "source": "ts", "derive": "hour", **options}, root=str(path.parent),
                  files={"train": "train.csv"})
    frame = read_split(cfg, path, ["ts", "label"])
    with pytest.raises(DataError) as info:
        fit_feature_map(cfg, frame, path)
    msg = check_error(info.value, path, 4, "ts", "time")
    assert problem in msg and repr(cell) in msg


@pytest.mark.parametrize("feature,fragment", [
    ({"derive": "second"}, "choose one of"),
    ({"derive": "hour", "timezone": "Mars/Olympus"}, "is not an IANA time zone"),
    ({"time_format": "%Y"}, "apply to a derived feature"),
    ({"derive": "hour", "time_format": "%Y", "time_unit": "ms"}, "drop one of them"),
    ({"derive": "hour", "time_format": "YYYY-MM-DD"}, "no strptime directive"),
])
def test_config_errors(feature, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _config({"name": "f", "source": "ts", **feature})


DATASET = """
name: clicks_ts
format: csv
files: {train: train.csv, valid: valid.csv}
labels: [label]
features:
  - {name: item, kind: categorical}
  - {name: hour, source: ts, derive: hour, timezone: Europe/Berlin}
  - {name: weekday, source: ts, derive: weekday}
  - {name: month, kind: numeric, source: ts, derive: month, normalizer: minmax}
  - {name: hour_bucket, kind: numeric, source: ts, derive: hour, bucketize: [6, 12, 18]}
  - {name: day, source: when, derive: day, time_format: "%Y-%m-%d %H:%M:%S"}
"""


def test_in_memory_and_streamed_encoding_are_equal(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 1500), ("valid", 300)):
        ts = rng.integers(1_600_000_000, 1_700_000_000, n)
        frame = pl.DataFrame({
            "label": rng.integers(0, 2, n),
            "item": rng.integers(0, 20, n),
            "ts": [None if k % 97 == 0 else int(t) for k, t in enumerate(ts)],
            "when": pl.from_epoch(pl.Series(ts), time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S"),
        })
        frame.write_csv(tmp_path / f"{split}.csv")
    (tmp_path / "data.yaml").write_text(DATASET)
    cfg = load_dataset_config(tmp_path / "data.yaml")
    quiet = dict(log=lambda *a: None)
    whole = prepare(cfg, cache_dir=tmp_path / "a", **quiet)
    streamed = prepare(cfg, cache_dir=tmp_path / "b", streaming=True, block_rows=256, **quiet)
    assert whole.feature_map.to_dict() == streamed.feature_map.to_dict()
    assert len(whole.feature_map.encoders["hour"]["vocab"]) == 25  # 24 hours and the missing token
    for split in ("train", "valid"):
        a, b = whole.splits[split].arrays, streamed.splits[split].arrays
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=f"{split}/{key}")
    # the arrays hold the derivation: row 1's hour id is its Berlin hour's id
    raw = pl.read_csv(tmp_path / "train.csv")
    t = raw["ts"][1]
    hour = pl.from_epoch(pl.Series([t]), time_unit="s").dt.replace_time_zone("UTC") \
        .dt.convert_time_zone("Europe/Berlin").dt.hour()[0]
    vocab = whole.feature_map.encoders["hour"]["vocab"]
    assert whole.splits["train"].arrays["cat"][1, 1] == 2 + vocab.index(str(hour))
