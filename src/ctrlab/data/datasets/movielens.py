"""``movielens_100k``: MovieLens 100K as a time-ordered CTR task with a leak-free behaviour history."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..schema import DatasetConfig
from .events import build_histories, check_split_params, event_log_config, history_feature, time_ordered_splits
from .events import read_text as _read
from .events import time_cuts, write_parquet_splits  # noqa: F401  re-exported: used to live here
from .fetch import download, extract
from .registry import DatasetContext, SourceFile, register_dataset

ML100K_ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"  # GroupLens sidecar ml-100k.zip.md5

ML100K_SOURCES = [
    SourceFile(
        "movielens_100k/u.data",
        sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        gz_sha256="c3fe59d9f784f19e1715f710845ac12970203e783301a9404cd615780b838694",
    ),
    SourceFile(
        "movielens_100k/u.user",
        sha256="f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        gz_sha256="4e84ab98faee1c3c057a0861a855acc1ef682a62ad1f6026add1e26c2e6ee436",
    ),
    SourceFile(
        "movielens_100k/u.item",
        sha256="553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        gz_sha256="fddc64e52bb5d3b3bcb81b69c5d76b2688dbab87f6c564ba448a00b1f45d7e64",
    ),
]
# u.genre, in flag order
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
AGE_EDGES = [18, 25, 35, 45, 50, 56]
AGE_LABELS = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
COLUMNS = [
    "label", "user_id", "item_id", "age", "gender", "occupation", "zip_prefix", "genres", "release_year",
    "history", "timestamp",
]


def _download_ml100k(ctx: DatasetContext, missing: list[SourceFile]) -> None:
    folder = ctx.data_dir / "movielens_100k"
    folder.mkdir(parents=True, exist_ok=True)
    archive = download(ML100K_ZIP_URL, folder / "ml-100k.zip", md5=ML100K_ZIP_MD5)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
    try:
        for f in extract(archive, tmp):
            if f.name in {"u.data", "u.user", "u.item", "u.genre", "u.occupation", "u.info", "README"} and not (
                folder / f.name
            ).exists():
                shutil.move(str(f), folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink(missing_ok=True)


def load_ratings(path: Path) -> np.ndarray:
    """u.data -> int64 array (n, 4): user_id, item_id, rating, timestamp."""
    return np.array(_read(path).split(), dtype=np.int64).reshape(-1, 4)


@register_dataset("movielens_100k")
def movielens_100k(
    ctx: DatasetContext,
    positive_threshold: int = 4,
    history: str = "positive",
    history_max_len: int = 20,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
    zip_digits: int = 1,
) -> DatasetConfig:
    """MovieLens 100K (GroupLens ml-100k) as CTR: label = rating >= 4, with user/item side features,
    a multi-valued genre field and a leak-free history of earlier liked items.

    Source: ``<data_dir>/movielens_100k/{u.data,u.user,u.item}[.gz]`` (shared folder
    ``movielens_100k``; the official release, byte for byte). ``download=True`` fetches
    https://files.grouplens.org/datasets/movielens/ml-100k.zip (md5 0e33842e24a9c977be4e0107933c0723,
    GroupLens' ``ml-100k.zip.md5``) and extracts the files there.
    Checksums (sha256 of the uncompressed files, dataset card): u.data
    06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490, u.user
    f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c, u.item
    553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701 (.gz copies: c3fe59d9...,
    4e84ab98..., fddc64e5...).

    Rows: one per rating, 100,000 (943 users, 1,682 items); label = ``rating >= positive_threshold``
    (default 4: 55,375 positives, 0.554). Columns (all text except label/timestamp):
    ``user_id``, ``item_id``; ``age`` bucketed ``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``;
    ``gender``; ``occupation``; ``zip_prefix`` (first ``zip_digits`` characters of the zip code,
    default 1 = US region); ``genres``: the item's genre names joined by ``^`` (1-6 per item, own
    vocabulary); ``release_year`` (``unknown`` for the one item without a date); ``history``;
    ``timestamp`` (kept for checks and analysis, not a feature). The rating itself is not written.
    History: the same user's items rated **>= positive_threshold** (``history="positive"``, the
    default, a "liked items" sequence as in DIN) or every rated item (``history="all"``) with a
    timestamp **strictly before** the row's; items rated in the same second as the row are
    excluded, so the current and any later item never appear; ordered by (timestamp, item_id),
    oldest first, keeping the latest ``history_max_len`` (20). Built from all of u.data, so a test
    row's history may include items from the train window (all strictly earlier in time).
    Split: global time order. Rows sorted by (timestamp, user_id, item_id); the first
    ``train_fraction`` (0.8) of rows is train, the next ``valid_fraction`` (0.1) valid, the rest
    test; each cut moves forward past rows sharing its timestamp, so max(train ts) < min(valid ts)
    < ... Rows (defaults): **train 80,003 / valid 9,997 / test 10,000** (the 80% cut moves 3 rows
    forward past a shared timestamp, the 90% cut none; train ts <= 889237269 < valid ts <=
    891382267 < test ts). Positives 44,072 / 5,674 / 5,629. Files: Parquet.
    Features: user_id, item_id, age, gender, occupation, zip_prefix, release_year categorical
    (min_count 1); genres sequence (splitter ``^``, max_len 6, own vocabulary); history sequence
    (splitter ``^``, max_len ``history_max_len``, ``share_vocab_with: item_id``). ``group_field:
    user_id`` for gAUC. Not a BARS dataset; no leaderboard number to compare with.
    Terms (GroupLens README): research use only; cite Harper & Konstan, ACM TiiS 5(4):19 (2015); no
    endorsement claims; **may not be redistributed without separate permission**; no commercial use.
    """
    if history not in ("positive", "all"):
        raise ValueError(f"movielens_100k: history must be 'positive' or 'all', got {history!r}")
    check_split_params("movielens_100k", train_fraction, valid_fraction,
                       history_max_len=history_max_len, zip_digits=zip_digits)
    data_src, user_src, item_src = ctx.find_sources(ML100K_SOURCES, downloader=_download_ml100k)

    def build(out: Path) -> dict:
        r = load_ratings(data_src)
        users, items, ratings, ts = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
        label = (ratings >= positive_threshold).astype(np.int8)
        use = label.astype(bool) if history == "positive" else np.ones(len(r), dtype=bool)
        hist = build_histories(users, items, ts, use, history_max_len)

        user_info = {}
        for line in _read(user_src).splitlines():
            uid, age, gender, occ, zipc = line.split("|")
            bucket = AGE_LABELS[int(np.searchsorted(AGE_EDGES, int(age), side="right"))]
            user_info[int(uid)] = (bucket, gender, occ, zipc[:zip_digits].upper())
        item_info = {}
        for line in _read(item_src, "latin-1").splitlines():
            f = line.split("|")
            flags = f[5:24]
            genres = "^".join(g for g, flag in zip(GENRES, flags) if flag == "1")
            year = f[2][-4:] if len(f[2]) >= 4 and f[2][-4:].isdigit() else "unknown"
            item_info[int(f[0])] = (genres, year)

        u = [user_info[int(x)] for x in users]
        it = [item_info[int(x)] for x in items]
        columns = {
            "label": (label, pa.int8()),
            "user_id": ([str(x) for x in users], pa.string()),
            "item_id": ([str(x) for x in items], pa.string()),
            "age": ([x[0] for x in u], pa.string()),
            "gender": ([x[1] for x in u], pa.string()),
            "occupation": ([x[2] for x in u], pa.string()),
            "zip_prefix": ([x[3] for x in u], pa.string()),
            "genres": ([x[0] for x in it], pa.string()),
            "release_year": ([x[1] for x in it], pa.string()),
            "history": (hist, pa.string()),
            "timestamp": (ts, pa.int64()),
        }
        splits = time_ordered_splits(ts, (users, items), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp")}

    params = {
        "positive_threshold": positive_threshold,
        "history": history,
        "history_max_len": history_max_len,
        "train_fraction": train_fraction,
        "valid_fraction": valid_fraction,
        "zip_digits": zip_digits,
    }
    folder = ctx.prepare(params, build, ML100K_SOURCES)
    cats = ["user_id", "item_id", "age", "gender", "occupation", "zip_prefix", "release_year"]
    return event_log_config("movielens_100k", folder, cats,
                            [{"name": "genres", "max_len": 6}, history_feature(history_max_len)])
