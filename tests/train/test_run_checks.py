"""Warnings that catch a bad run (issue 15.2), labelled metrics lines and plain progress lines off a
terminal (15.7): each check fires on a constructed case and stays silent on a healthy one, on real data."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

import _trainkit as K
from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.feature_map import CategoricalField
from ctrlab.data.loader import EncodedSplit
from ctrlab.data.oov import high_oov_fix, oov_rates
from ctrlab.data.schema import OOV_ID
from ctrlab.train import Trainer, seed_everything
from ctrlab.train.metrics import logloss
from ctrlab.train.run_checks import (
    LEAK_AUC,
    MIN_STEPS_PER_EPOCH,
    epoch_cap_while_improving,
    few_steps_per_epoch,
    high_oov_rate,
    likely_label_leak,
    logloss_above_base_rate,
    single_feature_aucs,
)

QUIET = ["trainer.progress=false"]


def _prepared(name: str):
    return api.prepare(api.dataset_config(api.RunConfig(dataset=name)), log=lambda *a: None)


@pytest.fixture(scope="module")
def criteo(data_dir):
    return _prepared("criteo_head10k")


@pytest.fixture(scope="module")
def frappe(data_dir):
    return _prepared("frappe_x1_subset")


def _codes(warnings) -> list[str]:
    return [w["code"] if isinstance(w, dict) else w.code for w in warnings]


# ---- end to end: metrics.json, train.log, console --------------------------------------------------
def test_bad_run_warns_in_console_log_and_metrics(data_dir, tmp_path, capsys):
    """LR on criteo_head10k, 1 epoch at lr 1.0 and batch 2400: 3 steps per epoch, logloss far above the
    base rate's, the epoch cap reached while the first (improving) epoch ended it."""
    run_dir = tmp_path / "bad"
    sets = QUIET + ["trainer.epochs=1", "trainer.batch_size=2400", "trainer.lr=1.0"]
    # --preset none: the BARS protocol (monitor AUC), not the settings preset auto derives for this data
    assert main(["train", "--dataset", "criteo_head10k", "--model", "LR", "--preset", "none", "--output",
                 str(run_dir)] + [a for s in sets for a in ("--set", s)]) == 0
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((run_dir / "metrics.json").read_text())
    codes = ["few_steps_per_epoch", "logloss_above_base_rate", "logloss_above_base_rate", "epoch_cap_while_improving"]
    assert _codes(saved["warnings"]) == codes
    assert lines[-1] == ("[ctrlab] WARNING: 4 warning(s) about this run (few_steps_per_epoch, logloss_above_base_rate, "
                         "epoch_cap_while_improving); see above or metrics.json")
    steps = saved["warnings"][0]
    assert "only 3 optimizer steps" in steps["message"] and "7,200 train rows" in steps["message"]
    assert steps["fix"].startswith("lower trainer.batch_size to 512 or below")
    # the base rate's logloss, computed with the metric code on the split's labels
    data = _prepared("criteo_head10k")
    rate = float(data.splits["train"].arrays["label"][:, 0].astype(np.float64).mean())
    y_test = data.splits["test"].arrays["label"][:, 0]
    base = logloss(y_test, np.full(len(y_test), rate))
    test_warning = saved["warnings"][2]
    assert test_warning["message"].startswith(f"test logloss {saved['test']['logloss']:.6f}")
    assert f"(logloss {base:.6f})" in test_warning["message"] and "trainer.monitor=AUC-logloss" in test_warning["fix"]
    assert f"--output {run_dir} --resume --epochs 2" in saved["warnings"][3]["fix"]
    log_text = (run_dir / "train.log").read_text()
    for w in saved["warnings"]:
        assert f"[ctrlab] WARNING: {w['message']}" in lines and f"[ctrlab]   fix: {w['fix']}" in lines
        assert f"[ctrlab] WARNING: {w['message']}" in log_text and f"[ctrlab]   fix: {w['fix']}" in log_text
    # the end-of-run metrics lines say which split they are
    assert f"[metrics valid] AUC: {saved['valid']['AUC']:.6f}" in log_text
    assert f"[metrics test] AUC: {saved['test']['AUC']:.6f}" in log_text


def test_healthy_run_has_no_warnings(data_dir, tmp_path):
    """LR on frappe_x1_subset with 23 steps per epoch stops early, with logloss well below the base rate's."""
    res = api.train(dataset="frappe_x1_subset", model="LR", output=str(tmp_path / "good"), log=lambda *a: None,
                    overrides=QUIET + ["trainer.batch_size=2048", "trainer.lr=0.01"])
    saved = json.loads((res.run_dir / "metrics.json").read_text())
    assert saved["warnings"] == []
    assert saved["epochs"] < 100 and saved["test"]["logloss"] < 0.4  # base rate: 0.63
    assert "WARNING" not in (res.run_dir / "train.log").read_text()


# ---- each check on its own -------------------------------------------------------------------------
def test_few_steps_per_epoch_threshold():
    assert _codes(few_steps_per_epoch(3, 7200, 2400)) == ["few_steps_per_epoch"]
    assert _codes(few_steps_per_epoch(MIN_STEPS_PER_EPOCH - 1, 46178, 5000)) == ["few_steps_per_epoch"]
    assert few_steps_per_epoch(MIN_STEPS_PER_EPOCH, 46178, 4700) == []
    assert few_steps_per_epoch(12, 46178, 4096) == []  # frappe_x1_subset at the default batch


def test_logloss_at_or_above_base_rate(criteo):
    y = criteo.splits["valid"].arrays["label"][:, 0]
    rate = float(criteo.splits["train"].arrays["label"].mean())
    base = logloss(y, np.full(len(y), rate))
    labels = {"valid": y}
    assert logloss_above_base_rate({"valid": base - 1e-4}, rate, labels) == []
    [w] = logloss_above_base_rate({"valid": base}, rate, labels)
    assert w.code == "logloss_above_base_rate" and f"{base:.6f}" in w.message
    # a run that already monitors logloss is not told to
    [w] = logloss_above_base_rate({"valid": 0.9}, rate, labels, monitor_has_logloss=True)
    assert "trainer.monitor" not in w.fix and "trainer.patience" in w.fix


def test_epoch_cap_while_improving():
    def hist(*improved):
        return [{"epoch": i + 1, "improved": imp, "monitor": 0.7 + 0.01 * i, "best_metric": 0.7 + 0.01 * i}
                for i, imp in enumerate(improved)]

    [w] = epoch_cap_while_improving(hist(True, False, True), 3, stopped_early=False, monitor_name="AUC")
    assert w.code == "epoch_cap_while_improving" and "trainer.epochs=3" in w.message and "to 6" in w.fix
    assert epoch_cap_while_improving(hist(True, True, False), 3, stopped_early=False) == []  # plateaued at the end
    assert epoch_cap_while_improving(hist(True, True), 3, stopped_early=False) == []  # cap not reached
    assert epoch_cap_while_improving(hist(True, False, False), 3, stopped_early=True) == []


def test_high_oov_rate_reuses_the_oov_rule(criteo):
    assert high_oov_rate(criteo.oov_rates) == []  # real criteo_head10k: at most 58% OOV, like train
    cat = criteo.splits["valid"].arrays["cat"].copy()
    j = [f.name for f in criteo.feature_map.categorical].index("C6")  # 0.0% OOV everywhere
    cat[:, j] = OOV_ID  # e.g. the valid file writes C6 differently
    valid = EncodedSplit({**criteo.splits["valid"].arrays, "cat": cat})
    rates = {"train": criteo.oov_rates["train"], "valid": oov_rates(criteo.feature_map, valid)}
    [w] = high_oov_rate(rates)
    assert w.code == "high_oov_rate" and "valid split, field 'C6': 100.0%" in w.message
    assert w.fix == high_oov_fix("valid")


def _with_column(split: EncodedSplit, key: str, column: np.ndarray) -> EncodedSplit:
    arrays = dict(split.arrays)
    arrays[key] = np.concatenate([arrays[key], column[:, None].astype(arrays[key].dtype)], axis=1)
    return EncodedSplit(arrays)


def test_label_leak_categorical(frappe):
    fmap, train, valid = frappe.feature_map, frappe.splits["train"], frappe.splits["valid"]
    aucs = single_feature_aucs(fmap, train, valid)
    assert set(aucs) == {f.name for f in fmap.categorical} and max(aucs.values()) < LEAK_AUC  # item: 0.91
    assert likely_label_leak(fmap, train, valid) == []
    # a planted column: the label itself, encoded as a categorical field (ids 2 and 3)
    leaky = dataclasses.replace(fmap, categorical=fmap.categorical + [CategoricalField("clicked_flag", 4)])

    def plant(s):
        return _with_column(s, "cat", 2 + s.arrays["label"][:, 0].astype(np.int64))

    [w] = likely_label_leak(leaky, plant(train), plant(valid))
    assert w.code == "likely_label_leak" and "'clicked_flag' alone reaches validation AUC 1.0000" in w.message
    assert "remove 'clicked_flag'" in w.fix


def test_label_leak_numeric_either_direction(criteo):
    fmap, train, valid = criteo.feature_map, criteo.splits["train"], criteo.splits["valid"]
    assert likely_label_leak(fmap, train, valid) == []  # real Criteo: no single feature above 0.64
    noise = np.random.default_rng(0)
    leaky = dataclasses.replace(fmap, numeric=fmap.numeric + [dataclasses.replace(fmap.numeric[0], name="dwell")])

    def plant(s):  # high for non-clicks: ranks the label perfectly in reverse
        y = s.arrays["label"][:, 0]
        return _with_column(s, "num", 1.0 - y + noise.uniform(0, 0.5, len(y)))

    assert _codes(likely_label_leak(leaky, plant(train), plant(valid))) == ["likely_label_leak"]


# ---- progress: plain lines off a terminal, bars on one -------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(tmp_path, epochs: int = 3):
    cfg = K.config(epochs=epochs, patience=10, progress=True)
    seed_everything(0)
    trainer = Trainer(K.TinyModel(), cfg, tmp_path)
    train, valid, _ = K.loaders(cfg)
    return trainer.fit(train, valid)


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    history = _fit(tmp_path)
    out, err = capsys.readouterr()
    assert "\r" not in out and "\r" not in err
    lines = [line for line in out.splitlines() if line.startswith("[ctrlab] epoch ")]
    assert len(lines) == len(history) == 3
    assert lines[0].startswith("[ctrlab] epoch 1/3 | lr 0.05 | train_loss ") and "| valid AUC " in lines[0]


def test_progress_on_a_terminal_keeps_the_bars(tmp_path, monkeypatch):
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    _fit(tmp_path, epochs=2)
    assert "\r" in err.getvalue() and "train 1/2" in err.getvalue()
    assert "[ctrlab] epoch" not in out.getvalue()


def test_no_progress_prints_nothing(tmp_path, capsys):
    cfg = K.config(epochs=2, progress=False)
    seed_everything(0)
    train, valid, _ = K.loaders(cfg)
    Trainer(K.TinyModel(), cfg, tmp_path).fit(train, valid)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_a_multi_task_runs_logloss_is_checked_against_its_main_tasks_label():
    """A model whose main task is the second label column (SharedBottom with tasks: [purchase, click])
    is compared with that column's base rate, not the first's."""
    from ctrlab.data.feature_map import FeatureMap
    from ctrlab.models import create
    from ctrlab.train.run_checks import run_checks

    rng = np.random.default_rng(0)
    click = (rng.random(2000) < 0.5).astype(np.float32)
    purchase = click * (rng.random(2000) < 0.04)
    split = EncodedSplit({"cat": rng.integers(0, 5, (2000, 1)).astype(np.int32),
                          "label": np.stack([click, purchase], 1).astype(np.float32)})
    fmap = FeatureMap.from_fields({"a": 5}, labels=["click", "purchase"])
    model = create("SharedBottom", fmap, tasks=["purchase", "click"])
    assert model.main_label_column == 1 and create("ESMM", fmap).main_label_column == 0
    rate = float(purchase.mean())
    good = logloss(purchase, np.full(2000, rate)) - 1e-3  # better than the purchase base rate, far below click's

    def check(column):
        return run_checks(fmap=fmap, splits={"train": split, "test": split}, metrics={"test": {"logloss": good}},
                          history=[], epochs=1, stopped_early=True, steps_per_epoch=100, batch_size=20,
                          main_label=column)

    assert [w.code for w in check(model.main_label_column)] == []
    assert [w.code for w in check(1)] == [] and check(0) == []  # click's base rate logloss is larger still
    bad = logloss(purchase, np.full(2000, rate)) + 1e-3
    assert [w.code for w in run_checks(fmap=fmap, splits={"train": split, "test": split},
                                       metrics={"test": {"logloss": bad}}, history=[], epochs=1, stopped_early=True,
                                       steps_per_epoch=100, batch_size=20, main_label=1)] == ["logloss_above_base_rate"]
    assert run_checks(fmap=fmap, splits={"train": split, "test": split}, metrics={"test": {"logloss": bad}},
                      history=[], epochs=1, stopped_early=True, steps_per_epoch=100, batch_size=20, main_label=0) == []
