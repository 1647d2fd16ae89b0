"""Atomic training checkpoints: writing, committing, rolling forward and loading them back.

Files in ``run_dir/checkpoints/``, written after every epoch:

* ``last.safetensors``: model state (parameters and buffers), via ``safetensors.torch.save_model``.
* ``last_optimizer.safetensors``: every tensor of the optimizer state, named
  ``"<parameter name>/<state key>"`` (e.g. ``"fc.weight/exp_avg"``); non-tensor state values,
  the param groups (with parameter *names* instead of indices) go in ``last_state.json``.
* ``last_state.json``: completed epochs, best value and epoch, stopping steps, lr, history,
  the RNG states of python / numpy / torch (/ CUDA) and the config.
* ``best.safetensors``: model state of the best epoch so far, rewritten when the monitor improves.

Every file is first written as ``<name>.tmp`` and fsynced; then all are renamed into place with
``last_state.json`` last. The safetensors files carry the epoch in their metadata. On resume, a
complete ``last_state.json.tmp`` (the commit was under way) is rolled forward; otherwise leftover
``.tmp`` files are discarded, so a crash at any moment leaves a consistent checkpoint.
"""
from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

__all__ = ["CheckpointError", "CheckpointDir", "rng_state", "set_rng_state", "file_epoch"]

STATE_FORMAT = 1
_STATE_KEYS = ("epoch", "stopped_early", "best_metric", "best_epoch", "stopping_steps", "lr", "history",
               "optimizer", "rng")

FILES = ("last_optimizer.safetensors", "best.safetensors", "last.safetensors", "last_state.json")
"""Checkpoint files in commit (rename) order; ``last_state.json`` is the commit point."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, inconsistent, does not fit the model / optimizer, or cannot
    be written. The message names the file and what to do."""


def _start_over(folder: Path) -> str:
    return f"remove {folder} to train this run from scratch"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------------------------
# RNG states (JSON-safe: no pickle)
# ---------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """The RNG states of python ``random``, numpy's global RNG and torch (CPU, CUDA when in use)."""
    py = random.getstate()
    npst = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], np.asarray(npst[1]).tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    nps = state["numpy"]
    np.random.set_state((nps[0], np.asarray(nps[1], dtype=np.uint32), nps[2], nps[3], nps[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


# ---------------------------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON payload)
# ---------------------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def optimizer_payload(
    optimizer: torch.optim.Optimizer, param_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer state as (tensors keyed ``"<parameter name>/<state key>"``, JSON payload)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        name = param_names[idx]
        for key, value in st.items():
            k = f"{name}/{key}"
            if isinstance(value, torch.Tensor):
                tensors[k] = value.detach().to("cpu").contiguous()
            else:
                scalars[k] = jsonable(value)
    groups = []
    for g in sd["param_groups"]:
        gg = {k: jsonable(v) for k, v in g.items() if k != "params"}
        gg["params"] = [param_names[i] for i in g["params"]]
        groups.append(gg)
    return tensors, {"class": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    param_names: Sequence[str],
    tensors: Mapping[str, torch.Tensor],
    payload: Mapping[str, Any],
) -> None:
    """Load what :func:`optimizer_payload` returned into ``optimizer`` (checking that it fits)."""
    if payload.get("class") != type(optimizer).__name__:
        raise CheckpointError(
            f"checkpoint optimizer is {payload.get('class')}, config asks for {type(optimizer).__name__}"
        )
    index = {n: i for i, n in enumerate(param_names)}
    state: dict[int, dict[str, Any]] = {}
    entries = list(tensors.items()) + list(payload.get("scalars", {}).items())
    for key, value in entries:
        name, _, skey = key.rpartition("/")
        if name not in index:
            raise CheckpointError(f"optimizer state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[skey] = value
    current = optimizer.state_dict()["param_groups"]
    saved = payload["param_groups"]
    if len(saved) != len(current):
        raise CheckpointError(f"checkpoint has {len(saved)} optimizer param groups, the optimizer {len(current)}")
    groups = []
    for cur, sav in zip(current, saved):
        if [param_names[i] for i in cur["params"]] != list(sav["params"]):
            raise CheckpointError("optimizer parameters in the checkpoint do not match the model's")
        g = dict(cur)
        for k, v in sav.items():
            if k == "params":
                continue
            g[k] = tuple(v) if isinstance(cur.get(k), tuple) and isinstance(v, list) else v
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_epoch(path: Path) -> int | None:
    """The epoch a checkpoint safetensors file was written after (from its metadata)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["epoch"]) if "epoch" in meta else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged ({_one_line(exc)}); {_start_over(Path(path).parent)}") from None


class CheckpointDir:
    """The checkpoint folder of one run: atomic commits of the files in :data:`FILES`."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = Path(folder)

    @property
    def state_path(self) -> Path:
        return self.dir / "last_state.json"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.safetensors"

    def exists(self) -> bool:
        """Whether a committed checkpoint is there."""
        return self.state_path.exists()

    @property
    def start_path(self) -> Path:
        """The starting weights of a run with ``validate_start``."""
        return self.dir / "start.safetensors"

    def remove(self) -> None:
        """Delete every checkpoint file (and leftover ``.tmp`` file)."""
        for name in (*FILES, self.start_path.name):
            for path in (self.dir / name, self.dir / (name + ".tmp")):
                if path.exists():
                    path.unlink()

    def write_start(self, model: nn.Module) -> None:
        """Save the starting weights (``validate_start``), atomically."""
        tmp = self.dir / (self.start_path.name + ".tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_model(model, str(tmp), metadata={"epoch": "0"})
            _fsync_file(tmp)
            os.replace(tmp, self.start_path)
        except (OSError, SafetensorError) as exc:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"cannot write the starting weights to {self.start_path}: {_one_line(exc)}; free "
                                  "disk space or make the folder writable") from exc
        _fsync_dir(self.dir)

    def write(self, model: nn.Module, epoch: int, optimizer_tensors: Mapping[str, torch.Tensor],
              state: Mapping[str, Any], save_best: bool) -> None:
        """Write and commit one epoch's checkpoint: every file as ``.tmp``, fsynced, then renamed
        into place with ``last_state.json`` (``state`` plus the format number) last."""
        d = self.dir
        tmp = {name: d / (name + ".tmp") for name in FILES}
        try:
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob("*.tmp"):
                stale.unlink()
            meta = {"epoch": str(epoch)}
            save_file(dict(optimizer_tensors), str(tmp["last_optimizer.safetensors"]), metadata=meta)
            if save_best:
                save_model(model, str(tmp["best.safetensors"]), metadata=meta)
            save_model(model, str(tmp["last.safetensors"]), metadata=meta)
            with open(tmp["last_state.json"], "w", encoding="utf-8") as f:
                json.dump({"format": STATE_FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            for name in FILES[:-1]:
                if tmp[name].exists():
                    _fsync_file(tmp[name])
        except (OSError, SafetensorError) as exc:
            for path in tmp.values():  # unfinished files: do not leave them to fill the disk
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            raise CheckpointError(
                f"cannot write the checkpoint of epoch {epoch} to {d}: {_one_line(exc)}; free disk space or make "
                f"{d} writable, then continue the run with --resume (the checkpoint of epoch {epoch - 1} is intact)"
            ) from exc
        try:
            for name in FILES:  # the commit: last_state.json is renamed last
                if tmp[name].exists():
                    os.replace(tmp[name], d / name)
        except OSError as exc:
            raise CheckpointError(
                f"cannot commit the checkpoint of epoch {epoch} in {d}: {_one_line(exc)}; fix the folder, then "
                "continue the run with --resume (it completes or drops the unfinished commit)"
            ) from exc
        _fsync_dir(d)

    def check_writable(self) -> None:
        """Fail now, with a clear message, when checkpoints cannot be written to the folder."""
        probe = self.dir / f".write-test-{os.getpid()}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(
                f"cannot write checkpoints to {self.dir}: {_one_line(exc)}; make the run folder writable "
                "(or train into another one) before training"
            ) from None

    def roll_forward(self) -> bool:
        """Finish a commit that was interrupted between renames (True) or drop an unfinished one."""
        d = self.dir
        tmp_state = d / "last_state.json.tmp"
        complete = False
        if tmp_state.exists():
            try:
                json.loads(tmp_state.read_text(encoding="utf-8"))
                complete = True
            except (ValueError, UnicodeDecodeError):
                complete = False
        if complete:  # the state file is written last, so every other .tmp file is complete
            for name in FILES:
                t = d / (name + ".tmp")
                if t.exists():
                    os.replace(t, d / name)
            _fsync_dir(d)
        for stale in d.glob("*.tmp"):
            stale.unlink()
        return complete

    def read_state(self) -> dict[str, Any]:
        """``last_state.json``, checked against the safetensors files' epochs."""
        d, state_path = self.dir, self.state_path
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {state_path} ({_one_line(exc)}); {_start_over(d)}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else None
            raise CheckpointError(
                f"{state_path} has checkpoint format {found!r}, this ctrlab reads format {STATE_FORMAT}; "
                f"resume with the ctrlab version that wrote it, or {_start_over(d)}"
            )
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{state_path} is damaged: it lacks {', '.join(missing)}; {_start_over(d)}")
        epoch = int(state["epoch"])
        for name in ("last.safetensors", "last_optimizer.safetensors"):
            path = d / name
            if not path.exists():
                raise CheckpointError(f"checkpoint file {path} is missing; {_start_over(d)}")
            if file_epoch(path) != epoch:
                raise CheckpointError(
                    f"{path} is from epoch {file_epoch(path)} but {state_path} from epoch {epoch}: the checkpoint "
                    f"files do not belong together; {_start_over(d)}"
                )
        if state.get("best_epoch") is not None:
            best = self.best_path
            if not best.exists() or file_epoch(best) != state["best_epoch"]:
                raise CheckpointError(
                    f"{best} is missing or not from the best epoch {state['best_epoch']}; {_start_over(d)}")
        return state

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Load a checkpoint's model state (``last`` or ``best``) into ``model``."""
        try:
            load_model(model, str(path), strict=True, device="cpu")
        except RuntimeError as exc:  # torch's size / key mismatch
            raise CheckpointError(
                f"{path} does not fit the model ({_one_line(exc).rstrip('.')}): it was written for another model or other "
                f"model_params; resume with the same model and model_params as the run, or {_start_over(self.dir)}"
            ) from None
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is damaged ({_one_line(exc)}); {_start_over(self.dir)}") from None

    def load_last(self, model: nn.Module, optimizer: torch.optim.Optimizer, param_names: Sequence[str],
                  state: Mapping[str, Any]) -> None:
        """Load the last epoch's weights into ``model`` and optimizer state into ``optimizer``."""
        self.load_weights(model, self.dir / "last.safetensors")
        path = self.dir / "last_optimizer.safetensors"
        saved, current = state["optimizer"].get("class"), type(optimizer).__name__
        if saved != current:
            cfg = state.get("config", {})
            fix = f"trainer.optimizer={cfg.get('optimizer')}"
            if "Sparse" in f"{saved}{current}":
                fix += f" and trainer.sparse_embeddings={str(cfg.get('sparse_embeddings')).lower()}"
            raise CheckpointError(
                f"{path} holds {saved} state, the config asks for {current}: resume with {fix} as the run was "
                f"trained, or {_start_over(self.dir)}"
            )
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is damaged ({_one_line(exc)}); {_start_over(self.dir)}") from None
        try:
            load_optimizer(optimizer, param_names, tensors, state["optimizer"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}; resume with the run's own config, or {_start_over(self.dir)}") from None
