"""``linear_warm_start`` (issue 15.1): the first-order term fitted as an L2 logistic regression."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlab.train.linear_init import C_GRID, HEAD_STD, first_order_module, fit_first_order, quiet_output_heads


@pytest.fixture(scope="module")
def criteo(data_dir):
    """The real criteo_head10k splits, encoded as ctrlab trains on them (categorical + numeric)."""
    from ctrlab.api import dataset_config, load_run_config
    from ctrlab.data.loader import to_batch
    from ctrlab.data.pipeline import prepare

    data = prepare(dataset_config(load_run_config({"dataset": "criteo_head10k"})), log=lambda *a: None)
    return data.feature_map, to_batch(data.splits["train"].arrays), to_batch(data.splits["valid"].arrays)


def _design(fmap, batch):
    """One-hot categorical ids and the encoded numeric values, as scikit-learn sees them."""
    import scipy.sparse as sp

    cat = batch["cat"].numpy().astype(np.int64)
    offsets = np.cumsum([0] + [f.vocab_size for f in fmap.categorical])
    n = cat.shape[0]
    onehot = sp.csr_matrix((np.ones(cat.size), (np.repeat(np.arange(n), cat.shape[1]), (cat + offsets[:-1]).ravel())),
                           shape=(n, int(offsets[-1])))
    return sp.hstack([onehot, sp.csr_matrix(batch["num"].numpy().astype(np.float64))]).tocsr()


def test_lr_model_after_the_fit_is_scikit_learns_logistic_regression(criteo):
    """Equivalence with the simpler model: ctrlab's LR, its first-order term fitted at C = 0.1,
    predicts what scikit-learn's LogisticRegression(C=0.1) predicts on the same one-hot design (the
    same objective: C * sum of loglosses + ||w||² / 2, intercept unpenalised)."""
    from sklearn.linear_model import LogisticRegression

    from ctrlab.models import create

    fmap, train, valid = criteo
    torch.manual_seed(0)
    model = create("LR", fmap)
    fit = fit_first_order(model, train, valid, grid=(0.1,), max_iter=500)
    assert fit.C == 0.1 and fit.module == "linear" and fit.l2 == pytest.approx(1 / (0.1 * len(train["label"])))
    y = train["label"][:, 0].numpy()
    ref = LogisticRegression(C=0.1, solver="lbfgs", max_iter=5000, tol=1e-10).fit(_design(fmap, train), y)
    want = ref.predict_proba(_design(fmap, valid))[:, 1]
    model.init_output_bias(train, float(y.mean()))  # the intercept, as training sets it
    got = model.predict_proba(valid).double().numpy()
    assert np.abs(got - want).max() < 0.01
    assert np.corrcoef(got, want)[0, 1] > 0.999


def test_c_is_picked_by_the_monitored_validation_metric(criteo):
    from ctrlab.models import create
    from ctrlab.train.metrics import evaluate_metrics

    fmap, train, valid = criteo
    y = valid["label"][:, 0].numpy()

    def scores(C):
        torch.manual_seed(0)
        m = create("LR", fmap)
        fit_first_order(m, train, valid, grid=(C,))
        with torch.no_grad():
            prob = torch.sigmoid(m.linear.weights(valid).sum(1).squeeze(-1).double() + 0).numpy()
        # the intercept is not in the weights: AUC does not care, logloss is compared via the fit itself
        return evaluate_metrics(y, prob, ["AUC"])["AUC"]

    auc = {C: scores(C) for C in C_GRID}
    torch.manual_seed(0)
    fit = fit_first_order(create("LR", fmap), train, valid, monitor={"AUC": 1.0}, mode="max")
    assert fit.C == max(auc, key=auc.get) and fit.valid_score == pytest.approx(auc[fit.C], abs=1e-3)
    losses = {}
    for C in C_GRID:
        torch.manual_seed(0)
        losses[C] = fit_first_order(create("LR", fmap), train, valid, grid=(C,)).valid_score
    torch.manual_seed(0)
    fit = fit_first_order(create("LR", fmap), train, valid)  # default: logloss
    assert fit.C == min(losses, key=losses.get)


def test_deepfm_starts_as_the_fitted_logistic_regression(criteo):
    """After the fit, DeepFM's logit is its first-order term plus a constant (the MLP head's bias)
    plus terms that are negligible at the N(0, 1e-4) start (numeric vectors at that scale too, as
    ``small_numeric_init`` sets them on such data); its quiet MLP head is left as it is."""
    from ctrlab.models import create

    fmap, train, valid = criteo
    torch.manual_seed(0)
    model = create("DeepFM", fmap)
    model.shrink_numeric_init(train["num"].double().pow(2).mean(0).sqrt().tolist())
    fit = fit_first_order(model, train, valid)
    assert fit is not None and fit.module == "linear"
    head = model.mlp.out.weight.clone()
    assert quiet_output_heads(model, fit.module, train) == {}
    assert torch.equal(head, model.mlp.out.weight)
    model.eval()
    with torch.no_grad():
        rest = model(valid)["logit"] - model.linear(valid).squeeze(-1)
        assert float(model.linear(valid).std()) > 0.1  # the fit moved the weights
    assert float(rest.std()) < 1e-3


def test_a_loud_head_after_batch_norm_is_scaled_to_the_limit(criteo):
    """With BatchNorm the MLP's last hidden layer is unit-scale in training mode, and a fresh head
    adds logit noise far above HEAD_STD; it is scaled to exactly HEAD_STD, measured without moving
    the model's BatchNorm statistics or the random state."""
    from ctrlab.models import create

    fmap, train, _ = criteo
    torch.manual_seed(0)
    model = create("DeepFM", fmap, batch_norm=True, net_dropout=0.2)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    rng = torch.get_rng_state()
    scaled = quiet_output_heads(model, "linear", train)
    assert list(scaled) == ["mlp.out"] and scaled["mlp.out"] < 0.2
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    out = {}
    model.mlp.out.register_forward_hook(lambda m, i, o: out.__setitem__("o", o.detach()))
    with torch.random.fork_rng(devices=[]):
        model.train()(train)
    assert float(out["o"].double().std()) == pytest.approx(HEAD_STD, rel=0.05)


def test_models_without_one_first_order_term_are_left_alone(criteo):
    from ctrlab.models import create

    fmap, train, valid = criteo
    torch.manual_seed(0)
    model = create("DCN", fmap)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert first_order_module(model) is None and fit_first_order(model, train, valid) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

