
import pytest
import torch

import ctrlab.models.widedeep  # noqa: F401  (registers WideDeep)
from ctrlab.models import create, default_hparams

from .synthetic import auc, fit, planted_pairwise, random_batch, take


def test_zero_mlp_output_equals_lr(mixed_map):
    """With the MLP's output weights zeroed, Wide&Deep is LR; the MLP's output bias plays LR's bias
    (the wide part has none, as in FuxiCTR)."""
    lr = create("LR", mixed_map)
    wd = create("WideDeep", mixed_map, embedding_dim=4, hidden_units=[16, 8])
    with torch.no_grad():
        for p in lr.parameters():
            p.normal_()
    state = {k: v for k, v in lr.state_dict().items() if k != "linear.bias"}
    missing, unexpected = wd.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("mlp.", "embedding.")) for k in missing)
    assert wd.linear.bias is None
    b = random_batch(mixed_map, batch_size=16)
    assert not torch.allclose(wd(b)["logit"], lr(b)["logit"])
    with torch.no_grad():
        wd.mlp.out.weight.zero_()
        wd.mlp.out.bias.copy_(lr.linear.bias)
    torch.testing.assert_close(wd(b)["logit"], lr(b)["logit"])


def test_parameter_count(cat_map):
    D, F, V = 4, 3, 23           # cat_map: vocab 7 + 11 + 5
    m = create("WideDeep", cat_map, embedding_dim=D, hidden_units=[16, 8])
    d = F * D
    lr = V                       # no wide bias: the MLP's output layer has it
    mlp = (d * 16 + 16) + (16 * 8 + 8) + (8 + 1)
    assert m.count_parameters() == V * D + lr + mlp
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_official_defaults(mixed_map):
    hp = default_hparams("WideDeep")
    assert hp == {"embedding_dim": 10, "hidden_units": (300, 300, 300), "hidden_activations": "relu",
                  "net_dropout": 0.0, "batch_norm": False, "embedding_regularizer": 0.0, "net_regularizer": 0.0}
    m = create("WideDeep", mixed_map, net_dropout=0.1, batch_norm=True).eval()
    assert m(random_batch(mixed_map))["logit"].shape == (8,)


def test_planted_pairwise_interaction():
    """Same task and margins as tests/models/test_planted.py."""
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, 16_000)), take(batch, slice(16_000, None))
    from sklearn.metrics import roc_auc_score
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[16_000:])
    lr_auc = auc(fit(create("LR", fmap), train, epochs=2), test)
    model_auc = auc(fit(create("WideDeep", fmap, embedding_dim=8, hidden_units=[64, 64]), train), test)
    assert model_auc > 0.87, f"AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc > bayes - 0.02
    assert model_auc - lr_auc > 0.25
