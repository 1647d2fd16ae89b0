"""``ctrlab distill`` / ``ctrlab.api.distill``: online distillation of any teacher into any student.

Proves: weight 0 is the student trained alone, bit for bit (its init, dropout and data streams and its own
gradient clipping are untouched by the teacher beside it); the distillation term never reaches the
teacher (unit level, and end to end: the teacher's weights do not depend on the weight); a weight > 0
pulls the student's predictions toward the teacher's; the student run folder is a normal run (evaluate,
predict, export with ONNX parity; the teacher's run in RUN/teacher) for FinalMLP -> DNN (API) and
DCNv2 -> LR (CLI) on real Frappe rows; an interrupted distilled run resumes exactly; bad settings fail
clearly before any folder is written."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from ctrlab.config import ConfigError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create
from ctrlab.recipes.distill import DistillOptions, DistillPair, distill_term


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


QUIET = lambda *a, **k: None  # noqa: E731
DATA = dict(dataset="frappe_x1_subset", dataset_params={"train_rows": 3000})
STUDENT = {"hidden_units": [32, 32], "embedding_dim": 4, "net_dropout": 0.2}
TEACHER = {"mlp1_hidden_units": [32, 32], "mlp2_hidden_units": [32], "embedding_dim": 4, "num_heads": 2}
# a small clipping norm binds at every step, so a norm taken over both models would shrink the student's
# steps by the teacher's gradients; restore_best off: both models end at their last (2nd) epoch, whatever
# the student's validation curve, so the teacher's weights can be compared across distillation weights
TRAIN = ["trainer.epochs=2", "trainer.batch_size=256", "trainer.progress=false", "trainer.num_threads=1", "trainer.max_grad_norm=0.05",
         "trainer.restore_best=false"]


def _distilled(out, weight, **kw):
    from ctrlab.api import distill

    return distill(model="DNN", model_params=STUDENT, teacher="FinalMLP", teacher_params=TEACHER, weight=weight,
                   output=str(out), overrides=TRAIN, log=QUIET, **DATA, **kw)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """The student alone, and distilled from FinalMLP at weight 0 and at weight 5, same seed and settings."""
    from ctrlab.api import train

    root = tmp_path_factory.mktemp("distill")
    alone = train(model="DNN", model_params=STUDENT, output=str(root / "alone"), overrides=TRAIN, log=QUIET, **DATA)
    return {"alone": alone, 0: _distilled(root / "w0", 0.0), 5: _distilled(root / "w5", 5.0)}


def _weights(run_dir):
    from ctrlab.api import load_run

    return load_run(run_dir)[0].state_dict()


def _test_rows(run_dir, tmp_path, n=2000):
    from ctrlab.api import load_run

    _, _, dcfg, _ = load_run(run_dir)
    frame = pl.read_csv(dcfg.resolve("test"), infer_schema_length=0).head(n)
    rows = tmp_path / "rows.csv"
    frame.drop("label").write_csv(rows)
    return rows, frame


# ---- (a) weight 0 is the student trained alone ------------------------------------------------
def test_weight_zero_is_the_student_trained_alone_bit_for_bit(runs):
    alone, pair = _weights(runs["alone"].run_dir), _weights(runs[0].run_dir)
    assert list(alone) == list(pair)  # the run folder holds the student's weights only
    for name in alone:
        assert torch.equal(alone[name], pair[name]), name
    assert runs[0].metrics["test"] == runs["alone"].metrics["test"]
    assert [h["valid_AUC"] for h in runs[0].history] == [h["valid_AUC"] for h in runs["alone"].history]
    # the training loss is the pair's (student + teacher), so it differs; the student's validation does not
    assert runs[0].history[0]["train_loss"] > runs["alone"].history[0]["train_loss"]


# ---- (b) the teacher is detached ---------------------------------------------------------------
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_the_distill_term_never_reaches_the_teacher(loss):
    fmap = FeatureMap.from_fields({f"f{i}": 20 for i in range(5)})
    torch.manual_seed(0)
    pair = DistillPair(create("DNN", fmap, hidden_units=[16], embedding_dim=4),
                       create("DCNv2", fmap, embedding_dim=4, num_cross_layers=2, stacked_dnn_hidden_units=[16]),
                       weight=1.0, loss=loss, seed=7)
    g = torch.Generator().manual_seed(1)
    batch = {"cat": torch.randint(0, 20, (64, 5), generator=g), "label": torch.randint(0, 2, (64, 1), generator=g).float()}
    pair.train()
    out = pair(batch)
    assert "teacher:logit" in out and pair.teacher_steps.item() == 1
    parts = pair.losses(batch, out)
    teacher_params = list(pair.teacher.parameters())
    student_params = list(pair.student.parameters())
    grads = torch.autograd.grad(parts["distill"], teacher_params + student_params, retain_graph=True,
                                allow_unused=True)
    assert all(g is None for g in grads[:len(teacher_params)])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(teacher_params):])
    # the whole loss: the teacher's gradient is that of its own loss, whatever the weight
    full = torch.autograd.grad(pair.loss(batch, out), teacher_params, retain_graph=True)
    own = torch.autograd.grad(parts["teacher"], teacher_params, retain_graph=True)
    for a, b in zip(full, own):
        assert torch.equal(a, b)
    # eval mode: the student alone (what validation, export and serving see)
    pair.eval()
    assert set(pair(batch)) == set(pair.student(batch)) and pair.teacher_steps.item() == 1


def test_distill_terms_are_minimised_at_the_teacher():
    z_t = torch.tensor([-2.0, 0.3, 1.5])
    for loss, temperature in (("bce", 1.0), ("bce", 3.0), ("mse", 1.0)):
        z_s = z_t.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(distill_term(z_s, z_t, loss, temperature), z_s)
        assert torch.allclose(g, torch.zeros(3), atol=1e-7), (loss, temperature)
        z_s = torch.zeros(3, requires_grad=True)
        (g,) = torch.autograd.grad(distill_term(z_s, z_t, loss, temperature), z_s)
        assert torch.all(torch.sign(-g) == torch.sign(z_t))  # a step moves each logit toward the teacher's


# ---- (c) a positive weight pulls the student toward the teacher -----------------------------
def test_the_teacher_never_depends_on_the_weight(runs):
    """End to end: the teacher trains on its own loss only, so its weights are the same at weight 0 and 5."""
    t0, t5 = _weights(runs[0].run_dir / "teacher"), _weights(runs[5].run_dir / "teacher")
    for name in t0:
        assert torch.equal(t0[name], t5[name]), name
    assert runs[0].metrics["distill"]["test"] == runs[5].metrics["distill"]["test"]


def test_weight_pulls_the_student_toward_the_teacher(runs):
    """The pair's own loss on real Frappe batches, the student trained from scratch beside the teacher of
    the weight-0 run held still (in eval mode, not stepped): the student's disagreement with the teacher on
    valid rows is smaller at weight 20 than at weight 0. (Held still so the pull is what is measured: in
    the short online runs above both models move fast and the student lags a moving, dropout-perturbed
    teacher; the teacher's independence of the weight is the test above.)"""
    from ctrlab.api import load_run
    from ctrlab.data.loader import BatchLoader
    from ctrlab.data.pipeline import prepare

    teacher_dir = runs[0].run_dir / "teacher"
    _, fmap, dcfg, cfg = load_run(teacher_dir)
    data = prepare(dcfg, feature_map=fmap, log=QUIET)
    valid = next(iter(BatchLoader(data.splits["valid"], 4000, shuffle=False)))
    gap = {}
    for weight in (0.0, 20.0):
        teacher, *_ = load_run(teacher_dir)
        torch.manual_seed(0)
        student = create("DNN", fmap, **{**STUDENT, "batch_norm": False})
        pair = DistillPair(student, teacher, weight=weight, seed=1)
        opt = torch.optim.Adam(pair.student.parameters(), lr=3e-3)  # the teacher held still
        loader = BatchLoader(data.splits["train"], 128, shuffle=True, seed=0)
        for epoch in range(4):
            loader.set_epoch(epoch)
            pair.train()
            teacher.eval()
            for batch in loader:
                opt.zero_grad()
                pair.loss(batch, pair(batch)).backward()
                for group in pair.clip_groups():
                    torch.nn.utils.clip_grad_norm_(group, 10.0)
                opt.step()
        pair.eval()
        with torch.no_grad():
            gap[weight] = (torch.sigmoid(pair(valid)["logit"]) - torch.sigmoid(teacher(valid)["logit"])).abs().mean()
    print(f"\nstudent-teacher mean |p_s - p_t| on valid: {gap}")
    assert gap[20.0] < 0.7 * gap[0.0], gap


# ---- (d) end to end on real data --------------------------------------------------------------
def test_finalmlp_into_dnn_writes_a_normal_student_run(runs, tmp_path):
    from ctrlab.api import evaluate, load_run, predict
    from ctrlab.serve.artifact import export_run
    from ctrlab.serve.predictor import Predictor

    res = runs[5]
    out = res.run_dir
    model, _, _, cfg = load_run(out)
    assert type(model).__name__ == "DNN" and cfg.model == "DNN"
    assert cfg.distill["teacher"] == "FinalMLP" and cfg.distill["weight"] == 5.0 and cfg.distill["loss"] == "bce"
    assert cfg.distill["teacher_params"]["num_heads"] == 2  # resolved (defaults merged), as model_params are
    rec = json.loads((out / "metrics.json").read_text())["distill"]
    assert rec == res.metrics["distill"] and rec["teacher_run"] == "teacher"
    assert res.metrics["parameters"] == model.count_parameters() < rec["teacher_parameters"]
    # the student and the teacher evaluate to what the run recorded
    assert evaluate(out)["test"] == pytest.approx(res.metrics["test"])
    assert evaluate(out / "teacher")["test"] == pytest.approx(rec["test"])
    teacher, *_ = load_run(out / "teacher")
    assert type(teacher).__name__ == "FinalMLP"
    print(f"\nFinalMLP -> DNN: teacher test AUC {rec['test']['AUC']:.4f}, student {res.metrics['test']['AUC']:.4f}")
    for m in (res.metrics["test"], rec["test"]):
        assert m["AUC"] > 0.7
    # export (fails on an ONNX / PyTorch mismatch) and serve the student from raw columns
    art = export_run(out, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_diff"] <= 1e-5 and manifest["parity"]["rows"] > 0
    rows, frame = _test_rows(out, tmp_path, 300)
    want = predict(out, rows, log=QUIET)
    got = Predictor(art, threads=1).predict_records(frame.drop("label").to_dicts())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_cli_dcnv2_into_lr(data_dir, tmp_path):
    from ctrlab.api import evaluate, load_run, predict
    from ctrlab.serve.artifact import export_run

    out = tmp_path / "lr"
    cmd = [sys.executable, "-m", "ctrlab", "distill", "--dataset", "frappe_x1_subset", "--teacher", "DCNv2",
           "--student", "LR", "--teacher-params", '{"embedding_dim": 4, "stacked_dnn_hidden_units": [32, 32]}',
           "--weight", "0.5", "--loss", "mse", "--output", str(out), "--epochs", "2",
           "--set", "dataset_params.train_rows=3000", "--set", "trainer.progress=false",
           "--set", "trainer.num_threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert summary["student"]["model"] == "LR" and summary["teacher"]["model"] == "DCNv2"
    assert summary["loss"] == "mse" and summary["weight"] == 0.5
    assert summary["student"]["parameters"] < summary["teacher"]["parameters"]
    print(f"\nDCNv2 -> LR: teacher test AUC {summary['teacher']['test']['AUC']:.4f}, "
          f"student test AUC {summary['student']['test']['AUC']:.4f}")
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["model"] == "LR" and saved["distill"]["teacher"] == "DCNv2"
    assert saved["distill"]["teacher_params"]["stacked_dnn_hidden_units"] == [32, 32]
    model, *_ = load_run(out)
    assert type(model).__name__ == "LR"
    assert evaluate(out)["test"] == pytest.approx(summary["student"]["test"])
    manifest = json.loads((export_run(out, tmp_path / "art") / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_diff"] <= 1e-5
    rows, _ = _test_rows(out, tmp_path, 200)
    assert predict(out, rows, log=QUIET).shape == (200,)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # a finished run is not replaced
    assert again.returncode != 0 and "already holds a finished ctrlab run" in again.stderr
    bad = subprocess.run([*cmd[:-6], "--teacher-params", "[1, 2]", "--output", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--teacher-params" in bad.stderr and not (tmp_path / "bad").exists()


# ---- resume ------------------------------------------------------------------------------------
def test_a_resumed_distilled_run_ends_as_an_uninterrupted_one(runs, tmp_path):
    """The checkpoints hold both models, their Adam moments and the teacher's dropout-stream position."""
    from ctrlab.api import distill

    out = tmp_path / "split"
    first = [o for o in TRAIN if not o.startswith("trainer.epochs")] + ["trainer.epochs=1"]
    distill(model="DNN", model_params=STUDENT, teacher="FinalMLP", teacher_params=TEACHER, weight=5.0,
            output=str(out), overrides=first, log=QUIET, **DATA)
    with pytest.raises(ConfigError, match=r"different distill weight \(5.0 -> 1.0\)"):
        distill(teacher="FinalMLP", weight=1.0, output=str(out), resume=True, overrides=["trainer.epochs=2"], log=QUIET)
    resumed = distill(teacher="FinalMLP", output=str(out), resume=True, overrides=["trainer.epochs=2"], log=QUIET)
    whole = runs[5]
    for run in ("", "teacher"):
        a, b = _weights(whole.run_dir / run), _weights(resumed.run_dir / run)
        for name in a:
            assert torch.equal(a[name], b[name]), (run, name)
    assert resumed.metrics["test"] == whole.metrics["test"]
    assert resumed.metrics["distill"]["test"] == whole.metrics["distill"]["test"]
    with pytest.raises(ConfigError, match="not a distilled run"):
        distill(output=str(runs["alone"].run_dir), resume=True, log=QUIET)


# ---- (e) errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"teacher": "NoSuchModel"}, r"distill\.teacher: unknown model 'NoSuchModel'"),
    ({"teacher": "FinalMLP", "model": "NoSuchModel"}, r"the student \(model\): unknown model 'NoSuchModel'"),
    ({}, r"name the teacher model"),
    ({"teacher": "FinalMLP", "weight": -1.0}, r"distill\.weight: must be a finite number >= 0"),
    ({"teacher": "FinalMLP", "weight": float("nan")}, r"distill\.weight"),
    ({"teacher": "FinalMLP", "loss": "kl"}, r"distill\.loss: 'kl' is not one of \['bce', 'mse'\]"),
    ({"teacher": "FinalMLP", "loss": "mse", "temperature": 2.0}, r"distill\.temperature: 2.0 has no effect"),
    ({"teacher": "FinalMLP", "temperature": 0.0}, r"distill\.temperature: must be a finite number > 0"),
    ({"teacher": "FinalMLP", "teacher_params": {"no_such_param": 1}}, r"distill\.teacher_params: .*no_such_param"),
    ({"teacher": "FinalMLP", "low_rank": {"mlp.0": 2}}, r"distill: not with low_rank"),
])
def test_bad_settings_fail_before_a_folder_is_written(data_dir, tmp_path, kwargs, message):
    from ctrlab.api import distill

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        distill(output=str(out), log=QUIET, dataset="frappe_x1_subset", **kwargs)
    assert not out.exists()


def test_options_validate_on_their_own():
    assert DistillOptions.from_dict({"teacher": "dcnv2"}).weight == 1.0
    with pytest.raises(ConfigError, match=r"distill: unknown key\(s\) \['lambda'\]"):
        DistillOptions.from_dict({"teacher": "FinalMLP", "lambda": 1})
