"""Low-rank compression of linear layers (issue 16; spec sheet AtomicFeatureMimicking.md, "How to
verify"): exactness at full rank, the eigenvalue-tail error budget, data-aware beats weight SVD, the
parameter formula, and the rewrite on a registered model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctrlab.layers.low_rank import LowRankLinear
from ctrlab.recipes.compress import (
    collect_output_stats,
    compress_linear,
    principal_components,
    rank_for_energy,
    reconstruction_error,
)


class Net(nn.Module):
    """A 2-layer MLP over a dict batch, like the models' interface."""

    def __init__(self, n=24, h=32):
        super().__init__()
        self.fc1 = nn.Linear(n, h)
        self.fc2 = nn.Linear(h, 1)

    def forward(self, batch):
        return {"logit": self.fc2(torch.relu(self.fc1(batch["x"]))).squeeze(-1)}


def _subspace_data(rows, n=24, r=4, noise=0.05, seed=0):
    """Inputs in a rank-r subspace plus small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, r, generator=torch.Generator().manual_seed(99)))[0]
    z = torch.randn(rows, r, generator=g) * 3
    return z @ basis.T + noise * torch.randn(rows, n, generator=g)


def _batches(x, size=512):
    return [{"x": x[i:i + size]} for i in range(0, len(x), size)]


def _fc1_out(net, x):
    with torch.no_grad():
        return net.fc1(x).numpy()


def test_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    net = Net()
    x = _subspace_data(4000, noise=1.0)
    ref = _fc1_out(net, x)
    (report,) = compress_linear(net, {"fc1": 24}, "afm", _batches(x))
    assert isinstance(net.fc1, LowRankLinear) and report.rank == 24
    np.testing.assert_allclose(_fc1_out(net, x), ref, atol=1e-4)


def test_error_budget_is_the_eigenvalue_tail():
    """On held-out rows from the same distribution the mean squared reconstruction error is the sum
    of the dropped eigenvalues (within 10%)."""
    torch.manual_seed(0)
    net = Net()
    train, held = _subspace_data(20000, noise=0.3, seed=1), _subspace_data(20000, noise=0.3, seed=2)
    ref = _fc1_out(net, held)
    (report,) = compress_linear(net, {"fc1": 6}, "afm", _batches(train))
    err = reconstruction_error(ref, _fc1_out(net, held))
    assert report.eigen_tail > 0 and err == pytest.approx(report.eigen_tail, rel=0.1)


def test_data_aware_beats_weight_svd_on_planted_low_rank_inputs():
    """Inputs live in a rank-4 subspace: AFM at k = 4 keeps the outputs (and the AUC of a planted
    label) while the SVD of the weights at the same k, blind to where the data lies, does not."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    x = _subspace_data(20000, noise=0.05, seed=3)
    held = _subspace_data(20000, noise=0.05, seed=4)
    base = Net()
    with torch.no_grad():
        logit = base(held_b := {"x": held})["logit"]
    y = (torch.rand(len(held), generator=torch.Generator().manual_seed(5)) < torch.sigmoid(3 * logit)).numpy()
    auc = roc_auc_score(y, logit.numpy())
    errors, aucs = {}, {}
    for method in ("afm", "svd"):
        net = Net()
        net.load_state_dict(base.state_dict())
        ref = _fc1_out(net, held)
        compress_linear(net, {"fc1": 4}, method, _batches(x) if method == "afm" else None)
        errors[method] = reconstruction_error(ref, _fc1_out(net, held))
        with torch.no_grad():
            aucs[method] = roc_auc_score(y, net(held_b)["logit"].numpy())
    assert errors["afm"] < 0.05 * errors["svd"]
    assert aucs["afm"] >= auc - 0.001 and aucs["svd"] < aucs["afm"] - 0.001


def test_parameter_formula_and_refusals():
    torch.manual_seed(0)
    net = Net()
    (report,) = compress_linear(net, {"fc1": 5}, "svd")
    assert report.parameters_before == 24 * 32 + 32
    assert report.parameters_after == 5 * (24 + 32) + 5 + 32 == sum(p.numel() for p in net.fc1.parameters())
    with pytest.raises(ValueError, match="saves nothing"):
        compress_linear(Net(), {"fc1": 20}, "svd")  # 20 * 56 + 52 > 24 * 32 + 32
    with pytest.raises(ValueError, match="outside 1..min"):
        compress_linear(Net(), {"fc1": 30}, "svd")  # above min(24, 32)
    # one rank for every layer (the CLI's --rank): a layer narrower than the rank keeps its weight
    net = Net(n=48, h=8)
    (report,) = compress_linear(net, {"fc1": 3, "fc2": 3}, "svd", skip_unprofitable=True)  # fc2: 8 -> 1
    assert report.name == "fc1" and isinstance(net.fc1, LowRankLinear) and isinstance(net.fc2, nn.Linear)
    net = Net(n=24, h=8)
    assert compress_linear(net, {"fc1": 12}, "svd", skip_unprofitable=True) == []  # 12 > min(24, 8)
    assert isinstance(net.fc1, nn.Linear)
    assert compress_linear(Net(), {"fc1": 24}, "svd", skip_unprofitable=True) == []  # full rank: 1,400 > 800
    with pytest.raises(ValueError, match="not nn.Linear layers of Net"):
        compress_linear(Net(), {"fc9": 2}, "svd")
    with pytest.raises(ValueError, match="needs training batches"):
        compress_linear(Net(), {"fc1": 2}, "afm")


def test_rank_for_energy_keeps_the_share_of_variance():
    values = torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64)
    assert [rank_for_energy(values, k) for k in (0.5, 0.8, 0.95, 1.0)] == [1, 2, 3, 4]
    torch.manual_seed(0)
    net = Net()
    x = _subspace_data(5000, r=4, noise=0.01)
    (report,) = compress_linear(net, {"fc1": 0.999}, "afm", _batches(x))
    assert report.rank == 4  # the planted subspace's dimension


def test_statistics_accumulate_across_batches_in_float64():
    """The official demo rebinds its sums per batch: here many batches give the moments of all rows."""
    torch.manual_seed(0)
    net = Net()
    x = _subspace_data(3000, noise=1.0)
    stats = collect_output_stats(net, ["fc1"], _batches(x, size=100))["fc1"]
    y = torch.as_tensor(_fc1_out(net, x), dtype=torch.float64)
    mu, cov = stats.moments()
    assert stats.count == 3000 and stats.total.dtype == torch.float64
    torch.testing.assert_close(mu, y.mean(0))
    torch.testing.assert_close(cov, torch.cov(y.T, correction=0), atol=1e-8, rtol=1e-6)
    values, vectors, _ = principal_components(stats)
    assert torch.all(values[:-1] >= values[1:])


def test_deepfm_mlp_layers_at_full_rank_give_the_same_logits(data_dir):
    """On a registered model and real rows (criteo_head10k): DeepFM's hidden layers rewritten at
    full rank leave its logits unchanged; at rank 16 the parameter count drops by the formula."""
    from ctrlab.api import dataset_config, load_run_config
    from ctrlab.data.loader import to_batch
    from ctrlab.data.pipeline import prepare
    from ctrlab.models import create

    data = prepare(dataset_config(load_run_config({"dataset": "criteo_head10k"})), log=lambda *a: None)
    train = to_batch(data.splits["train"].take(slice(0, 4000)).arrays)
    valid = to_batch(data.splits["valid"].take(slice(0, 1000)).arrays)
    torch.manual_seed(0)
    model = create("DeepFM", data.feature_map, hidden_units=(64, 64))
    with torch.no_grad():
        for p in model.parameters():  # a model whose outputs vary (the N(0, 1e-4) start barely does)
            p.normal_(0, 0.3)
    model.eval()
    with torch.no_grad():
        ref = model(valid)["logit"]
    hidden = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == 64]
    assert len(hidden) == 2
    compress_linear(model, {n: 64 for n in hidden}, "afm", [train])
    with torch.no_grad():
        torch.testing.assert_close(model(valid)["logit"], ref, atol=2e-3, rtol=1e-4)
    torch.manual_seed(0)
    fresh = create("DeepFM", data.feature_map, hidden_units=(64, 64))
    n0 = sum(p.numel() for p in fresh.parameters())
    compress_linear(fresh, {hidden[1]: 16}, "svd")
    assert n0 - sum(p.numel() for p in fresh.parameters()) == (64 * 64 + 64) - LowRankLinear.parameter_count(64, 64, 16)


@pytest.fixture(scope="module")
def criteo_deepfm(data_dir):
    """DeepFM on criteo_head10k's encoded rows, weights spread out (N(0, 0.3)) so that outputs vary."""
    from ctrlab.api import dataset_config, load_run_config
    from ctrlab.data.loader import to_batch
    from ctrlab.data.pipeline import prepare
    from ctrlab.models import create

    data = prepare(dataset_config(load_run_config({"dataset": "criteo_head10k"})), log=lambda *a: None)
    arrays = data.splits["train"].arrays

    def build():
        torch.manual_seed(0)
        model = create("DeepFM", data.feature_map, hidden_units=(64, 64))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        return model.eval()

    return build, arrays, to_batch(data.splits["valid"].take(slice(0, 1000)).arrays)


def test_embedding_table_at_full_rank_gives_the_same_logits(criteo_deepfm):
    from ctrlab.layers.low_rank import LowRankEmbedding
    from ctrlab.recipes.compress import compress_embedding, embedding_tables

    build, arrays, valid = criteo_deepfm
    model = build()
    with torch.no_grad():
        ref = model(valid)["logit"]
    assert list(embedding_tables(model)) == ["embedding.embedding", "linear.weights.embedding"]
    report = compress_embedding(model, "embedding.embedding", 10, "afm", arrays)
    assert isinstance(model.embedding.embedding, LowRankEmbedding) and report.rank == 10
    with torch.no_grad():
        torch.testing.assert_close(model(valid)["logit"], ref, atol=1e-3, rtol=1e-4)


def test_embedding_error_is_the_lookup_weighted_eigenvalue_tail(criteo_deepfm):
    """On the training lookups the squared error per looked-up embedding is exactly the (lookup-
    weighted) sum of the dropped eigenvalues; rows never looked up do not count."""
    from ctrlab.recipes.compress import compress_embedding

    build, arrays, _ = criteo_deepfm
    model = build()
    layer = model.embedding
    before = layer.embedding.weight.detach().double().clone()
    ids = (torch.as_tensor(np.asarray(arrays["cat"]), dtype=torch.long) + layer.cat_offsets).reshape(-1)
    report = compress_embedding(model, "embedding.embedding", 3, "afm", arrays)
    with torch.no_grad():
        after = layer.embedding(ids).double()
    err = float(((after - before[ids]) ** 2).sum(1).mean())
    assert report.eigen_tail == pytest.approx(err, rel=1e-3)
    svd = build()
    svd_report = compress_embedding(svd, "embedding.embedding", 3, "svd")
    with torch.no_grad():
        svd_err = float(((svd.embedding.embedding(ids).double() - before[ids]) ** 2).sum(1).mean())
    assert svd_report.eigen_tail is None and err < svd_err


def test_embedding_parameter_formula(criteo_deepfm):
    from ctrlab.layers.low_rank import LowRankEmbedding
    from ctrlab.recipes.compress import compress_embedding

    build, arrays, _ = criteo_deepfm
    model = build()
    rows, dim = model.embedding.embedding.weight.shape
    blocks = len(model.embedding.row_blocks())
    n0 = sum(p.numel() for p in model.parameters())
    report = compress_embedding(model, "embedding.embedding", 2, "afm", arrays)
    assert report.parameters_after == LowRankEmbedding.parameter_count(rows, dim, 2, blocks) == rows * 2 + blocks * 30
    assert n0 - sum(p.numel() for p in model.parameters()) == rows * dim - report.parameters_after
    with pytest.raises(ValueError, match="not a FeatureEmbedding table"):
        compress_embedding(build(), "mlp", 2, "afm", arrays)
