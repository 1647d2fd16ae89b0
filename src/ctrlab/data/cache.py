"""Cache bookkeeping shared by the encoded-split cache (:mod:`ctrlab.data.pipeline`) and the
dataset registry's prepared folders (:mod:`ctrlab.data.datasets.registry`).

* **Keys.** A cached folder is keyed on what produced it: the full sha256 of every source file,
  the library version and a hash of the source code that writes it (:func:`code_fingerprint`).
  Hashing a multi-GB file costs seconds to minutes, so a file's hash is remembered per file
  identity (path, device, inode, size, mtime and ctime, :func:`content_sha256`): an in-place edit
  changes the ctime even when size and mtime are put back, and is hashed again.
* **Builds.** A folder is built in a uniquely named temporary sibling ``.<final>.tmp-<random>``
  and renamed into place when complete (:class:`BuildFolder`), so a killed build never leaves a
  half-written folder under the final name, and concurrent builds (other processes, other
  containers sharing the cache) never share or delete each other's temporary folder.
  While it builds, the folder holds an owner marker (:data:`OWNER_FILE`: host, boot id, pid
  namespace, pid and process start time) on which the builder holds an exclusive ``flock``.
* **Clean-up.** :func:`remove_abandoned` removes temporary folders whose builder is certainly
  gone: its process on this host (same boot and pid namespace) no longer runs, or, where that
  cannot be told (another host or container, or a folder without a marker), nobody holds the
  marker's lock and nothing in the folder was written for :data:`ABANDONED_AFTER_S` (a day).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: liveness falls back to pid and age
    fcntl = None

OWNER_FILE = ".ctrlab-build-owner.json"
"""Inside a temporary build folder: who builds it (removed before the folder is published)."""
ABANDONED_AFTER_S = 24 * 3600
"""A temporary folder whose builder cannot be checked is abandoned after this long without a write."""
RACY_NS = 2_000_000_000
"""A file changed less than this long ago may change again within its timestamps' resolution
(1-2 s on some file systems) without its identity changing: its hash is not remembered."""

_BUILD_NAME = re.compile(r"\.tmp(-[A-Za-z0-9_]+|\d+)$")  # .tmp-<random>; .tmp<pid> of older versions


def library_version() -> str:
    import ctrlab

    return ctrlab.__version__


# ---- code -----------------------------------------------------------------------------------
def code_fingerprint(*modules: str) -> str:
    """A short sha256 of the source files of the named modules; a package stands for every
    ``*.py`` file directly in its folder. Read on every call, so an edit is seen at once."""
    files: dict[str, Path] = {}
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        source = getattr(module, "__file__", None)
        if source is None:  # defined interactively: nothing to hash
            continue
        source = Path(source)
        if source.name == "__init__.py":
            for f in source.parent.glob("*.py"):
                files[f"{name}.{f.stem}"] = f
        else:
            files[name] = source
    h = hashlib.sha256()
    for name in sorted(files):  # by module name, so the same code hashes the same wherever installed
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name].read_bytes()).digest())
    return h.hexdigest()[:16]


# ---- source files ---------------------------------------------------------------------------
def stat_identity(path: Path) -> dict[str, Any]:
    """What tells a file's versions apart without reading it. ``ctime`` cannot be set by a user
    (``os.utime`` puts back the mtime but moves the ctime), so any write changes the identity."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "device": st.st_dev, "inode": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def content_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """The sha256 of the whole file, remembered in ``memo_dir`` per :func:`stat_identity`."""
    ident = stat_identity(path)
    stamp = memo_dir / f"{hashlib.sha256(ident['path'].encode()).hexdigest()[:32]}.json" if memo_dir else None
    if stamp is not None:
        try:
            memo = json.loads(stamp.read_text())
            if memo["stat"] == ident:
                return memo["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    digest = _sha256_file(path)
    newest = max(ident["mtime_ns"], ident["ctime_ns"])
    if stamp is not None and stat_identity(path) == ident and time.time_ns() - newest >= RACY_NS:
        try:
            write_atomic(stamp, json.dumps({"stat": ident, "sha256": digest}))
        except OSError:
            pass  # a read-only cache only costs hashing again next time
    return digest


# ---- files and folders written under a temporary name ---------------------------------------
def temp_name(final: Path, suffix: str = ".tmp") -> Path:
    """A fresh name next to ``final`` that no other writer uses (a pid is not unique across
    containers sharing a folder); open it with mode ``x`` to be sure."""
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}{suffix}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file of its own, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_build_dir(final: Path) -> Path:
    # Not tempfile.mkdtemp: its folders are private (0700) and the published cache would be too;
    # mkdir honours the umask and fails if the (random) name exists.
    while True:
        tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(6)}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


class BuildFolder:
    """A fresh temporary folder next to ``final`` to build in (:attr:`path`), published as
    ``final`` by :meth:`publish`.

    While it exists it holds the owner marker, locked. If the build fails before publishing, the
    folder is removed as soon as this object is dropped (or at exit); after a SIGKILL it stays and
    the next :func:`remove_abandoned` removes it. As a context manager it yields :attr:`path`,
    publishes when the block completes and removes the folder when the block raises."""

    def __init__(self, final: Path, complete: str = "manifest.json"):
        self.final, self.complete = Path(final), complete
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = _make_build_dir(self.final)
        owner = open(self.path / OWNER_FILE, "x", encoding="utf-8")
        self._discard = weakref.finalize(self, _remove_build, self.path, owner)
        if fcntl is not None:
            try:  # held until the folder is published: tells processes on other hosts we are alive
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass  # a file system without locks: pid and age tell instead
        owner.write(json.dumps({**owner_identity(), "final": self.final.name,
                                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        owner.flush()
        self._owner = owner

    def publish(self, replace: bool = False) -> None:
        """Rename the folder into place. When another build published ``final`` first (its
        ``complete`` file exists), ours is dropped: equal keys mean equal content. ``replace`` (an
        explicit rebuild) removes an existing ``final`` first, as is a ``final`` without the
        ``complete`` file (the leftover of an older, non-atomic version)."""
        final = self.final
        try:
            (self.path / OWNER_FILE).unlink()
            if final.exists() and (replace or not (final / self.complete).exists()):
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(self.path, final)
            except OSError:
                if not (final / self.complete).exists():
                    raise
                shutil.rmtree(self.path, ignore_errors=True)  # another process finished it first
        except BaseException:
            self.discard()
            raise
        self._discard.detach()
        self._owner.close()

    def discard(self) -> None:
        """Remove the folder (a failed build)."""
        self._discard()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()


def _remove_build(path: Path, owner) -> None:
    owner.close()
    shutil.rmtree(path, ignore_errors=True)


# ---- owners and clean-up --------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of a running process (clock ticks since boot, Linux), None if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]  # a zombie has finished too


def owner_identity(pid: int | None = None) -> dict[str, Any]:
    """Who a process is, in a form another process can check: the pid is only meaningful on the
    same host, boot and pid namespace (a container has its own), and its start time tells a
    reused pid apart."""
    pid = os.getpid() if pid is None else pid
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pid_namespace": namespace, "pid": pid, "start_ticks": _process_start(pid)}


def _owner_gone(owner: dict[str, Any]) -> bool | None:
    """True: the owner process is gone; False: it runs; None: it cannot be checked from here."""
    me = owner_identity()
    for key in ("host", "boot_id", "pid_namespace"):
        if me[key] is None or owner.get(key) != me[key]:
            return None
    if not isinstance(owner.get("pid"), int) or owner.get("start_ticks") is None:
        return None
    return _process_start(owner["pid"]) != owner["start_ticks"]


def _locked(marker: Path) -> bool:
    if fcntl is None:
        return False
    try:
        with open(marker, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except OSError:
        return False


def _last_write(folder: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except OSError:
                pass
    return newest


def abandoned_reason(folder: Path, max_age_s: float = ABANDONED_AFTER_S) -> str | None:
    """Why the temporary build ``folder`` is abandoned, or None when a live build may own it."""
    marker = folder / OWNER_FILE
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        owner = None
    if isinstance(owner, dict):
        gone = _owner_gone(owner)
        if gone is not None:
            return f"its builder, pid {owner['pid']} on {owner['host']}, is gone" if gone else None
        if _locked(marker):
            return None
    idle = time.time() - _last_write(folder)
    if idle > max_age_s:
        who = f"pid {owner.get('pid')} on {owner.get('host')}" if isinstance(owner, dict) else "no owner marker"
        return f"nothing written to it for {idle / 3600:.0f} h ({who})"
    return None


def remove_abandoned(parent: Path, log: Callable[[str], Any] | None = print,
                     max_age_s: float = ABANDONED_AFTER_S) -> list[Path]:
    """Remove the abandoned temporary build folders directly in ``parent`` (see the module
    docstring for when a folder counts as abandoned); log each one. Returns those removed."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not _BUILD_NAME.search(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        reason = abandoned_reason(folder, max_age_s)
        if reason is None:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            if log is not None:
                log(f"[ctrlab] removed abandoned cache build folder {folder}: {reason}")
    return removed
