"""Checkpoint errors (issue 14.22): a damaged, mismatched or unwritable checkpoint is a CheckpointError
that names the file and says what to do, never a traceback from safetensors, json or the OS."""
from __future__ import annotations

import errno
import json
import os

import pytest

import _trainkit as K
from ctrlab.train import CheckpointError


class _Stop(Exception):
    pass


def _stop_after(epoch):
    def cb(trainer, record):
        if record["epoch"] == epoch:
            raise _Stop(epoch)

    return cb


@pytest.fixture
def stopped_run(tmp_path):
    """A run interrupted after epoch 2 (its checkpoint is complete)."""
    with pytest.raises(_Stop):
        K.run(tmp_path, callbacks=[_stop_after(2)])
    return tmp_path, tmp_path / "checkpoints"


def _assert_clear(exc: CheckpointError, path, *words: str) -> None:
    msg = str(exc)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("name", ["last.safetensors", "last_optimizer.safetensors", "best.safetensors"])
def test_damaged_weights_file_is_a_clear_error(stopped_run, name):
    run_dir, ckpt = stopped_run
    (ckpt / name).write_bytes(b"\x00garbage, not a safetensors file")
    with pytest.raises(CheckpointError) as info:
        K.run(run_dir, resume=True)
    _assert_clear(info.value, ckpt / name, "damaged", f"remove {ckpt}")


def test_damaged_or_incomplete_state_file_is_a_clear_error(stopped_run):
    run_dir, ckpt = stopped_run
    state_path = ckpt / "last_state.json"
    good = json.loads(state_path.read_text())
    state_path.write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        K.run(run_dir, resume=True)
    _assert_clear(info.value, state_path, f"remove {ckpt}")
    del good["history"]
    state_path.write_text(json.dumps(good))
    with pytest.raises(CheckpointError) as info:
        K.run(run_dir, resume=True)
    _assert_clear(info.value, state_path, "history", f"remove {ckpt}")


def test_checkpoint_of_another_model_or_optimizer_names_the_file_and_the_fix(stopped_run):
    run_dir, ckpt = stopped_run
    K.seed_everything(0)
    other = K.Trainer(K.TinyModel(dim=6), K.config(), run_dir)
    with pytest.raises(CheckpointError) as info:
        other.fit(*K.loaders(K.config())[:2], resume=True)
    _assert_clear(info.value, ckpt / "last.safetensors", "does not fit the model", "same model")
    with pytest.raises(CheckpointError) as info:
        K.run(run_dir, K.config(optimizer="sgd"), resume=True)
    _assert_clear(info.value, ckpt / "last_optimizer.safetensors", "Adam", "SGD", "trainer.optimizer")


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = {"n": 0}

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] > 8:  # epoch 1's commit went through; later writes find the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError) as info:
        K.run(tmp_path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    ckpt = tmp_path / "checkpoints"
    _assert_clear(info.value, ckpt, "No space left on device", "free disk space", "--resume")
    assert json.loads((ckpt / "last_state.json").read_text())["epoch"] == 1
    assert not list(ckpt.glob("*.tmp"))  # the unfinished files are not left to fill the disk


def test_unwritable_checkpoint_folder_fails_before_the_first_epoch(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoint folder should be")
    epochs = []
    with pytest.raises(CheckpointError) as info:
        K.run(tmp_path, callbacks=[lambda trainer, record: epochs.append(record["epoch"])])
    _assert_clear(info.value, tmp_path / "checkpoints", "cannot write")
    log = tmp_path / "train.log"
    assert epochs == [] and (not log.exists() or "| train_loss" not in log.read_text())
