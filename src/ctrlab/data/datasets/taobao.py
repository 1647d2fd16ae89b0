"""``taobao_head``: the head of Taobao UserBehavior as a time-ordered "engagement beyond a page view" CTR task."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import DataError
from ..schema import DatasetConfig
from .events import (
    build_histories,
    check_split_params,
    event_log_config,
    history_feature,
    int_column,
    read_text,
    split_fields,
    time_ordered_splits,
    write_parquet_splits,
)
from .registry import DatasetContext, SourceFile, register_dataset

TAOBAO_SOURCES = [
    SourceFile(
        "taobao_userbehavior_head/UserBehavior_head.csv",
        sha256="9cbce278d485d50954029082dd1b22f0dc78dc38776f58d953f0cbe18d6608b4",
        gz_sha256="907e36da832b603c7b25fd546a19cf10130d8a55a13efecb4ba84ef2a9cef801",
    ),
]
FIELDS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIORS = ("pv", "cart", "fav", "buy")
UTC_OFFSET_S = 8 * 3600
"""Taobao's clock is China Standard Time (UTC+8): hour of day and weekday are local."""


def read_behaviors(path: Path, log=lambda msg: print(msg, file=sys.stderr)) -> tuple[list[list[str]], list[dict]]:
    """The rows of a UserBehavior csv (``user,item,category,behavior,timestamp``, no header) and the
    lines dropped. Only a truncated **last** line is dropped, one that has fewer than 5 fields and no
    newline (the shared file is a byte prefix of UserBehavior.csv); it is said through ``log``.
    Any other malformed line is a DataError naming it."""
    text = read_text(path)
    lines = text.split("\n")
    dropped = []
    if lines[-1] == "":
        lines.pop()
    elif lines[-1].count(",") < len(FIELDS) - 1:
        cut = lines.pop()
        dropped.append({"line": len(lines) + 1, "text": cut, "reason": "truncated last line (no newline, "
                        f"{cut.count(',') + 1} of {len(FIELDS)} fields)"})
        log(f"taobao_head: {path}: dropped line {len(lines) + 1:,} {cut!r}: truncated last line "
            f"({cut.count(',') + 1} of {len(FIELDS)} fields, no newline at end of file; the file is a byte prefix "
            "of UserBehavior.csv)")
    return split_fields(path, lines, ",", FIELDS), dropped


def behavior_columns(path: Path, log=lambda msg: print(msg, file=sys.stderr)
                     ) -> tuple[list[list[str]], dict[str, np.ndarray], list[dict]]:
    """:func:`read_behaviors` (its rows of text and the lines dropped) with the columns parsed:
    ``user_id``, ``item_id``, ``category_id``, ``timestamp`` (int64) and ``behavior_type`` (object; a
    value outside :data:`BEHAVIORS` is a DataError naming its line)."""
    rows, dropped = read_behaviors(path, log)
    cols = {name: int_column(path, rows, i, name) for i, name in ((0, "user_id"), (1, "item_id"),
                                                                  (2, "category_id"), (4, "timestamp"))}
    behavior = np.array([r[3] for r in rows], dtype=object)
    bad = np.flatnonzero(~np.isin(behavior, BEHAVIORS))
    if len(bad):
        raise DataError(f"behaviour {behavior[bad[0]]!r} is not one of {list(BEHAVIORS)}", path,
                        line=int(bad[0]) + 1, column="behavior_type", fix="use the published UserBehavior.csv")
    cols["behavior_type"] = behavior
    return rows, cols, dropped


@register_dataset("taobao_head")
def taobao_head(
    ctx: DatasetContext,
    history_max_len: int = 20,
    train_fraction: float = 0.8,
    valid_fraction: float = 0.1,
) -> DatasetConfig:
    """Taobao UserBehavior (Tianchi 649), its first 84,475 rows (815 users), as CTR: label = the user
    engaged beyond a page view (cart, fav or buy) vs a page view (pv).

    Source: ``<data_dir>/taobao_userbehavior_head/UserBehavior_head.csv[.gz]`` (shared folder
    ``taobao_userbehavior_head``): the first 3,178,496 bytes of Alibaba's UserBehavior.csv, from
    ``Haohanblue/mydeep`` @ ``ef812add``. No download. Checksums (dataset card): sha256
    9cbce278d485d50954029082dd1b22f0dc78dc38776f58d953f0cbe18d6608b4 (uncompressed), .gz
    907e36da832b603c7b25fd546a19cf10130d8a55a13efecb4ba84ef2a9cef801.
    **Truncated last line:** the file ends in ``100370,1968385,1875258,pv`` (4 fields, no newline);
    that line is dropped and the drop is said on stderr and recorded in the manifest
    (``dropped_lines``). Any other malformed line is an error.

    Rows: 84,475, one per behaviour; label = 1 for ``cart`` (4,497), ``fav`` (2,356) or ``buy``
    (1,750), 0 for ``pv`` (75,872): 8,603 positives, 0.102. Columns: ``label``, ``user_id``,
    ``item_id``, ``category_id``, ``hour`` (hour of day 0-23) and ``weekday`` (0 = Monday), both
    computed from the timestamp in China Standard Time (UTC+8, Taobao's clock); ``history``;
    ``timestamp`` (not a feature). The behaviour type itself is not written.
    History: the same user's items (any behaviour) with a timestamp strictly before the row's
    (:func:`.events.build_histories`), oldest first, the latest ``history_max_len`` (20); an item the
    user viewed before carting it is in the cart row's history (the past, not a leak).
    Split: global time order, rows sorted by (timestamp, user_id, item_id); first
    ``train_fraction`` (0.8) train, next ``valid_fraction`` (0.1) valid, rest test, each cut moved
    forward past a shared timestamp. Rows (defaults): **train 67,580 / valid 8,448 / test 8,447**;
    positives 6,864 / 845 / 894 (train ts <= 1512205516 < valid ts <= 1512273069 < test ts). The 35
    rows before the official window (from 2017-09-11) fall in train; test is 2017-12-03 11:51 to
    23:59 (UTC+8).
    Features: user_id, item_id, category_id, hour, weekday categorical (min_count 1); history
    sequence (splitter ``^``, ``share_vocab_with: item_id``). ``group_field: user_id``.
    Terms: Alibaba Tianchi dataset 649: non-commercial research use; cite Zhu et al., KDD 2018.
    **Keep internal; do not redistribute.**
    """
    check_split_params("taobao_head", train_fraction, valid_fraction, history_max_len=history_max_len)
    (src,) = ctx.find_sources(TAOBAO_SOURCES)

    def build(out: Path) -> dict:
        rows, cols, dropped = behavior_columns(src)
        users, items, cats, ts = (cols[c] for c in ("user_id", "item_id", "category_id", "timestamp"))
        behavior = cols["behavior_type"]
        label = (behavior != "pv").astype(np.int8)
        local = ts + UTC_OFFSET_S
        hour = (local // 3600) % 24
        weekday = (local // 86400 + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
        hist = build_histories(users, items, ts, np.ones(len(rows), dtype=bool), history_max_len)
        columns = {
            "label": (label, pa.int8()),
            "user_id": ([r[0] for r in rows], pa.string()),
            "item_id": ([r[1] for r in rows], pa.string()),
            "category_id": ([r[2] for r in rows], pa.string()),
            "hour": ([str(x) for x in hour], pa.string()),
            "weekday": ([str(x) for x in weekday], pa.string()),
            "history": (hist, pa.string()),
            "timestamp": (ts, pa.int64()),
        }
        counts = {b: int((behavior == b).sum()) for b in BEHAVIORS}
        splits = time_ordered_splits(ts, (users, items, cats), train_fraction, valid_fraction)
        return {"splits": write_parquet_splits(out, splits, columns, "label", "timestamp"),
                "behaviors": counts, "dropped_lines": dropped}

    params = {"history_max_len": history_max_len, "train_fraction": train_fraction, "valid_fraction": valid_fraction}
    folder = ctx.prepare(params, build, TAOBAO_SOURCES)
    return event_log_config("taobao_head", folder, ["user_id", "item_id", "category_id", "hour", "weekday"],
                            [history_feature(history_max_len)])
