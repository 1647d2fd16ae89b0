
import pytest
import torch
from sklearn.metrics import roc_auc_score

import ctrlab.models.dcn  # noqa: F401  (registers DCN)
from ctrlab.models import create, default_hparams

from .synthetic import auc, fit, fit_until, planted_pairwise, planted_third_order, random_batch, take


# ---- structure --------------------------------------------------------------------------------
def test_zero_cross_weights_and_biases_give_x0_and_reduce_to_dnn(mixed_map):
    D, H = 4, [16, 8]
    dnn = create("DNN", mixed_map, embedding_dim=D, hidden_units=H)
    dcn = create("DCN", mixed_map, embedding_dim=D, hidden_units=H, num_cross_layers=3)
    with torch.no_grad():
        for p in dnn.parameters():
            p.normal_(std=0.3)
        for b in dcn.crossnet.b:
            b.normal_()
    dcn.embedding.load_state_dict(dnn.embedding.state_dict())
    dcn.dnn.hidden.load_state_dict(dnn.mlp.hidden.state_dict())
    b = random_batch(mixed_map, batch_size=16)
    x0 = dcn.embedding(b).flatten(start_dim=1)
    assert not torch.allclose(dcn.crossnet(x0), x0)
    with torch.no_grad():
        for w, bias in zip(dcn.crossnet.w, dcn.crossnet.b):
            w.weight.zero_()
            bias.zero_()
    torch.testing.assert_close(dcn.crossnet(x0), x0)        # x_L = x0
    d = mixed_map.num_fields * D
    with torch.no_grad():                                   # fc reads only the DNN part
        dcn.fc.weight.zero_()
        dcn.fc.weight[:, d:] = dnn.mlp.out.weight
        dcn.fc.bias.copy_(dnn.mlp.out.bias)
    torch.testing.assert_close(dcn(b)["logit"], dnn(b)["logit"])


def test_logit_is_fc_of_cross_and_dnn(cat_map):
    m = create("DCN", cat_map, embedding_dim=4, hidden_units=[8], num_cross_layers=2)
    b = random_batch(cat_map)
    x0 = m.embedding(b).flatten(start_dim=1)
    x = x0
    for w, bias in zip(m.crossnet.w, m.crossnet.b):
        x = x0 * (x @ w.weight[0])[:, None] + bias + x
    expected = torch.cat([x, m.dnn(x0)], -1) @ m.fc.weight[0] + m.fc.bias
    torch.testing.assert_close(m(b)["logit"], expected)


@pytest.mark.parametrize("H", [[16, 8], []])
def test_parameter_count(cat_map, H):
    D, F, V, L = 4, 3, 23, 3
    m = create("DCN", cat_map, embedding_dim=D, num_cross_layers=L, hidden_units=H)
    d = F * D
    cross = L * 2 * d
    dnn = (d * 16 + 16) + (16 * 8 + 8) if H else 0
    fc = d + (8 if H else 0) + 1
    assert m.count_parameters() == V * D + cross + dnn + fc
    assert (m.dnn is None) == (not H)
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_official_defaults(mixed_map):
    hp = default_hparams("DCN")
    assert hp == {"embedding_dim": 10, "num_cross_layers": 3, "hidden_units": (1024, 512, 256),
                  "hidden_activations": "relu", "net_dropout": 0.0, "batch_norm": False,
                  "embedding_regularizer": 0.0, "net_regularizer": 0.0}
    assert create("DCN", mixed_map)(random_batch(mixed_map))["logit"].shape == (8,)


# ---- planted interactions ---------------------------------------------------------------------
@pytest.mark.parametrize("hp", [dict(hidden_units=[64, 64], num_cross_layers=2),
                                dict(hidden_units=[], num_cross_layers=2)], ids=["parallel", "crossnet-only"])
def test_planted_pairwise_interaction(hp):
    """Same task and margins as tests/models/test_planted.py."""
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])
    lr_auc = auc(fit(create("LR", fmap), train, epochs=2), test)
    model_auc = auc(fit(create("DCN", fmap, embedding_dim=8, **hp), train), test)
    assert model_auc > 0.87, f"AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc > bayes - 0.02
    assert model_auc - lr_auc > 0.25


def test_fm_cannot_learn_third_order(third_order):
    assert third_order[-1] < 0.6


def test_third_order_parallel_dcn(third_order):
    """Default structure (cross net ‖ DNN). Same budget as the cross-net-only test (lr 1e-2, up to
    12 epochs, early stop on validation AUC): with the planted-pairwise budget (4 epochs, lr 3e-3)
    it also passed 12/12 seeds, but the plateau below makes a short fixed budget fragile."""
    fmap, train, valid, test, fm_auc = third_order
    m = create("DCN", fmap, embedding_dim=8, hidden_units=[64, 64], num_cross_layers=2)
    model_auc = auc(fit_until(m, train, valid, target=0.88, max_epochs=12, lr=1e-2), test)
    assert model_auc > 0.87 and model_auc - fm_auc > 0.25, (model_auc, fm_auc)


def test_third_order_crossnet_only(third_order):
    """The cross net alone (2 layers: degree 3) learns it, but only after a plateau of random
    length at AUC ≈ 0.5 (a degree-3 saddle at the tiny embedding init): lr 1e-2, up to 12 epochs."""
    fmap, train, valid, test, fm_auc = third_order
    m = create("DCN", fmap, embedding_dim=8, hidden_units=[], num_cross_layers=2)
    model_auc = auc(fit_until(m, train, valid, target=0.88, max_epochs=12, lr=1e-2), test)
    assert model_auc > 0.87 and model_auc - fm_auc > 0.25, (model_auc, fm_auc)


def test_one_cross_layer_is_only_second_order(third_order):
    """Control: one cross layer is a degree-2 polynomial of x0 and cannot express the parity."""
    fmap, train, valid, test, _ = third_order
    m = create("DCN", fmap, embedding_dim=8, hidden_units=[], num_cross_layers=1)
    assert auc(fit_until(m, train, valid, target=0.88, max_epochs=4, lr=1e-2), test) < 0.6
