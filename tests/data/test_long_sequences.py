"""Long-history entries (movielens_latest_long, taobao_long, video_games_long): every history event is
strictly earlier than its row, side sequences are the same events as the item history, train
histories never reach into later splits, negatives are a seeded rule, and the entries encode."""
from __future__ import annotations

import csv
import gzip
import io
from collections import defaultdict

import numpy as np
import polars as pl
import pytest

from ctrlab.config import ConfigError
from ctrlab.data.datasets import get_dataset
from ctrlab.data.datasets.events import history_events, select_rows
from ctrlab.data.datasets.long_sequences import sample_negatives
from ctrlab.data.datasets.registry import read_manifest
from ctrlab.data.pipeline import load_encoders, prepare


def _frames(cfg) -> dict[str, pl.DataFrame]:
    return {s: pl.read_parquet(p) for s, p in cfg.files.items()}


def _check_gaps_and_split_ranges(frames, time="timestamp", gap="history_gap"):
    """Gaps >= 1 (strictly earlier); global cuts; train (and valid) histories end before the next split starts."""
    assert frames["train"][time].max() < frames["valid"][time].min()
    assert frames["valid"][time].max() < frames["test"][time].min()
    for split, nxt in (("train", "valid"), ("valid", "test")):
        f = frames[split].select(time, gap).explode(gap).drop_nulls(gap)
        assert f.height > 0
        assert (f[gap] >= 1).all(), split
        event_ts = f[time] - f[gap]
        assert event_ts.max() < frames[nxt][time].min(), split
    t = frames["test"].select(time, gap).explode(gap).drop_nulls(gap)
    assert (t[gap] >= 1).all()


def _sample(frame: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    return frame.sample(n=min(n, frame.height), seed=seed)


# ---- history_events / select_rows on a hand-made log -----------------------------------------


def test_history_events_strictly_earlier_tail_and_row_caps():
    users = np.array([1, 1, 1, 1, 2, 2, 1])
    ts = np.array([10, 20, 20, 30, 5, 7, 40])
    items = np.array([7, 9, 8, 6, 1, 2, 5])
    use = np.array([True, True, True, True, True, True, True])
    off, flat, earlier = history_events(users, ts, items, use, max_len=2)
    hist = [list(items[flat[off[i]:off[i + 1]]]) for i in range(len(users))]
    # event 1 and 2 share ts 20: neither sees the other; ties ordered by item (8 before 9)
    assert hist == [[], [7], [7], [8, 9], [], [1], [9, 6]]
    assert list(earlier) == [0, 1, 1, 3, 0, 1, 4]
    assert list(select_rows(users, ts, items, earlier, rows_per_user=2, min_history_len=0)) == [3, 6, 4, 5]
    assert list(select_rows(users, ts, items, earlier, rows_per_user=0, min_history_len=1)) == [2, 1, 3, 6, 5]
    with pytest.raises(ConfigError, match="rows_per_user"):
        get_dataset("taobao_long", rows_per_user=-1)


# ---- MovieLens -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_raw(env):
    text = gzip.decompress((env["data"] / "movielens_latest_small/ratings.csv.gz").read_bytes()).decode()
    events = defaultdict(list)  # user -> [(ts, item, rating)]
    for u, i, r, t in (ln.split(",") for ln in text.splitlines()[1:]):
        events[u].append((int(t), int(i), float(r)))
    movies = gzip.decompress((env["data"] / "movielens_latest_small/movies.csv.gz").read_bytes()).decode()
    genre = {r[0]: r[2] for r in list(csv.reader(io.StringIO(movies)))[1:]}
    return {u: sorted(v) for u, v in events.items()}, genre


def _check_ml(frames, ml_raw, L, n=250):
    events, genre = ml_raw
    for f in frames.values():
        for r in _sample(f, n).iter_rows(named=True):
            earlier = [e for e in events[r["user_id"]] if e[0] < r["timestamp"]][-L:]
            assert r["history"] == [str(e[1]) for e in earlier]
            assert r["rating_history"] == [e[2] for e in earlier]
            assert r["history_gap"] == [r["timestamp"] - e[0] for e in earlier]
            assert r["genre_set_history"] == [genre[str(e[1])] for e in earlier]  # aligned event by event
            assert r["genre_set"] == genre[r["item_id"]]


def test_movielens_latest_long_histories_exact_aligned_and_leak_free(env, ml_raw):
    cfg = get_dataset("movielens_latest_long")
    frames = _frames(cfg)
    assert {s: f.height for s, f in frames.items()} == {"train": 21_019, "valid": 2_628, "test": 2_627}
    assert sum(f.height for f in frames.values()) == sum(min(50, len(v)) for v in ml_raw[0].values())
    _check_gaps_and_split_ranges(frames)
    _check_ml(frames, ml_raw, 1000)
    m = read_manifest(cfg.root)["history_lengths"]
    assert m["max"] == 1000 and m["at_max_len"] > 0
    for f in frames.values():  # side sequences have the item history's length on every row
        lens = f.select(*(pl.col(c).list.len() for c in ("history", "genre_set_history", "rating_history",
                                                          "history_gap")))
        assert (lens["history"] == lens["genre_set_history"]).all() and (lens["history"] == lens["history_gap"]).all()
        assert (lens["history"] == lens["rating_history"]).all()


def test_movielens_latest_long_at_10000(env, ml_raw):
    cfg = get_dataset("movielens_latest_long", history_max_len=10_000, rows_per_user=3)
    frames = _frames(cfg)
    longest = max(f["history"].list.len().max() for f in frames.values())
    assert longest == max(len(v) for v in ml_raw[0].values()) - 1 > 1000  # the whole log of the heaviest user
    _check_gaps_and_split_ranges(frames)
    _check_ml(frames, ml_raw, 10_000, n=60)


# ---- Taobao ----------------------------------------------------------------------------------


def test_taobao_long_histories_exact_aligned_and_leak_free(env):
    cfg = get_dataset("taobao_long")
    frames = _frames(cfg)
    assert {s: f.height for s, f in frames.items()} == {"train": 27_944, "valid": 3_493, "test": 3_493}
    _check_gaps_and_split_ranges(frames)
    lines = gzip.decompress((env["data"] / "taobao_userbehavior_head/UserBehavior_head.csv.gz").read_bytes())
    events = defaultdict(list)
    for ln in lines.decode().splitlines():
        f = ln.split(",")
        if len(f) == 5:
            events[f[0]].append((int(f[4]), int(f[1]), f[2], f[3]))
    for u in events:
        events[u].sort(key=lambda e: (e[0], e[1]))  # stable: file order inside ties, as the builder
    labels = 0
    for f in frames.values():
        for r in _sample(f, 250).iter_rows(named=True):
            earlier = [e for e in events[r["user_id"]] if e[0] < r["timestamp"]][-1000:]
            assert r["history"] == [str(e[1]) for e in earlier]
            assert r["category_history"] == [e[2] for e in earlier]
            assert r["behavior_history"] == [e[3] for e in earlier]
            assert r["history_gap"] == [r["timestamp"] - e[0] for e in earlier]
            row = [e for e in events[r["user_id"]] if e[0] == r["timestamp"] and str(e[1]) == r["item_id"]]
            assert row and r["label"] in {int(e[3] != "pv") for e in row}  # the row is a real event
            labels += r["label"]
    assert labels > 0


# ---- Video Games -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video(env):
    text = gzip.decompress((env["data"] / "sasrec_amazon_video_games/Video.txt.gz").read_bytes()).decode()
    logs = defaultdict(list)
    for u, i in (ln.split() for ln in text.splitlines()):
        logs[u].append(i)
    cfg = get_dataset("video_games_long")
    return cfg, _frames(cfg), logs


def test_video_games_long_rows_histories_and_negatives(video):
    cfg, frames, logs = video
    assert {s: f.height for s, f in frames.items()} == {"train": 57_024, "valid": 7_172, "test": 6_116}
    for f in frames.values():  # one positive and one negative per interaction
        assert int(f["label"].sum()) * 2 == f.height
    for f in frames.values():
        for r in _sample(f, 400).iter_rows(named=True):
            log, p = logs[r["user_id"]], r["position"]
            assert p >= 20 and r["history"] == log[:p][-1000:]
            if r["label"]:
                assert r["item_id"] == log[p]
            else:
                assert r["item_id"] not in log[:p + 1]
    # per user: train positions < valid positions < test positions
    span = {s: f.group_by("user_id").agg(pl.col("position").min().alias("lo"), pl.col("position").max().alias("hi"))
            for s, f in frames.items()}
    for a, b in (("train", "valid"), ("valid", "test")):
        j = span[a].join(span[b], on="user_id", suffix="_b")
        assert j.height > 500 and (j["hi"] < j["lo_b"]).all()


def test_video_games_negatives_reproducible_per_seed(video, env, tmp_path, monkeypatch):
    cfg, frames, _ = video
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))  # a fresh build with the same seed
    again = get_dataset("video_games_long")
    assert read_manifest(again.root)["files"] == read_manifest(cfg.root)["files"]  # byte-identical
    other = _frames(get_dataset("video_games_long", seed=1))
    neg0 = frames["train"].filter(pl.col("label") == 0)["item_id"]
    neg1 = other["train"].filter(pl.col("label") == 0)["item_id"]
    assert len(neg0) == len(neg1) and 0.95 < float((neg0 != neg1).mean())
    # the rule itself: seeded, never an item seen at or before the position
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([1, 2, 3, 1, 4])
    pos = np.array([0, 1, 2, 0, 1])
    rows = np.array([1, 2, 4])
    a = sample_negatives(users, items, pos, rows, n_items=5, seed=3)
    assert np.array_equal(a, sample_negatives(users, items, pos, rows, n_items=5, seed=3))
    assert a[0] in (3, 4, 5) and a[1] in (4, 5) and a[2] in (2, 3, 5)
    draws = {tuple(sample_negatives(users, items, pos, rows, n_items=5, seed=s)) for s in range(20)}
    assert len(draws) > 1


# ---- through the pipeline ----------------------------------------------------------------------


@pytest.mark.parametrize("name,kw", [
    ("movielens_latest_long", {"history_max_len": 40, "rows_per_user": 5}),
    ("taobao_long", {"history_max_len": 40, "rows_per_user": 5}),
    ("video_games_long", {"history_max_len": 40, "min_history_len": 100}),
])
def test_long_entries_encode(env, tmp_path, name, kw):
    cfg = get_dataset(name, **kw)
    data = prepare(cfg, cache_dir=tmp_path, log=lambda *a: None)
    fmap = data.feature_map
    seqs = {f.name: f for f in fmap.sequences}
    assert seqs["history"].shares == "item_id" and seqs["history"].max_len == 40
    frames = _frames(cfg)
    encoders = load_encoders(fmap)
    vocab = ["<pad>", "<oov>"] + encoders["item_id"].vocab
    for split, enc in data.splits.items():
        hist = np.asarray(enc.arrays["seq:history"])
        assert hist.shape == (frames[split].height, 40)
        # the encoded rows are the parquet's latest 40 events, pre-padded
        for i in range(0, len(hist), max(1, len(hist) // 50)):
            want = frames[split]["history"][i].to_list()[-40:]
            got = [vocab[t] if t > 1 else "<oov>" for t in hist[i] if t]
            assert len(got) == len(want)
            if split == "train":
                assert got == want
        for side in seqs:
            if side != "history" and side != "genres" and f"seq:{side}" in enc.arrays:
                # side sequences pad at the same positions as the item history
                assert np.array_equal(np.asarray(enc.arrays[f"seq:{side}"]) == 0, hist == 0)
