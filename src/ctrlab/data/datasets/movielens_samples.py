"""``movielens_latest_small`` and ``movielens_1m_sample``: two more MovieLens releases as time-ordered
CTR tasks, built like ``movielens_100k`` (shared code in :mod:`.events`)."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...config import ConfigError
from ..errors import DataError
from ..schema import DatasetConfig
from .events import (
    build_histories,
    check_split_params,
    event_log_config,
    float_column,
    history_feature,
    int_column,
    per_user_time_splits,
    read_text,
    split_fields,
    time_ordered_splits,
    write_parquet_splits,
)
from .movielens import AGE_LABELS
from .registry import DatasetContext, SourceFile, register_dataset

ML_LATEST_SOURCES = [
    SourceFile(
        "movielens_latest_small/ratings.csv",
        sha256="aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        gz_sha256="f5357a61740ebcf47e20ec53456997d048298ba3ef35fdc6060ed6c677728145",
    ),
    SourceFile(
        "movielens_latest_small/movies.csv",
        sha256="5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
        gz_sha256="1d059d5fc8793fc0c8be8bad9e26907fed81b7ea1594b92d9b0d6166b8145d63",
    ),
]
ML_LATEST_TAGS = SourceFile(
    "movielens_latest_small/tags.csv",
    sha256="92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    gz_sha256="4761011ed74c28cd034188969c1efef2b3209ef2f7d54fd6ec89fab80f925754",
)
"""ml-latest-small's tags.csv (userId, movieId, tag, timestamp): item text of ``item_text_dim``."""
ML1M_SAMPLE_SOURCES = [
    SourceFile(
        "movielens_1m_sample100k/sample_movielens_rating.dat",
        sha256="734d8519445bcf4639f9709e56a700bbef7514bf12902620ca068aa63dcd93e8",
        gz_sha256="a746d4eb81f944c35c94a075497afbee0cfafaf7907d6e2a89fc09c6fb946537",
    ),
    SourceFile(
        "movielens_1m_sample100k/users.dat",
        sha256="1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        gz_sha256="1bfdd04e6e7543fb1e26369bc4966040076d06814f07682a5b77497b1ffa2700",
    ),
    SourceFile(
        "movielens_1m_sample100k/movies.dat",
        sha256="0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
        gz_sha256="0c4c296ce1204c20abb1508530260817acb42b9e6146769a116fbd47a1fb0cc4",
    ),
]
ML_LATEST_GENRES_MAX = 10
"""Most genres of one ml-latest-small movie (movies.csv); the sequence feature's max_len."""
ML1M_GENRES_MAX = 6
ML1M_AGE_CODES = ["1", "18", "25", "35", "45", "50", "56"]
"""ml-1m users.dat age codes, in the order of :data:`.movielens.AGE_LABELS` (the same buckets)."""
_YEAR = re.compile(r"\((\d{4})(?:\s*[\u2013-]\s*\d{4})?\)\s*$")


def latest_ratings(path: Path) -> dict[str, np.ndarray]:
    """ml-latest-small's ratings.csv (header checked) as columns ``userId``, ``movieId``, ``timestamp``
    (int64) and ``rating`` (float64); a DataError names a bad header or line."""
    lines = read_text(path, "utf-8").splitlines()
    header = "userId,movieId,rating,timestamp"
    if not lines or lines[0] != header:
        raise DataError(f"header {lines[0] if lines else ''!r}, expected {header!r}", path, line=1,
                        fix="use ml-latest-small's ratings.csv")
    rows = split_fields(path, lines[1:], ",", header.split(","), first_line=2)
    return {"userId": int_column(path, rows, 0, "userId", 2), "movieId": int_column(path, rows, 1, "movieId", 2),
            "rating": float_column(path, rows, 2, "rating", 2), "timestamp": int_column(path, rows, 3, "timestamp", 2)}


def item_text_features(ctx: DatasetContext, movies_src: Path, dim: int, tags: bool, name: str) -> list[dict]:
    """``item_text_vec`` (``item_text_dim`` > 0; none at 0): a ``dense_vector`` of ``dim`` values per
    row, the movie's TF-IDF + SVD vector of its title and genres (movies.csv) and, with ``tags``, its
    tags (tags.csv, joined per movie), fitted on the train split's movies only
    (:mod:`ctrlab.data.item_vectors`). The source files' paths and contents are part of the cache key."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
        raise ConfigError(f"{name}: item_text_dim must be >= 1 (0: no item text vector), got {dim!r}")
    if dim == 0:
        return []
    text = [{"file": str(movies_src), "key_column": "movieId", "columns": ["title", "genres"]}]
    if tags:
        (tags_src,) = ctx.find_sources([ML_LATEST_TAGS])
        text.append({"file": str(tags_src), "key_column": "movieId", "columns": ["tag"], "duplicates": "join"})
    return [{"name": "item_text_vec", "kind": "dense_vector", "dim": dim, "key": "item_id",
             "vectors": {"text": text}}]


def title_year(title: str) -> str:
    """The release year MovieLens appends to a title, ``"Heat (1995)"`` -> ``"1995"`` (a range such
    as ``(2006–2007)`` gives its first year), or ``"unknown"`` where the title has none."""
    m = _YEAR.search(title)
    return m.group(1) if m else "unknown"


def genre_tokens(genres: str) -> str:
    """MovieLens ``A|B|C`` -> ``A^B^C`` (``^`` is the sequence splitter of the MovieLens entries)."""
    return "^".join(g for g in genres.split("|") if g)


def lookup(
    path: Path, ids: np.ndarray, table: dict[int, tuple], what: str, source: Path, first_line: int = 1
) -> list[tuple]:
    """``table[id]`` for every id; a DataError names the first line of ``path`` whose id is not in
    ``source`` (``first_line``: the file line of ``ids[0]``)."""
    try:
        return [table[int(x)] for x in ids]
    except KeyError as exc:
        row = int(np.flatnonzero(ids == int(exc.args[0]))[0])
        raise DataError(f"{what} {exc.args[0]} is not in {source}", path, line=row + first_line, column=what,
                        fix=f"use the matching {source.name} from the same release") from None


@register_dataset("movielens_latest_small")
def movielens_latest_small(
    ctx: DatasetContext,
    positive_threshold: float = 4.0,
    history: str = "positive",
    history_max_len: int = 20,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    split: str = "per_user",
    item_text_dim: int = 0,
    item_text_tags: bool = True,
) -> DatasetConfig:
    """MovieLens Latest Small (GroupLens ml-latest-small, 2018-09) as CTR: label = rating >= 4, genres
    as a multi-valued field, release year, and a leak-free history of earlier liked movies.

    Source: ``<data_dir>/movielens_latest_small/{ratings,movies}.csv[.gz]`` (shared folder
    ``movielens_latest_small``; byte-identical to the GroupLens files, CRLF, header rows). No download.
    Checksums (sha256 of the uncompressed files, dataset card): ratings.csv
    aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646, movies.csv
    5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07 (.gz copies: f5357a61...,
    1d059d5f...).

    Rows: one per rating, 100,836 (610 users, 9,724 movies); label = ``rating >= positive_threshold``
    (default 4.0, ratings go in half stars: 48,580 positives, 0.482). Columns: ``label``,
    ``user_id``, ``item_id`` (movieId), ``genres`` (the movie's genres joined by ``^``, 1-10,
    ``(no genres listed)`` kept as a value), ``release_year`` (the ``(YYYY)`` at the end of the
    title; ``unknown`` for the 12 titles without one), ``history``, ``timestamp`` (not a feature).
    History: exactly as ``movielens_100k`` (:func:`.events.build_histories`): the same user's
    movies rated >= ``positive_threshold`` (``history="positive"``) or all rated movies
    (``history="all"``) with a timestamp strictly before the row's, oldest first, the latest
    ``history_max_len`` (20).
    Split (``split="per_user"``, the default): each user's ratings in time order (ties by
    item_id), the first ``train_fraction`` (0.8) train, the next ``valid_fraction`` (0.1) valid,
    the rest test, each cut moved forward past the user's ratings sharing its timestamp: for every
    user, train < valid < test in time (:func:`.events.per_user_time_splits`). Why not one global
    cut as in ``movielens_100k``: the ratings span 22 years and users rate in bursts, so a global
    cut (``split="global"``: rows sorted by (timestamp, user_id, item_id), train 80,669 / valid
    10,083 / test 10,084) leaves 90.8% of test rows from users never seen in train, which is a
    cold-start task and trips the pipeline's OOV warning. Rows (defaults): **train 80,926 /
    valid 10,049 / test 9,861**; positives 39,374 / 4,543 / 4,663. Ties can move a user's whole
    remainder into an earlier split: 15 users have no valid row, 26 no test row. Not one global
    time order: a train rating of one user may be later than a test rating of another.
    Features: user_id, item_id, release_year categorical (min_count 1); genres sequence (splitter
    ``^``, max_len 10, own vocabulary); history sequence (``share_vocab_with: item_id``).
    ``group_field: user_id``. Not a BARS dataset (BARS MovielensLatest_x1 is built from the full
    ml-latest tags, not from this release).
    Item text vectors (``item_text_dim`` > 0, default 0: off): an ``item_text_vec`` dense-vector feature
    keyed by ``item_id``, TF-IDF + SVD of each movie's title and genres and (``item_text_tags``, default
    on) its tags, fitted on the train split's movies (:func:`item_text_features`). The tags (3,683, from
    58 users) carry timestamps and are used whatever their time: set ``item_text_tags: false`` to leave
    them out. Needs ``movielens_latest_small/tags.csv[.gz]`` (sha256 92a9f8bb..., .gz 4761011e...).
    Terms (GroupLens README): research use; cite Harper & Konstan 2015; no endorsement claims;
    redistribution only under the same licence; **no commercial use**. Keep it internal.
    """
    if history not in ("positive", "all"):
        raise ValueError(f"movielens_latest_small: history must be 'positive' or 'all', got {history!r}")
    if split not in ("per_user", "global"):
        raise ConfigError(f"movielens_latest_small: split must be 'per_user' or 'global', got {split!r}")
    check_split_params("movielens_latest_small", train_fraction, valid_fraction, history_max_len=history_max_len)
    ratings_src, movies_src = ctx.find_sources(ML_LATEST_SOURCES)

    def build(out: Path) -> dict:
        r = latest_ratings(ratings_src)
        users, items, ratings, ts = r["userId"], r["movieId"], r["rating"], r["timestamp"]
        label = (ratings >= positive_threshold).astype(np.int8)
        use = label.astype(bool) if history == "positive" else np.ones(len(users), dtype=bool)
        hist = build_histories(users, items, ts, use, history_max_len)

        movie_rows = list(csv.reader(io.StringIO(read_text(movies_src, "utf-8"))))
        if not movie_rows or movie_rows[0] != ["movieId", "title", "genres"]:
            raise DataError("expected the header movieId,title,genres", movies_src, line=1,
                            fix="use ml-latest-small's movies.csv")
        movie_info = {}
        for i, r in enumerate(movie_rows[1:], start=2):
            if len(r) != 3:
                raise DataError(f"expected 3 fields, found {len(r)}", movies_src, line=i,
                                fix="use ml-latest-small's movies.csv")
            movie_info[int(r[0])] = (genre_tokens(r[2]), title_year(r[1]))
        info = lookup(ratings_src, items, movie_info, "movieId", movies_src, first_line=2)
        columns = {
            "label": (label, pa.int8()),
            "user_id": ([str(x) for x in users], pa.string()),
            "item_id": ([str(x) for x in items], pa.string()),
            "genres": ([x[0] for x in info], pa.string()),
            "release_year": ([x[1] for x in info], pa.string()),
            "history": (hist, pa.string()),
            "timestamp": (ts, pa.int64()),
        }
        if split == "per_user":
            splits = per_user_time_splits(users, ts, (items,), train_fraction, valid_fraction)
        else:
            splits = time_ordered_splits(ts, (users, items), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp")}

    params = {
        "split": split,
        "positive_threshold": float(positive_threshold),
        "history": history,
        "history_max_len": history_max_len,
        "train_fraction": train_fraction,
        "valid_fraction": valid_fraction,
    }
    folder = ctx.prepare(params, build, ML_LATEST_SOURCES)
    return event_log_config("movielens_latest_small", folder, ["user_id", "item_id", "release_year"],
                            [{"name": "genres", "max_len": ML_LATEST_GENRES_MAX}, history_feature(history_max_len)],
                            item_text_features(ctx, movies_src, item_text_dim, item_text_tags,
                                               "movielens_latest_small"))


@register_dataset("movielens_1m_sample")
def movielens_1m_sample(
    ctx: DatasetContext,
    positive_threshold: int = 4,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    zip_digits: int = 1,
) -> DatasetConfig:
    """MovieLens 1M, a 100,000-rating sample with the complete ml-1m users.dat and movies.dat, as CTR:
    label = rating >= 4, user demographics and movie genres (DeepCTR's "MovieLens-1M with side features").

    Source: ``<data_dir>/movielens_1m_sample100k/{sample_movielens_rating,users,movies}.dat[.gz]``
    (shared folder ``movielens_1m_sample100k``): the ratings are LibRecommender's
    ``examples/sample_data/sample_movielens_rating.dat`` (about 10% of ml-1m, sampling method not
    documented), users/movies the unmodified GroupLens files. ``::``-separated, no header. No download.
    Checksums (sha256 of the uncompressed files, dataset card): ratings
    734d8519445bcf4639f9709e56a700bbef7514bf12902620ca068aa63dcd93e8, users.dat
    1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3, movies.dat
    0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9 (.gz: a746d4eb..., 1bfdd04e...,
    0c4c296c...).

    Rows: one per sampled rating, 100,000 (5,958 users, 3,312 movies); label = ``rating >=
    positive_threshold`` (default 4: 57,483 positives, 0.575). Columns: ``label``, ``user_id``,
    ``item_id``, ``gender`` (M/F), ``age`` (ml-1m's age code as the ``movielens_100k`` bucket names
    ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``), ``occupation`` (code 0-20), ``zip_prefix``
    (first ``zip_digits`` characters of the zip code, default 1), ``genres`` (``^``-joined, 1-6 of
    18), ``release_year`` (from the title), ``timestamp`` (not a feature). No history feature: a
    user has ~17 sampled ratings, so it would be thin (use movielens_100k / movielens_latest_small).
    Split: global time order, rows sorted by (timestamp, user_id, item_id); first
    ``train_fraction`` (0.8) train, next ``valid_fraction`` (0.1) valid, rest test, each cut moved
    forward past a shared timestamp. Rows (defaults): **train 80,000 / valid 10,000 / test 10,000**;
    positives 46,325 / 5,717 / 5,441 (train ts <= 975773927 < valid ts <= 978132128 < test ts).
    Features: user_id, item_id, gender, age, occupation, zip_prefix, release_year categorical
    (min_count 1); genres sequence (splitter ``^``, max_len 6). ``group_field: user_id``.
    Terms (GroupLens ml-1m README): research use; cite Harper & Konstan 2015; no endorsement
    claims; **may not be redistributed without separate permission**; no commercial use.
    """
    check_split_params("movielens_1m_sample", train_fraction, valid_fraction, zip_digits=zip_digits)
    ratings_src, users_src, movies_src = ctx.find_sources(ML1M_SAMPLE_SOURCES)

    def build(out: Path) -> dict:
        rows = split_fields(ratings_src, read_text(ratings_src).splitlines(), "::",
                            ["UserID", "MovieID", "Rating", "Timestamp"])
        users = int_column(ratings_src, rows, 0, "UserID")
        items = int_column(ratings_src, rows, 1, "MovieID")
        ratings = int_column(ratings_src, rows, 2, "Rating")
        ts = int_column(ratings_src, rows, 3, "Timestamp")
        label = (ratings >= positive_threshold).astype(np.int8)

        user_info = {}
        user_lines = read_text(users_src).splitlines()
        for i, (uid, gender, age, occ, zipc) in enumerate(
            split_fields(users_src, user_lines, "::", ["UserID", "Gender", "Age", "Occupation", "Zip-code"]), start=1
        ):
            if age not in ML1M_AGE_CODES:
                raise DataError(f"age code {age!r} is not one of {ML1M_AGE_CODES}", users_src, line=i, column="Age",
                                fix="use ml-1m's users.dat")
            user_info[int(uid)] = (gender, AGE_LABELS[ML1M_AGE_CODES.index(age)], occ, zipc[:zip_digits].upper())
        movie_lines = read_text(movies_src, "latin-1").splitlines()
        movie_info = {
            int(mid): (genre_tokens(genres), title_year(title))
            for mid, title, genres in split_fields(movies_src, movie_lines, "::", ["MovieID", "Title", "Genres"])
        }
        u = lookup(ratings_src, users, user_info, "UserID", users_src)
        it = lookup(ratings_src, items, movie_info, "MovieID", movies_src)
        columns = {
            "label": (label, pa.int8()),
            "user_id": ([str(x) for x in users], pa.string()),
            "item_id": ([str(x) for x in items], pa.string()),
            "gender": ([x[0] for x in u], pa.string()),
            "age": ([x[1] for x in u], pa.string()),
            "occupation": ([x[2] for x in u], pa.string()),
            "zip_prefix": ([x[3] for x in u], pa.string()),
            "genres": ([x[0] for x in it], pa.string()),
            "release_year": ([x[1] for x in it], pa.string()),
            "timestamp": (ts, pa.int64()),
        }
        splits = time_ordered_splits(ts, (users, items), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp")}

    params = {
        "positive_threshold": positive_threshold,
        "train_fraction": train_fraction,
        "valid_fraction": valid_fraction,
        "zip_digits": zip_digits,
    }
    folder = ctx.prepare(params, build, ML1M_SAMPLE_SOURCES)
    cats = ["user_id", "item_id", "gender", "age", "occupation", "zip_prefix", "release_year"]
    return event_log_config("movielens_1m_sample", folder, cats, [{"name": "genres", "max_len": ML1M_GENRES_MAX}])
