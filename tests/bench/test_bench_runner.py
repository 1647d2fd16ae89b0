"""Bench plans and the runner on real data: expansion, skip, adopt, kill-and-resume, parallel workers."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from ctrlab.bench import ResultsStore, expand, load_plan, run_plan
from ctrlab.config import ConfigError

FAST = {"epochs": 3, "batch_size": 8192, "patience": 10}


def plan_dict(tmp_path, models=("LR", "DNN"), seeds=(1,), jobs=1, name="t", **grid):
    return {"name": name, "db": str(tmp_path / "db" / "r.sqlite"), "runs_dir": str(tmp_path / "runs"), "jobs": jobs,
            "grids": [{"datasets": ["frappe_x1_subset"], "models": list(models), "seeds": list(seeds),
                       "trainer": dict(FAST), **grid}]}


def test_expand_grid_sets_and_duplicates(tmp_path):
    d = plan_dict(tmp_path, models=["DNN", "DCNv2"], seeds=[1, 2], protocols=["bars", "robust"],
                  hparam_sets=[{"name": "preset"}, {"name": "drop", "models": ["DNN"], "params": {"net_dropout": 0.3}}])
    d["grids"].append(dict(d["grids"][0], protocols=["bars"], hparam_sets=[{"name": "preset"}]))  # all duplicates
    jobs = expand(load_plan(d))
    assert len(jobs) == 2 * 2 * (2 + 1)  # protocols x seeds x (two models preset + DNN drop)
    assert len({j.key for j in jobs}) == len(jobs)
    drop = [j for j in jobs if j.hparam_set == "drop"]
    assert {j.model for j in drop} == {"DNN"} and all(j.resolved["model_params"]["net_dropout"] == 0.3 for j in drop)
    assert all(j.run_dir.endswith(f"{j.protocol}/DNN-drop-s{j.seed}") for j in drop)
    robust = [j for j in jobs if j.protocol == "robust"]
    assert all(j.resolved["trainer"]["min_epochs"] == 10 for j in robust)
    # presets are merged into the resolved config: the key changes when a preset value would
    preset = next(j for j in jobs if j.model == "DNN" and j.hparam_set == "preset")
    assert preset.resolved["model_params"]["embedding_regularizer"] > 0  # BARS Frappe_x1 DNN preset


@pytest.mark.parametrize("bad,msg", [({"protocols": ["nope"]}, "unknown \\['nope'\\]"),
                                     ({"hparam_sets": [{"name": "x", "models": ["FM"]}]}, "none of which"),
                                     ({"colour": 1}, "colour")])
def test_bad_plans_are_refused(tmp_path, bad, msg):
    with pytest.raises(ConfigError, match=msg):
        load_plan(plan_dict(tmp_path, **bad))


def test_run_skip_and_adopt(data_dir, tmp_path):
    d = plan_dict(tmp_path)
    out = run_plan(load_plan(d), log=lambda *_: None)
    assert [o.how for o in out] == ["trained", "trained"] and all(o.test_auc > 0.8 for o in out)
    with ResultsStore(d["db"]) as s:
        rows = s.runs()
        assert len(rows) == 2 and all(len(s.epochs(r["key"])) == 3 for r in rows)
        assert all(r["environment"]["torch"] and r["samples_per_s"] > 0 for r in rows)
    assert [o.how for o in run_plan(load_plan(d), log=lambda *_: None)] == ["skipped", "skipped"]
    # a new store over the same run folders adopts the finished runs instead of retraining them
    d2 = dict(d, db=str(tmp_path / "other.sqlite"))
    again = run_plan(load_plan(d2), log=lambda *_: None)
    assert [o.how for o in again] == ["adopted", "adopted"]
    assert [o.test_auc for o in again] == [o.test_auc for o in out]


def test_killed_bench_resumes_and_repeats_nothing(data_dir, tmp_path):
    """SIGKILL a real `ctrlab bench` while its second run is mid-way, rerun it: the finished run is
    skipped, the interrupted one resumes, and its numbers equal an uninterrupted run's."""
    d = plan_dict(tmp_path)
    d["grids"][0]["trainer"]["epochs"] = 4
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(d))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "ctrlab.cli", "bench", str(plan_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            con = sqlite3.connect(d["db"])
            row = con.execute("SELECT COUNT(*) FROM epochs e JOIN runs r ON r.key = e.run_key "
                              "WHERE r.model='DNN' AND r.status='running'").fetchone()
            con.close()
            if row[0] >= 2:
                killed_at = row[0]
                break
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None and killed_at, "the bench finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = run_plan(load_plan(plan_file), log=lambda *_: None)
    assert [o.how for o in out] == ["skipped", "resumed"]
    ref = dict(d, db=str(tmp_path / "ref.sqlite"), runs_dir=str(tmp_path / "ref_runs"))
    ref_out = run_plan(load_plan(ref), log=lambda *_: None)
    assert [o.test_auc for o in out] == [o.test_auc for o in ref_out]
    with ResultsStore(d["db"]) as a, ResultsStore(ref["db"]) as b:
        dnn_a = next(r for r in a.runs() if r["model"] == "DNN")
        dnn_b = next(r for r in b.runs() if r["model"] == "DNN")
        assert [e["valid_auc"] for e in a.epochs(dnn_a["key"])] == [e["valid_auc"] for e in b.epochs(dnn_b["key"])]
        assert len(a.epochs(dnn_a["key"])) == 4


def test_parallel_workers(data_dir, tmp_path):
    d = plan_dict(tmp_path, models=["LR"], seeds=[1, 2, 3], jobs=2)
    out = run_plan(load_plan(d), log=lambda *_: None)
    assert sorted(o.how for o in out) == ["trained"] * 3
    with ResultsStore(d["db"]) as s:
        assert sorted(r["seed"] for r in s.runs()) == [1, 2, 3]
        assert os.getpid() not in {r["pid"] for r in s.runs()}  # trained in the worker processes


def test_failed_run_is_recorded_and_the_bench_goes_on(data_dir, tmp_path):
    d = plan_dict(tmp_path, models=["LR", "DNN"])
    d["grids"][0]["hparam_sets"] = [{"name": "bad", "models": ["DNN"], "params": {"hidden_activations": "nope"}},
                                    {"name": "preset", "models": ["LR"]}]
    out = run_plan(load_plan(d), log=lambda *_: None)
    assert sorted(o.how for o in out) == ["failed", "trained"]
    failed = next(o for o in out if o.how == "failed")
    assert "nope" in failed.error
    with ResultsStore(d["db"]) as s:
        assert "unknown activation" in s.get(failed.key)["error"]


def test_shipped_plans_load():
    """Every file in benchmarks/plans/ is a valid bench plan or search config."""
    from pathlib import Path

    from ctrlab.bench.tune import load_tune_config

    plans = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "plans").glob("*.yaml"))
    assert plans
    for path in plans:
        if "space" in yaml.safe_load(path.read_text()):
            cfg = load_tune_config(path)
            assert cfg.space and (cfg.trials or cfg.minutes)
        else:
            assert expand(load_plan(path))


def test_adding_an_option_at_its_default_keeps_run_identities():
    """Runs recorded before trainer.precision / trainer.sparse_embeddings existed have configs
    without them: at their defaults those options must not change a run's key (else every
    stored run would be retrained); any other value must."""
    from ctrlab.bench.plan import LATER_OPTIONS, make_job, run_key

    job = make_job("p", "runs", "frappe_x1_subset", "LR", seed=2021)
    assert set(LATER_OPTIONS["trainer"]) <= set(job.resolved["trainer"])  # today's configs carry them
    old = {**job.resolved, "trainer": {k: v for k, v in job.resolved["trainer"].items()
                                      if k not in LATER_OPTIONS["trainer"]}}
    assert run_key(old) == job.key
    for key, value in (("precision", "bf16"), ("sparse_embeddings", True)):
        changed = {**job.resolved, "trainer": {**job.resolved["trainer"], key: value}}
        assert run_key(changed) != job.key
    assert run_key({**job.resolved, "trainer": {**job.resolved["trainer"], "lr": 0.01}}) != job.key


def test_streaming_option_keeps_run_identities():
    """The top-level streaming options (how data is prepared) at their defaults leave run keys as they were."""
    from ctrlab.bench.plan import LATER_TOP_LEVEL, make_job, run_key

    job = make_job("p", "runs", "frappe_x1_subset", "LR", seed=2021)
    assert set(LATER_TOP_LEVEL) <= set(job.resolved)
    old = {k: v for k, v in job.resolved.items() if k not in LATER_TOP_LEVEL}
    assert run_key(old) == job.key
    assert run_key({**job.resolved, "streaming": True}) != job.key


def test_a_plan_setting_at_its_default_is_not_re_derived_by_preset_auto(data_dir, tmp_path):
    """Issue 15.1: preset auto never changes what the user set; a bench plan's `batch_size: 4096` (the
    default value) counted as not given when the runner passed a ready RunConfig, and was derived."""
    import json
    from pathlib import Path

    d = plan_dict(tmp_path, models=("LR",), trainer={"epochs": 1, "batch_size": 4096})
    d["grids"][0]["datasets"] = ["criteo_head10k"]  # not a BARS family: auto derives for it
    (out,) = run_plan(load_plan(d), log=lambda *_: None)
    assert out.how == "trained"
    (run,) = Path(d["runs_dir"]).glob("criteo_head10k/bars/LR-s1")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "init_output_bias" in metrics["auto_settings"]  # auto did derive the rest
    assert "trainer.batch_size" not in metrics["auto_settings"] and "trainer.lr" not in metrics["auto_settings"]
    assert "batch_size: 4096" in (run / "run_config.yaml").read_text()
