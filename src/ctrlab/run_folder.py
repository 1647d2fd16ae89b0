"""Run folders: one process at a time, never overwritten by accident, checked before training.

``ctrlab.train`` (and ``ctrlab train``) claims its run folder before it reads any data:

* **unique default names**: ``runs/<dataset>/<model>-<time>-s<seed>-<6 hex>``, created with an
  atomic ``mkdir`` (two runs started in the same second never share a folder);
* **a lock** (``.ctrlab.lock``, an OS ``flock`` held for the whole run and released by the OS when
  the process ends, even on SIGKILL); a second run on a folder in use fails at once with the
  holder's pid. Under data-parallel training only rank 0 takes it;
* **no silent overwrite**: a folder that already holds a run is refused unless the run is resumed
  (``--resume``) or replaced (``--overwrite``, which deletes that run's files: the finished weights
  and metrics first, so that a replacement killed midway never leaves old weights beside a new
  config). A folder holding anything that is not a ctrlab run file is never cleared. A folder
  holding a run that never finished an epoch (no weights, no checkpoints) is started over;
* **a writable folder with room for the checkpoints** before the first epoch, not after it.

Why ``fcntl`` rather than the ``filelock`` package: filelock truncates the lock file when it
opens it, so the lock file could not name its holder's pid for the error message.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from .config import ConfigError

LOCK_NAME = ".ctrlab.lock"
RUN_FILES = ("run_config.yaml", "dataset_config.json", "feature_map.json", "model.safetensors", "metrics.json",
             "history.json", "train.log", "checkpoints", "linear_warm_start.json", "search", "teacher",
             "calibration.json")
"""What a training run writes into its folder (``checkpoints`` is a folder; so is ``search``, the
search phase of an OptInter run, :mod:`ctrlab.recipes.opt_inter`, and ``teacher``, the teacher of a
distilled run, :mod:`ctrlab.recipes.distill`; ``calibration.json`` is written later, by ``ctrlab calibrate``)."""
ESTIMATOR_PREFIX = "estimator"
"""A non-torch estimator's run (:mod:`ctrlab.baselines`) writes its model as files named ``estimator*``
(``estimator.json`` and the library's model file) in place of ``model.safetensors``."""
FINISHED_FILES = ("model.safetensors", "metrics.json", "history.json")
"""The files that mark a run as finished: cleared first, written last."""


class RunFolderError(ConfigError):
    """A run folder that is in use, already holds a run, or holds files that are not a run's."""


class RunFolderLock:
    """An exclusive, non-blocking OS lock on ``<run_dir>/.ctrlab.lock`` naming its holder's pid.

    The kernel drops the lock when the holder's file descriptor closes, so a killed run never
    leaves a stale lock. The lock file itself stays (deleting it would let two processes lock two
    different files of the same name)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.unsupported: str | None = None
        """Why the folder's filesystem could not lock (then the run goes on unlocked, with a warning)."""

    def acquire(self) -> "RunFolderLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.run_dir} is in use by another ctrlab process (pid {holder}); wait for it "
                "to finish, or give this run another --output") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            os.close(fd)  # a filesystem without flock (some network / FUSE mounts): not a reason to refuse
            self.unsupported = f"{type(exc).__name__}: {exc}"
            return self
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def create_unique_folder(base: Path, attempts: int = 20) -> Path:
    """``base`` plus a random 6-hex-digit suffix, created atomically (``mkdir`` fails if it exists)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        folder = base.with_name(f"{base.name}-{secrets.token_hex(3)}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RunFolderError(f"could not create a unique run folder next to {base} after {attempts} attempts")


def _is_artifact(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def claim(run_dir: Path, resume: bool = False, overwrite: bool = False, log=print) -> RunFolderLock:
    """Create (if needed) and lock ``run_dir`` for a run; refuse or clear a run already there.

    Returns the held lock (release it when the run ends). ``resume``: the folder's run is
    continued, its files stay. ``overwrite``: the run in the folder is deleted first."""
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the folder, --overwrite replaces it: give one of them")
    if not resume and run_dir.is_dir():
        _refuse_foreign(run_dir)  # before the lock file: nothing is written into a folder that is not a run's
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(run_dir).acquire()
    if lock.unsupported:
        log(f"[ctrlab] warning: cannot lock {run_dir} ({lock.unsupported}); a second run on this folder "
            "would not be detected")
    try:
        if not resume:
            _refuse_or_clear(run_dir, overwrite, log)
    except BaseException:
        lock.release()
        raise
    return lock


def _refuse_foreign(run_dir: Path) -> list[Path]:
    """The folder's entries; a RunFolderError when any is not a run's file."""
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK_NAME)
    # export's default folders (RUN/export-onnx) hold the old run's weights: they go with it
    unknown = [p.name for p in entries
               if p.name not in RUN_FILES and not p.name.startswith(ESTIMATOR_PREFIX)
               and not (p.name.startswith("export-") and _is_artifact(p))]
    if unknown:
        raise RunFolderError(
            f"{run_dir} is not empty and not a ctrlab run folder (it holds {unknown[:5]}); ctrlab never writes into "
            "or clears such a folder: choose a new or empty --output")
    return entries


def _refuse_or_clear(run_dir: Path, overwrite: bool, log) -> None:
    entries = _refuse_foreign(run_dir)  # again, now under the lock
    if not entries:
        return
    has_weights = any((run_dir / n).exists() for n in FINISHED_FILES) or any((run_dir / "checkpoints").glob("*"))
    if has_weights and not overwrite:
        finished = (run_dir / "model.safetensors").exists() or (run_dir / "metrics.json").exists()
        raise RunFolderError(
            f"{run_dir} already holds a {'finished' if finished else 'partly trained'} ctrlab run; pass --resume "
            "to continue it, --overwrite to delete it and train anew, or choose another --output")
    if has_weights:
        log(f"[ctrlab] overwrite: deleting the run in {run_dir}")
    else:
        log(f"[ctrlab] starting over in {run_dir} (it holds no weights or checkpoints: an earlier run stopped "
            "before its first epoch)")
    by_name = {p.name: p for p in entries}
    # finished weights and metrics first: a replacement killed midway is an unfinished run, never
    # a new config beside old weights
    for name in [*FINISHED_FILES, *(n for n in by_name if n not in FINISHED_FILES)]:
        path = by_name.get(name)
        if path is None:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_free_space(run_dir: Path, parameters: int, copies: int = 10) -> None:
    """Fail before the first epoch when the folder's disk cannot hold the checkpoints.

    Per epoch the trainer writes the last and best weights and the optimizer state (for Adam two
    moments per parameter) as ``.tmp`` files beside the previous ones, then the final weights:
    about ``copies`` float32 copies of the parameters at the peak."""
    need = 4 * parameters * copies
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise OSError(errno.ENOSPC,
                      f"not enough free disk space for the run's checkpoints in {run_dir}: {free / 2**20:,.1f} MiB "
                      f"free, about {need / 2**20:,.1f} MiB needed ({parameters:,} parameters); free some space "
                      "or choose another --output")
