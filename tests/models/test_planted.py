"""Planted pairwise interaction (FinalMLP sheet): label depends only on (x1 + x2) mod 2.

The Bayes-optimal AUC of this task is 0.9 (0.9·0.9 + ½·2·0.9·0.1), so every interaction model
must get close to it, while LR (no cross terms) stays near 0.5.
"""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctrlab.models import create

from .synthetic import auc, fit, planted_pairwise, take

N_TRAIN = 16_000


@pytest.fixture(scope="module")
def data():
    fmap, batch, p = planted_pairwise(n=20_000)
    train, test = take(batch, slice(0, N_TRAIN)), take(batch, slice(N_TRAIN, None))
    bayes = roc_auc_score(test["label"][:, 0].numpy(), p[N_TRAIN:])
    return fmap, train, test, bayes


@pytest.fixture(scope="module")
def lr_auc(data):
    fmap, train, test, _ = data
    return auc(fit(create("LR", fmap), train, epochs=2), test)


def test_lr_cannot_learn_it(lr_auc):
    assert lr_auc < 0.6


CASES = {
    "FM": ("FM", dict(embedding_dim=8)),
    "DNN": ("DNN", dict(embedding_dim=8, hidden_units=[64, 64])),
    "DeepFM": ("DeepFM", dict(embedding_dim=8, hidden_units=[64, 64])),
    "DCNv2-parallel": ("DCNv2", dict(embedding_dim=8, hidden_units=[64, 64], num_cross_layers=2)),
    "DCNv2-crossnet-lowrank": ("DCNv2", dict(embedding_dim=8, model_structure="crossnet_only",
                                             num_cross_layers=2, use_low_rank_mixture=True,
                                             low_rank=8, num_experts=2)),
    "FinalMLP": ("FinalMLP", dict(embedding_dim=8, mlp1_hidden_units=[64, 64], mlp2_hidden_units=[32],
                                  fs_hidden_units=[32], num_heads=2)),
    "FinalMLP-context": ("FinalMLP", dict(embedding_dim=8, mlp1_hidden_units=[64], mlp2_hidden_units=[32],
                                          fs_hidden_units=[32], fs1_context=["f2"], fs2_context=["f3"],
                                          num_heads=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interaction_models_learn_it(case, data, lr_auc):
    name, hp = CASES[case]
    fmap, train, test, bayes = data
    model_auc = auc(fit(create(name, fmap, **hp), train), test)
    assert model_auc > 0.87, f"{case}: AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc > bayes - 0.02, f"{case}: AUC {model_auc:.4f} (Bayes {bayes:.4f})"
    assert model_auc - lr_auc > 0.25
