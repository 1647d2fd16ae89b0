"""FCN / DCNv3 and its single-stream variants ECN and LCN (sheet: /work/shared/docs/models/FCN.md)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import ctrlab.models.fcn  # noqa: F401  (registers FCN, DCNv3, ECN, LCN)
from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers.exponential_cross import multi_head_half_split
from ctrlab.models import create, default_hparams, get_model_class
from ctrlab.models.fcn import tri_bce

from .synthetic import auc, fit, planted_pairwise, random_batch, take

NAMES = ["FCN", "DCNv3", "ECN", "LCN"]


def test_official_defaults():
    assert default_hparams("FCN") == dict(
        embedding_dim=10, num_deep_cross_layers=4, num_shallow_cross_layers=4, deep_net_dropout=0.1,
        shallow_net_dropout=0.3, layer_norm=True, batch_norm=False, num_heads=1, detach_loss_weights=False,
        embedding_regularizer=0.0, net_regularizer=0.0)
    assert default_hparams("ECN")["num_cross_layers"] == 3 and default_hparams("ECN")["net_dropout"] == 0.0


def test_forward_fuses_the_two_streams(mixed_map):
    D, H = 4, 2
    m = create("FCN", mixed_map, embedding_dim=D, num_heads=H, num_deep_cross_layers=2,
               num_shallow_cross_layers=3).eval()
    b = random_batch(mixed_map, batch_size=16)
    out = m(b)
    assert set(out) == {"logit", "logit_deep", "logit_shallow"}
    assert all(v.shape == (16,) for v in out.values())
    torch.testing.assert_close(out["logit"], (out["logit_deep"] + out["logit_shallow"]) / 2)
    x0 = multi_head_half_split(m.embedding(b), H)
    assert x0.shape == (16, H, mixed_map.num_fields * D)
    # each head runs the same (shared) network on its own slice; the stream logit is the head mean
    z_d = torch.stack([m.fc_deep(m.ecn(x0[:, h]))[:, 0] for h in range(H)]).mean(0)
    z_s = torch.stack([m.fc_shallow(m.lcn(x0[:, h]))[:, 0] for h in range(H)]).mean(0)
    torch.testing.assert_close(out["logit_deep"], z_d)
    torch.testing.assert_close(out["logit_shallow"], z_s)
    assert torch.isfinite(out["logit"]).all()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_parameter_count(cat_map, batch_norm):
    """Sheet: per cross layer d·d/2 + d (+ d LayerNorm), per stream head d + 1; heads share them."""
    D, H, LD, LS = 4, 2, 2, 3
    d = cat_map.num_fields * D
    emb = 23 * D * H  # one table of width D·H (vocab 7 + 11 + 5)
    layer = d * d // 2 + d + d + (2 * H if batch_norm else 0)
    m = create("FCN", cat_map, embedding_dim=D, num_heads=H, num_deep_cross_layers=LD,
               num_shallow_cross_layers=LS, batch_norm=batch_norm)
    assert m.count_parameters() == emb + (LD + LS) * layer + 2 * (d + 1)
    e = create("ECN", cat_map, embedding_dim=D, num_heads=H, num_cross_layers=LD, batch_norm=batch_norm)
    assert e.count_parameters() == emb + LD * layer + d + 1
    l = create("LCN", cat_map, embedding_dim=D, num_heads=H, num_cross_layers=LS, layer_norm=False)
    assert l.count_parameters() == emb + LS * (d * d // 2 + d) + d + 1


def test_criteo_sized_model_has_1_37M_network_parameters():
    """Sheet: F = 39, D = 16 -> 195,936 per layer; Criteo config ECN 3 + LCN 4 -> ~1.37 M."""
    fmap = FeatureMap.from_fields({f"C{i}": 3 for i in range(39)})
    m = create("FCN", fmap, embedding_dim=16, num_deep_cross_layers=3, num_shallow_cross_layers=4)
    net = m.count_parameters() - 39 * 3 * 16
    assert net == 7 * 195_936 + 2 * 625 == 1_372_802


def test_odd_embedding_dim_is_refused(cat_map):
    with pytest.raises(ValueError, match="even"):
        create("FCN", cat_map, embedding_dim=5)(random_batch(cat_map))


def test_dcnv3_is_fcn(cat_map):
    assert issubclass(get_model_class("DCNv3"), get_model_class("FCN"))
    assert default_hparams("DCNv3") == default_hparams("FCN")


# ---- Tri-BCE ----------------------------------------------------------------------------------
def _hand_terms():
    # one sample, y = 1, z_D = 1, z_S = -1, fused z = 0
    L = math.log(2.0)                  # BCE(σ(0), 1)
    LD = math.log(1 + math.exp(-1.0))  # BCE(σ(1), 1)  < L  -> w_D = 0
    LS = math.log(1 + math.exp(1.0))   # BCE(σ(-1), 1) > L  -> w_S = LS - L
    return L, LD, LS


def test_tri_bce_hand_example(cat_map):
    L, LD, LS = _hand_terms()
    y = torch.ones(1)
    z_d, z_s = torch.tensor([1.0]), torch.tensor([-1.0])
    expected = L + 0.0 * LD + (LS - L) * LS
    assert tri_bce((z_d + z_s) / 2, z_d, z_s, y).item() == pytest.approx(expected, abs=1e-6)
    assert tri_bce((z_d + z_s) / 2, z_d, z_s, y, detach_weights=True).item() == pytest.approx(expected, abs=1e-6)
    # the model's task loss is this formula on its own outputs; loss() adds the regularizer
    m = create("FCN", cat_map, embedding_dim=4, embedding_regularizer=0.1)
    b = random_batch(cat_map, batch_size=32)
    out = m(b)
    y = b["label"][:, 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    l0, ld, ls = bce(out["logit"], y), bce(out["logit_deep"], y), bce(out["logit_shallow"], y)
    manual = l0 + torch.clamp(ld - l0, min=0) * ld + torch.clamp(ls - l0, min=0) * ls
    torch.testing.assert_close(m.task_loss(b, out), manual)
    torch.testing.assert_close(m.loss(b, out), manual + m.regularization())
    assert m.regularization() > 0


def test_tri_bce_reduces_to_bce_when_streams_agree():
    torch.manual_seed(0)
    z, y = torch.randn(64), torch.randint(0, 2, (64,)).float()
    torch.testing.assert_close(tri_bce(z, z.clone(), z.clone(), y),
                               torch.nn.functional.binary_cross_entropy_with_logits(z, y))


@pytest.mark.parametrize("detach", [False, True])
def test_tri_bce_gradient_through_the_weights(detach):
    """Official code: gradients flow through w (d(w·L_S) = (2L_S − L)·dL_S − L_S·dL); detached:
    w_S·dL_S."""
    L, LD, LS = _hand_terms()
    z_d = torch.tensor([1.0], requires_grad=True)
    z_s = torch.tensor([-1.0], requires_grad=True)
    tri_bce((z_d + z_s) / 2, z_d, z_s, torch.ones(1), detach_weights=detach).backward()
    dL = (1 / (1 + math.exp(-0.0)) - 1) / 2      # dBCE(σ(z))/dz_S, z = (z_D + z_S)/2
    dLS = 1 / (1 + math.exp(1.0)) - 1            # dBCE(σ(z_S))/dz_S
    expected = dL + (LS - L) * dLS if detach else dL + (2 * LS - L) * dLS - LS * dL
    assert z_s.grad.item() == pytest.approx(expected, abs=1e-6)
    assert z_d.grad.item() == pytest.approx(dL if detach else dL - LS * dL, abs=1e-6)  # w_D = 0


# ---- learning ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairwise():
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    return fmap, train, test, roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])


@pytest.mark.parametrize("name,hp", [
    ("FCN", dict(embedding_dim=8, num_deep_cross_layers=2, num_shallow_cross_layers=2)),
    ("ECN", dict(embedding_dim=8, num_cross_layers=2)),
    ("LCN", dict(embedding_dim=8, num_cross_layers=2)),
])
def test_planted_pairwise_interaction(pairwise, name, hp):
    fmap, train, test, bayes = pairwise
    model_auc = auc(fit(create(name, fmap, **hp), train), test)
    assert model_auc > 0.87 and model_auc > bayes - 0.02, f"{name}: AUC {model_auc:.4f} (Bayes {bayes:.4f})"


def planted_three_way(n: int = 20_000, cardinality: int = 8, seed: int = 0):
    """label ~ Bernoulli(0.9 if (x1 + x2 + x3) mod 2 == 0 else 0.1): every pairwise marginal is
    uninformative, only the 3rd-order term carries signal."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cardinality, size=(n, 3))
    y = (rng.random(n) < np.where(x.sum(1) % 2 == 0, 0.9, 0.1)).astype(np.float32)
    fmap = FeatureMap.from_fields({f"f{i}": cardinality + 2 for i in range(3)})
    return fmap, {"cat": torch.from_numpy(x + 2).long(), "label": torch.from_numpy(y)[:, None]}


def _without_self_mask(model):
    for net in (getattr(model, "ecn", None), getattr(model, "lcn", None)):
        for mask in (net.masks if net is not None else []):
            mask.enabled = False
    return model


def test_degree_ecn2_learns_third_order_interaction_lcn1_cannot():
    """Sheet: a 2-layer ECN (degree 4) beats a 1-layer LCN (degree 2) on a planted 3-way parity.
    The degree argument needs m = 1: ReLU(LayerNorm(c)) is not a polynomial (LayerNorm divides by
    a norm over all fields), and with it even a 1-layer LCN fits this task."""
    fmap, batch = planted_three_way(n=12_000)
    train, test = take(batch, slice(0, 10_000)), take(batch, slice(10_000, None))
    ecn = fit(_without_self_mask(create("ECN", fmap, embedding_dim=8, num_cross_layers=2)),
              train, epochs=8, lr=1e-2)
    lcn = fit(_without_self_mask(create("LCN", fmap, embedding_dim=8, num_cross_layers=1, net_dropout=0.0)),
              train, epochs=8, lr=1e-2)
    ecn_auc, lcn_auc = auc(ecn, test), auc(lcn, test)
    assert ecn_auc > 0.85, ecn_auc
    assert lcn_auc < 0.6, lcn_auc


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_roundtrip_through_safetensors(mixed_map, name):
    st = pytest.importorskip("safetensors.torch")
    a, b = create(name, mixed_map, num_heads=2), create(name, mixed_map, num_heads=2)
    b.load_state_dict(st.load(st.save({k: v.contiguous() for k, v in a.state_dict().items()})))
    a.eval()
    b.eval()
    batch = random_batch(mixed_map)
    torch.testing.assert_close(a(batch)["logit"], b(batch)["logit"])
