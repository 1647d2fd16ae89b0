"""Small real datasets turned into CTR tasks: movielens_latest_small, movielens_1m_sample, taobao_head,
and frappe_x1_subset's ``train_rows`` cut. Real shared files (read-only), prepared splits in a tmp cache."""
from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ctrlab.config import ConfigError
from ctrlab.data.datasets import DatasetNotFoundError, get_dataset
from ctrlab.data.datasets.registry import read_manifest
from ctrlab.data.datasets.taobao import read_behaviors
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import CategoricalSpec, SequenceSpec, load_dataset_config

NEW = ["movielens_latest_small", "movielens_1m_sample", "taobao_head"]


def _frames(cfg) -> dict[str, pl.DataFrame]:
    return {s: pl.read_parquet(p) for s, p in cfg.files.items()}


def _check_time_ordered(frames: dict[str, pl.DataFrame]) -> None:
    assert frames["train"]["timestamp"].max() < frames["valid"]["timestamp"].min()
    assert frames["valid"]["timestamp"].max() < frames["test"]["timestamp"].min()


def _check_history(frames, events: dict[int, list[tuple[int, int]]], when: dict[tuple[int, int], list[int]], max_len: int):
    """Every row's history is exactly the tail of the user's used events strictly earlier, oldest first."""
    checked = nonempty = 0
    for f in frames.values():
        for u, t, h in zip(f["user_id"].to_list(), f["timestamp"].to_list(), f["history"].to_list()):
            items = [int(x) for x in h.split("^")] if h else []
            for it in items:
                assert min(when[(int(u), it)]) < t
            earlier = [i for (ti, i) in events.get(int(u), []) if ti < t]
            assert items == earlier[-max_len:], (u, t)
            checked += 1
            nonempty += bool(items)
    return checked, nonempty


# ---- movielens_latest_small -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_latest(env):
    cfg = get_dataset("movielens_latest_small")
    text = gzip.decompress((env["data"] / "movielens_latest_small/ratings.csv.gz").read_bytes()).decode()
    raw = [ln.split(",") for ln in text.splitlines()[1:]]
    return cfg, _frames(cfg), [(int(u), int(i), float(r), int(t)) for u, i, r, t in raw]


def test_movielens_latest_small_rows_labels_and_per_user_time_split(ml_latest):
    cfg, frames, raw = ml_latest
    assert {s: f.height for s, f in frames.items()} == {"train": 80_926, "valid": 10_049, "test": 9_861}
    assert {s: int(f["label"].sum()) for s, f in frames.items()} == {"train": 39_374, "valid": 4_543, "test": 4_663}
    assert sum(int(f["label"].sum()) for f in frames.values()) == 48_580  # the card's rating >= 4 count
    # time-ordered per user: each user's train ratings all before their valid, valid before test
    span = {s: f.group_by("user_id").agg(pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi"))
            for s, f in frames.items()}
    for a, b in (("train", "valid"), ("valid", "test"), ("train", "test")):
        j = span[a].join(span[b], on="user_id", suffix="_b")
        assert j.height > 550 and (j["hi"] < j["lo_b"]).all(), (a, b)
    assert frames["test"]["user_id"].is_in(frames["train"]["user_id"].unique().implode()).all()  # no cold users
    for f in frames.values():  # each split in global (timestamp, user) order
        assert f["timestamp"].is_sorted()
    keys = [set(zip(f["user_id"].to_list(), f["item_id"].to_list())) for f in frames.values()]
    assert sum(map(len, keys)) == 100_836 and len(set().union(*keys)) == 100_836  # disjoint, nothing lost
    rating = {(u, i): r for u, i, r, _ in raw}
    f = frames["valid"]
    for u, i, y in zip(f["user_id"].to_list(), f["item_id"].to_list(), f["label"].to_list()):
        assert y == int(rating[(int(u), int(i))] >= 4.0)
    assert "rating" not in f.columns
    m = read_manifest(cfg.root)
    assert m["splits"]["train"]["rows"] == 80_926 and m["params"]["positive_threshold"] == 4.0


def test_movielens_latest_small_global_split_variant(env):
    cfg = get_dataset("movielens_latest_small", split="global")
    frames = _frames(cfg)
    assert {s: f.height for s, f in frames.items()} == {"train": 80_669, "valid": 10_083, "test": 10_084}
    assert {s: int(f["label"].sum()) for s, f in frames.items()} == {"train": 39_255, "valid": 5_197, "test": 4_128}
    _check_time_ordered(frames)
    with pytest.raises(ConfigError, match="split must be"):
        get_dataset("movielens_latest_small", split="random")


def test_per_user_time_splits_cut_each_user_past_ties():
    from ctrlab.data.datasets.events import per_user_time_splits

    users = np.array([1] * 10 + [2] * 10)
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10] + [5, 5, 5, 5, 5, 5, 5, 5, 9, 9])
    items = np.arange(20)
    s = per_user_time_splits(users, ts, (items,), 0.8, 0.1)
    assert sorted(s["train"].tolist()) == list(range(8)) + list(range(10, 18))  # user 2: the 8th cut is not a tie
    # user 2's 90% cut (row 9) moves past its tie at ts 9: both ts-9 rows valid, no test row
    assert s["valid"].tolist() == [8, 18, 19] and s["test"].tolist() == [9]
    users[:] = users[::-1]  # user 2 first in the arrays: each split still comes in global (ts, user, item) order
    s = per_user_time_splits(users, ts[::-1].copy(), (items,), 0.8, 0.1)
    assert all((np.diff(ts[::-1][v]) >= 0).all() for v in s.values())


def test_movielens_latest_small_features(ml_latest):
    cfg, frames, _ = ml_latest
    spec = {f.name: f for f in cfg.features}
    assert [n for n, f in spec.items() if isinstance(f, CategoricalSpec)] == ["user_id", "item_id", "release_year"]
    assert isinstance(spec["genres"], SequenceSpec) and spec["genres"].max_len == 10
    assert spec["history"].share_vocab_with == "item_id" and spec["history"].max_len == 20
    assert "timestamp" not in spec and cfg.group_field == "user_id"
    allf = pl.concat(list(frames.values()))
    by_item = dict(zip(allf["item_id"].to_list(), zip(allf["genres"].to_list(), allf["release_year"].to_list())))
    assert by_item["1"] == ("Adventure^Animation^Children^Comedy^Fantasy", "1995")  # Toy Story (1995)
    assert by_item["11"][1] == "1995"  # "American President, The (1995)": quoted title with a comma
    years = allf["release_year"].unique().to_list()
    assert all(y == "unknown" or (len(y) == 4 and y.isdigit()) for y in years)
    assert allf["genres"].str.split("^").list.len().max() == 10
    assert "(no genres listed)" in set(allf["genres"].to_list())


def test_movielens_latest_small_history_never_leaks_the_future(ml_latest):
    _, frames, raw = ml_latest
    liked: dict[int, list[tuple[int, int]]] = {}
    when: dict[tuple[int, int], list[int]] = {}
    for u, i, r, t in raw:
        when.setdefault((u, i), []).append(t)
        if r >= 4.0:
            liked.setdefault(u, []).append((t, i))
    for v in liked.values():
        v.sort()
    checked, nonempty = _check_history(frames, liked, when, 20)
    assert checked == 100_836 and nonempty > 90_000


# ---- movielens_1m_sample --------------------------------------------------------------------


def test_movielens_1m_sample_rows_demographics_and_time_split(env):
    cfg = get_dataset("movielens_1m_sample")
    frames = _frames(cfg)
    assert {s: f.height for s, f in frames.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    assert {s: int(f["label"].sum()) for s, f in frames.items()} == {"train": 46_325, "valid": 5_717, "test": 5_441}
    assert sum(int(f["label"].sum()) for f in frames.values()) == 57_483  # card: rating >= 4 -> 0.5748
    _check_time_ordered(frames)
    keys = [set(zip(f["user_id"].to_list(), f["item_id"].to_list())) for f in frames.values()]
    assert len(set().union(*keys)) == 100_000  # disjoint (no (user, movie) pair repeats in the sample)
    users = {}
    for ln in gzip.decompress((env["data"] / "movielens_1m_sample100k/users.dat.gz").read_bytes()).decode().splitlines():
        uid, g, age, occ, z = ln.split("::")
        users[uid] = (g, age, occ, z[0])
    ages = {"1": "<18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
    f = frames["test"]
    for row in f.select("user_id", "gender", "age", "occupation", "zip_prefix").iter_rows():
        g, age, occ, z = users[row[0]]
        assert row[1:] == (g, ages[age], occ, z)
    spec = {x.name: x for x in cfg.features}
    assert set(spec) == {"user_id", "item_id", "gender", "age", "occupation", "zip_prefix", "release_year", "genres"}
    assert isinstance(spec["genres"], SequenceSpec) and spec["genres"].max_len == 6
    assert f["genres"].str.split("^").list.len().max() <= 6 and "history" not in f.columns
    toy = pl.concat(list(frames.values())).filter(pl.col("item_id") == "1").row(0, named=True)
    assert (toy["genres"], toy["release_year"]) == ("Animation^Children's^Comedy", "1995")


# ---- taobao_head ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taobao(env):
    cfg = get_dataset("taobao_head")
    lines = gzip.decompress((env["data"] / "taobao_userbehavior_head/UserBehavior_head.csv.gz").read_bytes()).decode()
    raw = [ln.split(",") for ln in lines.split("\n")[:-1]]  # the card: 84,475 complete lines, then a truncated one
    return cfg, _frames(cfg), [(int(u), int(i), int(c), b, int(t)) for u, i, c, b, t in raw]


def test_taobao_head_rows_labels_and_time_split(taobao):
    cfg, frames, raw = taobao
    assert len(raw) == 84_475
    assert {s: f.height for s, f in frames.items()} == {"train": 67_580, "valid": 8_448, "test": 8_447}
    assert {s: int(f["label"].sum()) for s, f in frames.items()} == {"train": 6_864, "valid": 845, "test": 894}
    assert sum(int(f["label"].sum()) for f in frames.values()) == 4_497 + 2_356 + 1_750  # cart + fav + buy
    _check_time_ordered(frames)
    m = read_manifest(cfg.root)
    assert m["behaviors"] == {"pv": 75_872, "cart": 4_497, "fav": 2_356, "buy": 1_750}
    assert m["dropped_lines"] == [{"line": 84_476, "text": "100370,1968385,1875258,pv",
                                   "reason": "truncated last line (no newline, 4 of 5 fields)"}]
    # rows match the source one for one: same (user, item, category, label, timestamp) multiset
    want = sorted((str(u), str(i), str(c), int(b != "pv"), t) for u, i, c, b, t in raw)
    allf = pl.concat(list(frames.values()))
    got = sorted(allf.select("user_id", "item_id", "category_id", "label", "timestamp").iter_rows())
    assert got == want
    assert "behavior_type" not in allf.columns


def test_taobao_head_hour_weekday_in_china_time(taobao):
    _, frames, _ = taobao
    cst = dt.timezone(dt.timedelta(hours=8))
    f = frames["valid"]
    for t, h, w in zip(f["timestamp"].to_list(), f["hour"].to_list(), f["weekday"].to_list()):
        d = dt.datetime.fromtimestamp(t, cst)
        assert (h, w) == (str(d.hour), str(d.weekday()))
    assert set(pl.concat(list(frames.values()))["weekday"].to_list()) == {str(d) for d in range(7)}


def test_taobao_head_history_never_leaks_the_future(taobao):
    cfg, frames, raw = taobao
    events: dict[int, list[tuple[int, int]]] = {}
    when: dict[tuple[int, int], list[int]] = {}
    for u, i, _, _, t in raw:
        events.setdefault(u, []).append((t, i))
        when.setdefault((u, i), []).append(t)
    for v in events.values():
        v.sort()
    checked, nonempty = _check_history(frames, events, when, 20)
    assert checked == 84_475 and nonempty > 80_000
    assert {f.name: f for f in cfg.features}["history"].share_vocab_with == "item_id"


def test_taobao_truncated_last_line_dropped_and_said(tmp_path):
    logged = []
    path = tmp_path / "ub.csv"
    path.write_text("1,10,100,pv,1511544070\n1,11,100,buy,1511544071\n2,12,101,pv")
    rows, dropped = read_behaviors(path, log=logged.append)
    assert rows == [["1", "10", "100", "pv", "1511544070"], ["1", "11", "100", "buy", "1511544071"]]
    assert dropped == [{"line": 3, "text": "2,12,101,pv", "reason": "truncated last line (no newline, 4 of 5 fields)"}]
    assert len(logged) == 1 and "dropped line 3 '2,12,101,pv': truncated last line" in logged[0] and str(path) in logged[0]
    # a complete file: nothing dropped, nothing said
    path.write_text("1,10,100,pv,1511544070\n")
    assert read_behaviors(path, log=logged.append) == ([["1", "10", "100", "pv", "1511544070"]], []) and len(logged) == 1
    # a short line anywhere else is an error naming it, not a silent drop
    path.write_text("1,10,100,pv\n1,11,100,buy,1511544071\n")
    with pytest.raises(DataError, match=r"line 1: expected 5 fields") as info:
        read_behaviors(path, log=logged.append)
    assert info.value.file == str(path) and info.value.line == 1


def test_taobao_builder_says_the_drop_on_stderr(env, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))  # a fresh cache: the folder is built here
    get_dataset("taobao_head", history_max_len=5)
    err = capfd.readouterr().err
    assert "taobao_head: " in err and "dropped line 84,476 '100370,1968385,1875258,pv': truncated last line" in err


# ---- all three: errors, config round trip, the encoding pipeline ----------------------------


@pytest.mark.parametrize("name", NEW)
def test_missing_files_error_names_paths(env, tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset(name, data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "CTRLAB_DATA_DIR" in msg and "not available" in msg


@pytest.mark.parametrize("name", NEW)
def test_bad_split_params_are_config_errors(env, name):
    with pytest.raises(ConfigError, match="train_fraction"):
        get_dataset(name, train_fraction=0.95, valid_fraction=0.1)


@pytest.mark.parametrize("name", NEW)
def test_config_round_trip_reuse_and_prepare(env, tmp_path, name):
    cfg = get_dataset(name)
    again = load_dataset_config(cfg.to_dict())
    assert again.files == cfg.files and [f.name for f in again.features] == [f.name for f in cfg.features]
    assert get_dataset(name).root == cfg.root  # the prepared folder is reused
    data = prepare(cfg, cache_dir=tmp_path, log=lambda *a: None)
    assert {s: len(x) for s, x in data.splits.items()} == {
        s: v["rows"] for s, v in read_manifest(cfg.root)["splits"].items()
    }
    # vocabularies are fitted on train only: user_id's size is train's distinct users + padding + OOV
    train_users = pl.read_parquet(cfg.files["train"])["user_id"].n_unique()
    users = next(f for f in data.feature_map.categorical if f.name == "user_id")
    assert users.vocab_size == train_users + 2


# ---- frappe_x1_subset train_rows ------------------------------------------------------------


def test_frappe_subset_train_rows_is_a_seeded_exact_cut(env, tmp_path, monkeypatch):
    full = get_dataset("frappe_x1_subset")
    cut = get_dataset("frappe_x1_subset", train_rows=5000)
    full_train = Path(full.files["train"]).read_bytes().split(b"\r\n")[1:-1]
    cut_lines = Path(cut.files["train"]).read_bytes().split(b"\r\n")
    assert cut_lines[0] == Path(full.files["train"]).read_bytes().split(b"\r\n")[0]  # header kept
    cut_train = cut_lines[1:-1]
    assert len(cut_train) == 5000
    pos = {line: k for k, line in enumerate(full_train)}
    idx = [pos[line] for line in cut_train]  # every row from the full train split, original order kept
    assert idx == sorted(idx) and len(set(idx)) == 5000
    expected = np.sort(np.random.default_rng([2023, 1]).permutation(len(full_train))[:5000])
    assert idx == expected.tolist()
    for split in ("valid", "test"):  # unchanged
        assert Path(cut.files[split]).read_bytes() == Path(full.files[split]).read_bytes()
    assert read_manifest(cut.root)["splits"]["train"]["rows"] == 5000
    # same seed, fresh cache: same bytes; another seed: another cut of the same size
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    assert Path(get_dataset("frappe_x1_subset", train_rows=5000).files["train"]).read_bytes() == \
        Path(cut.files["train"]).read_bytes()
    other = Path(get_dataset("frappe_x1_subset", train_rows=5000, seed=7).files["train"]).read_bytes()
    assert other != Path(cut.files["train"]).read_bytes() and len(other.split(b"\r\n")) == 5002
    assert get_dataset("frappe_x1_subset").root == full.root.replace(str(env["cache"]), str(tmp_path))


def test_frappe_subset_train_rows_errors_and_cli_path(env):
    with pytest.raises(ConfigError, match="train_rows must be >= 1"):
        get_dataset("frappe_x1_subset", train_rows=0)
    with pytest.raises(ConfigError, match="more than the 46,178 train rows"):
        get_dataset("frappe_x1_subset", train_rows=50_000)
    from ctrlab import api

    cfg = api.load_run_config({"dataset": "frappe_x1_subset"}, overrides=["dataset_params.train_rows=5000"])
    assert cfg.dataset_params == {"train_rows": 5000}
    assert len(Path(api.dataset_config(cfg).files["train"]).read_bytes().split(b"\r\n")) == 5002


def test_parse_errors_name_file_line_and_column(tmp_path, check_error):
    from ctrlab.data.datasets.events import int_column, split_fields
    from ctrlab.data.datasets.movielens_samples import lookup

    path = tmp_path / "ratings.csv"
    rows = split_fields(path, ["1,10,4.0,99", "1,11,3.5,1x0"], ",", ["userId", "movieId", "rating", "timestamp"], 2)
    with pytest.raises(DataError) as info:
        int_column(path, rows, 3, "timestamp", 2)
    check_error(info.value, path, 3, "timestamp", "use the published file")
    with pytest.raises(DataError) as info:
        lookup(path, np.array([10, 11, 12]), {10: ("a",), 11: ("b",)}, "movieId", tmp_path / "movies.csv", first_line=2)
    msg = check_error(info.value, path, 4, "movieId", "movies.csv from the same release")
    assert "movieId 12 is not in" in msg
