"""Cache bookkeeping: content hashes remembered per file identity, code fingerprints, build
folders with an owner marker, and the clean-up of abandoned ones."""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import time

import pytest

from ctrlab.data import cache
from ctrlab.data.cache import (
    OWNER_FILE,
    BuildFolder,
    code_fingerprint,
    content_sha256,
    owner_identity,
    remove_abandoned,
)


class Log(list):
    def __call__(self, msg):
        self.append(msg)


# ---- content hashes -------------------------------------------------------------------------
def test_content_hash_is_remembered_until_the_file_changes_in_place(tmp_path, monkeypatch):
    """Issue 14.2: the full sha256 is remembered per (path, device, inode, size, mtime, ctime), so a
    same-size edit with the old mtime put back is re-hashed, and an untouched file is not."""
    monkeypatch.setattr(cache, "RACY_NS", 0)  # remember even a file written a moment ago
    path, memo = tmp_path / "train.csv", tmp_path / "memo"
    path.write_bytes(b"label,a\n" + b"1,x\n" * 1000)
    st = path.stat()
    assert content_sha256(path, memo) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(list(memo.iterdir())) == 1

    def boom(p):
        raise AssertionError(f"{p} re-hashed although unchanged")

    real = cache._sha256_file
    monkeypatch.setattr(cache, "_sha256_file", boom)
    assert content_sha256(path, memo) == hashlib.sha256(path.read_bytes()).hexdigest()

    monkeypatch.setattr(cache, "_sha256_file", real)
    path.write_bytes(b"label,a\n" + b"1,x\n" * 500 + b"0,x\n" * 500)  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert content_sha256(path, memo) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_recently_changed_file_is_not_remembered(tmp_path):
    """A file changed within the timestamp resolution could change again unseen: hash it again."""
    path, memo = tmp_path / "f.csv", tmp_path / "memo"
    path.write_text("label\n1\n")
    content_sha256(path, memo)
    assert not memo.exists() or not list(memo.iterdir())


# ---- code fingerprints ----------------------------------------------------------------------
def test_code_fingerprint_follows_every_file_of_a_package(tmp_path, monkeypatch):
    """Issue 14.3: a package stands for every module file in its folder."""
    pkg = tmp_path / "fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "encoders.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_fingerprint("fp_pkg")
    assert code_fingerprint("fp_pkg") == before
    (pkg / "encoders.py").write_text("SCALE = 2\n")
    assert code_fingerprint("fp_pkg") != before
    assert code_fingerprint("ctrlab.data") != code_fingerprint("ctrlab.data.datasets")


# ---- build folders and their clean-up --------------------------------------------------------
def tmp_folder(parent, name, owner: dict | None = None, age_h: float = 0.0):
    folder = parent / name
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "cat.npy").write_bytes(b"half")
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    if age_h:
        old = time.time() - age_h * 3600
        for p in [folder, folder / "train", folder / "train" / "cat.npy", folder / OWNER_FILE]:
            if p.exists():
                os.utime(p, (old, old))
    return folder


def test_remove_abandoned_only_removes_folders_no_live_build_can_own(tmp_path, dead_owner):
    """Issue 14.24: removed: a folder whose owner process on this host is gone, or that nobody
    (no lock) has written to for a day. Kept: everything a live build may own, and non-build folders."""
    me = owner_identity()
    foreign = {**me, "host": "another-host", "pid": 1}
    dead = tmp_folder(tmp_path, ".ds-aaaa.tmp-dead01", dead_owner)
    live = tmp_folder(tmp_path, ".ds-aaaa.tmp-live01", me, age_h=72)  # live owner: kept at any age
    recent = tmp_folder(tmp_path, ".ds-aaaa.tmp-recent", foreign)
    stale = tmp_folder(tmp_path, ".ds-aaaa.tmp-stale1", foreign, age_h=25)
    legacy = tmp_folder(tmp_path, "ds-bbbb.tmp1234", age_h=25)  # the old naming, no marker
    legacy_recent = tmp_folder(tmp_path, "ds-bbbb.tmp5678")
    finished = tmp_folder(tmp_path, "ds-cccc", age_h=1000)  # a cache, not a build folder
    log = Log()
    removed = remove_abandoned(tmp_path, log)
    assert sorted(removed) == sorted([dead, stale, legacy])
    assert [p.exists() for p in (dead, stale, legacy)] == [False] * 3
    assert all(p.is_dir() for p in (live, recent, legacy_recent, finished))
    assert len(log) == 3 and all("removed abandoned" in m for m in log)
    assert any(dead.name in m and "is gone" in m for m in log)


def test_locked_folder_of_another_host_is_kept_at_any_age(tmp_path):
    """A build on another host (shared cache) that holds the lock on its marker is live."""
    folder = tmp_folder(tmp_path, ".ds-aaaa.tmp-locked", {**owner_identity(), "host": "another-host"}, age_h=100)
    with open(folder / OWNER_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert remove_abandoned(tmp_path, Log()) == [] and folder.is_dir()
    assert remove_abandoned(tmp_path, Log()) == [folder]


def test_build_folder_is_unique_marked_and_published(tmp_path):
    """Issue 14.7: every build gets its own temporary folder; it carries the owner marker (locked)
    while building, and becomes the final folder (without the marker) when the block completes."""
    final = tmp_path / "ds-0123"
    with BuildFolder(final) as a, BuildFolder(final) as b:
        assert a != b and a.parent == b.parent == tmp_path and ".tmp-" in a.name
        owner = json.loads((a / OWNER_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == owner_identity()["host"]
        with open(a / OWNER_FILE) as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        (a / "manifest.json").write_text("{}")
        (b / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds-0123"]
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json"]


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), BuildFolder(tmp_path / "ds-0123") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("encoding failed")
    assert list(tmp_path.iterdir()) == []
