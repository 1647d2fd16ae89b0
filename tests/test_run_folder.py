"""Run folders (issue 14, points 1, 17, 18, 22): evaluate and resume encode with the run's own feature
map; unique default names, a lock while a run trains, no silent overwrite, resume keeps the run's
config, and one-line CLI errors instead of tracebacks.
Real data: a few thousand Frappe rows (``write_tiny_frappe``), two short epochs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from ctrlab import api
from ctrlab.cli import main
from ctrlab.config import ConfigError
from ctrlab.run_folder import RunFolderError, RunFolderLock

QUIET = {"log": lambda *a: None}


def write_tiny_frappe(folder: Path, data_dir: Path, train_rows: int = 4000) -> Path:
    """Real Frappe rows as a small CSV dataset (train/valid from the published valid split, test from
    the published test split) and its dataset YAML; returns the YAML."""
    from ctrlab.data.datasets.bars import FRAPPE_FIELDS
    from ctrlab.data.datasets.frappe import HEADER, libsvm_to_bars_rows

    src = data_dir / "frappe_x1" / "afn_libsvm"
    rows = libsvm_to_bars_rows(src / "valid.libsvm.gz")
    test = libsvm_to_bars_rows(src / "test.libsvm.gz")[:1000]
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:train_rows]), ("valid", rows[train_rows:train_rows + 1000]), ("test", test)):
        (folder / f"{split}.csv").write_text("\n".join([HEADER, *part]) + "\n")
    features = "\n".join(f"  - {{name: {f}, kind: categorical}}" for f in FRAPPE_FIELDS)
    yaml_file = folder / "tiny_frappe.yaml"
    yaml_file.write_text("name: tiny_frappe\nformat: csv\nfiles: {train: train.csv, valid: valid.csv, test: test.csv}\n"
                         f"labels: [label]\nfeatures:\n{features}\n")
    return yaml_file


TINY = ["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=512", "model_params.hidden_units=[32,32]",
        "model_params.embedding_dim=8"]


def test_evaluate_and_resume_encode_with_the_runs_feature_map(data_dir, tmp_path):
    """Issue 14.1: after train.csv changed (rows reordered, some repeated: same values, other counts,
    so a re-fitted vocabulary numbers the tokens differently), evaluate and resume must still encode
    with the run's saved feature_map.json, exactly like predict: the run's numbers do not move."""
    from ctrlab.train.metrics import auc

    yaml_file = write_tiny_frappe(tmp_path / "data", data_dir)
    run = tmp_path / "run"
    first = api.train(dataset=str(yaml_file), model="DNN", output=str(run), overrides=TINY, **QUIET)
    saved_map = (run / "feature_map.json").read_text()

    train_csv = tmp_path / "data" / "train.csv"
    header, *rows = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join([header, *rows[::-1], *rows[-1500:]]) + "\n")

    again = api.evaluate(run)
    assert again["test"] == pytest.approx(first.metrics["test"], abs=1e-9)
    assert again["valid"] == pytest.approx(first.metrics["valid"], abs=1e-9)

    test = pl.read_csv(tmp_path / "data" / "test.csv")
    raw = tmp_path / "raw.csv"
    test.drop("label").write_csv(raw)
    probs = api.predict(run, raw)
    assert auc(test["label"].to_numpy(), probs) == pytest.approx(first.metrics["test"]["AUC"], abs=1e-9)

    # resuming the finished run (nothing left to train) gives back its own numbers
    resumed = api.train(dataset=str(yaml_file), output=str(run), resume=True, **QUIET)
    assert resumed.metrics["test"] == pytest.approx(first.metrics["test"], abs=1e-9)
    assert (run / "feature_map.json").read_text() == saved_map


def test_prepare_with_a_given_feature_map(data_dir, tmp_path):
    """``prepare(feature_map=...)`` encodes every split with that map, in memory and streaming alike,
    and reuses the fitted cache when the map is the one fitted there."""
    import numpy as np

    from ctrlab.data.pipeline import prepare
    from ctrlab.data.schema import load_dataset_config

    dcfg = load_dataset_config(write_tiny_frappe(tmp_path / "data", data_dir))
    cache = tmp_path / "cache"
    fitted = prepare(dcfg, cache_dir=cache, log=lambda *a: None)
    again = prepare(dcfg, cache_dir=cache, log=lambda *a: None, feature_map=fitted.feature_map)
    assert again.reused and again.path == fitted.path

    train_csv = tmp_path / "data" / "train.csv"
    header, *rows = train_csv.read_text().splitlines()
    train_csv.write_text("\n".join([header, *rows[:1000]]) + "\n")  # other counts, a smaller vocabulary
    refit = prepare(dcfg, cache_dir=cache, log=lambda *a: None)
    assert refit.feature_map.categorical != fitted.feature_map.categorical
    for streaming in (False, True):
        kept = prepare(dcfg, cache_dir=cache, log=lambda *a: None, feature_map=fitted.feature_map, streaming=streaming,
                       block_rows=300)
        assert kept.feature_map.to_dict() == fitted.feature_map.to_dict() and kept.path != refit.path
        for split in ("valid", "test"):
            for key, arr in fitted.splits[split].arrays.items():
                np.testing.assert_array_equal(np.asarray(kept.splits[split].arrays[key]), arr, err_msg=(split, key))
        train_ids = np.asarray(kept.splits["train"].arrays["cat"])
        assert np.array_equal(train_ids, fitted.splits["train"].arrays["cat"][:1000])


@pytest.fixture(scope="module")
def tiny(data_dir, tmp_path_factory) -> Path:
    """The tiny Frappe dataset's YAML."""
    return write_tiny_frappe(tmp_path_factory.mktemp("tiny_frappe"), data_dir)


@pytest.fixture
def finished(tiny, tmp_path) -> tuple[Path, api.RunResult]:
    """A finished 2-epoch DNN run (its own folder per test: tests damage it)."""
    run = tmp_path / "run"
    return run, api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=TINY, **QUIET)


def _one_line_error(capsys, rc: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.splitlines()[0]
    assert line.startswith("ctrlab: error: "), err
    for text in expected:
        assert text in line, line
    return line


# ---- 17: unique default folders, a lock on a folder in use ----------------------------------
def test_default_run_folders_are_unique(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-120000")  # the same second
    cfg = api.load_run_config(dataset="frappe_x1_subset", model="DNN")
    a, b = api._default_run_dir(cfg), api._default_run_dir(cfg)
    assert a != b and a.is_dir() and b.is_dir()
    assert a.name.startswith("DNN-20260101-120000-s2021-")


def test_a_run_folder_in_use_is_locked(tiny, tmp_path, capsys):
    """A second run on a folder another process is training in fails at once, naming the folder and
    the holder's pid; once the holder is killed the lock is gone."""
    run = tmp_path / "run"
    args = ["--dataset", str(tiny), "--model", "DNN", "--output", str(run)] + sum(
        (["--set", s] for s in [*TINY, "trainer.epochs=1000", "trainer.patience=1000"]), [])
    holder = subprocess.Popen([sys.executable, "-m", "ctrlab.cli", "train", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last_state.json").exists():
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline, "the first run did not start training"
            time.sleep(0.1)
        with pytest.raises(RunFolderError, match=f"in use by another ctrlab process \\(pid {holder.pid}\\)"):
            api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=TINY, resume=True, **QUIET)
        assert main(["train", *args, "--overwrite"]) == 2
        _one_line_error(capsys, 2, str(run), f"pid {holder.pid}")
        assert holder.poll() is None  # the first run was left alone
    finally:
        holder.kill()
        holder.wait()
    res = api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=TINY, overwrite=True, **QUIET)
    assert res.metrics["epochs"] == 2


def test_a_locked_folder_stops_every_rank_of_a_data_parallel_run(tiny, tmp_path):
    """Under torchrun only rank 0 takes the lock; when it cannot, every rank stops with an error (none
    waits for rank 0 in a collective until the timeout)."""
    run = tmp_path / "run"
    run.mkdir()
    sets = sum((["--set", s] for s in [*TINY, "trainer.num_threads=1"]), [])
    with RunFolderLock(run):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "ctrlab.cli", "train", "--dataset", str(tiny), "--model", "DNN", "--output",
                               str(run), *sets], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"in use by another ctrlab process (pid {os.getpid()})" in out, out[-3000:]
    assert "rank 0 stopped before training" in out, out[-3000:]
    assert not (run / "run_config.yaml").exists()


def test_a_filesystem_without_locks_warns_instead_of_refusing(monkeypatch, tmp_path):
    import errno
    import fcntl

    from ctrlab import run_folder

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    logged: list[str] = []
    lock = run_folder.claim(tmp_path / "run", log=logged.append)
    assert lock.unsupported and "cannot lock" in logged[0] and "No locks available" in logged[0]
    lock.release()


# ---- 18: no silent overwrite; resume keeps the run's config; export never deletes a run --------
def test_train_refuses_a_folder_that_holds_a_run(finished, tiny, capsys):
    run, first = finished
    weights = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a finished ctrlab run"):
        api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=[*TINY, "trainer.seed=7"], **QUIET)
    assert main(["train", "--dataset", str(tiny), "--model", "DNN", "--output", str(run), "--seed", "7"]) == 2
    _one_line_error(capsys, 2, "--resume", "--overwrite")
    assert (run / "model.safetensors").read_bytes() == weights
    assert "seed: 2021" in (run / "run_config.yaml").read_text()

    again = api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=[*TINY, "trainer.seed=7"],
                      overwrite=True, **QUIET)
    assert again.metrics["seed"] == 7 and json.loads((run / "metrics.json").read_text())["seed"] == 7
    assert (run / "model.safetensors").read_bytes() != weights
    assert "resumed" not in (run / "train.log").read_text()  # the old run's log went with it


def test_overwrite_never_clears_a_folder_that_is_not_a_run(tiny, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="not a ctrlab run folder"):
            api.train(dataset=str(tiny), model="DNN", output=str(folder), overrides=TINY, overwrite=overwrite, **QUIET)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # not even a lock file was written there


def test_a_folder_without_weights_is_started_over(tiny, tmp_path):
    """A run that stopped before its first epoch (config written, no weights) is no run to protect."""
    run = tmp_path / "run"
    with pytest.raises(ConfigError):
        api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=[*TINY, "model_params.net_dropout=2"],
                  **QUIET)
    res = api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=TINY, **QUIET)
    assert res.metrics["epochs"] == 2


def test_resume_refuses_conflicting_settings_and_applies_safe_ones(finished, tiny):
    run, first = finished
    for overrides, kwargs, key in (([], {"model": "DeepFM"}, "model"),
                                   (["trainer.lr=0.01"], {}, "trainer.lr"),
                                   (["model_params.hidden_units=[8]"], {}, "model_params.hidden_units"),
                                   (["trainer.seed=7"], {}, "trainer.seed")):
        with pytest.raises(ConfigError, match=f"cannot resume .* with a different {key}"):
            api.train(dataset=str(tiny), output=str(run), overrides=overrides, resume=True, **QUIET, **kwargs)
    logged: list[str] = []
    res = api.train(dataset=str(tiny), model="DNN", output=str(run), resume=True, overrides=[*TINY, "trainer.epochs=3"],
                    log=logged.append)
    assert any("resume: applying trainer.epochs: 2 -> 3" in line for line in logged), logged
    assert "resume: applying trainer.epochs: 2 -> 3" in (run / "train.log").read_text()
    assert res.metrics["epochs"] == 3 and len(res.history) == 3
    assert [h["valid_AUC"] for h in res.history[:2]] == [h["valid_AUC"] for h in first.history]
    assert "epochs: 3" in (run / "run_config.yaml").read_text()


def test_export_overwrite_never_deletes_the_run(finished, capsys):
    run, _ = finished
    assert main(["export", str(run), "--format", "torch", "--output", str(run), "--overwrite"]) == 2
    _one_line_error(capsys, 2, "not a ctrlab artifact folder")
    assert (run / "model.safetensors").exists() and (run / "run_config.yaml").exists()


# ---- 22: one-line errors for known failures ----------------------------------------------------
def test_damaged_weights_are_a_one_line_error(finished, tmp_path, capsys):
    run, _ = finished
    (run / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    raw = tmp_path / "raw.csv"
    raw.write_text("user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\n"
                   "1,2,3,4,5,6,7,8,9,10\n")
    for argv in (["evaluate", str(run)],
                 ["predict", str(run), "--input", str(raw), "--output", str(tmp_path / "p.csv")],
                 ["export", str(run), "--format", "torch", "--output", str(tmp_path / "art")]):
        assert main(argv) == 2, argv
        _one_line_error(capsys, 2, str(run / "model.safetensors"), "train the run again")


def test_damaged_checkpoint_on_resume_is_a_one_line_error(finished, capsys):
    run, _ = finished
    weights = run / "checkpoints" / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert main(["train", "--output", str(run), "--resume"]) == 1
    _one_line_error(capsys, 1, str(run / "checkpoints"), "damaged", "from scratch")
    (run / "checkpoints" / "last_state.json").write_text("{truncated")
    assert main(["train", "--output", str(run), "--resume"]) == 1
    _one_line_error(capsys, 1, "last_state.json")


def test_bad_model_param_type_names_the_key(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tiny), "--model", "DNN", "--output", str(run),
                 "--set", "model_params.hidden_units=abc"]) == 2
    _one_line_error(capsys, 2, "model_params.hidden_units", "'abc'")
    assert not run.exists()  # checked before the folder is made or any data is read


def test_unwritable_run_folder_fails_before_training(tiny, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", "--dataset", str(tiny), "--model", "DNN", "--output", str(blocker / "run")]) == 1
    _one_line_error(capsys, 1, str(blocker))


def test_full_disk_fails_before_the_first_epoch(tiny, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ctrlab import run_folder

    monkeypatch.setattr(run_folder.shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=10 << 30, used=10 << 30, free=1024))
    run = tmp_path / "run"
    with pytest.raises(OSError, match="not enough free disk space"):
        api.train(dataset=str(tiny), model="DNN", output=str(run), overrides=TINY, **QUIET)
    assert not any((run / "checkpoints").glob("*")) and not (run / "model.safetensors").exists()


def test_malformed_feature_map_names_the_field(finished, capsys):
    """A feature map edited by hand (its checksums could be redone too) is refused with the field and
    key, not a KeyError deep in the encoders."""
    run, _ = finished
    fmap = json.loads((run / "feature_map.json").read_text())
    del fmap["encoders"]["item"]
    (run / "feature_map.json").write_text(json.dumps(fmap))
    assert main(["evaluate", str(run)]) == 2
    _one_line_error(capsys, 2, "'item'", "encoders")
    fmap = json.loads((run / "feature_map.json").read_text())
    del fmap["categorical"][0]["vocab_size"]
    (run / "feature_map.json").write_text(json.dumps(fmap))
    assert main(["evaluate", str(run)]) == 2
    _one_line_error(capsys, 2, "categorical[0] ('user')", "vocab_size")


def test_model_param_types_accept_tuple_defaults_and_din_groups():
    """The type check reads the models' annotations (Sequence[...] since the defaults are tuples):
    YAML lists and DIN's nested field groups pass, a wrong shape names the key."""
    ok = api.load_run_config({"dataset": "movielens_100k", "model": "DIN", "preset": "none", "model_params": {
        "dnn_hidden_units": [64, 32],
        "din_target_field": [["item_id", "genres"]], "din_sequence_field": [["history", "history_genres"]]}})
    params, _ = api.resolve_model_params(ok)
    assert params["din_target_field"] == [["item_id", "genres"]]
    # FuxiCTR's regulariser strings pass the check on every model, not only in Python
    for model in ("DNN", "DIN", "FCN"):
        given = api.load_run_config({"dataset": "movielens_100k", "model": model, "preset": "none", "model_params": {
            "embedding_regularizer": "l2(1.e-2)", "net_regularizer": "l1_l2(1e-5, 1e-4)"}})
        assert api.resolve_model_params(given)[0]["embedding_regularizer"] == "l2(1.e-2)"
    bad = api.load_run_config({"dataset": "movielens_100k", "model": "DIN", "preset": "none",
                               "model_params": {"dnn_hidden_units": [64, "wide"]}})
    with pytest.raises(api.ConfigError, match=r"model_params\.dnn_hidden_units"):
        api.resolve_model_params(bad)


def _without_valid_file(data_dir, folder: Path, extra: str = "") -> Path:
    """The tiny Frappe YAML listing only train and test files (issue 15.3)."""
    yaml_file = write_tiny_frappe(folder, data_dir)
    text = yaml_file.read_text().replace("valid: valid.csv, ", "")
    assert "valid" not in text
    yaml_file.write_text(text + extra)
    return yaml_file


def test_a_dataset_without_a_valid_file_trains_on_a_carved_valid_split(data_dir, tmp_path, capsys):
    """Issue 15.3: `ctrlab train` on a dataset YAML with only train and test files holds out 10% of
    train (seeded) as valid, writes its metrics, and evaluate and resume give the same numbers."""
    yaml_file = _without_valid_file(data_dir, tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(yaml_file), "--model", "DNN", "--output", str(run)]
                + sum((["--set", s] for s in TINY), [])) == 0
    assert "valid: 10% of train.csv (seed 2021), 400 rows" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.5 < metrics["valid"]["AUC"] <= 1.0 and metrics["epochs"] == 2
    again = api.evaluate(run)
    assert again["valid"] == pytest.approx(metrics["valid"], abs=1e-9)
    assert again["test"] == pytest.approx(metrics["test"], abs=1e-9)
    resumed = api.train(dataset=str(yaml_file), output=str(run), resume=True, **QUIET)
    assert resumed.metrics["valid"] == pytest.approx(metrics["valid"], abs=1e-9)


def test_no_validation_split_trains_every_epoch_without_a_best_checkpoint(data_dir, tmp_path):
    """Issue 15.3: with `valid_fraction: 0` (no valid split at all) the trainer no longer crashes after
    epoch 1: it trains the fixed epoch count, says so, and keeps the last epoch's weights."""
    yaml_file = _without_valid_file(data_dir, tmp_path / "data", "valid_fraction: 0\n")
    run = tmp_path / "run"
    result = api.train(dataset=str(yaml_file), model="DNN", output=str(run),
                       overrides=[*TINY, "trainer.epochs=3", "trainer.patience=1"], **QUIET)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(r["monitor"] is None and not r["improved"] for r in result.history)
    assert "valid" not in result.metrics and 0.5 < result.metrics["test"]["AUC"] <= 1.0
    log = (run / "train.log").read_text()
    assert "no validation split: training all 3 epochs without early stopping" in log
    assert "loaded best weights" not in log and not list((run / "checkpoints").glob("best*"))
