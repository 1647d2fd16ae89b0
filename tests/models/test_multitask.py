"""Shared-bottom and MMoE multi-task models: the task protocol, MMoE with one expert equal to a
shared bottom, the gates, and both tasks learned from one set of embeddings."""
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers import MixtureOfExperts
from ctrlab.models import create

from .synthetic import fit, planted_pairwise, random_batch

MAP = FeatureMap.from_fields({"user": 9, "item": 11}, numeric=["price"], labels=["click", "purchase", "like"])


def test_tasks_are_label_columns_in_the_order_given_with_their_weights():
    m = create("SharedBottom", MAP, tasks=["like", "click"], task_weights=[2.0, 0.5])
    assert m.task_names == ["like", "click"] and m.task_weights == [2.0, 0.5]
    b = random_batch(MAP, 64)
    labels, rows = m.task_targets(b)
    assert torch.equal(labels, b["label"][:, [2, 0]]) and rows.all()
    out = m(b)
    assert out["task_logits"].shape == (64, 2) and torch.equal(out["logit"], out["task_logits"][:, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = 2.0 * bce(out["task_logits"][:, 0], b["label"][:, 2]) + 0.5 * bce(out["task_logits"][:, 1], b["label"][:, 0])
    torch.testing.assert_close(m.task_loss(b, out), want)
    assert create("MMoE", MAP).task_names == ["click", "purchase", "like"]  # default: every label
    with pytest.raises(ValueError, match=r"\['buy'\] are not labels"):
        create("MMoE", MAP, tasks=["click", "buy"])
    with pytest.raises(ValueError, match="one weight >= 0 per task"):
        create("MMoE", MAP, tasks=["click"], task_weights=[1.0, 1.0])


def test_mmoe_with_one_expert_is_a_shared_bottom():
    torch.manual_seed(0)
    kw = dict(embedding_dim=4, tasks=["click", "purchase"], tower_hidden_units=(8,))
    sb = create("SharedBottom", MAP, bottom_hidden_units=(16, 8), **kw)
    mmoe = create("MMoE", MAP, num_experts=1, expert_hidden_units=(16, 8), gate_hidden_units=(5,), **kw)
    mmoe.embedding.load_state_dict(sb.embedding.state_dict())
    mmoe.experts.experts[0].load_state_dict(sb.bottom.state_dict())
    mmoe.towers.load_state_dict(sb.towers.state_dict())
    b = random_batch(MAP, 32)
    with torch.no_grad():
        torch.testing.assert_close(mmoe(b)["task_logits"], sb(b)["task_logits"])


def test_gates_are_a_softmax_over_the_experts_per_task():
    layer = MixtureOfExperts(6, num_tasks=3, num_experts=4, expert_units=(5,), gate_units=(7,))
    x = torch.randn(10, 6)
    g = layer.gate_weights(x)
    assert g.shape == (10, 3, 4) and (g > 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(10, 3))
    outs = layer(x)
    experts = torch.stack([e(x) for e in layer.experts], 1)
    torch.testing.assert_close(outs[1], (g[:, 1, :, None] * experts).sum(1))


@pytest.mark.parametrize("name", ["SharedBottom", "MMoE"])
def test_both_tasks_are_learned_one_from_each_planted_signal(name, one_thread):
    """Task 1 is the planted pairwise parity of fields 0-1 (Bayes AUC 0.8), task 2 field 3's parity
    (noise-free): one model, one set of embeddings, learns both."""
    fmap, data, p = planted_pairwise(n=16_000, seed=0)
    fmap.labels = ["pair", "field3"]
    data["label"] = torch.cat([data["label"], (data["cat"][:, 3] % 2).float()[:, None]], 1)
    train = {k: v[:12_000] for k, v in data.items()}
    test = {k: v[12_000:] for k, v in data.items()}
    torch.manual_seed(0)
    widths = (dict(expert_hidden_units=(64, 32), gate_hidden_units=(16,)) if name == "MMoE"
              else dict(bottom_hidden_units=(64, 32)))
    m = fit(create(name, fmap, embedding_dim=8, tower_hidden_units=(16,), **widths), train, epochs=6, lr=3e-3)
    with torch.no_grad():
        logits = m(test)["task_logits"]
    aucs = [roc_auc_score(test["label"][:, t], logits[:, t]) for t in range(2)]
    bayes = roc_auc_score(test["label"][:, 0], p[12_000:])
    assert aucs[0] > bayes - 0.02 and aucs[1] > 0.99, (aucs, bayes)
