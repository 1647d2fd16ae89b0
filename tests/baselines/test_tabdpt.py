"""TabDPT adapter, end to end on a small randomly initialised TabDPT checkpoint.

No published weights exist on this machine, so the tests build the package's own model class
(``tabdpt.model.TabDPTModel``) with a tiny config, save its random weights in the format the
package loads (safetensors with the config as ``cfg`` metadata) and run the adapter on real
Criteo rows. They prove the plumbing (what reaches the package, the context, the files, the
errors), not TabDPT's accuracy, which a random network does not have.
"""
from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tabdpt_pkg = pytest.importorskip("tabdpt")

from ctrlab.baselines.tabdpt import (  # noqa: E402
    CONTEXT_FILE,
    STATE_FILE,
    WEIGHTS_ENV,
    TabDPT,
    TabDPTWeightsError,
    frequency_encode,
    frequency_tables,
    published_checkpoint,
    resolve_weights,
    stratified_subsample,
)
from ctrlab.baselines.tabular import TabularSplit  # noqa: E402
from ctrlab.config import ConfigError  # noqa: E402

# tabdpt's ensemble calls np.argsort on a torch tensor, which NumPy 2 warns about (the package's code)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

TINY_CFG = {
    "env": {"device": "cpu"},
    "training": {"dropout": 0.0},
    "model": {"enc_cell_dim": 8, "max_num_classes": 4, "regression_bin_count": 8, "regression_bin_min": -3.0,
              "regression_bin_max": 3.0, "nhead": 2, "ff_dim": 32, "emsize": 16, "nlayers": 2,
              "max_num_features": 48, "min_eval_context": 64, "max_eval_context": 1024, "y_encoder_dim": 8,
              "num_col_attn_layers": 0, "n_thinking_rows": 0},
}


def write_random_checkpoint(path, seed: int) -> int:
    """A randomly initialised TabDPTModel saved as the package's loader reads it; returns its
    parameter count. The layers' zero-initialised output projections are re-randomised so that
    the prediction depends on the context (at init they make every layer an identity)."""
    from safetensors.torch import save_file
    from tabdpt.model import TabDPTModel

    m = TINY_CFG["model"]
    torch.manual_seed(seed)
    model = TabDPTModel(dropout=0.0, enc_cell_dim=m["enc_cell_dim"], n_out=m["max_num_classes"],
                        regression_bin_count=m["regression_bin_count"], regression_bin_min=m["regression_bin_min"],
                        regression_bin_max=m["regression_bin_max"], nhead=m["nhead"], nhid=m["ff_dim"],
                        ninp=m["emsize"], nlayers=m["nlayers"], num_features=m["max_num_features"],
                        base_len=m["min_eval_context"], max_len=m["max_eval_context"], y_encoder_dim=m["y_encoder_dim"],
                        use_flash=False)
    with torch.no_grad():
        for p in model.parameters():
            if bool((p == 0).all()):
                p.normal_(0.0, 0.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"cfg": json.dumps(TINY_CFG)})
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tabdpt") / "tiny_tabdpt.safetensors"
    n_params = write_random_checkpoint(path, seed=0)
    return path, n_params


@pytest.fixture(autouse=True)
def no_download(monkeypatch, tmp_path):
    """Any call to the package's downloader fails the test; the HF cache and the env var are empty."""
    import huggingface_hub.constants
    import tabdpt.estimator

    def refuse(**kwargs):
        raise AssertionError(f"tabdpt tried to download {kwargs}")

    monkeypatch.setattr(tabdpt.estimator, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


def _criteo_rows(path, n):
    with gzip.open(path, "rt") as fh:
        return [next(fh).rstrip("\n").split("\t") for _ in range(n)]


@pytest.fixture(scope="module")
def criteo(data_dir):
    """Real Criteo rows as TabularSplits: 2,000 train, 400 test; I1-I13 numeric (NaN when empty),
    C1-C26 categorical as integer ids (one vocabulary over both files, 0 = empty)."""
    folder = data_dir / "criteo_kaggle_head10k"
    rows = _criteo_rows(folder / "train.txt.gz", 2000) + _criteo_rows(folder / "test.txt.gz", 400)
    y = np.array([int(r[0]) for r in rows], dtype=np.float32)
    num = np.array([[float(v) if v else np.nan for v in r[1:14]] for r in rows], dtype=np.float32)
    cats = np.array([r[14:40] for r in rows])
    cat_ids = np.empty(cats.shape, dtype=np.float32)
    for j in range(cats.shape[1]):
        vocab = {v: i + 1 for i, v in enumerate(sorted(set(cats[:, j]) - {""}))}
        cat_ids[:, j] = [vocab.get(v, 0) for v in cats[:, j]]
    X = np.hstack([num, cat_ids])
    names = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    categorical = list(range(13, 39))

    def split(sl):
        return TabularSplit(X=X[sl], y=y[sl], feature_names=names, categorical=categorical, group=None)

    return split(slice(0, 2000)), split(slice(2000, 2400))


def _fit(weights, train, seed=0, log=None, **params):
    est = TabDPT(weights=str(weights), device="cpu", n_ensembles=2, **params)
    messages = []
    info = est.fit(train, None, seed=seed, threads=1, log=log or messages.append)
    return est, info, messages


# ---- context subsampling ------------------------------------------------------------------------
def test_stratified_subsample_keeps_each_class_share_and_every_class():
    y = np.array([1] * 30 + [0] * 970)
    idx = stratified_subsample(y, 100, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert y[idx].sum() == 3  # 30/1000 of 100 rows
    # two clicks in 10,000 rows: their share of 50 rows is 0.01, still one is kept
    y = np.zeros(10_000, dtype=int)
    y[[17, 9000]] = 1
    idx = stratified_subsample(y, 50, seed=3)
    assert len(idx) == 50 and y[idx].sum() == 1
    # leftover rows go to the largest remainder: 7 of 10 rows, shares 4.9 / 2.1 -> 5 / 2
    y = np.array([0] * 70 + [1] * 30)
    assert y[stratified_subsample(y, 7, seed=0)].sum() == 2
    # seeded; a different seed draws other rows; no subsampling when the split fits
    assert np.array_equal(stratified_subsample(y, 7, seed=5), stratified_subsample(y, 7, seed=5))
    assert not np.array_equal(stratified_subsample(y, 50, seed=1), stratified_subsample(y, 50, seed=2))
    assert np.array_equal(stratified_subsample(y, 100, seed=0), np.arange(100))
    with pytest.raises(ValueError, match="2 classes"):
        stratified_subsample(y, 1, seed=0)


def test_frequency_encoding_by_hand():
    X = np.array([[1.0, 7.0], [2.0, 7.0], [7.0, 9.0], [3.0, np.nan]], dtype=np.float32)
    tables = frequency_tables(X, [1])
    new = np.array([[5.0, 7.0], [5.0, 9.0], [5.0, 4.0], [5.0, np.nan]], dtype=np.float32)
    out = frequency_encode(new, tables)
    assert np.array_equal(out[:, 0], new[:, 0])  # numeric column untouched
    assert np.allclose(out[:3, 1], [np.log(3.0), np.log(2.0), 0.0])  # id 7 twice, 9 once, 4 unseen
    assert np.isnan(out[3, 1])


# ---- end to end ---------------------------------------------------------------------------------
def test_fit_predict_matches_the_package_on_the_stratified_context(checkpoint, criteo):
    """The adapter's probabilities are exactly the package's on the context and encoding built by
    hand: 256 of 2,000 rows, clicks kept at their share, ids as log(1 + training count)."""
    weights, _ = checkpoint
    train, test = criteo
    est, info, messages = _fit(weights, train, seed=7, max_context_rows=256)
    y = train.y.astype(int)
    share = y.sum() * 256 / len(y)
    assert info["context_rows"] == 256
    assert info["context_positives"] in (int(np.floor(share)), int(np.ceil(share)))
    assert 0 < info["context_positives"] < 256
    assert "256 of 2000 training rows" in messages[0] and "up to 1024 rows" in messages[0]

    p = est.predict_proba(test)
    assert p.shape == (len(test.y),) and p.dtype == np.float64
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all() and p.std() > 1e-4

    # by hand: counts over the whole training split, then the seeded stratified context
    enc_train = train.X.copy()
    enc_test = test.X.copy()
    for j in train.categorical:
        counts = Counter(train.X[:, j].tolist())
        enc_train[:, j] = [np.log1p(counts[v]) for v in train.X[:, j].tolist()]
        enc_test[:, j] = [np.log1p(counts.get(v, 0)) for v in test.X[:, j].tolist()]
    keep = stratified_subsample(y, 256, seed=7)
    clf = tabdpt_pkg.TabDPTClassifier(model_weight_path=str(weights), device="cpu", verbose=False)
    clf.fit(enc_train[keep], y[keep])
    expected = clf.ensemble_predict_proba(enc_test, n_ensembles=2, seed=7)[:, 1]
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-7)

    # each row's probability depends on the training data only, not on the other rows scored
    part = TabularSplit(X=test.X[:50], y=None, feature_names=test.feature_names, categorical=test.categorical,
                        group=None)
    np.testing.assert_allclose(est.predict_proba(part), p[:50], rtol=1e-6, atol=1e-7)
    assert est.count_parameters() == checkpoint[1]


def test_seeded_deterministic_and_the_context_labels_matter(checkpoint, criteo):
    weights, _ = checkpoint
    train, test = criteo
    a = _fit(weights, train, seed=1, max_context_rows=200)[0].predict_proba(test)
    b = _fit(weights, train, seed=1, max_context_rows=200)[0].predict_proba(test)
    c = _fit(weights, train, seed=2, max_context_rows=200)[0].predict_proba(test)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4  # another seed: another context (and ensemble)
    flipped = TabularSplit(X=train.X, y=1 - train.y, feature_names=train.feature_names,
                           categorical=train.categorical, group=None)
    d = _fit(weights, flipped, seed=1, max_context_rows=200)[0].predict_proba(test)
    assert np.abs(a - d).max() > 1e-3  # the model reads the context's labels


def test_ordinal_encoding_passes_ids_unchanged(checkpoint, criteo):
    weights, _ = checkpoint
    train, test = criteo
    est, _, _ = _fit(weights, train, seed=0, max_context_rows=2000, categorical_encoding="ordinal")
    clf = tabdpt_pkg.TabDPTClassifier(model_weight_path=str(weights), device="cpu", verbose=False)
    clf.fit(train.X, train.y.astype(int))  # the whole split fits in the context: no subsampling
    expected = clf.ensemble_predict_proba(test.X, n_ensembles=2, seed=0)[:, 1]
    np.testing.assert_allclose(est.predict_proba(test), expected, rtol=1e-6, atol=1e-7)


# ---- run folder ---------------------------------------------------------------------------------
def test_save_load_keeps_the_context_and_checks_the_checkpoint(checkpoint, criteo, tmp_path, monkeypatch):
    weights, _ = checkpoint
    train, test = criteo
    own = tmp_path / "weights" / "model.safetensors"
    own.parent.mkdir()
    shutil.copy(weights, own)
    est, _, _ = _fit(own, train, seed=4, max_context_rows=300)
    p = est.predict_proba(test)
    run = tmp_path / "run"
    est.save(run)
    assert sorted(f.name for f in run.iterdir()) == sorted([CONTEXT_FILE, STATE_FILE])  # no weights copied
    state = json.loads((run / STATE_FILE).read_text())
    assert state["weights"] == str(own.resolve()) and state["context_rows"] == 300
    assert len(state["weights_sha256"]) == 64

    loaded = TabDPT.load(run, {"weights": None, "device": "cpu", "n_ensembles": 2})
    np.testing.assert_array_equal(loaded.predict_proba(test), p)

    # the checkpoint moved: a clear error, then the env var points at its new place
    moved = tmp_path / "elsewhere.safetensors"
    own.rename(moved)
    with pytest.raises(TabDPTWeightsError, match=r"model\.safetensors.*is not a file.*tabdpt1_3\.safetensors"):
        TabDPT.load(run, {"device": "cpu"})
    monkeypatch.setenv(WEIGHTS_ENV, str(moved))
    np.testing.assert_array_equal(TabDPT.load(run, {"device": "cpu", "n_ensembles": 2}).predict_proba(test), p)

    # another checkpoint than the run's: refused, naming both digests
    other = tmp_path / "other.safetensors"
    write_random_checkpoint(other, seed=1)
    with pytest.raises(TabDPTWeightsError, match="is not the checkpoint the run"):
        TabDPT.load(run, {"weights": str(other)})


# ---- missing weights ----------------------------------------------------------------------------
def test_missing_weights_name_the_file_to_fetch(criteo, tmp_path):
    train, _ = criteo
    repo, name = published_checkpoint()
    assert (repo, name) == ("Layer6/TabDPT", f"tabdpt{tabdpt_pkg.estimator._VERSION}.safetensors")
    with pytest.raises(TabDPTWeightsError) as err:
        TabDPT(device="cpu").fit(train, None, seed=0, threads=1, log=lambda *_: None)
    text = str(err.value)
    for part in (name, repo, "model_params.weights", WEIGHTS_ENV, "never downloads"):
        assert part in text, part
    gone = tmp_path / "nowhere.safetensors"
    with pytest.raises(TabDPTWeightsError, match=f"model_params.weights \\({gone}\\) is not a file"):
        TabDPT(weights=str(gone)).fit(train, None, seed=0, threads=1, log=lambda *_: None)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TabDPTWeightsError, match="not a safetensors file"):
        TabDPT(weights=str(junk)).fit(train, None, seed=0, threads=1, log=lambda *_: None)


def test_weights_from_env_or_the_local_hf_cache(checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.constants

    weights, _ = checkpoint
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert resolve_weights(None) == weights.resolve()
    assert resolve_weights(str(weights)) == weights.resolve()
    monkeypatch.delenv(WEIGHTS_ENV)
    # a file an earlier `hf download` left in the cache is found there without any network call
    repo, name = published_checkpoint()
    cache = tmp_path / "hf"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    shutil.copy(weights, snap / name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_weights(None) == (snap / name).resolve()


def test_registered_with_its_params():
    from ctrlab.baselines import check_estimator_params, get_estimator, is_estimator

    assert is_estimator("TabDPT") and get_estimator("tabdpt") is TabDPT
    params = check_estimator_params("TabDPT", {"max_context_rows": 512})
    assert params["max_context_rows"] == 512 and params["n_ensembles"] == 8 and params["weights"] is None


def test_bad_params_are_named():
    with pytest.raises(ConfigError, match=r"model_params \(TabDPT\): unknown key\(s\) \['n_estimators'\]"):
        TabDPT(n_estimators=3)
    with pytest.raises(ConfigError, match="categorical_encoding.*'onehot'"):
        TabDPT(categorical_encoding="onehot")
    with pytest.raises(ConfigError, match="max_context_rows"):
        TabDPT(max_context_rows=1)


def test_single_class_training_split_is_refused(checkpoint, criteo):
    weights, _ = checkpoint
    train, _ = criteo
    ones = TabularSplit(X=train.X, y=np.ones_like(train.y), feature_names=train.feature_names,
                        categorical=train.categorical, group=None)
    with pytest.raises(ValueError, match="both 0 and 1"):
        _fit(weights, ones)
    soft = TabularSplit(X=train.X, y=train.y * 0.5, feature_names=train.feature_names,
                        categorical=train.categorical, group=None)
    with pytest.raises(ValueError, match=r"got the values \[0.0, 0.5\]"):
        _fit(weights, soft)


def test_a_whole_run_through_ctrlab_train_evaluate_and_predict(checkpoint, data_dir, tmp_path):
    """`ctrlab train --model TabDPT` on criteo_head10k's encoded splits with the tiny random checkpoint:
    the run folder holds metrics.json of the common schema, and evaluate / predict on the saved run
    reproduce the test numbers (the context was stored, the weights were not)."""
    import json

    from ctrlab import api

    out = tmp_path / "tabdpt-run"
    res = api.train(dataset="criteo_head10k", model="TabDPT", output=str(out), log=lambda *a: None,
                    model_params={"weights": str(checkpoint[0]), "max_context_rows": 256, "n_ensembles": 1,
                                  "device": "cpu"})
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == "TabDPT" and saved["parameters"] == checkpoint[1]
    assert {"AUC", "logloss"} <= set(saved["test"]) and 0.0 <= saved["test"]["AUC"] <= 1.0
    assert (out / "estimator_tabdpt_context.npz").is_file() and not list(out.glob("*.safetensors"))
    again = api.evaluate(out)
    assert again["test"]["AUC"] == pytest.approx(res.metrics["test"]["AUC"], abs=1e-9)
    assert again["test"]["logloss"] == pytest.approx(res.metrics["test"]["logloss"], rel=1e-6)
