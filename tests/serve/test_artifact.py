"""Export: every registered model exports to ONNX with ONNX Runtime == PyTorch on thousands of real
rows; artifact folders are complete, checksummed, pickle-free, and score raw rows like the run."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.pipeline import prepare
from ctrlab.data.readers import read_split
from ctrlab.models import create, get_model_class, list_models
from ctrlab.serve.artifact import (
    PARITY_TOLERANCE,
    ArtifactError,
    check_parity,
    export_onnx,
    export_run,
    load_artifact,
    torch_probabilities,
)
from ctrlab.serve.predictor import Predictor

PARITY_ROWS = 4000
# (model, dataset): every model on real Frappe (categorical fields) and on real MovieLens 100K
# (sequence fields, one sharing the item vocabulary); sequence models (``needs_sequence``) need the
# behaviour sequence.
# Models that need two labels (ESMM: clicks and conversions) export in tests/serve/test_multitask_serving.py.
CASES = [(m, "frappe_x1_subset") for m in list_models()
         if not get_model_class(m).needs_sequence and get_model_class(m).min_labels == 1] + [
    (m, "movielens_100k") for m in list_models() if get_model_class(m).min_labels == 1]
NEEDS_CROSSES = {"OptInter"}
"""Models whose default (OptInter's search) memorizes pairs through cross features: their data has
``crosses: {fields: all}``."""


@pytest.fixture(scope="module")
def prepared(data_dir):
    cache: dict[str, object] = {}

    def get(dataset: str, crosses: bool = False):
        key = f"{dataset}+crosses" if crosses else dataset
        if key not in cache:
            cfg = api.load_run_config(None, dataset=dataset, crosses={"fields": "all"} if crosses else None)
            cache[key] = prepare(api.dataset_config(cfg), log=lambda *a: None)
        return cache[key]

    return get


def _model(name: str, dataset: str, fmap):
    cfg = api.load_run_config(None, dataset=dataset, model=name)
    params, _ = api.resolve_model_params(cfg)
    torch.manual_seed(0)
    model = create(name, fmap, **params)
    # Trained-like scales: the 1e-4 initial embeddings would make every output ~0.5, and parity
    # on a constant would prove little.
    with torch.no_grad():
        for table in model.embedding_parameters():
            table.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("name,dataset", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_every_registered_model_exports_with_parity(name, dataset, prepared, tmp_path):
    data = prepared(dataset, name in NEEDS_CROSSES)
    rows = data.splits["test"].take(slice(0, PARITY_ROWS)).arrays
    model = _model(name, dataset, data.feature_map)
    export_onnx(model, data.feature_map, tmp_path / "model.onnx")
    parity = check_parity(tmp_path / "model.onnx", model, data.feature_map, rows)
    assert parity["rows"] == PARITY_ROWS
    assert parity["max_abs_diff"] <= PARITY_TOLERANCE, parity
    probs = torch_probabilities(model, rows, data.feature_map)
    # the outputs vary from row to row (parity on a constant would prove little)
    assert probs.std() > 1e-3 and np.unique(probs).size > PARITY_ROWS // 2, probs.std()


def test_export_run_writes_a_complete_checksummed_artifact(frappe_export):
    run, art = frappe_export
    names = sorted(p.name for p in art.iterdir())
    assert names == ["dataset_config.json", "feature_map.json", "manifest.json", "model.onnx", "model.safetensors"]
    # Nothing that loads through pickle: protobuf, safetensors and JSON only.
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))]
    m = json.loads((art / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["model"]["name"] == "FinalMLP" and m["dataset"] == "frappe_x1_subset"
    assert m["model"]["params"]["fs1_context"] == ["user"]
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test"] == run_metrics["test"]
    assert [c["name"] for c in m["schema"]] == ["user", "item", "daytime", "weekday", "isweekend", "homework",
                                                "cost", "weather", "country", "city"]
    assert m["schema"][0]["accepts"] == ["string", "integer", "null"]
    assert {"torch", "onnx", "onnxruntime", "polars", "ctrlab"} <= set(m["versions"])
    assert set(m["files"]) == set(names) - {"manifest.json"} and all(len(h) == 64 for h in m["files"].values())
    # parity was measured on the run's real test rows
    assert m["parity"]["rows"] == 4096 and m["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert m["parity"]["source"].startswith("test split")
    assert m["inputs"] == [{"key": "cat", "name": "cat", "dtype": "int64", "width": 10}]


def test_altered_or_missing_file_is_refused(frappe_export, tmp_path):
    _, art = frappe_export
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    with open(copy / "feature_map.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match=r"feature_map.json does not match its checksum"):
        load_artifact(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model.onnx is missing"):
        load_artifact(copy, verify=False)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(tmp_path)


def _copy(art, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    return copy


def _edit_manifest(folder, change):
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _swap_two_vocabulary_entries(folder):
    fm = json.loads((folder / "feature_map.json").read_text())
    vocab = fm["encoders"]["user"]["vocab"]
    vocab[0], vocab[1] = vocab[1], vocab[0]
    (folder / "feature_map.json").write_text(json.dumps(fm))


FRAPPE_RECORD = {"user": "204", "item": "4798", "daytime": "5041", "weekday": "5046", "isweekend": "5053",
                 "homework": "5055", "cost": "5058", "weather": "5060", "country": "5073", "city": "5183"}


@pytest.mark.parametrize("how", ["entry removed", "files key removed"])
def test_a_file_dropped_from_the_manifest_is_still_verified(frappe_export, tmp_path, how):
    """issue 14.21: removing a file's entry (or the whole `files` key) from manifest.json must not skip
    its checksum: an edited vocabulary would change every probability without a word."""
    _, art = frappe_export
    copy = _copy(art, tmp_path)
    _swap_two_vocabulary_entries(copy)
    _edit_manifest(copy, (lambda m: m["files"].pop("feature_map.json")) if how == "entry removed"
                   else (lambda m: m.pop("files")))
    fragment = r"'files' lacks \['feature_map.json'\]" if how == "entry removed" else "has no 'files' object"
    with pytest.raises(ArtifactError, match=fragment):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match=fragment):
        Predictor(copy)


@pytest.mark.parametrize("entry,fragment", [
    ("/dev/zero", "not a file name inside the artifact folder"),
    ("../run/model.safetensors", "not a file name inside the artifact folder"),
    ("notes.txt", "unknown entry 'notes.txt'"),
])
def test_manifest_entries_are_confined_to_the_required_files(frappe_export, tmp_path, entry, fragment):
    """issue 14.21: an entry of /dev/zero hung the load (hashing an endless device); a path outside
    the folder or a file the format does not have is refused before anything is read."""
    _, art = frappe_export
    copy = _copy(art, tmp_path)
    (copy / "notes.txt").write_text("hello")
    _edit_manifest(copy, lambda m: m["files"].update({entry: hashlib.sha256(b"hello").hexdigest()}))
    with pytest.raises(ArtifactError, match=re.escape(fragment)):
        load_artifact(copy)


def test_symlinks_out_of_the_folder_and_special_files_are_refused(frappe_export, tmp_path):
    """issue 14.21: a required file that is a symlink to a file outside the folder (even an identical
    one) or to a device, or that is not a regular file (a FIFO would block the read), is refused."""
    _, art = frappe_export
    copy = _copy(art, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.copy(copy / "feature_map.json", outside)
    (copy / "feature_map.json").unlink()
    (copy / "feature_map.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="feature_map.json points outside the artifact folder"):
        load_artifact(copy)
    copy = _copy(art, tmp_path / "b")
    (copy / "model.onnx").unlink()
    (copy / "model.onnx").symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="model.onnx points outside the artifact folder"):
        load_artifact(copy)
    (copy / "model.onnx").unlink()
    os.mkfifo(copy / "model.onnx")
    with pytest.raises(ArtifactError, match="model.onnx is not a regular file"):
        load_artifact(copy)
    # a symlink that stays inside the folder is followed (and its content checked as usual)
    copy = _copy(art, tmp_path / "c")
    (copy / "model.onnx").rename(copy / "graph.onnx")
    (copy / "model.onnx").symlink_to("graph.onnx")
    assert load_artifact(copy).format == "onnx"


def test_manifest_schema_and_inputs_must_match_the_verified_files(frappe_export, tmp_path):
    """issue 14.21: the manifest is not covered by a checksum; its derived parts are checked against
    the files that are."""
    _, art = frappe_export
    copy = _copy(art, tmp_path)
    _edit_manifest(copy, lambda m: m["schema"].pop())
    with pytest.raises(ArtifactError, match="'schema' does not match the artifact's dataset_config.json"):
        load_artifact(copy)
    copy = _copy(art, tmp_path / "b")
    _edit_manifest(copy, lambda m: m["inputs"][0].update(width=3))
    with pytest.raises(ArtifactError, match="'inputs' does not match the artifact's feature_map.json"):
        load_artifact(copy)


def test_a_torch_artifact_never_loads_an_unlisted_onnx_graph(frappe_export, tmp_path):
    """issue 14.21: the backend follows the manifest's format; a model.onnx dropped into a torch
    artifact's folder (and so never verified) is not picked by backend auto."""
    run, art = frappe_export
    torch_art = export_run(run, tmp_path / "t", format="torch")
    shutil.copy(art / "model.onnx", torch_art / "model.onnx")
    assert Predictor(torch_art).backend_name == "torch"
    with pytest.raises(ValueError, match="has no model.onnx"):
        Predictor(torch_art, backend="onnx")


def test_a_hash_consistent_but_malformed_feature_map_is_an_artifact_error(frappe_export, tmp_path):
    _, art = frappe_export
    copy = _copy(art, tmp_path)
    fm = json.loads((copy / "feature_map.json").read_text())
    fm["categorical"][0].pop("name")
    text = json.dumps(fm).encode()
    (copy / "feature_map.json").write_bytes(text)
    _edit_manifest(copy, lambda m: m["files"].update({"feature_map.json": hashlib.sha256(text).hexdigest()}))
    with pytest.raises(ArtifactError, match="feature_map.json is not a valid feature map"):
        load_artifact(copy)


def test_raw_rows_score_like_the_eager_run(frappe_export, tmp_path):
    """Raw test-file rows through the artifact (ONNX and torch backends) == ctrlab.predict on the run."""
    run, art = frappe_export
    predictor = Predictor(art)
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).head(3000)
    raw = tmp_path / "raw.csv"
    frame.select(predictor.columns).write_csv(raw)
    eager = api.predict(run, raw)
    np.testing.assert_allclose(predictor.predict_frame(frame), eager, rtol=0, atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(Predictor(art, backend="torch").predict_frame(frame), eager, rtol=0, atol=1e-6)
    # JSON records (strings as in the file) give the same numbers as the frame
    records = frame.select(predictor.columns).head(200).to_dicts()
    np.testing.assert_allclose(predictor.predict_records(records), eager[:200], rtol=0, atol=PARITY_TOLERANCE)


def test_torch_format_and_cli(frappe_export, tmp_path, capsys):
    run, _ = frappe_export
    assert main(["export", str(run), "--format", "torch", "--output", str(tmp_path / "t")]) == 0
    assert "exported FinalMLP (torch)" in capsys.readouterr().out
    assert not (tmp_path / "t" / "model.onnx").exists()
    assert Predictor(tmp_path / "t").backend_name == "torch"
    with pytest.raises(ValueError, match="has no model.onnx"):
        Predictor(tmp_path / "t", backend="onnx")
    # an existing folder is not overwritten silently
    assert main(["export", str(run), "--format", "torch", "--output", str(tmp_path / "t")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "is not a finished ctrlab run" in capsys.readouterr().err


def test_sequence_model_export_scores_raw_parquet_rows(movielens_export):
    run, art = movielens_export
    predictor = Predictor(art)
    assert [s["key"] for s in predictor.artifact.manifest["inputs"]] == ["cat", "seq:genres", "seq:history"]
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).head(2000)
    eager = Predictor(art, backend="torch").predict_frame(frame)
    np.testing.assert_allclose(predictor.predict_frame(frame), eager, rtol=0, atol=PARITY_TOLERANCE)
    assert eager.std() > 0.01


def test_loading_and_scoring_never_unpickles(frappe_export, monkeypatch):
    """Loading an artifact runs no pickle (no arbitrary code on load), with either backend."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used to load the artifact")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    _, art = frappe_export
    record = {"user": "204", "item": "4798", "daytime": "5041", "weekday": "5046", "isweekend": "5053",
              "homework": "5055", "cost": "5058", "weather": "5060", "country": "5073", "city": "5183"}
    for backend in ("onnx", "torch"):
        probs = Predictor(art, backend=backend).predict_records([record])
        assert probs.shape == (1,) and 0 < probs[0] < 1


# ---- issue 14.16: a model of the user's own, defined outside the package --------------------------
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

PLUGIN_MODEL = '''
"""A model defined outside ctrlab (docs/adding_a_model.md), registered when this file is imported."""
from collections.abc import Sequence

from ctrlab.layers import FeatureEmbedding, MLPBlock
from ctrlab.models import CTRModel, register


@register
class ShallowTower(CTRModel):
    """``logit = MLP(flatten(E))`` with one hidden layer of ``width`` units.

    Hyperparameters: ``width`` (required), ``embedding_dim=4``, ``hidden_activations=("relu",)``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map, width: int, embedding_dim: int = 4, hidden_activations: Sequence[str] = ("relu",),
                 embedding_regularizer: float = 0.0, net_regularizer: float = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, [width], activation=hidden_activations,
                            output_dim=1)

    def forward(self, batch):
        return {"logit": self.mlp(self.embedding(batch).flatten(start_dim=1)).squeeze(-1)}
'''


def _env(plugins: str | None = None) -> dict[str, str]:
    """This process's environment for a fresh ctrlab process: this checkout's sources first, and
    CTRLAB_PLUGINS only when given."""
    env = {k: v for k, v in os.environ.items() if k != "CTRLAB_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                         *filter(None, [env.get("PYTHONPATH")])])
    if plugins:
        env["CTRLAB_PLUGINS"] = plugins
    return env


def _ctrlab(*args: str, plugins: str | None = None) -> subprocess.CompletedProcess:
    """``python -m ctrlab.cli ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "ctrlab.cli", *args], env=_env(plugins), capture_output=True,
                          text=True, timeout=600)


def test_plugin_model_trains_exports_and_serves(mixed_export, tmp_path):
    """A model in a file outside the package: `ctrlab --import FILE` trains it (with a required
    hyperparameter), exports it (ONNX and torch), and the torch backend of the server rebuilds it;
    the ONNX artifact serves without the model's code (this process never imports the file)."""
    plugin = tmp_path / "my_ctr_models.py"
    plugin.write_text(PLUGIN_MODEL)
    config = mixed_export[0].parent / "data" / "mixed.yaml"  # every feature kind (tests/serve/conftest.py)
    run, onnx_art, torch_art = tmp_path / "run", tmp_path / "art-onnx", tmp_path / "art-torch"
    train = ["train", "--dataset", str(config), "--model", "ShallowTower", "--preset", "none", "--epochs", "1",
             "--set", "trainer.progress=false", "--output"]

    res = _ctrlab("train", *train[1:], str(tmp_path / "unknown"))
    assert res.returncode == 2 and "unknown model 'ShallowTower'" in res.stderr and "--import" in res.stderr
    res = _ctrlab("--import", str(plugin), *train, str(tmp_path / "no-width"))
    assert res.returncode == 2 and "ShallowTower needs hyperparameter(s) ['width']" in res.stderr, res.stderr
    res = _ctrlab("--import", str(plugin), *train, str(run), "--set", "model_params.width=6")
    assert res.returncode == 0, res.stderr
    assert "ShallowTower on mixed" in res.stdout
    res = _ctrlab("--import", str(plugin), "export", str(run), "--output", str(onnx_art))
    assert res.returncode == 0 and "parity ONNX Runtime vs PyTorch" in res.stdout, res.stderr
    # the environment variable works as --import does (a worker process inherits it)
    res = _ctrlab("export", str(run), "--format", "torch", "--output", str(torch_art), plugins=str(plugin))
    assert res.returncode == 0, res.stderr
    manifest = json.loads((torch_art / "manifest.json").read_text())
    assert manifest["model"]["plugin"] == str(plugin) and manifest["model"]["params"] == {"width": 6}

    assert "ShallowTower" not in list_models()  # this process has not imported the plugin
    onnx = Predictor(onnx_art)
    dcfg = onnx.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), onnx.columns)
    expected = onnx.predict_frame(frame)
    assert expected.std() > 0
    with pytest.raises(ValueError, match=r"from the plugin '.*my_ctr_models.py'.*ctrlab --import"):
        Predictor(torch_art)
    # `ctrlab --import FILE serve --backend torch` rebuilds the model; its answers match the ONNX artifact
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    records = frame.select(onnx.columns).drop_nulls().head(20).to_dicts()
    server = subprocess.Popen([sys.executable, "-m", "ctrlab.cli", "--import", str(plugin), "serve", str(torch_art),
                               "--backend", "torch", "--port", str(port)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", method="POST",
                                     data=json.dumps({"records": records}).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=30))
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "serving ShallowTower (torch)" in log, log
    assert answer["model"] == "ShallowTower" and answer["rows"] == len(records) == 20
    np.testing.assert_allclose(answer["probabilities"], onnx.predict_records(records), rtol=0, atol=PARITY_TOLERANCE)


def test_export_builds_in_a_folder_of_its_own(frappe_export, tmp_path, monkeypatch):
    """issue 14.7, the same for export: another export's temporary folder next to --output (once
    the fixed name ``<output>.tmp``) is never deleted or reused, and a failed export leaves nothing."""
    from ctrlab.serve import artifact

    run, _ = frappe_export
    other = tmp_path / "art.tmp"  # what a concurrent export to the same --output used to build in
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another export's half-written file")
    export_run(run, tmp_path / "art", format="torch")
    assert (other / "model.safetensors").read_bytes() == b"another export's half-written file"
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(artifact, "PARITY_TOLERANCE", -1.0)  # every parity check fails
    with pytest.raises(ArtifactError, match="disagree"):
        export_run(run, tmp_path / "art2")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_parity_chunks_shrink_with_the_sequence_length():
    """Parity checks score thousands of rows; at L = 1,000 a SUAN call on 8,192 rows would need tens
    of GB of attention scores, so the rows per call shrink as 1/L²."""
    from ctrlab.data.feature_map import FeatureMap
    from ctrlab.serve.artifact import chunk_rows

    assert chunk_rows(FeatureMap.from_fields({"a": 5})) == 8192
    assert chunk_rows(FeatureMap.from_fields({"a": 5}, sequences={"h": (20, "a")})) == 8192
    long = FeatureMap.from_fields({"a": 5}, sequences={"h": (1000, "a"), "g": (10, 5)})
    assert chunk_rows(long) == 33 and chunk_rows(FeatureMap.from_fields({"a": 5}, sequences={"h": (10_000, "a")})) == 1
