"""Long-history entries: ``movielens_latest_long``, ``taobao_long`` and ``video_games_long``.

Each row is one event of a user's log with that user's earlier events as sequences of up to
``history_max_len`` (default 1,000; 10,000 works) positions, one sequence per piece of side
information, all aligned event by event (position ``j`` of every history sequence is the same
event): the item (``history``, sharing ``item_id``), its category / genre set (sharing the
candidate's field), the behaviour type (Taobao), the rating (MovieLens, numbers) and
``history_gap``: seconds between the event and the row's timestamp (numbers, >= 1: only events
strictly earlier than the row are in a history). The histories are Parquet list columns built by
:func:`.events.history_events` (no per-token Python). Shared rules in :mod:`.events`.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from ..schema import DatasetConfig
from .events import (
    check_split_params,
    event_log_config,
    history_events,
    int_column,
    list_array,
    per_user_time_splits,
    read_text,
    select_rows,
    sequence_feature,
    split_fields,
    time_ordered_splits,
    write_parquet_splits,
)
from .movielens_samples import (ML_LATEST_GENRES_MAX, ML_LATEST_SOURCES, genre_tokens, item_text_features,
                                 latest_ratings, lookup, title_year)
from .registry import DatasetContext, SourceFile, register_dataset
from .taobao import TAOBAO_SOURCES, UTC_OFFSET_S, behavior_columns

VIDEO_GAMES_SOURCES = [
    SourceFile(
        "sasrec_amazon_video_games/Video.txt",
        sha256="b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651",
        gz_sha256="d1d700c3a1d5cf3f5c3b0a108c61179c5f24114f15d665e49b8ed6a53e463712",
    ),
]


def _check(name: str, train_fraction: float, valid_fraction: float, history_max_len: int, rows_per_user: int,
           min_history_len: int) -> None:
    check_split_params(name, train_fraction, valid_fraction, history_max_len=history_max_len)
    from ...config import ConfigError

    if rows_per_user < 0 or min_history_len < 0:
        raise ConfigError(f"{name}: rows_per_user and min_history_len must be >= 0 (rows_per_user 0 = every "
                          f"event), got {rows_per_user} and {min_history_len}")


def _strings(values: np.ndarray) -> np.ndarray:
    """Ids as strings, converting each distinct value once."""
    uniq, code = np.unique(values, return_inverse=True)
    return np.array([str(x) for x in uniq], dtype=object)[code.reshape(-1)]


def _history_columns(offsets, flat, rows, ts, side: dict[str, tuple[np.ndarray, pa.DataType]]) -> dict:
    """The aligned history list columns of ``rows``: one per ``side`` entry (values per event),
    plus ``history_gap`` (row ts - event ts, seconds) when ``ts`` is given."""
    out = {name: (list_array(offsets, values[flat], typ), typ) for name, (values, typ) in side.items()}
    if ts is not None:
        gap = np.repeat(ts[rows], np.diff(offsets)) - ts[flat]
        out["history_gap"] = (list_array(offsets, gap, pa.int64()), pa.int64())
    return out


def _manifest_extra(offsets: np.ndarray, history_max_len: int) -> dict:
    lens = np.diff(offsets)
    return {"history_lengths": {"mean": round(float(lens.mean()), 2) if len(lens) else 0.0,
                                "max": int(lens.max()) if len(lens) else 0,
                                "at_max_len": int((lens == history_max_len).sum()), "events": int(lens.sum())}}


# ---- MovieLens ------------------------------------------------------------------------------


@register_dataset("movielens_latest_long")
def movielens_latest_long(
    ctx: DatasetContext,
    positive_threshold: float = 4.0,
    history: str = "all",
    history_max_len: int = 1000,
    rows_per_user: int = 50,
    min_history_len: int = 0,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    item_text_dim: int = 0,
    item_text_tags: bool = True,
) -> DatasetConfig:
    """MovieLens Latest Small with long per-event histories (item, genre set, rating, time gap) as
    CTR: label = rating >= 4, global time split.

    Source: as ``movielens_latest_small`` (``<data_dir>/movielens_latest_small/{ratings,movies}.csv[.gz]``,
    sha256 aa289ca8... and 5a5f32dd..., see that entry). No download.
    Rows: the ratings of each user's **last ``rows_per_user`` (50) ratings** in time order (ties by
    movieId) among those with at least ``min_history_len`` (0) earlier rated movies; 0 = every
    rating. Why the cap: the 3 users with more than 2,000 ratings would otherwise dominate, and every
    row of the full log at max_len 1,000 stores 265 history events on average (26.7 M events in
    all); the cap keeps 26,274 rows with 152 events on average (4.0 M), and the rows of the heavy
    users are the ones with the longest histories. All ratings, capped or not, feed the histories.
    Label = ``rating >= positive_threshold`` (4.0). Columns: ``label``, ``user_id``, ``item_id``,
    ``genres`` (``^``-joined, multi-valued), ``genre_set`` (the movie's genre list as one token, e.g.
    ``Comedy|Romance``: the candidate's category), ``release_year``, the histories, ``timestamp`` (not
    a feature).
    Histories (Parquet list columns, aligned event by event, oldest first, the latest
    ``history_max_len`` (1,000)): the same user's ratings (``history="all"``, the default, or only
    those >= ``positive_threshold`` with ``"positive"``) with a timestamp **strictly before** the
    row's (a rating of the same second is never included): ``history`` (movieIds, sharing
    ``item_id``), ``genre_set_history`` (sharing ``genre_set``), ``rating_history`` (the stars,
    numbers: the past ratings are known at the row's time), ``history_gap`` (row timestamp - event
    timestamp in seconds, >= 1).
    Split: global time order over the rows (:func:`.events.time_ordered_splits`, rows sorted by
    (timestamp, user_id, item_id)): first ``train_fraction`` (0.8) train, next ``valid_fraction``
    (0.1) valid, rest test, each cut moved past a shared timestamp: max(train ts) < min(valid ts),
    max(valid ts) < min(test ts). Many test users have no train row (the log spans 22 years); their
    long histories are what a sequence model reads. Rows (defaults): see docs/data.md.
    Features: item_id, genre_set, release_year categorical (min_count 1); **not** user_id: under
    the global cut almost no valid/test user has a train row (98% of valid rows at the defaults),
    so its id would be out of vocabulary; the history stands for the user. genres sequence
    (max_len 10, own vocabulary); history (``share_vocab_with: item_id``), genre_set_history
    (``share_vocab_with: genre_set``), rating_history and history_gap (``values: numbers``), max_len
    ``history_max_len``. ``group_field: user_id``. ``item_text_dim`` / ``item_text_tags``: an
    ``item_text_vec`` feature from the movies' titles, genres and tags, as for ``movielens_latest_small``.
    Terms: as ``movielens_latest_small`` (research use, no commercial use; keep internal).
    """
    name = "movielens_latest_long"
    if history not in ("positive", "all"):
        raise ValueError(f"{name}: history must be 'positive' or 'all', got {history!r}")
    _check(name, train_fraction, valid_fraction, history_max_len, rows_per_user, min_history_len)
    ratings_src, movies_src = ctx.find_sources(ML_LATEST_SOURCES)

    def build(out: Path) -> dict:
        r = latest_ratings(ratings_src)
        users, items, ratings, ts = r["userId"], r["movieId"], r["rating"], r["timestamp"]
        label = (ratings >= positive_threshold).astype(np.int8)
        use = label.astype(bool) if history == "positive" else np.ones(len(users), dtype=bool)

        movie_rows = list(csv.reader(io.StringIO(read_text(movies_src, "utf-8"))))
        if not movie_rows or movie_rows[0] != ["movieId", "title", "genres"]:
            raise DataError("expected the header movieId,title,genres", movies_src, line=1,
                            fix="use ml-latest-small's movies.csv")
        movie_info = {}
        for i, r in enumerate(movie_rows[1:], start=2):
            if len(r) != 3:
                raise DataError(f"expected 3 fields, found {len(r)}", movies_src, line=i,
                                fix="use ml-latest-small's movies.csv")
            movie_info[int(r[0])] = (genre_tokens(r[2]), r[2], title_year(r[1]))
        info = lookup(ratings_src, items, movie_info, "movieId", movies_src, first_line=2)
        genres = np.array([x[0] for x in info], dtype=object)
        genre_set = np.array([x[1] for x in info], dtype=object)
        year = np.array([x[2] for x in info], dtype=object)

        _, _, earlier = history_events(users, ts, items, use, 1, rows=np.zeros(0, dtype=np.int64))
        rows = select_rows(users, ts, items, earlier, rows_per_user, min_history_len)
        offsets, flat, _ = history_events(users, ts, items, use, history_max_len, rows)
        item_str = _strings(items)
        columns = {
            "label": (label[rows], pa.int8()),
            "user_id": (_strings(users)[rows], pa.string()),
            "item_id": (item_str[rows], pa.string()),
            "genres": (genres[rows], pa.string()),
            "genre_set": (genre_set[rows], pa.string()),
            "release_year": (year[rows], pa.string()),
            **_history_columns(offsets, flat, rows, ts, {
                "history": (item_str, pa.string()),
                "genre_set_history": (genre_set, pa.string()),
                "rating_history": (ratings, pa.float64()),
            }),
            "timestamp": (ts[rows], pa.int64()),
        }
        splits = time_ordered_splits(ts[rows], (users[rows], items[rows]), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp"),
                **_manifest_extra(offsets, history_max_len)}

    params = {"positive_threshold": float(positive_threshold), "history": history, "history_max_len": history_max_len,
              "rows_per_user": rows_per_user, "min_history_len": min_history_len,
              "train_fraction": train_fraction, "valid_fraction": valid_fraction}
    folder = ctx.prepare(params, build, ML_LATEST_SOURCES)
    L = history_max_len
    return event_log_config(name, folder, ["item_id", "genre_set", "release_year"], [
        {"name": "genres", "max_len": ML_LATEST_GENRES_MAX},
        sequence_feature("history", L, share_vocab_with="item_id"),
        sequence_feature("genre_set_history", L, share_vocab_with="genre_set"),
        *numeric_sequences(["rating_history", "history_gap"], L),
    ], item_text_features(ctx, movies_src, item_text_dim, item_text_tags, name))


def numeric_sequences(names: list[str], max_len: int) -> list[dict]:
    """The number sequences of an entry (``values: numbers``: batch keys ``numseq:<name>``)."""
    return [sequence_feature(n, max_len, values="numbers") for n in names]


# ---- Taobao ---------------------------------------------------------------------------------


@register_dataset("taobao_long")
def taobao_long(
    ctx: DatasetContext,
    history_max_len: int = 1000,
    rows_per_user: int = 50,
    min_history_len: int = 0,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
) -> DatasetConfig:
    """Taobao UserBehavior head with long per-event histories (item, category, behaviour type, time
    gap) as CTR: label = engagement beyond a page view (cart, fav or buy), global time split.

    Source: as ``taobao_head`` (``<data_dir>/taobao_userbehavior_head/UserBehavior_head.csv[.gz]``, sha256
    9cbce278..., truncated last line dropped and recorded in the manifest). No download.
    Rows: each user's **last ``rows_per_user`` (50) behaviours** in time order (ties by item_id)
    among those with at least ``min_history_len`` (0) earlier behaviours; 0 = every behaviour (84,475
    rows, 90 history events on average). All behaviours feed the histories. Label = 1 for cart, fav
    or buy, 0 for pv (as ``taobao_head``). Columns: ``label``, ``user_id``, ``item_id``,
    ``category_id``, ``hour``, ``weekday`` (UTC+8), the histories, ``timestamp`` (not a feature).
    Histories (Parquet list columns, aligned, oldest first, the latest ``history_max_len`` (1,000);
    the longest user log has 539 behaviours): the same user's behaviours of any type with a timestamp
    **strictly before** the row's: ``history`` (items, sharing ``item_id``), ``category_history``
    (sharing ``category_id``), ``behavior_history`` (pv/cart/fav/buy, own vocabulary; the past
    behaviours, not the row's), ``history_gap`` (seconds, numbers, >= 1).
    Split: global time order over the rows, rows sorted by (timestamp, user_id, item_id); first
    ``train_fraction`` (0.8) train, next ``valid_fraction`` (0.1) valid, rest test, cuts moved past
    shared timestamps. Rows (defaults): see docs/data.md.
    Features: user_id, item_id, category_id, hour, weekday categorical (min_count 1); history,
    category_history, behavior_history sequences; history_gap (``values: numbers``). ``group_field:
    user_id``. Terms: Tianchi 649, non-commercial research use; **keep internal**.
    """
    name = "taobao_long"
    _check(name, train_fraction, valid_fraction, history_max_len, rows_per_user, min_history_len)
    (src,) = ctx.find_sources(TAOBAO_SOURCES)

    def build(out: Path) -> dict:
        _, cols, dropped = behavior_columns(src, log=lambda msg: None)
        users, items, cats, ts = (cols[c] for c in ("user_id", "item_id", "category_id", "timestamp"))
        behavior = cols["behavior_type"]
        label = (behavior != "pv").astype(np.int8)
        local = ts + UTC_OFFSET_S
        use = np.ones(len(users), dtype=bool)
        _, _, earlier = history_events(users, ts, items, use, 1, rows=np.zeros(0, dtype=np.int64))
        rows = select_rows(users, ts, items, earlier, rows_per_user, min_history_len)
        offsets, flat, _ = history_events(users, ts, items, use, history_max_len, rows)
        item_str, cat_str = _strings(items), _strings(cats)
        columns = {
            "label": (label[rows], pa.int8()),
            "user_id": (_strings(users)[rows], pa.string()),
            "item_id": (item_str[rows], pa.string()),
            "category_id": (cat_str[rows], pa.string()),
            "hour": (_strings((local // 3600) % 24)[rows], pa.string()),
            "weekday": (_strings((local // 86400 + 3) % 7)[rows], pa.string()),
            **_history_columns(offsets, flat, rows, ts, {
                "history": (item_str, pa.string()),
                "category_history": (cat_str, pa.string()),
                "behavior_history": (behavior, pa.string()),
            }),
            "timestamp": (ts[rows], pa.int64()),
        }
        splits = time_ordered_splits(ts[rows], (users[rows], items[rows], cats[rows]), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp"), "dropped_lines": dropped,
                **_manifest_extra(offsets, history_max_len)}

    params = {"history_max_len": history_max_len, "rows_per_user": rows_per_user, "min_history_len": min_history_len,
              "train_fraction": train_fraction, "valid_fraction": valid_fraction}
    folder = ctx.prepare(params, build, TAOBAO_SOURCES)
    L = history_max_len
    return event_log_config(name, folder, ["user_id", "item_id", "category_id", "hour", "weekday"], [
        sequence_feature("history", L, share_vocab_with="item_id"),
        sequence_feature("category_history", L, share_vocab_with="category_id"),
        sequence_feature("behavior_history", L),
        *numeric_sequences(["history_gap"], L),
    ])


# ---- Amazon Video Games (SASRec) ------------------------------------------------------------


def sample_negatives(users: np.ndarray, items: np.ndarray, position: np.ndarray, rows: np.ndarray,
                     n_items: int, seed: int) -> np.ndarray:
    """For each row (an event index in ``rows``): an item drawn uniformly from ``1..n_items`` among
    those the row's user has **not** interacted with at any position <= the row's (so never the
    row's own item; items the user meets later may be drawn). One ``numpy.random.default_rng(seed)``
    stream: candidates are drawn for all rows at once, in ``rows`` order, and the rejected ones are
    drawn again, in order, until none is rejected. Same inputs and seed -> same negatives."""
    rng = np.random.default_rng(seed)
    # first position at which each (user, item) appears, looked up by a sorted int key
    key = users.astype(np.int64) * (n_items + 1) + items
    order = np.lexsort((position, key))
    k_sorted = key[order]
    starts = np.r_[True, k_sorted[1:] != k_sorted[:-1]]
    first_key, first_pos = k_sorted[starts], position[order][starts]
    out = np.zeros(len(rows), dtype=np.int64)
    todo = np.arange(len(rows))
    while len(todo):
        cand = rng.integers(1, n_items + 1, size=len(todo))
        q = users[rows[todo]].astype(np.int64) * (n_items + 1) + cand
        j = np.minimum(np.searchsorted(first_key, q), len(first_key) - 1)
        seen = (first_key[j] == q) & (first_pos[j] <= position[rows[todo]])
        out[todo[~seen]] = cand[~seen]
        todo = todo[seen]
    return out


@register_dataset("video_games_long")
def video_games_long(
    ctx: DatasetContext,
    history_max_len: int = 1000,
    rows_per_user: int = 0,
    min_history_len: int = 20,
    seed: int = 0,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
) -> DatasetConfig:
    """Amazon Video Games (SASRec's ``Video.txt``) as CTR with long item histories and **sampled
    negatives**: each kept interaction gives a positive row and a negative row with the same history.

    Source: ``<data_dir>/sasrec_amazon_video_games/Video.txt[.gz]`` (shared folder
    ``sasrec_amazon_video_games``; kang205/SASRec @ e3738967, ``data/Video.txt``): 287,107 ``user
    item`` lines, 31,013 users, 23,715 items (ids 1..23,715), grouped by user, each user's lines in
    review-time order; implicit feedback, **no timestamps**, no item attributes. Checksums (dataset
    card): sha256 b7376fe24430743f411dc7f567285657b2adb3f74361cc7ba0aee94f3024b651 (uncompressed),
    .gz d1d700c3a1d5cf3f5c3b0a108c61179c5f24114f15d665e49b8ed6a53e463712. No download.
    Time: an interaction's ``position`` (0-based index in its user's lines) is its time; nothing
    orders two users' interactions, so the split is per user (below), not a global time cut.
    Rows: the interactions with at least ``min_history_len`` (20) earlier interactions of the user
    (the users' mean is 9, so without it most histories are a handful of items), the user's last
    ``rows_per_user`` of them (0 = all). Each gives two rows: label 1 with its item, and label 0 with
    a **negative item** drawn uniformly from the 23,715 items minus those the user interacted with at
    positions <= the interaction's (never the positive; an item the user reviews later may be
    drawn), by :func:`sample_negatives` with ``numpy.random.default_rng(seed)`` (``seed`` 0): the
    same ``seed`` gives the same negatives, another seed others.
    Columns: ``label``, ``user_id``, ``item_id``, ``history`` (Parquet list of the user's items at
    positions < the row's, oldest first, the latest ``history_max_len`` (1,000); the longest user has
    860 lines), ``position`` (not a feature). No time-gap sequence: the file has no timestamps.
    Split: per user by position (:func:`.events.per_user_time_splits` with position as time): each
    user's first ``train_fraction`` (0.8) of rows train, next ``valid_fraction`` (0.1) valid, the rest
    test; a positive and its negative share a position and so a split. For every user, train
    positions < valid positions < test positions. Rows (defaults): see docs/data.md.
    Features: user_id, item_id categorical (min_count 1); history sequence (``share_vocab_with:
    item_id``). ``group_field: user_id``.
    Terms: Amazon review data (McAuley et al.), research use; cite SASRec (Kang & McAuley, ICDM 2018).
    **Keep internal.**
    """
    name = "video_games_long"
    _check(name, train_fraction, valid_fraction, history_max_len, rows_per_user, min_history_len)
    (src,) = ctx.find_sources(VIDEO_GAMES_SOURCES)

    def build(out: Path) -> dict:
        lines = read_text(src).splitlines()
        rows_txt = split_fields(src, lines, " ", ["user_id", "item_id"])
        users = int_column(src, rows_txt, 0, "user_id")
        items = int_column(src, rows_txt, 1, "item_id")
        if len(users) > 1 and (np.diff(users) < 0).any():
            i = int(np.flatnonzero(np.diff(users) < 0)[0]) + 2
            raise DataError("lines are not grouped by user in ascending id order", src, line=i,
                            fix="use SASRec's published Video.txt")
        starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
        position = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
        n_items = int(items.max())
        use = np.ones(len(users), dtype=bool)
        rows = select_rows(users, position, items, position, rows_per_user, min_history_len)
        offsets, flat, _ = history_events(users, position, items, use, history_max_len, rows)
        neg = sample_negatives(users, items, position, rows, n_items, seed)
        item_str = _strings(items)
        hist = list_array(offsets, item_str[flat], pa.string())
        R = len(rows)
        both = np.r_[np.arange(R), np.arange(R)]  # positive rows, then negative rows
        columns = {
            "label": (np.r_[np.ones(R, np.int8), np.zeros(R, np.int8)], pa.int8()),
            "user_id": (_strings(users)[rows][both], pa.string()),
            "item_id": (np.r_[item_str[rows], _strings(neg)], pa.string()),
            "history": (hist.take(pa.array(both)), pa.list_(pa.string())),
            "position": (position[rows][both], pa.int64()),
        }
        u2, p2 = users[rows][both], position[rows][both]
        splits = per_user_time_splits(u2, p2, (-columns["label"][0],), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "position"),
                "items": n_items, **_manifest_extra(offsets, history_max_len)}

    params = {"history_max_len": history_max_len, "rows_per_user": rows_per_user, "min_history_len": min_history_len,
              "seed": seed, "train_fraction": train_fraction, "valid_fraction": valid_fraction}
    folder = ctx.prepare(params, build, VIDEO_GAMES_SOURCES)
    return event_log_config(name, folder, ["user_id", "item_id"],
                            [sequence_feature("history", history_max_len, share_vocab_with="item_id")])
