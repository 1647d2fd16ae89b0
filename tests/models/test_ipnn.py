
import torch
from sklearn.metrics import roc_auc_score

import ctrlab.models.ipnn  # noqa: F401  (registers IPNN)
from ctrlab.models import create, default_hparams

from .synthetic import auc, fit, planted_pairwise, random_batch, take


def test_mlp_input_is_embeddings_and_explicit_inner_products(mixed_map):
    m = create("IPNN", mixed_map, embedding_dim=4, hidden_units=[8])
    seen = {}
    m.mlp.register_forward_hook(lambda mod, inp, out: seen.update(z=inp[0], out=out))
    b = random_batch(mixed_map, batch_size=5)
    logit = m(b)["logit"]
    E = m.embedding(b)
    F = E.shape[1]
    pairs = [(E[:, i] * E[:, j]).sum(-1) for i in range(F) for j in range(i + 1, F)]   # <e_i, e_j>, i < j
    expected = torch.cat([E.flatten(start_dim=1), torch.stack(pairs, dim=1)], dim=1)
    assert seen["z"].shape == (5, F * 4 + F * (F - 1) // 2)
    torch.testing.assert_close(seen["z"], expected)
    torch.testing.assert_close(logit, seen["out"][:, 0])


def test_parameter_count(cat_map):
    D, F, V = 4, 3, 23
    m = create("IPNN", cat_map, embedding_dim=D, hidden_units=[16, 8])
    z = F * D + F * (F - 1) // 2
    mlp = (z * 16 + 16) + (16 * 8 + 8) + (8 + 1)
    assert m.count_parameters() == V * D + mlp
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_official_defaults(mixed_map):
    hp = default_hparams("IPNN")
    assert hp == {"embedding_dim": 10, "hidden_units": (300, 300, 300), "hidden_activations": "relu",
                  "net_dropout": 0.0, "batch_norm": False, "embedding_regularizer": 0.0, "net_regularizer": 0.0}
    assert create("IPNN", mixed_map)(random_batch(mixed_map))["logit"].shape == (8,)


def test_planted_pairwise_interaction():
    """Same task and margins as tests/models/test_planted.py."""
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])
    lr_auc = auc(fit(create("LR", fmap), train, epochs=2), test)
    model_auc = auc(fit(create("IPNN", fmap, embedding_dim=8, hidden_units=[64, 64]), train), test)
    assert model_auc > 0.87, f"AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc > bayes - 0.02
    assert model_auc - lr_auc > 0.25
