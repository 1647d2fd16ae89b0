"""Shared by the entries built from timestamped event logs (ratings, behaviours): leak-free
behaviour histories, time-ordered splits that never share a timestamp, and the Parquet writer."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...config import ConfigError
from ..errors import DataError

SPLITS = ("train", "valid", "test")
PUBLISHED = "use the published file (the dataset's docstring gives its checksum)"


def read_text(path: Path, encoding: str = "ascii") -> str:
    """The whole file (plain or ``.gz``) decoded as ``encoding``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read().decode(encoding)


def check_split_params(name: str, train_fraction: float, valid_fraction: float, **positive_ints: int) -> None:
    """ConfigError unless 0 < train_fraction, valid_fraction and their sum < 1, and every named int >= 1."""
    if not (0 < train_fraction < 1 and 0 < valid_fraction < 1 and train_fraction + valid_fraction < 1):
        raise ConfigError(
            f"{name}: need 0 < train_fraction, valid_fraction and train_fraction + valid_fraction < 1, "
            f"got {train_fraction} and {valid_fraction}"
        )
    for key, value in positive_ints.items():
        if value < 1:
            raise ConfigError(f"{name}: {key} must be >= 1, got {value}")


def build_histories(
    users: np.ndarray, items: np.ndarray, ts: np.ndarray, use: np.ndarray, max_len: int
) -> list[str]:
    """For every row: the ``^``-joined ids of the same user's items with ``use`` true and a
    timestamp strictly earlier than the row's, oldest first, at most the ``max_len`` latest.

    Items of the same second as the row (or later) are never included, so no row sees its own or
    any future event. Earlier items are ordered by (timestamp, item_id).
    """
    n = len(users)
    out = [""] * n
    order = np.lexsort((items, ts, users))
    su, st, si, suse = users[order], ts[order], items[order], use[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    ends = np.r_[starts[1:], n]
    # strings of the distinct ids only (Taobao item ids go up to ~5M; a table up to max id would not)
    uniq, code = np.unique(si, return_inverse=True)
    item_str = np.array([str(i) for i in uniq], dtype=object)[code]
    for a, b in zip(starts, ends):
        u_ts, u_use = st[a:b], suse[a:b]
        h_ts, h_items = u_ts[u_use], item_str[a:b][u_use]
        k = np.searchsorted(h_ts, u_ts, side="left")  # number of used items strictly earlier
        rows = order[a:b]
        for j in range(b - a):
            kj = k[j]
            if kj:
                out[rows[j]] = "^".join(h_items[max(0, kj - max_len):kj])
    return out


def time_cuts(ts_sorted: np.ndarray, fractions: tuple[float, float]) -> tuple[int, int]:
    """Row cuts at the given cumulative fractions, moved forward past ties so that no timestamp
    is shared by two splits."""
    n = len(ts_sorted)
    cuts = []
    for frac in fractions:
        c = int(round(n * frac))
        while 0 < c < n and ts_sorted[c] == ts_sorted[c - 1]:
            c += 1
        cuts.append(c)
    return cuts[0], cuts[1]


def time_ordered_splits(
    ts: np.ndarray, tie_keys: tuple[np.ndarray, ...], train_fraction: float, valid_fraction: float
) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test: rows sorted by (ts, *tie_keys); the first ``train_fraction``
    is train, the next ``valid_fraction`` valid, the rest test, each cut moved forward past rows
    sharing its timestamp (:func:`time_cuts`), so max(train ts) < min(valid ts) <= ... < min(test ts)."""
    order = np.lexsort((*reversed(tie_keys), ts))
    c1, c2 = time_cuts(ts[order], (train_fraction, train_fraction + valid_fraction))
    return {"train": order[:c1], "valid": order[c1:c2], "test": order[c2:]}


def write_parquet_splits(
    out: Path, splits: dict[str, np.ndarray], columns: dict[str, tuple[Any, pa.DataType]], label: str, ts: str
) -> dict[str, dict[str, int]]:
    """Write ``<split>.parquet`` for each split: ``columns`` maps a name to (values for every row,
    Arrow type), taken at the split's row indices in their order. Returns per-split rows,
    positives (sum of ``label``) and the ``ts`` column's min and max, for the manifest."""
    counts = {}
    for split, idx in splits.items():
        data = {}
        for name, (values, typ) in columns.items():
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                data[name] = values.take(pa.array(idx, pa.int64()))
            elif isinstance(values, np.ndarray):
                data[name] = pa.array(values[idx], typ)
            else:
                data[name] = pa.array([values[i] for i in idx], typ)
        pq.write_table(pa.table(data), out / f"{split}.parquet")
        counts[split] = {
            "rows": int(len(idx)),
            "positives": int(np.asarray(columns[label][0])[idx].sum()),
            "timestamp_min": int(np.asarray(columns[ts][0])[idx].min()),
            "timestamp_max": int(np.asarray(columns[ts][0])[idx].max()),
        }
    return counts


def parquet_config_files(folder: Path) -> dict[str, str]:
    return {s: str(folder / f"{s}.parquet") for s in SPLITS}


def history_feature(max_len: int) -> dict[str, Any]:
    """The ``history`` sequence feature that :func:`build_histories` writes (earlier items, ``^``-joined),
    sharing ``item_id``'s vocabulary."""
    return {"name": "history", "kind": "sequence", "splitter": "^", "max_len": max_len, "share_vocab_with": "item_id"}


def event_log_config(name: str, folder: Path, categorical: list[str], sequences: list[dict[str, Any]] = (),
                     extra: list[dict[str, Any]] = ()):
    """The config of a prepared event-log dataset (the parquet splits of :func:`write_parquet_splits`):
    ``categorical`` columns (``min_count`` 1), then ``sequences`` (``^``-separated unless given),
    then the ``extra`` feature specs as given; label ``label``, gAUC groups by ``user_id``."""
    from .registry import make_config

    feats = [{"name": c, "kind": "categorical", "min_count": 1} for c in categorical]
    feats += [{"kind": "sequence", "splitter": "^", **s} for s in sequences]
    feats += [dict(f) for f in extra]
    return make_config(name=name, format="parquet", files=parquet_config_files(folder), root=str(folder),
                       labels=["label"], features=feats, group_field="user_id")


def split_fields(path: Path, lines: list[str], sep: str, names: list[str], first_line: int = 1) -> list[list[str]]:
    """Each line split on ``sep``; a DataError names the first line whose field count is not ``len(names)``."""
    rows = [ln.split(sep) for ln in lines]
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise DataError(
                f"expected {len(names)} fields ({', '.join(names)}) separated by {sep!r}, "
                f"found {len(row)}: {lines[i]!r}",
                path, line=i + first_line, fix=PUBLISHED,
            )
    return rows


def int_column(path: Path, rows: list[list[str]], index: int, name: str, first_line: int = 1) -> np.ndarray:
    """Field ``index`` of every row as int64; a DataError names the first line that is not an integer."""
    return _number_column(path, rows, index, name, first_line, np.int64)


def float_column(path: Path, rows: list[list[str]], index: int, name: str, first_line: int = 1) -> np.ndarray:
    """Field ``index`` of every row as float64; a DataError names the first line that is not a number."""
    return _number_column(path, rows, index, name, first_line, np.float64)


def _number_column(path, rows, index, name, first_line, dtype) -> np.ndarray:
    values = [r[index] for r in rows]
    try:
        return np.array(values, dtype=dtype)
    except ValueError:
        for i, v in enumerate(values):
            try:
                dtype(v)
            except ValueError:
                raise DataError(f"{v!r} is not a {'number' if dtype is np.float64 else 'whole number'}", path,
                                line=i + first_line, column=name, fix=PUBLISHED) from None
        raise


def per_user_time_splits(
    users: np.ndarray, ts: np.ndarray, tie_keys: tuple[np.ndarray, ...], train_fraction: float, valid_fraction: float
) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test, cut **per user**: each user's rows sorted by (ts, *tie_keys);
    their first ``train_fraction`` is train, the next ``valid_fraction`` valid, the rest test, each
    cut moved forward past the user's rows sharing its timestamp (:func:`time_cuts`), so for every
    user max(train ts) < min(valid ts) and max(valid ts) < min(test ts). Each split is returned in
    global (ts, user, *tie_keys) order."""
    order = np.lexsort((*reversed(tie_keys), ts, users))
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    ends = np.r_[starts[1:], len(order)]
    which = np.empty(len(order), dtype=np.int8)
    for a, b in zip(starts, ends):
        c1, c2 = time_cuts(ts[order[a:b]], (train_fraction, train_fraction + valid_fraction))
        which[a:a + c1], which[a + c1:a + c2], which[a + c2:b] = 0, 1, 2
    out = {}
    for k, split in enumerate(SPLITS):
        idx = order[which == k]
        sub = np.lexsort((*(key[idx] for key in reversed(tie_keys)), users[idx], ts[idx]))
        out[split] = idx[sub]
    return out


# ---- long histories with per-event side information -------------------------------------------


def select_rows(users: np.ndarray, ts: np.ndarray, tie: np.ndarray, earlier: np.ndarray,
                rows_per_user: int, min_history_len: int) -> np.ndarray:
    """Indices of the events that become rows, in (user, ts, tie) order: an event whose user has at
    least ``min_history_len`` events (of those :func:`history_events` may use) strictly earlier
    (``earlier``: that count per event), and among those the user's last ``rows_per_user`` (0 = all)."""
    order = np.lexsort((tie, ts, users))
    keep = order[earlier[order] >= min_history_len]
    if rows_per_user:
        su = users[keep]
        # rank from the end within each user's kept events
        ends = np.r_[np.flatnonzero(su[1:] != su[:-1]), len(su) - 1] if len(su) else np.array([], dtype=np.int64)
        end_of = np.repeat(ends, np.diff(np.r_[-1, ends]))
        keep = keep[end_of - np.arange(len(su)) < rows_per_user]
    return keep


def history_events(users: np.ndarray, ts: np.ndarray, tie: np.ndarray, use: np.ndarray, max_len: int,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events of every row's history, as ragged index lists (vectorised :func:`build_histories`).

    For row ``r`` (an event index; ``rows`` default every event): the same user's events with ``use``
    true and a timestamp **strictly earlier** than ``ts[r]``, ordered by (ts, tie), the latest
    ``max_len`` of them. Returns ``offsets`` (len(rows) + 1, int64), ``flat`` (event indices, row
    ``i``'s history is ``flat[offsets[i]:offsets[i + 1]]``, oldest first) and ``earlier`` (for every
    event, the number of used events of its user strictly earlier, before the ``max_len`` cut)."""
    n = len(users)
    users = np.asarray(users)
    ts = np.asarray(ts, dtype=np.int64)
    order = np.lexsort((tie, ts, users))
    ucode = np.empty(n, dtype=np.int64)
    ucode[order] = np.cumsum(np.r_[0, users[order][1:] != users[order][:-1]])
    span = int(ts.max() - ts.min()) + 1 if n else 1
    key = ucode * span + (ts - (ts.min() if n else 0))  # (user, ts) as one sortable int
    used = order[use[order]]  # used events in (user, ts, tie) order
    key_used = key[used]
    upto = np.searchsorted(key_used, key, side="left")  # used events before (user, ts): strictly earlier
    first = np.searchsorted(key_used, ucode * span, side="left")  # the user's first used event
    earlier = upto - first
    rows = np.arange(n) if rows is None else np.asarray(rows)
    hi = upto[rows]
    lo = np.maximum(first[rows], hi - max_len)
    lens = hi - lo
    offsets = np.r_[0, np.cumsum(lens)].astype(np.int64)
    flat_pos = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - lo, lens)
    return offsets, used[flat_pos], earlier


def list_array(offsets: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A Parquet/Arrow list column from ragged ``offsets`` and flat ``values`` (large lists past 2^31 values)."""
    if offsets[-1] < 2**31 - 1:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, typ))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, typ))


def sequence_feature(name: str, max_len: int, **extra: Any) -> dict[str, Any]:
    """A sequence feature of a long-history entry (a Parquet list column; ``extra`` e.g.
    ``share_vocab_with`` or ``values: numbers``)."""
    return {"name": name, "max_len": max_len, **extra}
