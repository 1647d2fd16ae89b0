import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ctrlab
import _trainkit as K
from ctrlab.config import ConfigError
from ctrlab.train import (
    TIMING_KEYS,
    CheckpointError,
    Trainer,
    TrainerConfig,
    evaluate_metrics,
    parse_monitor,
    seed_everything,
)
import ctrlab.train.trainer as trainer_module


class _Stop(Exception):
    pass


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


def _stop_after(epoch):
    def cb(trainer, record):
        if record["epoch"] == epoch:
            raise _Stop(epoch)

    return cb


def _assert_same_run(a, b):
    """a, b: (history, metrics, weights)."""
    assert _strip(a[0]) == _strip(b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert abs(a[1][k] - b[1][k]) <= 1e-12, k
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        assert torch.equal(a[2][k], b[2][k]), f"weights differ: {k}"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Uninterrupted runs, one per optimizer: (history, test metrics, final weights, run_dir)."""
    cache = {}

    def get(optimizer="adam"):
        if optimizer not in cache:
            run_dir = tmp_path_factory.mktemp(f"baseline_{optimizer}")
            trainer, history, metrics = K.run(run_dir, K.config(optimizer=optimizer))
            cache[optimizer] = (history, metrics, K.weights(trainer.model), run_dir)
        return cache[optimizer]

    return get


# ---------------------------------------------------------------------------------------------
# determinism and resume
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_history_and_weights(baseline, tmp_path):
    history, metrics, weights, _ = baseline("adam")
    # the scenario exercises improvements, plateaus with lr decay and an early stop
    assert any(r["improved"] for r in history) and any(not r["improved"] for r in history)
    assert len(history) < K.config().epochs
    trainer, history2, metrics2 = K.run(tmp_path)
    _assert_same_run((history, metrics, weights), (history2, metrics2, K.weights(trainer.model)))


@pytest.mark.parametrize(
    "optimizer,stop_epoch", [("adam", 1), ("adam", 3), ("adam", 4), ("adamw", 2), ("sgd", 2)]
)
def test_resume_after_in_process_interrupt_is_exact(baseline, tmp_path, optimizer, stop_epoch):
    history, metrics, weights, _ = baseline(optimizer)
    assert stop_epoch < len(history)
    cfg = K.config(optimizer=optimizer)
    with pytest.raises(_Stop):
        K.run(tmp_path, cfg, callbacks=[_stop_after(stop_epoch)])
    state = json.loads((tmp_path / "checkpoints" / "last_state.json").read_text())
    assert state["epoch"] == stop_epoch
    # a differently initialised model: everything must come from the checkpoint
    trainer, history2, metrics2 = K.run(tmp_path, cfg, resume=True, init_seed=999)
    _assert_same_run((history, metrics, weights), (history2, metrics2, K.weights(trainer.model)))
    assert "resumed from" in (tmp_path / "train.log").read_text()


def test_resume_in_new_process_after_sigkill(baseline, tmp_path):
    history, metrics, weights, _ = baseline("adam")
    src = Path(ctrlab.__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(Path(K.__file__).resolve().parent)])
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    cmd = [sys.executable, str(Path(K.__file__).resolve()), str(run_dir), str(out_dir)]
    killed = subprocess.run(cmd + ["2"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stderr
    assert not (out_dir / "result.json").exists()
    assert json.loads((run_dir / "checkpoints" / "last_state.json").read_text())["epoch"] == 2
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((out_dir / "result.json").read_text())
    final = load_file(str(out_dir / "final.safetensors"))
    _assert_same_run((history, metrics, weights), (result["history"], result["metrics"], final))


class _Crash(Exception):
    pass


def test_commit_interrupted_between_renames_rolls_forward(baseline, tmp_path, monkeypatch):
    history, metrics, weights, _ = baseline("adam")
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        if Path(dst).name == "last.safetensors":
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 3: optimizer (and best) already renamed, weights not
                raise _Crash()
        return real_replace(src, dst)

    monkeypatch.setattr(trainer_module.os, "replace", flaky_replace)
    with pytest.raises(_Crash):
        K.run(tmp_path)
    monkeypatch.setattr(trainer_module.os, "replace", real_replace)
    ckpt = tmp_path / "checkpoints"
    assert json.loads((ckpt / "last_state.json").read_text())["epoch"] == 2
    assert (ckpt / "last_state.json.tmp").exists()
    trainer, history2, metrics2 = K.run(tmp_path, resume=True, init_seed=5)
    _assert_same_run((history, metrics, weights), (history2, metrics2, K.weights(trainer.model)))
    assert not list(ckpt.glob("*.tmp"))


def test_unfinished_commit_is_discarded(baseline, tmp_path):
    history, metrics, weights, _ = baseline("adam")
    with pytest.raises(_Stop):
        K.run(tmp_path, callbacks=[_stop_after(2)])
    ckpt = tmp_path / "checkpoints"
    (ckpt / "last.safetensors.tmp").write_bytes(b"half a file")
    (ckpt / "last_state.json.tmp").write_text('{"format": 1, "epoch": 3, "hist')
    trainer, history2, metrics2 = K.run(tmp_path, resume=True, init_seed=5)
    _assert_same_run((history, metrics, weights), (history2, metrics2, K.weights(trainer.model)))
    assert not list(ckpt.glob("*.tmp"))


def test_inconsistent_or_incompatible_checkpoint_is_refused(tmp_path):
    with pytest.raises(_Stop):
        K.run(tmp_path, callbacks=[_stop_after(2)])
    state_path = tmp_path / "checkpoints" / "last_state.json"
    good = state_path.read_text()
    with pytest.raises(CheckpointError, match="monitor"):
        K.run(tmp_path, K.config(monitor="logloss"), resume=True)
    state = json.loads(good)
    state["epoch"] = 1
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="epoch"):
        K.run(tmp_path, resume=True)


def test_resume_without_checkpoint_starts_fresh_and_finished_run_does_not_train(baseline, tmp_path):
    history, metrics, weights, _ = baseline("adam")
    trainer, history2, metrics2 = K.run(tmp_path, resume=True)
    _assert_same_run((history, metrics, weights), (history2, metrics2, K.weights(trainer.model)))
    log_before = (tmp_path / "train.log").read_text()
    assert "starting fresh" in log_before
    trainer, history3, metrics3 = K.run(tmp_path, resume=True, init_seed=3)
    _assert_same_run((history, metrics, weights), (history3, metrics3, K.weights(trainer.model)))
    new_lines = (tmp_path / "train.log").read_text()[len(log_before):]
    assert "resumed from" in new_lines and " | train_loss " not in new_lines


def test_checkpoint_files_and_log(baseline):
    history, _, weights, run_dir = baseline("adam")
    ckpt = run_dir / "checkpoints"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["best.safetensors", "last.safetensors", "last_optimizer.safetensors", "last_state.json"]
    state = json.loads((ckpt / "last_state.json").read_text())
    assert state["epoch"] == len(history) and state["stopped_early"]
    assert state["history"] == history
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["config"]["lr"] == K.config().lr
    best_epoch = max(history, key=lambda r: r["valid_AUC"])["epoch"]
    assert state["best_epoch"] == best_epoch
    with safe_open(str(ckpt / "best.safetensors"), framework="pt") as f:
        assert f.metadata()["epoch"] == str(best_epoch)
    best = load_file(str(ckpt / "best.safetensors"))
    assert all(torch.equal(best[k], weights[k]) for k in weights)  # restored = best epoch
    opt = load_file(str(ckpt / "last_optimizer.safetensors"))
    assert {"fc.weight/exp_avg", "fc.weight/exp_avg_sq", "fc.weight/step"} <= set(opt)
    assert state["optimizer"]["param_groups"][0]["params"][0] == "lr.weight"
    log = (run_dir / "train.log").read_text()
    assert log.count(" | train_loss ") == len(history)
    assert "early stop after epoch" in log and "loaded best weights" in log


# ---------------------------------------------------------------------------------------------
# the BARS protocol: plateaus, lr decay, early stop, best weights
# ---------------------------------------------------------------------------------------------
def _scripted_run(tmp_path, schedule, **cfg_over):
    """Train ScriptedModel; validation quality of epoch e is schedule[e - 1]."""
    seed_everything(0)
    model = K.ScriptedModel()
    model.quality = schedule[0]
    snapshots = {}

    def cb(trainer, record):
        snapshots[record["epoch"]] = K.weights(trainer.model)
        model.quality = schedule[min(record["epoch"], len(schedule) - 1)]

    cfg = K.config(**{"epochs": 10, "lr": 0.01, **cfg_over})
    trainer = Trainer(model, cfg, tmp_path, callbacks=[cb])
    train, valid, _ = K.loaders(cfg)
    history = trainer.fit(train, valid)
    return trainer, history, snapshots


def test_plateau_decays_lr_stops_after_patience_and_restores_best(tmp_path):
    trainer, history, snaps = _scripted_run(tmp_path, [0.5, 1.0, 1.0, 0.8, 3.0, 3.0])
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["improved"] for r in history] == [True, True, False, False]
    assert [r["stopping_steps"] for r in history] == [0, 0, 1, 2]
    assert history[2]["valid_AUC"] == history[1]["valid_AUC"]  # equal counts as no improvement
    assert [r["lr"] for r in history] == pytest.approx([0.01, 0.01, 0.01, 0.001], rel=1e-12)
    assert [r["next_lr"] for r in history] == pytest.approx([0.01, 0.01, 0.001, 0.0001], rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-12)
    assert trainer.stopped_early and trainer.best_epoch == 2
    assert trainer.best_metric == history[1]["valid_AUC"]
    restored = K.weights(trainer.model)
    assert all(torch.equal(restored[k], snaps[2][k]) for k in restored)
    assert not all(torch.equal(restored[k], snaps[4][k]) for k in restored)


def test_min_epochs_delays_the_stop_and_lr_floors_at_min_lr(tmp_path):
    schedule = [0.5, 1.0] + [0.9] * 10
    trainer, history, snaps = _scripted_run(tmp_path, schedule, min_epochs=6, min_lr=1e-5)
    assert len(history) == 6
    assert [r["stopping_steps"] for r in history] == [0, 0, 1, 2, 3, 4]
    assert [r["lr"] for r in history] == pytest.approx([0.01, 0.01, 0.01, 1e-3, 1e-4, 1e-5], rel=1e-12)
    assert history[-1]["next_lr"] == 1e-5
    restored = K.weights(trainer.model)
    assert all(torch.equal(restored[k], snaps[2][k]) for k in restored)


def test_improvement_must_exceed_min_delta(tmp_path):
    trainer, history, _ = _scripted_run(tmp_path, [1.0, 1.1, 1.2], min_delta=0.5)
    assert history[1]["valid_AUC"] > history[0]["valid_AUC"]
    assert [r["improved"] for r in history] == [True, False, False]
    assert trainer.best_epoch == 1 and len(history) == 3


def test_tie_counts_as_improvement_when_min_delta_is_zero(tmp_path):
    # FuxiCTR: plateau iff value < best + min_delta, so with min_delta=0 an equal value improves
    trainer, history, _ = _scripted_run(tmp_path, [0.5, 1.0, 1.0, 0.8, 0.8], min_delta=0.0)
    assert history[2]["valid_AUC"] == history[1]["valid_AUC"]
    assert [r["improved"] for r in history] == [True, True, True, False, False]
    assert trainer.best_epoch == 3


def test_train_loader_gets_each_epoch_index(tmp_path):
    calls = []

    class Recording(K.BatchLoader):
        def set_epoch(self, epoch):
            calls.append(epoch)
            super().set_epoch(epoch)

    cfg = K.config(epochs=3, patience=5)
    seed_everything(0)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    _, valid, _ = K.loaders(cfg)
    train = Recording(K.make_split(300, 1), batch_size=64, shuffle=True, seed=cfg.seed)
    trainer.fit(train, valid)
    assert calls == [0, 1, 2]


def test_restore_best_false_keeps_last_weights(tmp_path):
    trainer, history, snaps = _scripted_run(tmp_path, [0.5, 1.0, 1.0, 0.8], restore_best=False)
    final = K.weights(trainer.model)
    assert all(torch.equal(final[k], snaps[4][k]) for k in final)


def test_combined_monitor(tmp_path):
    trainer, history, _ = K.run(tmp_path, K.config(monitor="AUC-logloss", epochs=2))
    for r in history:
        assert r["monitor"] == pytest.approx(r["valid_AUC"] - r["valid_logloss"], abs=1e-15)
    assert trainer.monitor_mode == "max"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_config_from_dict_defaults_and_errors():
    cfg = TrainerConfig.from_dict({"lr": "1e-3", "monitor": {"AUC": 1, "logloss": -1}, "metrics": ["AUC", "gAUC"]})
    assert cfg.lr == 1e-3 and cfg.monitor_weights() == {"AUC": 1.0, "logloss": -1.0}
    assert cfg.resolved_monitor_mode() == "max"
    assert cfg.eval_metric_names() == ["AUC", "gAUC", "logloss"]
    assert TrainerConfig.from_dict(cfg.to_dict()) == cfg
    d = TrainerConfig()
    assert (d.epochs, d.batch_size, d.optimizer, d.lr, d.patience, d.min_epochs) == (100, 4096, "adam", 1e-3, 2, 0)
    assert (d.lr_decay_factor, d.min_lr, d.min_delta, d.max_grad_norm, d.seed) == (0.1, 1e-6, 1e-6, 10.0, 2021)
    assert d.resolved_eval_batch_size == 4096 and d.resolved_device() in ("cpu", "cuda")
    assert TrainerConfig(monitor="logloss").resolved_monitor_mode() == "min"
    assert TrainerConfig(monitor="-logloss").resolved_monitor_mode() == "max"
    assert parse_monitor("AUC - logloss") == {"AUC": 1.0, "logloss": -1.0}
    for bad in (
        {"patience": 0},
        {"optimizer": "rmsprop"},
        {"monitor": "AUC logloss"},
        {"monitor": "accuracy"},
        {"monitor": {"AUC": 1, "logloss": 1}},  # auto mode cannot tell the direction
        {"metrics": ["AUC", "AUC"]},
        {"lr_decay_factor": 1.5},
        {"bogus": 1},
        {"device": "tpu:x"},
    ):
        with pytest.raises(ConfigError):
            TrainerConfig.from_dict(bad)
    ok = TrainerConfig.from_dict({"monitor": {"AUC": 1, "logloss": 1}, "monitor_mode": "max"})
    assert ok.resolved_monitor_mode() == "max"
    with pytest.raises(ConfigError):
        Trainer(K.TinyModel(), {"patience": -1}, "unused")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_is_a_config_error(tmp_path, monkeypatch, device):
    """issue 14.22: trainer.device=cuda on a machine without CUDA was an AssertionError deep in torch."""
    from ctrlab.train.distributed import setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for make in (lambda: Trainer(K.TinyModel(), K.config(device=device), tmp_path),
                 lambda: setup(False, device)):
        with pytest.raises(ConfigError, match=r"trainer\.device.*CUDA.*trainer\.device=auto"):
            make()
    assert Trainer(K.TinyModel(), K.config(device="auto"), tmp_path).device.type == "cpu"


def test_cuda_device_beyond_the_visible_gpus_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer\.device: 'cuda:1'.*1 GPU.*cuda:0"):
        Trainer(K.TinyModel(), K.config(device="cuda:1"), tmp_path)


# ---------------------------------------------------------------------------------------------
# evaluation, prediction, the model's own loss
# ---------------------------------------------------------------------------------------------
def test_predict_evaluate_and_gauc(tmp_path, capsys):
    cfg = K.config(epochs=2, metrics=["AUC", "logloss", "gAUC"], progress=True)
    seed_everything(0)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    train, valid, test = K.loaders(cfg, n_groups=20)
    history = trainer.fit(train, valid)
    assert "valid_gAUC" in history[0]
    assert "samples/s" in capsys.readouterr().out  # off a terminal, one progress line per epoch
    prob = trainer.predict(test)
    trainer.model.eval()
    with torch.no_grad():
        manual = torch.cat([torch.sigmoid(trainer.model(b)["logit"].double()) for b in test]).numpy()
    assert prob.dtype == np.float64 and np.array_equal(prob, manual)
    y = np.concatenate([b["label"][:, 0].numpy() for b in test])
    g = np.concatenate([b["group"].numpy() for b in test])
    assert trainer.evaluate(test) == evaluate_metrics(y, prob, ["AUC", "logloss", "gAUC"], g)
    no_group = cfg.make_eval_loader(K.make_split(100, 4))
    with pytest.raises(ValueError, match="group"):
        trainer.evaluate(no_group)
    assert set(trainer.evaluate(no_group, metrics=["AUC"])) == {"AUC"}


def test_evaluate_final_adds_calibration_and_group_metrics_from_one_pass(tmp_path, monkeypatch):
    """issue 19: the final evaluation computes final_metric_names (configured first, then NE,
    calibration, ECE, then the group metrics when batches carry 'group') and the reliability
    diagram, all from the one prediction array that evaluate_metrics would score."""
    from ctrlab.train.metrics import final_metric_names, reliability

    cfg = K.config(epochs=1)
    seed_everything(0)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    train, valid, test = K.loaders(cfg, n_groups=20)
    trainer.fit(train, valid)
    prob = trainer.predict(test)
    y = np.concatenate([b["label"][:, 0].numpy() for b in test])
    g = np.concatenate([b["group"].numpy() for b in test])
    passes = []
    real = trainer._run_inference
    monkeypatch.setattr(trainer, "_run_inference", lambda *a, **k: passes.append(1) or real(*a, **k))
    metrics, curve = trainer.evaluate_final(test, split="test")
    assert len(passes) == 1
    names = final_metric_names(["AUC", "logloss"], True)
    assert list(metrics) == names == ["AUC", "logloss", "NE", "calibration", "ECE", "gAUC", "gAUC_mean", "MRR",
                                      "nDCG@5", "nDCG@10"]
    assert metrics == evaluate_metrics(y, prob, names, g)
    assert curve == reliability(y, prob)
    log = (tmp_path / "train.log").read_text()
    assert f"[metrics test] AUC: {metrics['AUC']:.6f} - logloss: {metrics['logloss']:.6f} - NE:" in log
    no_group = cfg.make_eval_loader(K.make_split(100, 4))
    assert list(trainer.evaluate_final(no_group)[0]) == ["AUC", "logloss", "NE", "calibration", "ECE"]
    # the per-epoch set is unchanged (the BARS protocol): evaluate() keeps trainer.metrics
    assert list(trainer.evaluate(test)) == ["AUC", "logloss"]


def test_evaluate_final_reports_an_undefined_extra_metric_as_nan(tmp_path):
    """A split whose groups hold no positive: the group metrics beyond trainer.metrics are NaN with a
    warning, not a failed run (a configured metric still raises, as before)."""
    seed_everything(0)
    cfg = K.config(epochs=1)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    split = K.make_split(200, 4, n_groups=10)
    split.arrays["group"] = np.arange(200)  # one row per group: no group has both classes
    metrics, _ = trainer.evaluate_final(cfg.make_eval_loader(split), split="valid")
    assert np.isnan(metrics["gAUC"]) and np.isnan(metrics["gAUC_mean"])
    assert 0 < metrics["MRR"] == metrics["nDCG@10"] == 1.0  # every positive row is its group's best
    assert "valid: the metrics ['gAUC', 'gAUC_mean'] are NaN (gAUC is undefined: no group has both" in (
        tmp_path / "train.log").read_text()
    with pytest.raises(ValueError, match="no group has both"):
        Trainer(K.TinyModel(), K.config(metrics=["AUC", "gAUC"]), tmp_path / "b").evaluate_final(
            cfg.make_eval_loader(split))


def test_final_metrics_of_transformed_probabilities(tmp_path):
    """What post-hoc calibration uses: evaluate_final with a transform, and final_metrics of given
    probabilities, equal evaluate_metrics of the transformed predictions."""
    from ctrlab.train.metrics import final_metric_names, reliability

    seed_everything(0)
    cfg = K.config(epochs=1)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    _, _, test = K.loaders(cfg, n_groups=15)
    prob, y, g = trainer.predict_with_labels(test)
    np.testing.assert_array_equal(prob, trainer.predict(test))
    assert np.array_equal(y, np.concatenate([b["label"][:, 0].numpy() for b in test]))
    assert np.array_equal(g, np.concatenate([b["group"].numpy() for b in test]))
    squash = lambda p: 0.2 + 0.5 * p  # noqa: E731  any map of probabilities
    names = final_metric_names(["AUC", "logloss"], True)
    metrics, curve = trainer.evaluate_final(test, split="test", transform=squash)
    assert metrics == evaluate_metrics(y, squash(prob), names, g) and curve == reliability(y, squash(prob))
    assert trainer.final_metrics(squash(prob), y, g) == (metrics, curve)
    assert trainer.final_metrics(prob, y, None)[0] == evaluate_metrics(y, prob, final_metric_names(["AUC", "logloss"],
                                                                                                  False))


def test_monitor_accepts_the_new_metrics_and_refuses_calibration():
    assert parse_monitor("nDCG@10") == {"nDCG@10": 1.0}
    assert parse_monitor("gAUC_mean-logloss") == {"gAUC_mean": 1.0, "logloss": -1.0}
    assert parse_monitor("cvr_nDCG@5 + ctr_gAUC_mean") == {"cvr_nDCG@5": 1.0, "ctr_gAUC_mean": 1.0}
    assert TrainerConfig(monitor="MRR", metrics=["AUC", "MRR"]).resolved_monitor_mode() == "max"
    for lower in ("NE", "ECE", "logloss", "cvr_ECE"):
        assert TrainerConfig(monitor=lower).resolved_monitor_mode() == "min"
    assert TrainerConfig(monitor="AUC-ECE").resolved_monitor_mode() == "max"
    for bad in ("calibration", "AUC-calibration", "cvr_calibration"):
        with pytest.raises(ConfigError, match="best at 1.*monitor ECE or NE"):
            TrainerConfig.from_dict({"monitor": bad})
    assert TrainerConfig.from_dict({"metrics": ["AUC", "NE", "nDCG@5"]}).eval_metric_names() == ["AUC", "NE", "nDCG@5"]


class _Saturated(K.TinyModel):
    """Every row gets logit 20: p = 1 - 2.1e-9, which float32 rounds to 1.0."""

    def forward(self, batch):
        return {"logit": 0 * super().forward(batch)["logit"] + 20.0}


def test_probabilities_are_computed_in_float64(tmp_path):
    """issue 14.8: a float32 sigmoid saturates at 1.0 from logit ~17 on, so the logloss of a confident
    wrong row was the clipping constant (16.1 at eps 1e-7, 36.0 at the float64 eps), not softplus(logit)."""
    seed_everything(0)
    trainer = Trainer(_Saturated(), K.config(), tmp_path)
    loader = K.config().make_eval_loader(K.make_split(400, 2))
    prob = trainer.predict(loader)
    assert prob.dtype == np.float64 and np.all(prob < 1.0)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-20.0)), rtol=1e-15)
    y = np.concatenate([b["label"][:, 0].numpy() for b in loader])
    softplus = np.log1p(np.exp(-20.0))  # -log(sigmoid(20)); a negative row costs 20 + softplus
    expected = np.mean(y * softplus + (1 - y) * (20.0 + softplus))
    assert trainer.evaluate(loader, ["logloss"])["logloss"] == pytest.approx(expected, rel=1e-7)


class _OffsetLoss(K.TinyModel):
    offset = 100.0

    def loss(self, batch, outputs):
        return super().loss(batch, outputs) + self.offset


def test_trainer_uses_model_loss_and_rejects_non_finite_loss(tmp_path):
    seed_everything(0)
    cfg = K.config(epochs=1)
    trainer = Trainer(_OffsetLoss(), cfg, tmp_path / "a")
    train, valid, _ = K.loaders(cfg)
    history = trainer.fit(train, valid)
    assert 100.0 < history[0]["train_loss"] < 102.0
    model = _OffsetLoss()
    model.offset = float("nan")
    with pytest.raises(FloatingPointError, match="training loss"):
        Trainer(model, cfg, tmp_path / "b").fit(train, valid)


class _BNModel(K.TinyModel):
    """TinyModel with a BatchNorm over the flattened embeddings (no dropout before it)."""

    def __init__(self):
        super().__init__(dropout=0.0)
        self.bn = torch.nn.BatchNorm1d(len(K.FIELDS) * 4)

    def features(self, batch):
        return self.emb(batch["cat"] + self.offsets).flatten(1)

    def forward(self, batch):
        idx = batch["cat"] + self.offsets
        h = self.bn(self.features(batch))
        return {"logit": self.lr(idx).sum((1, 2)) + self.fc(h).squeeze(1)}


@pytest.mark.parametrize("n_batches", [3, 100])
def test_bn_recalibration_sets_exact_running_statistics(tmp_path, n_batches):
    """After each epoch the BN running mean/var are the exact average of per-batch statistics over
    the first ``n_batches`` training batches of that epoch (not the lagging exponential average)."""
    cfg = K.config(epochs=1, bn_recalibration_batches=n_batches)
    seed_everything(0)
    model = _BNModel()
    trainer = Trainer(model, cfg, tmp_path)
    train, valid, _ = K.loaders(cfg)
    trainer.fit(train, valid)
    train.set_epoch(0)
    means, vars_ = [], []
    with torch.no_grad():
        for i, batch in enumerate(train):
            if i >= n_batches:
                break
            f = model.features(batch)
            means.append(f.mean(0))
            vars_.append(f.var(0, unbiased=True))
    assert len(means) == min(n_batches, len(train))
    torch.testing.assert_close(model.bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.bn.running_var, torch.stack(vars_).mean(0), rtol=1e-5, atol=1e-7)
    assert model.bn.momentum == 0.1  # restored after recalibration


def test_bn_recalibration_off_by_default_keeps_bars_protocol(tmp_path):
    cfg = K.config(epochs=1)
    assert cfg.bn_recalibration_batches == 0
    seed_everything(0)
    model = _BNModel()
    Trainer(model, cfg, tmp_path).fit(*K.loaders(cfg)[:2])
    train, _, _ = K.loaders(cfg)
    train.set_epoch(0)
    with torch.no_grad():
        exact = torch.stack([model.features(b).mean(0) for b in train]).mean(0)
    assert not torch.allclose(model.bn.running_mean, exact, rtol=1e-3, atol=1e-6)


# ---- precision ------------------------------------------------------------------------------------
def test_bf16_precision_runs_the_forward_in_bfloat16_and_learns_like_fp32(tmp_path):
    """precision=bf16: the layers compute in bfloat16 (seen by a hook), losses and predictions come
    back float32, the weights stay float32, and the model learns as well as in fp32."""
    from ctrlab.data.loader import BatchLoader

    train, valid = K.make_split(4000, 1), K.make_split(2000, 2)
    aucs = {}
    for precision in ("fp32", "bf16"):
        seed_everything(0)
        model = K.TinyModel(dropout=0.0)
        seen = []
        model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        cfg = TrainerConfig(epochs=6, batch_size=256, lr=1e-2, progress=False, precision=precision)
        trainer = Trainer(model, cfg, tmp_path / precision)
        trainer.fit(BatchLoader(train, 256, shuffle=True), BatchLoader(valid, 1024))
        aucs[precision] = trainer.evaluate(BatchLoader(valid, 1024))["AUC"]
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert trainer.predict(BatchLoader(valid, 1024)).dtype == np.float64
    assert aucs["fp32"] > 0.75 and abs(aucs["bf16"] - aucs["fp32"]) < 0.01, aucs


def test_fp16_precision_scales_the_loss_learns_and_resumes_exactly(tmp_path):
    """precision=fp16: float16 forward with a GradScaler (its scale is checkpointed), float32 weights,
    learning like fp32; an interrupted fp16 run resumes to the same weights."""
    from ctrlab.data.loader import BatchLoader

    train, valid = K.make_split(4000, 1), K.make_split(2000, 2)

    def fit(run_dir, epochs, resume=False):
        seed_everything(0)
        model = K.TinyModel(dropout=0.0)
        seen = []
        model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        cfg = TrainerConfig(epochs=epochs, batch_size=256, lr=1e-2, progress=False, precision="fp16", patience=10)
        trainer = Trainer(model, cfg, run_dir)
        trainer.fit(BatchLoader(train, 256, shuffle=True), BatchLoader(valid, 1024), resume=resume)
        return trainer, model, seen

    trainer, model, seen = fit(tmp_path / "full", 4)
    assert set(seen) == {torch.float16} and all(p.dtype == torch.float32 for p in model.parameters())
    assert trainer._scaler is not None and trainer._scaler.get_scale() > 0
    state = json.loads((tmp_path / "full" / "checkpoints" / "last_state.json").read_text())
    assert state["grad_scaler"]["scale"] == trainer._scaler.get_scale()
    assert trainer.evaluate(BatchLoader(valid, 1024))["AUC"] > 0.75
    fit(tmp_path / "cut", 2)
    resumed, model2, _ = fit(tmp_path / "cut", 4, resume=True)
    assert resumed._scaler.get_scale() == trainer._scaler.get_scale()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


# ---- sparse embedding gradients -----------------------------------------------------------------
def _deepfm(seed=0, **kw):
    from ctrlab.models import create

    seed_everything(seed)
    return create("DeepFM", K.feature_map(), embedding_dim=4, hidden_units=[16], **kw)


def _fit(model, cfg, run_dir, callbacks=(), resume=False):
    from ctrlab.data.loader import BatchLoader

    trainer = Trainer(model, cfg, run_dir, callbacks=callbacks)
    trainer.fit(BatchLoader(K.make_split(3000, 1), 256, shuffle=True, seed=cfg.seed),
                BatchLoader(K.make_split(1500, 2), 1024), resume=resume)
    return trainer


def test_sparse_embeddings_with_sgd_match_dense_sgd_including_clipping(tmp_path):
    """SGD's sparse update equals the dense one, so any difference would come from the sparse
    gradients or the clip over them (max_grad_norm small enough to clip every step)."""
    weights = {}
    for sparse in (False, True):
        cfg = TrainerConfig(epochs=2, optimizer="sgd", lr=0.5, max_grad_norm=0.05, progress=False,
                            sparse_embeddings=sparse, restore_best=False)
        trainer = _fit(_deepfm(), cfg, tmp_path / str(sparse))
        tables = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
        assert len(tables) == (2 if sparse else 0)  # the FM/DNN table and the linear term's table
        weights[sparse] = K.weights(trainer.model)
    for k, v in weights[False].items():
        assert torch.allclose(v, weights[True][k], atol=1e-6), k
    assert not torch.allclose(weights[False]["embedding.embedding.weight"],
                              _deepfm().state_dict()["embedding.embedding.weight"])  # it trained


def test_sparse_embeddings_with_adam_learn_like_dense_adam_and_resume_exactly(tmp_path):
    """SparseAdam (lazy Adam) on the tables is a different update from dense Adam, so the bar is
    learning as well; resume after an interrupt is bit-exact as with every other optimizer."""
    from ctrlab.data.loader import BatchLoader
    from ctrlab.train.optim import CompositeOptimizer

    aucs = {}
    for sparse in (False, True):
        cfg = TrainerConfig(epochs=4, lr=1e-2, progress=False, sparse_embeddings=sparse)
        trainer = _fit(_deepfm(), cfg, tmp_path / f"adam_{sparse}")
        aucs[sparse] = trainer.evaluate(BatchLoader(K.make_split(1500, 3), 1024))["AUC"]
        assert isinstance(trainer.optimizer, CompositeOptimizer) == sparse
    assert aucs[False] > 0.75 and abs(aucs[True] - aucs[False]) < 0.01, aucs

    cfg = TrainerConfig(epochs=4, lr=1e-2, progress=False, sparse_embeddings=True, patience=10)
    whole = _fit(_deepfm(), cfg, tmp_path / "whole")
    with pytest.raises(_Stop):
        _fit(_deepfm(), cfg, tmp_path / "resumed", callbacks=[_stop_after(2)])
    resumed = _fit(_deepfm(seed=5), cfg, tmp_path / "resumed", resume=True)
    assert _strip(whole.history) == _strip(resumed.history)
    for k, v in K.weights(whole.model).items():
        assert torch.equal(v, K.weights(resumed.model)[k]), k


def test_sparse_embeddings_refuse_a_whole_table_regularizer_and_adamw(tmp_path):
    with pytest.raises(ConfigError, match="embedding_regularizer"):
        Trainer(_deepfm(embedding_regularizer=0.01), TrainerConfig(sparse_embeddings=True), tmp_path)
    with pytest.raises(ConfigError, match="adamw"):
        TrainerConfig.from_dict({"sparse_embeddings": True, "optimizer": "adamw"})
    with pytest.raises(ConfigError, match="sparse_embeddings"):
        TrainerConfig.from_dict({"sparse_embeddings": "yes"})


def test_fit_without_validation_trains_every_epoch_and_keeps_the_last_weights(tmp_path):
    """Issue 15.3: fit(train, None) (a dataset with valid_fraction: 0) crashed after epoch 1
    ('NoneType' object is not iterable); it now trains every epoch, saves no best checkpoint, keeps
    the last epoch's weights, and says so in the log."""
    cfg = K.config(epochs=3, patience=1)
    seed_everything(0)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    train, _, test = K.loaders(cfg)
    history = trainer.fit(train, None)
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(r["monitor"] is None for r in history)
    assert not trainer.checkpoint.best_path.exists() and trainer.best_epoch is None
    last = load_file(str(trainer.checkpoint.dir / "last.safetensors"))  # written after epoch 3
    assert all(torch.equal(v.cpu(), last[k]) for k, v in trainer.model.state_dict().items())
    log = (tmp_path / "train.log").read_text()
    assert "no validation split: training all 3 epochs without early stopping" in log
    assert "loaded best weights" not in log
    assert 0.5 < trainer.evaluate(test)["AUC"] <= 1.0


# ---------------------------------------------------------------------------------------------
# validate_start: the starting weights compete at the end (issue 15.1, with linear_warm_start)
# ---------------------------------------------------------------------------------------------
class _StartScripted(K.ScriptedModel):
    """ScriptedModel whose validation quality is ``start`` until the first training step."""

    def __init__(self, start: float, first: float):
        super().__init__()
        self.quality, self.first = start, first
        self.steps = 0

    def forward(self, batch):
        if self.training and self.steps == 0:
            self.steps, self.quality = 1, self.first
        return super().forward(batch)


def _start_run(run_dir, start, schedule, resume=False, stop_after=None, **over):
    seed_everything(0)
    model = _StartScripted(start, schedule[0])
    initial = K.weights(model)

    def cb(trainer, record):
        model.quality = schedule[min(record["epoch"], len(schedule) - 1)]
        if record["epoch"] == stop_after:
            raise KeyboardInterrupt

    cfg = K.config(**{"epochs": 10, "lr": 0.01, "validate_start": True, **over})
    trainer = Trainer(model, cfg, run_dir, callbacks=[cb])
    train, valid, _ = K.loaders(cfg)
    if resume:  # the script's state as the callback of the interrupted epoch 1 left it
        model.steps, model.quality = 1, schedule[1]
    history = trainer.fit(train, valid, resume=resume)
    return trainer, history, initial


def test_validate_start_keeps_the_start_when_no_epoch_beats_it(tmp_path):
    """Early stopping and LR decay still compare epochs with each other (the same history as without
    validate_start); at the end the better starting weights are loaded back."""
    schedule = [0.5, 1.0, 1.0, 0.8, 0.8]
    trainer, history, initial = _start_run(tmp_path / "a", 3.0, schedule)
    plain, plain_history, _ = _start_run(tmp_path / "b", 3.0, schedule, validate_start=False)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["improved"] for r in history] == [True, True, False, False]
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in plain_history]
    assert trainer.best_epoch == 2 and trainer.kept_start and not plain.kept_start
    assert trainer.start_metric > trainer.best_metric
    final = K.weights(trainer.model)
    assert all(torch.equal(final[k], initial[k]) for k in final)
    assert not all(torch.equal(final[k], K.weights(plain.model)[k]) for k in final)
    assert "no epoch beat the starting weights" in (tmp_path / "a" / "train.log").read_text()


def test_validate_start_gives_way_to_a_better_epoch(tmp_path):
    trainer, history, initial = _start_run(tmp_path, 0.2, [0.5, 1.0, 1.0, 0.8, 0.8])
    assert not trainer.kept_start and trainer.best_epoch == 2 and trainer.start_metric < trainer.best_metric
    best = load_file(str(tmp_path / "checkpoints" / "best.safetensors"))
    final = K.weights(trainer.model)
    assert all(torch.equal(final[k], best[k]) for k in final)
    start = load_file(str(tmp_path / "checkpoints" / "start.safetensors"))
    assert all(torch.equal(start[k], initial[k]) for k in start)


def test_validate_start_survives_a_resume(tmp_path):
    """The start's score is in the checkpoint: a run interrupted after epoch 1 and resumed makes the
    same final choice as an uninterrupted one (and does not validate its resumed weights as a start)."""
    schedule = [0.5, 1.0, 1.0, 0.8, 0.8]
    with pytest.raises(KeyboardInterrupt):
        _start_run(tmp_path / "r", 3.0, schedule, stop_after=1)
    resumed, history, _ = _start_run(tmp_path / "r", 0.0, schedule, resume=True)
    whole, whole_history, initial = _start_run(tmp_path / "w", 3.0, schedule)
    assert resumed.kept_start and resumed.start_metric == whole.start_metric
    assert len(history) == len(whole_history)
    final = K.weights(resumed.model)
    assert all(torch.equal(final[k], initial[k]) for k in final)


def test_model_optimizer_groups_train_with_their_own_lr_and_resume_exactly(tmp_path):
    """A model's optimizer_groups (OptEmbed's thresholds: plain SGD at their own lr) are stepped by
    their own optimizer, keep their lr across the trainer's resets and lr decay floor, and an
    interrupted run resumes bit for bit."""
    from ctrlab.models.deepfm import DeepFM

    class WithGroup(DeepFM):
        def optimizer_groups(self):
            return [{"name": "fm_out", "params": [self.mlp.out.bias], "optimizer": "sgd", "lr": 0.123}]

    def model():
        seed_everything(0)
        return WithGroup(K.feature_map(), embedding_dim=4, hidden_units=[16])

    cfg = TrainerConfig(epochs=3, lr=1e-2, progress=False, patience=10)
    whole = _fit(model(), cfg, tmp_path / "whole")
    groups = whole.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-2, 0.123]
    assert isinstance(whole.optimizer.optimizers[1], torch.optim.SGD)
    with pytest.raises(_Stop):
        _fit(model(), cfg, tmp_path / "resumed", callbacks=[_stop_after(1)])
    resumed = _fit(model(), cfg, tmp_path / "resumed", resume=True)
    assert _strip(resumed.history) == _strip(whole.history)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
