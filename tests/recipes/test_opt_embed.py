"""``ctrlab optembed`` / ``ctrlab.api.opt_embed`` (issue 16): the search, the recipe end to end on real data
(Python and CLI), a searched run that reloads, retrains from its config, exports (ONNX parity) and serves
with its masks, the registered models it works on, and the clear errors."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from ctrlab.config import ConfigError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers.opt_embed import OptEmbedTable, apply_opt_embed, opt_embed_tables, prunable_tables, unpack_keep
from ctrlab.models import create
from ctrlab.models.registry import list_models
from ctrlab.recipes.opt_embed import OptEmbedOptions, crossover, evolutionary_search, mutate

FAST = ["trainer.epochs=1", "trainer.progress=false", "trainer.num_threads=1"]
TINY_SEARCH = {"search_rounds": 2, "population": 6, "keep_top": 3, "mutants": 2, "crossovers": 2}


# ---- the search ------------------------------------------------------------------------------
def test_mutation_and_crossover_make_new_candidates_and_leave_parents_alone():
    rng = random.Random(0)
    parent = (3, 3, 3, 3, 3, 3)
    children = [mutate(parent, [8] * 6, 0.5, rng) for _ in range(50)]
    assert parent == (3, 3, 3, 3, 3, 3)
    assert any(c != parent for c in children) and all(1 <= k <= 8 for c in children for k in c)
    assert mutate(parent, [8] * 6, 0.0, rng) == parent  # prob 0: a copy
    a, b = (1,) * 6, (2,) * 6
    points = set()
    for _ in range(200):
        child = crossover(a, b, rng)
        point = child.index(2)  # a's genes before the point, b's after: the point is in 1..F-1
        assert child == a[:point] + b[point:]
        points.add(point)
    assert points == {1, 2, 3, 4, 5}
    assert a == (1,) * 6 and b == (2,) * 6


def test_search_finds_the_best_candidate_and_never_alters_scored_ones():
    target = (2, 7, 4, 1, 5)
    dims = [8] * 5
    seen = []

    def distance(c):
        return -sum(abs(k - t) for k, t in zip(c, target))

    def fitness(c):
        seen.append(c)
        return distance(c)

    opts = OptEmbedOptions(search_rounds=40, population=20, keep_top=8, mutants=10, crossovers=10, mutation_prob=0.2)
    best, score, history = evolutionary_search(dims, fitness, opts, random.Random(1), log=lambda *a: None)
    assert score == distance(best) and score >= -1  # at or next to the optimum
    assert score == max(distance(c) for c in seen)  # the best of everything scored
    assert len(history) == 40 and [h["best_fitness"] for h in history] == sorted(h["best_fitness"] for h in history)
    assert len(seen) == len(set(seen))  # each candidate scored once (cached)


def test_options_name_the_bad_field():
    with pytest.raises(ConfigError, match="alpha"):
        OptEmbedOptions(alpha=-1).validate()
    with pytest.raises(ConfigError, match="keep_top"):
        OptEmbedOptions(keep_top=30, population=20).validate()
    with pytest.raises(ConfigError, match="search_rounds"):
        OptEmbedOptions(search_rounds=0).validate()


# ---- every registered model ------------------------------------------------------------------
MAP = FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5}, numeric=["price"],
                             sequences={"hist": (4, "item"), "tags": (3, 9)},
                             labels=["click", "conversion"])  # two labels: ESMM needs both, the others read the first
PARAMS = {"DIN": {"din_target_field": "item", "din_sequence_field": "hist"},
          "FinalMLP": {"fs1_context": ["user"], "fs2_context": ["item"]},
          "FGCNN": {"channels": (4, 4), "dnn_hidden_units": (64, 32)},
          "OptInter": {"pair_methods": "factorize"}}  # (memorizing needs cross features, which MAP has none of)


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {"cat": torch.stack([torch.randint(0, f.vocab_size, (n,), generator=g) for f in MAP.categorical], 1),
         "num": torch.randn(n, 1, generator=g), "label": torch.randint(0, 2, (n, 2), generator=g).float()}
    b.update({"seq:" + s.name: torch.randint(0, s.vocab_size, (n, s.max_len), generator=g) for s in MAP.sequences})
    return b


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_with_a_table_trains_as_a_supernet_or_is_refused(name):
    torch.manual_seed(0)
    model = create(name, MAP, **PARAMS.get(name, {}))
    if not prunable_tables(model):
        assert name == "LR"  # its only table is the width-1 first-order weights
        with pytest.raises(ValueError, match="no embedding table to prune"):
            apply_opt_embed(model, {"mode": "supernet"})
        return
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    tables = apply_opt_embed(model, {"mode": "supernet"})
    model.eval()
    batch = _batch()
    with torch.no_grad():
        for t in tables.values():
            t.thresholds.fill_(-float("inf"))
        ref = create(name, MAP, **PARAMS.get(name, {}))
        ref.load_state_dict(base)
        ref.eval()
        assert torch.equal(model(batch)["logit"], ref(batch)["logit"]), "no-op supernet differs from the model"
        for t in tables.values():
            t.thresholds.zero_()
    model.train()
    model.loss(batch, model(batch)).backward()
    for t in tables.values():
        assert t.thresholds.grad is not None and torch.isfinite(t.thresholds.grad).all()
        assert t.table.weight.grad.abs().sum() > 0


# ---- end to end on real data -----------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(data_dir, tmp_path_factory):
    from ctrlab.api import opt_embed

    out = tmp_path_factory.mktemp("optembed") / "run"
    # a threshold lr 10x the default: one epoch already prunes some features (not all)
    return opt_embed(dataset="frappe_x1_subset", model="DeepFM", output=str(out), log=lambda *a: None,
                     options={**TINY_SEARCH, "alpha": 1e-2, "threshold_lr": 1e-1}, overrides=FAST)


def _table(model) -> OptEmbedTable:
    (table,) = opt_embed_tables(model).values()
    return table


def test_recipe_writes_a_searched_run_with_its_masks(searched):
    from ctrlab.api import evaluate, load_run

    rec = searched.metrics["opt_embed"]
    (name, report), = rec["tables"].items()
    assert name == "embedding.embedding" and rec["mode"] == "fixed"
    assert report["fields"][:2] == ["user", "item"] and len(report["widths"]) == 10
    assert sum(report["features"]) == 5287 and all(1 <= k <= 10 for k in report["widths"])
    assert 0 < rec["embedding_parameters_kept"] < rec["embedding_parameters_full"] == 5287 * 10
    assert sum(report["kept_features"]) < 5287  # features were pruned
    assert rec["sparsity"] == pytest.approx(1 - rec["embedding_parameters_kept"] / rec["embedding_parameters_full"])
    assert rec["retrained_from_initial_weights"] and rec["initial_weights_sha256"]
    supernet = json.loads((searched.run_dir.parent / "run-supernet" / "metrics.json").read_text())
    assert supernet["opt_embed"]["initial_weights_sha256"] == rec["initial_weights_sha256"]
    assert supernet["opt_embed"]["mode"] == "supernet"
    # the masks of the report are the model's and the config's
    cfg = yaml.safe_load((searched.run_dir / "run_config.yaml").read_text())
    spec = cfg["opt_embed"]["tables"][name]
    model, *_ = load_run(searched.run_dir)
    table = _table(model)
    assert table.mode == "fixed" and table.widths.tolist() == report["widths"] == spec["widths"]
    assert torch.equal(table.keep, unpack_keep(spec["keep"], table.rows))
    assert table.kept_per_block() == report["kept_features"]
    assert evaluate(searched.run_dir, ("test",))["test"]["AUC"] == pytest.approx(searched.metrics["test"]["AUC"],
                                                                                 abs=1e-9)


def test_training_from_the_saved_config_keeps_both_masks(searched, tmp_path):
    """The last attempt lost the keep mask when a run was retrained from its run_config.yaml."""
    from ctrlab.api import load_run, train

    res = train(str(searched.run_dir / "run_config.yaml"), output=str(tmp_path / "again"), log=lambda *a: None)
    model, *_ = load_run(res.run_dir)
    first, *_ = load_run(searched.run_dir)
    assert torch.equal(_table(model).keep, _table(first).keep)
    assert torch.equal(_table(model).widths, _table(first).widths)
    assert res.metrics["opt_embed"]["embedding_parameters_kept"] == searched.metrics["opt_embed"]["embedding_parameters_kept"]
    # same seed, same config, same initial weights: the same run again
    assert res.metrics["test"]["AUC"] == pytest.approx(searched.metrics["test"]["AUC"], abs=1e-6)


def test_searched_run_exports_and_serves_with_its_masks(searched, tmp_path):
    from ctrlab.api import load_run
    from ctrlab.serve.artifact import as_model_arrays, example_arrays, export_run, torch_probabilities
    from ctrlab.serve.predictor import Predictor

    model, fmap, *_ = load_run(searched.run_dir)
    art = export_run(searched.run_dir, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_diff"] <= 1e-5 and manifest["parity"]["rows"] > 0
    assert manifest["model"]["opt_embed"]["tables"]["embedding.embedding"]["widths"] == _table(model).widths.tolist()
    arrays = example_arrays(fmap, 300, seed=3)
    ref = torch_probabilities(model, arrays, fmap)
    # the masks matter: without them the same weights score differently
    plain = create("DeepFM", fmap, **yaml.safe_load((searched.run_dir / "run_config.yaml").read_text())["model_params"])
    state = {k.replace("embedding.embedding.table.", "embedding.embedding."): v for k, v in model.state_dict().items()
             if not k.endswith((".keep", ".widths"))}
    plain.load_state_dict(state)
    assert np.abs(torch_probabilities(plain, arrays, fmap) - ref).max() > 1e-4
    for backend in ("onnx", "torch"):
        pred = Predictor(art, backend=backend, threads=1)
        got = pred.run(as_model_arrays(arrays, pred.inputs))
        assert np.abs(got - ref).max() <= 1e-5, backend
    torch_art = export_run(searched.run_dir, tmp_path / "art-torch", format="torch")
    pred = Predictor(torch_art, backend="torch", threads=1)
    assert np.abs(pred.run(as_model_arrays(arrays, pred.inputs)) - ref).max() <= 1e-6


def test_cli_runs_the_recipe(data_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ctrlab.cli", "optembed", "--dataset", "frappe_x1_subset", "--model", "DCNv2",
           "--output", str(out), "--epochs", "1", "--search-rounds", "1", "--alpha", "0.01", "--threshold-lr", "0.1",
           "--set", "trainer.progress=false", "--set", "trainer.num_threads=1",
           "--set", "model_params.parallel_dnn_hidden_units=[32]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{"))
    assert 0 < line["sparsity"] <= 1 and line["embedding_parameters_kept"] < line["embedding_parameters_full"]
    assert len(line["tables"]["embedding.embedding"]["widths"]) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["opt_embed"]["options"]["search_rounds"] == 1 and metrics["opt_embed"]["options"]["threshold_lr"] == 0.1
    assert (tmp_path / "cli-supernet" / "model.safetensors").exists()
    ev = subprocess.run([sys.executable, "-m", "ctrlab.cli", "evaluate", str(out), "--splits", "test", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout.strip().splitlines()[-1])["test"]["AUC"] == pytest.approx(metrics["test"]["AUC"])


def test_clear_errors(data_dir, searched, tmp_path):
    from ctrlab.api import compress, opt_embed, train

    with pytest.raises(ConfigError, match="LR has no embedding table to prune"):
        opt_embed(dataset="frappe_x1_subset", model="LR", output=str(tmp_path / "lr"), overrides=FAST,
                  log=lambda *a: None)
    assert not (tmp_path / "lr-supernet").exists()  # refused before any folder was written
    with pytest.raises(ConfigError, match="low_rank"):
        opt_embed(dataset="frappe_x1_subset", model="DeepFM", output=str(tmp_path / "lr2"), overrides=FAST,
                  low_rank={"dnn.mlp.0": 4}, log=lambda *a: None)
    with pytest.raises(ConfigError, match="already has opt_embed"):
        opt_embed(str(searched.run_dir / "run_config.yaml"), output=str(tmp_path / "again"), log=lambda *a: None)
    with pytest.raises(ConfigError, match="threshold_lr"):
        opt_embed(dataset="frappe_x1_subset", model="DeepFM", output=str(tmp_path / "x"), overrides=FAST,
                  options={"threshold_lr": 0}, log=lambda *a: None)
    with pytest.raises(ConfigError, match="sparse_embeddings"):
        train(str(searched.run_dir / "run_config.yaml"), output=str(tmp_path / "sparse"), log=lambda *a: None,
              overrides=["trainer.sparse_embeddings=true"])
    with pytest.raises(ConfigError, match="OptEmbed run"):
        compress(searched.run_dir, tmp_path / "c", rank=4, log=lambda *a: None)
    with pytest.raises(ConfigError, match="the masks are for 5287 rows"):  # another vocabulary than the masks'
        train(str(searched.run_dir / "run_config.yaml"), output=str(tmp_path / "bad"), log=lambda *a: None,
              overrides=["min_count=20"])


def test_refused_under_torchrun(monkeypatch, tmp_path):
    from ctrlab.api import opt_embed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="without torchrun"):
        opt_embed(dataset="frappe_x1_subset", model="DeepFM", output=str(tmp_path / "ddp"), overrides=FAST,
                  log=lambda *a: None)
    assert not (tmp_path / "ddp-supernet").exists()
