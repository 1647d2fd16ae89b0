
import pytest
import torch
from sklearn.metrics import roc_auc_score

import ctrlab.models.autoint  # noqa: F401  (registers AutoInt and AutoIntPlus)
from ctrlab.models import create, default_hparams, get_model_class

from .synthetic import auc, fit, planted_pairwise, random_batch, take


@pytest.mark.parametrize("ln,res,H,wide", [(False, True, [], False), (True, True, [16], False),
                                          (False, False, [16], True), (True, False, [], True)])
def test_parameter_count(cat_map, ln, res, H, wide):
    D, F, V, A, L = 4, 3, 23, 8, 2
    m = create("AutoInt", cat_map, embedding_dim=D, attention_layers=L, num_heads=2, attention_dim=A,
               layer_norm=ln, use_residual=res, hidden_units=H, use_wide=wide)
    attn = 3 * D * A + (D * A if res else 0)        # first layer: D -> A (W_res only when D != A)
    attn += 3 * A * A                               # later layers: A -> A, identity residual
    attn += L * 2 * A if ln else 0
    fc = F * A + 1
    dnn = (F * D * 16 + 16) + (16 + 1) if H else 0
    lr = V if wide else 0                           # the wide LR term has no bias (fc has one)
    assert m.count_parameters() == V * D + attn + fc + dnn + lr
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_logit_is_fc_of_attention_plus_dnn_on_raw_embeddings_plus_wide(mixed_map):
    m = create("AutoIntPlus", mixed_map, embedding_dim=4, attention_layers=2, num_heads=2, attention_dim=6,
               hidden_units=[8], use_wide=True, use_scale=True)
    b = random_batch(mixed_map)
    E = m.embedding(b)
    O = E
    for layer in m.attention:
        O = layer(O)
    assert O.shape == (8, mixed_map.num_fields, 6)
    expected = (O.flatten(start_dim=1) @ m.fc.weight[0] + m.fc.bias
                + m.mlp(E.flatten(start_dim=1))[:, 0] + m.linear(b)[:, 0])
    torch.testing.assert_close(m(b)["logit"], expected)


def test_autoint_plus_is_autoint_with_a_dnn(cat_map):
    assert issubclass(get_model_class("AutoIntPlus"), get_model_class("AutoInt"))
    plain, plus = default_hparams("AutoInt"), default_hparams("AutoIntPlus")
    assert plain.pop("hidden_units") == () and plus.pop("hidden_units") == (400, 400)
    assert plain == plus
    assert create("AutoInt", cat_map).mlp is None and create("AutoIntPlus", cat_map).mlp is not None
    a = create("AutoInt", cat_map, embedding_dim=4, attention_dim=4, num_heads=1)
    p = create("AutoIntPlus", cat_map, embedding_dim=4, attention_dim=4, num_heads=1, hidden_units=[])
    p.load_state_dict(a.state_dict())
    b = random_batch(cat_map)
    torch.testing.assert_close(p(b)["logit"], a(b)["logit"])


@pytest.mark.parametrize("name", ["AutoInt", "AutoIntPlus"])
def test_official_defaults(mixed_map, name):
    hp = default_hparams(name)
    assert hp == {"embedding_dim": 10, "attention_layers": 3, "num_heads": 2, "attention_dim": 40,
                  "use_residual": True, "use_scale": False, "layer_norm": False, "use_wide": False,
                  "hidden_units": () if name == "AutoInt" else (400, 400), "hidden_activations": "relu",
                  "net_dropout": 0.0, "batch_norm": False, "embedding_regularizer": 0.0, "net_regularizer": 0.0}
    m = create(name, mixed_map, net_dropout=0.1, layer_norm=True, use_scale=True, use_wide=True).eval()
    assert m(random_batch(mixed_map))["logit"].shape == (8,)


@pytest.fixture(scope="module")
def planted():
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])
    torch.manual_seed(0)
    lr_auc = auc(fit(create("LR", fmap), train, epochs=2), test)
    return fmap, train, test, bayes, lr_auc


@pytest.mark.parametrize("name,hp", [
    ("AutoInt", dict(attention_layers=1, num_heads=2, attention_dim=16)),
    ("AutoIntPlus", dict(attention_layers=1, num_heads=2, attention_dim=16, hidden_units=[64, 64])),
], ids=["AutoInt-1-layer", "AutoIntPlus"])
def test_planted_pairwise_interaction(planted, name, hp):
    """Same task and margins as tests/models/test_planted.py."""
    fmap, train, test, bayes, lr_auc = planted
    model_auc = auc(fit(create(name, fmap, embedding_dim=8, **hp), train), test)
    assert model_auc > 0.87, f"AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc > bayes - 0.02
    assert model_auc - lr_auc > 0.25
