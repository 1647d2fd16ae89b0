"""Small real samples of the raw Kaggle Criteo and Avazu files: ``criteo_head10k``, ``avazu_head10k``."""
from __future__ import annotations

import datetime as _dt
import gzip
from pathlib import Path

from ..schema import DatasetConfig
from .frappe import split_indices
from .registry import DatasetContext, SourceFile, make_config, register_dataset

CRITEO_RAW = "https://raw.githubusercontent.com/Lapis-Hong/Wide-ResDNN/4133ba4f17806b45dd94cb5fa4d16ad9b7a0c01c/data/criteo/"
AVAZU_RAW = "https://raw.githubusercontent.com/Lapis-Hong/Wide-ResDNN/bd35aa733b683b8842daae297d1073e5d46f0eb3/data/avazu/"

CRITEO_SOURCES = [
    SourceFile(
        "criteo_kaggle_head10k/train.txt",
        sha256="26d49047cbe0ad6ce54197918d71a2dc6688b72b29de7235c9321301116fff6c",
        gz_sha256="a67afbd7a6b1e61ac78b82eeaef4dfece7463b9de5e0e915261ec334fe1168a3",
        url=CRITEO_RAW + "train.txt",
    ),
    SourceFile(
        "criteo_kaggle_head10k/test.txt",
        sha256="75d8552c435e3225f659d4b726ac084539bfd2a44842d0c251913e496cbedbdd",
        gz_sha256="88e4ff119dad9ecfd4a8a1e1d405c653e3e13ecd7973c4f9b7284e2539dc1482",
        url=CRITEO_RAW + "test.txt",
    ),
]
AVAZU_SOURCES = [
    SourceFile(
        "avazu_head10k/train.csv",
        sha256="0ad2f8bc25d000a4e5120413ccb1a1b329387091ba0ceb5a342ea0ffe236dad4",
        gz_sha256="8fb47214f4561ca83a9bf6ff5de91704cc526e2a0b5187172fa2011454d0261c",
        url=AVAZU_RAW + "train",
    ),
    SourceFile(
        "avazu_head10k/test.csv",
        sha256="4a2c862e8bd35ba509d70321d9ebf5abf6cccf4103174474f3cd872fff268e2b",
        gz_sha256="0ab48dec4b8ce8a84da6398b4fe77bce925c2a0499a8575b067fee9e9f0b88af",
        url=AVAZU_RAW + "test",
    ),
]

CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
AVAZU_RAW_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
    "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
AVAZU_COLUMNS = ["click", "hour", "hour_of_day", "weekday"] + AVAZU_RAW_COLUMNS[3:]
AVAZU_FEATURES = ["hour_of_day", "weekday"] + AVAZU_RAW_COLUMNS[3:]


def _read_lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _check_fields(path: Path, lines: list[bytes], sep: bytes, n: int, first_line: int = 1) -> None:
    for i, ln in enumerate(lines):
        k = ln.count(sep) + 1
        if k != n:
            raise ValueError(f"{path}, line {i + first_line}: expected {n} fields, found {k}")


@register_dataset("criteo_head10k")
def criteo_head10k(
    ctx: DatasetContext, seed: int = 2023, valid_fraction: float = 0.1, min_count: int = 2
) -> DatasetConfig:
    """Criteo DAC (Kaggle 2014), lines 1-10,000 of the raw ``train.txt``: a real, tiny smoke-test set.

    Source: ``<data_dir>/criteo_kaggle_head10k/{train,test}.txt[.gz]`` (shared folder
    ``criteo_kaggle_head10k``), from ``Lapis-Hong/Wide-ResDNN`` @ ``4133ba4f`` ``data/criteo/``;
    train = lines 1-8,000, test = lines 8,001-10,000 of DAC ``train.txt`` (verified against AutoInt's
    copy). Tab-separated, no header: ``label, I1..I13, C1..C26``; empty cells are missing.
    ``download=True`` fetches the plain files from raw.githubusercontent.com at that commit (an
    unofficial copy; the checksums below make it safe).
    Checksums (dataset card): train.txt sha256 26d49047cbe0ad6ce54197918d71a2dc6688b72b29de7235c9321301116fff6c
    (.gz a67afbd7a6b1e61ac78b82eeaef4dfece7463b9de5e0e915261ec334fe1168a3); test.txt sha256
    75d8552c435e3225f659d4b726ac084539bfd2a44842d0c251913e496cbedbdd (.gz
    88e4ff119dad9ecfd4a8a1e1d405c653e3e13ecd7973c4f9b7284e2539dc1482).
    Split rule: the 8,000 train lines are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(8,000 * valid_fraction)`` indices form *valid*, the rest *train* (original order kept);
    lines are copied byte for byte. Test = the 2,000 test lines. Rows (defaults): **train 7,200 /
    valid 800 / test 2,000**. Written as headerless tsv into the prepared folder.
    Features: I1..I13 numeric, ``normalizer: log`` (sign(x)*log1p(|x|); I2 can be negative), missing
    -> 0; C1..C26 categorical with ``min_count`` (default **2**: on 7,200 rows most hashed values
    occur once, and min_count 2 maps those singletons to the shared OOV id, which the model then
    meets at test time too). Label ``label``; positive rate 0.216 (train file) / 0.227 (test).
    Not a BARS split: metrics are not comparable with any leaderboard.
    Terms: Kaggle DAC data, no licence text found; Criteo's related 1TB Click Logs are CC BY-NC-SA
    4.0: non-commercial research only, **do not redistribute**.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"criteo_head10k: valid_fraction must be in (0, 1), got {valid_fraction}")
    train_src, test_src = ctx.find_sources(CRITEO_SOURCES)

    def build(out: Path) -> dict:
        train = _read_lines(train_src)
        test = _read_lines(test_src)
        _check_fields(train_src, train, b"\t", len(CRITEO_COLUMNS))
        _check_fields(test_src, test, b"\t", len(CRITEO_COLUMNS))
        keep, hold = split_indices(len(train), valid_fraction, seed)
        parts = {"train": [train[i] for i in keep], "valid": [train[i] for i in hold], "test": test}
        counts = {}
        for split, lines in parts.items():
            (out / f"{split}.tsv").write_bytes(b"".join(ln + b"\n" for ln in lines))
            counts[split] = {"rows": len(lines), "positives": sum(ln[:1] == b"1" for ln in lines)}
        return {"splits": counts}

    folder = ctx.prepare({"seed": seed, "valid_fraction": valid_fraction}, build, CRITEO_SOURCES)
    feats = [{"name": f"I{i}", "kind": "numeric", "normalizer": "log", "fill_value": 0.0} for i in range(1, 14)]
    feats += [{"name": f"C{i}", "kind": "categorical", "min_count": min_count} for i in range(1, 27)]
    return make_config(
        name="criteo_head10k",
        format="tsv",
        files={s: str(folder / f"{s}.tsv") for s in ("train", "valid", "test")},
        root=str(folder),
        header=False,
        column_names=CRITEO_COLUMNS,
        separator="\t",
        labels=["label"],
        features=feats,
    )


def _hour_parts(hour: bytes) -> tuple[bytes, bytes]:
    """Avazu ``hour`` YYMMDDHH -> (hour of day ``HH``, weekday ``0``=Mon..``6``)."""
    s = hour.decode("ascii")
    if len(s) != 8 or not s.isdigit():
        return b"", b""
    day = _dt.date(2000 + int(s[:2]), int(s[2:4]), int(s[4:6]))
    return s[6:].encode(), str(day.weekday()).encode()


@register_dataset("avazu_head10k")
def avazu_head10k(
    ctx: DatasetContext, seed: int = 2023, valid_fraction: float = 0.1, min_count: int = 2
) -> DatasetConfig:
    """Avazu CTR (Kaggle 2014), the first 9,999 rows of the raw ``train.csv``: a real, tiny smoke-test set.

    Source: ``<data_dir>/avazu_head10k/train.csv[.gz]`` (header + 8,999 rows) and ``test.csv[.gz]``
    (1,000 rows, **no header**), from ``Lapis-Hong/Wide-ResDNN`` @ ``bd35aa73`` ``data/avazu/{train,test}``.
    All rows are from hour 14102100 (2014-10-21 00:00). ``download=True`` fetches the plain files
    from raw.githubusercontent.com at that commit (unofficial copy; verified by the checksums below).
    Checksums (dataset card): train.csv sha256 0ad2f8bc25d000a4e5120413ccb1a1b329387091ba0ceb5a342ea0ffe236dad4
    (.gz 8fb47214f4561ca83a9bf6ff5de91704cc526e2a0b5187172fa2011454d0261c); test.csv sha256
    4a2c862e8bd35ba509d70321d9ebf5abf6cccf4103174474f3cd872fff268e2b (.gz
    0ab48dec4b8ce8a84da6398b4fe77bce925c2a0499a8575b067fee9e9f0b88af).
    Preparation: ``id`` dropped (a unique row id); ``hour`` (YYMMDDHH) kept as a raw column and split
    into ``hour_of_day`` (``00``-``23``) and ``weekday`` (0 = Monday); every split written as csv
    with the header ``click,hour,hour_of_day,weekday,C1,banner_pos,...,C21``.
    Split rule: the 8,999 train rows are permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(8,999 * valid_fraction)`` indices form *valid*, the rest *train* (original order kept).
    Rows (defaults): **train 8,099 / valid 900 / test 1,000**.
    Features: all columns except ``click`` and ``hour`` categorical, ``min_count`` default **2**
    (device_ip/device_id are nearly unique on 8k rows; singletons share the OOV id). On this
    one-hour sample ``hour_of_day`` and ``weekday`` are constant. Label ``click``; positive rate
    0.174 (train file) / 0.143 (test). Not a BARS split.
    Terms: Kaggle competition data rules (non-commercial research/education); **do not redistribute**.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"avazu_head10k: valid_fraction must be in (0, 1), got {valid_fraction}")
    train_src, test_src = ctx.find_sources(AVAZU_SOURCES)

    def build(out: Path) -> dict:
        train = _read_lines(train_src)
        header = train.pop(0).decode("ascii").split(",")
        if header != AVAZU_RAW_COLUMNS:
            raise ValueError(f"{train_src}: unexpected header {header}; expected {AVAZU_RAW_COLUMNS}")
        test = _read_lines(test_src)
        if test and test[0].startswith(b"id,"):
            test.pop(0)
        _check_fields(train_src, train, b",", len(AVAZU_RAW_COLUMNS), first_line=2)
        _check_fields(test_src, test, b",", len(AVAZU_RAW_COLUMNS))

        def convert(line: bytes) -> bytes:
            cells = line.split(b",")
            hod, wd = _hour_parts(cells[2])
            return b",".join([cells[1], cells[2], hod, wd] + cells[3:])

        keep, hold = split_indices(len(train), valid_fraction, seed)
        parts = {"train": [train[i] for i in keep], "valid": [train[i] for i in hold], "test": test}
        head = ",".join(AVAZU_COLUMNS).encode() + b"\n"
        counts = {}
        for split, lines in parts.items():
            (out / f"{split}.csv").write_bytes(head + b"".join(convert(ln) + b"\n" for ln in lines))
            counts[split] = {"rows": len(lines), "positives": sum(ln.split(b",", 2)[1] == b"1" for ln in lines)}
        return {"splits": counts}

    folder = ctx.prepare({"seed": seed, "valid_fraction": valid_fraction}, build, AVAZU_SOURCES)
    return make_config(
        name="avazu_head10k",
        format="csv",
        files={s: str(folder / f"{s}.csv") for s in ("train", "valid", "test")},
        root=str(folder),
        header=True,
        labels=["click"],
        features=[{"name": f, "kind": "categorical", "min_count": min_count} for f in AVAZU_FEATURES],
    )
