"""End-to-end: CLI and Python API on real data (frappe_x1_subset), run folder contents,
evaluate/predict through the saved preprocessing, determinism and resume of a killed run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.errors import DataWarning

FAST = ["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=8192"]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "finalmlp"
    rc = main(["train", "--dataset", "frappe_x1_subset", "--model", "FinalMLP", "--output", str(out)]
              + sum((["--set", s] for s in FAST), []))
    assert rc == 0
    return out


def test_run_folder_contents(trained):
    for name in ("run_config.yaml", "dataset_config.json", "feature_map.json", "model.safetensors",
                 "metrics.json", "train.log"):
        assert (trained / name).exists(), name
    m = json.loads((trained / "metrics.json").read_text())
    assert m["model"] == "FinalMLP" and m["epochs"] == 2
    # Even 2 epochs on real Frappe give a model far better than chance.
    assert 0.85 < m["test"]["AUC"] <= 1.0
    assert 0.0 < m["test"]["logloss"] < 1.0  # finite; BN running stats lag after only 2 short epochs
    # issue 19: the final set (no group_field on Frappe: no group metrics) and the reliability diagram
    # of the split's predictions
    from ctrlab.data.pipeline import prepare
    from ctrlab.train import Trainer
    from ctrlab.train.metrics import evaluate_metrics, reliability

    model, _, dset, cfg = api.load_run(trained)
    data = prepare(dset, log=lambda *a: None)
    for split in ("valid", "test"):
        assert list(m[split]) == ["AUC", "logloss", "NE", "calibration", "ECE"]
        probs = Trainer(model, cfg.trainer, trained).predict(cfg.trainer.make_eval_loader(data.splits[split]))
        y = data.splits[split].arrays["label"][:, 0]
        assert m["reliability"][split] == reliability(y, probs)  # the same batches: the same floats
        assert m[split] == evaluate_metrics(y, probs, list(m[split]))
    # The BARS preset was applied (fs context fields from the Frappe_x1 tuned config).
    cfg = (trained / "run_config.yaml").read_text()
    assert "fs1_context" in cfg and "user" in cfg


def test_evaluate_reproduces_metrics(trained, capsys):
    m = json.loads((trained / "metrics.json").read_text())
    again = api.evaluate(trained)
    assert again["test"]["AUC"] == pytest.approx(m["test"]["AUC"], abs=1e-9)
    assert again["test"]["logloss"] == pytest.approx(m["test"]["logloss"], abs=1e-9)
    assert again["test"] == pytest.approx(m["test"], abs=1e-9)
    assert main(["evaluate", str(trained), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["metric", "valid", "test"] and out[2].split()[0] == "AUC"
    assert float(out[2].split()[2]) == pytest.approx(m["test"]["AUC"], abs=1e-6)
    assert json.loads(out[-1])["test"] == pytest.approx(m["test"], abs=1e-9)


def test_predict_raw_file_matches_evaluation(trained, tmp_path):
    """Raw CSV in (no label column), probabilities out, equal to scoring the encoded test split."""
    dcfg = json.loads((trained / "dataset_config.json").read_text())
    test_file = Path(dcfg["root"] or "") / dcfg["files"]["test"] if dcfg.get("root") else Path(dcfg["files"]["test"])
    raw = pl.read_csv(test_file, infer_schema=False).head(500)
    labels = raw["label"].cast(pl.Float64).to_numpy()
    raw_in = tmp_path / "raw.csv"
    raw.drop("label").write_csv(raw_in)
    out = tmp_path / "scores.csv"
    assert main(["predict", str(trained), "--input", str(raw_in), "--output", str(out)]) == 0
    probs = pl.read_csv(out)["probability"].to_numpy()
    assert len(probs) == 500 and np.all((probs > 0) & (probs < 1))

    model, fmap, dset, cfg = api.load_run(trained)
    from ctrlab.data.pipeline import prepare
    from ctrlab.data.loader import BatchLoader
    from ctrlab.train import Trainer

    data = prepare(dset, log=lambda *a: None)
    ref = Trainer(model, cfg.trainer, trained).predict(BatchLoader(data.splits["test"].take(slice(0, 500)), 4096))
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-6)
    assert np.array_equal(labels, data.splits["test"].arrays["label"][:500, 0])


def test_predict_keeps_id_columns_before_the_probability(trained, tmp_path, capsys):
    """issue 15.7: --keep-columns copies input columns (as written: "007" stays "007") into the output,
    row-aligned, before probability; a name the file lacks is a clear error naming the file and its columns."""
    dcfg = json.loads((trained / "dataset_config.json").read_text())
    test_file = Path(dcfg["root"] or "") / dcfg["files"]["test"] if dcfg.get("root") else Path(dcfg["files"]["test"])
    raw = pl.read_csv(test_file, infer_schema=False).head(300).drop("label")
    raw = raw.with_columns(pl.Series("id", [f"{i:03d}" for i in range(300)]),
                           pl.Series("ts", [str(1700000000 + 7 * i) for i in range(300)]))
    raw_in, out = tmp_path / "raw.csv", tmp_path / "scores.csv"
    raw.write_csv(raw_in)
    assert main(["predict", str(trained), "--input", str(raw_in), "--output", str(out), "--keep-columns", "id,ts"]) == 0
    scores = pl.read_csv(out, infer_schema=False)
    assert scores.columns == ["id", "ts", "probability"]
    assert scores["id"].to_list() == raw["id"].to_list() and scores["ts"].to_list() == raw["ts"].to_list()
    np.testing.assert_allclose(scores["probability"].cast(pl.Float64).to_numpy(), api.predict(trained, raw_in),
                               rtol=0, atol=1e-7)
    capsys.readouterr()
    assert main(["predict", str(trained), "--input", str(raw_in), "--output", str(out), "--keep-columns", "id,nope"]) == 2
    err = capsys.readouterr().err
    assert str(raw_in) in err and "['nope'] not found; the file has" in err and "'ts'" in err and "--keep-columns" in err


def test_predict_warns_about_a_field_mostly_unseen_in_the_file(trained, tmp_path):
    """issue 15.5: values in another form than in training ("4:1" for "4") are named, with the share of rows."""
    dcfg = json.loads((trained / "dataset_config.json").read_text())
    test_file = Path(dcfg["root"] or "") / dcfg["files"]["test"] if dcfg.get("root") else Path(dcfg["files"]["test"])
    raw = pl.read_csv(test_file, infer_schema=False).head(200).drop("label")
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    raw.write_csv(good)
    raw.with_columns(pl.col("item") + ":1").write_csv(bad)
    lines: list[str] = []
    with pytest.warns(DataWarning) as caught:
        api.predict(trained, bad, log=lines.append)
    assert len(caught) == 1 and len(lines) == 1, lines
    message = str(caught[0].message)
    first = raw["item"][0]
    assert message.startswith(f"{bad}: 100.0% of rows: field 'item': '{first}:1' not in the training vocabulary "
                              "(known values look like '"), message
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        api.predict(trained, good, log=lines.append)
    assert len(lines) == 1


def test_python_m_ctrlab_is_the_ctrlab_command():
    """issue 15.7: `python -m ctrlab` works like `ctrlab` (it was only `python -m ctrlab.cli`)."""
    helped = subprocess.run([sys.executable, "-m", "ctrlab", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: ctrlab") and "predict" in helped.stdout
    listed = subprocess.run([sys.executable, "-m", "ctrlab", "models"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert {"FinalMLP", "DeepFM", "DIN"} <= set(listed.stdout.split())


def test_same_seed_repeats_bit_for_bit(data_dir, tmp_path):
    a = api.train(dataset="frappe_x1_subset", model="DeepFM", output=str(tmp_path / "a"), overrides=FAST, log=lambda *x: None)
    b = api.train(dataset="frappe_x1_subset", model="DeepFM", output=str(tmp_path / "b"), overrides=FAST, log=lambda *x: None)
    assert a.metrics["test"] == b.metrics["test"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_bad_config_is_a_clear_cli_error(data_dir, tmp_path, capsys):
    rc = main(["train", "--dataset", "frappe_x1_subset", "--model", "DNN", "--output", str(tmp_path / "x"),
               "--set", "model_params.no_such_option=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_option" in err and "allowed" in err
    rc = main(["train", "--model", "NoSuchModel", "--output", str(tmp_path / "y")])
    assert rc == 2 and "unknown model" in capsys.readouterr().err


def test_cli_resume_after_kill_matches_uninterrupted(data_dir, tmp_path):
    """Kill a real `ctrlab train` process after its 2nd epoch checkpoint, resume it, and compare
    with an uninterrupted run of the same config: identical test metrics and weights."""
    args = ["--dataset", "frappe_x1_subset", "--model", "DNN", "--set", "trainer.epochs=4",
            "--set", "trainer.progress=false", "--set", "trainer.batch_size=8192", "--set", "trainer.patience=10"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "ctrlab.cli", "train", "--output", str(full), *args], check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ctrlab.cli", "train", "--output", str(killed), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoints" / "last_state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                if json.loads(state.read_text()).get("epoch", 0) >= 2:
                    break
            except json.JSONDecodeError:
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    subprocess.run([sys.executable, "-m", "ctrlab.cli", "train", "--output", str(killed), "--resume"], check=True,
                   env=env, capture_output=True)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert (full / "model.safetensors").read_bytes() == (killed / "model.safetensors").read_bytes()


@pytest.mark.parametrize("first", ["import ctrlab", "import ctrlab.api; import ctrlab"])
def test_ctrlab_train_stays_the_function_on_every_use(first):
    """`ctrlab.train(...)` twice in one process (the README's example): loading the API imports the
    subpackage ctrlab.train, which used to replace the function on the package after the first use
    ("'module' object is not callable")."""
    code = (f"{first}\nfirst = ctrlab.train\nimport ctrlab.train.auto\n"
            "assert callable(first) and ctrlab.train is first, ctrlab.train\n"
            "from ctrlab.train import Trainer\nimport ctrlab.train.trainer as trainer_module\n"
            "assert trainer_module.Trainer is Trainer and ctrlab.evaluate.__module__ == 'ctrlab.api'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
