"""Shared test fixtures: an isolated cache and the location of the real read-only datasets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's cache: CTRLAB_CACHE_DIR points at a session temp dir
    (inherited by subprocesses started from tests)."""
    old = os.environ.get("CTRLAB_CACHE_DIR")
    os.environ["CTRLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("ctrlab-cache"))
    yield
    if old is None:
        os.environ.pop("CTRLAB_CACHE_DIR", None)
    else:
        os.environ["CTRLAB_CACHE_DIR"] = old


def data_root() -> Path:
    """``CTRLAB_DATA_DIR`` if set, else ``<repo>/../shared/datasets``."""
    return Path(os.environ.get("CTRLAB_DATA_DIR") or REPO.parent / "shared" / "datasets").expanduser()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real read-only datasets; also exported as ``CTRLAB_DATA_DIR`` for code (and
    subprocesses) that look the data up by name. Skips the test where the data is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set CTRLAB_DATA_DIR)")
    os.environ.setdefault("CTRLAB_DATA_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def ml100k_rating_splits(data_dir):
    """``write_splits(folder)``: the first 4,000 MovieLens 100K ratings as CSV columns user, item,
    label (rating >= 4), timestamp, in file order, written as train.csv (3,000 rows), valid.csv and
    test.csv (500 each) into ``folder`` (created), which is returned: real rows with a timestamp for
    tests of derived and crossed features."""
    import gzip

    import polars as pl

    with gzip.open(data_dir / "movielens_100k" / "u.data.gz", "rt") as fh:
        lines = [fh.readline().split("\t") for _ in range(4000)]
    raw = pl.DataFrame({"user": [r[0] for r in lines], "item": [r[1] for r in lines],
                        "label": [int(int(r[2]) >= 4) for r in lines], "timestamp": [int(r[3]) for r in lines]})

    def write_splits(folder: Path) -> Path:
        folder.mkdir(parents=True)
        raw.head(3000).write_csv(folder / "train.csv")
        raw.slice(3000, 500).write_csv(folder / "valid.csv")
        raw.slice(3500, 500).write_csv(folder / "test.csv")
        return folder

    return write_splits


ML100K_GROUPED = """
name: ml100k_grouped
format: csv
files: {train: train.csv, valid: valid.csv, test: test.csv}
labels: [label]
group_field: user
features:
  - {name: user, kind: categorical}
  - {name: item, kind: categorical}
"""


@pytest.fixture(scope="session")
def ml100k_grouped_dataset(ml100k_rating_splits):
    """``write_dataset(folder)``: :func:`ml100k_rating_splits`' files plus ``ml100k_grouped.yaml`` (user and
    item ids, ``group_field: user``) in ``folder``; returns the YAML's path."""
    def write_dataset(folder: Path) -> Path:
        path = ml100k_rating_splits(folder) / "ml100k_grouped.yaml"
        path.write_text(ML100K_GROUPED)
        return path

    return write_dataset


@pytest.fixture
def write(tmp_path):
    """``write(name, text)`` -> path of a small hand-written fixture file in tmp_path."""

    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def check_error():
    """``check_error(exc, path, line, column, fix)``: a DataError names file, line, column and a fix."""

    def _check(exc, path: Path, line: int | None, column: str | None, fix: str):
        msg = str(exc)
        assert exc.file == str(path) and str(path) in msg, msg
        assert exc.line == line, msg
        if line is not None:
            assert f"line {line}" in msg, msg
        assert exc.column == column, msg
        if column is not None:
            assert f"column {column!r}" in msg, msg
        assert "Fix: " in msg and fix in msg.split("Fix: ", 1)[1], msg
        return msg

    return _check


@pytest.fixture
def dead_owner() -> dict:
    """The build-owner identity (:func:`ctrlab.data.cache.owner_identity`) of a process of this host
    that has exited: what a build folder left by a killed build carries."""
    from ctrlab.data.cache import owner_identity

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = owner_identity(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert owner["start_ticks"] is not None
    return owner


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test, restored afterwards: the training tests run small
    batches, where a second thread costs more than it gives (5-10x slower on a busy 2-core machine)."""
    from models.synthetic import single_thread  # tests/models/synthetic.py (tests/ is on sys.path)

    with single_thread():
        yield
