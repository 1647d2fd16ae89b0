import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers import FeatureEmbedding, FeatureGating

FMAP = FeatureMap.from_fields({"user": 6, "item": 8, "ctx": 4}, numeric=["price"])


def _batch(n=5):
    return {"cat": torch.stack([torch.randint(0, v, (n,)) for v in (6, 8, 4)], 1), "num": torch.randn(n, 1)}


def test_gate_is_exactly_one_at_init_without_context():
    D = 3
    d = FMAP.num_fields * D
    gating = FeatureGating(FMAP, D, d, hidden_units=[16, 8])
    emb = torch.randn(5, d)
    g = gating.gate(_batch(), 5)
    assert g.shape == (5, d)
    assert torch.equal(g, torch.ones(5, d))
    assert torch.equal(gating(_batch(), emb), emb)
    assert torch.count_nonzero(gating.context_bias) == 0


def test_gate_per_element_and_trainable():
    D = 3
    gating = FeatureGating(FMAP, D, FMAP.num_fields * D, hidden_units=[8])
    with torch.no_grad():
        gating.context_bias.normal_()
    g = gating.gate(_batch(), 2)
    assert ((g > 0) & (g < 2)).all()
    assert len(torch.unique(g[0])) > FMAP.num_fields  # one gate per element, not per field
    torch.testing.assert_close(g[0], g[1])  # no context: the same gates for every row


def test_context_uses_separate_embedding_of_context_fields():
    D = 4
    gating = FeatureGating(FMAP, D, FMAP.num_fields * D, hidden_units=[8], context_fields=["user", "price"])
    assert gating.context_bias is None
    ctx = gating.context_embedding
    assert isinstance(ctx, FeatureEmbedding) and ctx.field_names == ["user", "price"]
    assert ctx.embedding.num_embeddings == 6  # only the user rows
    assert gating.mlp.input_dim == 2 * D
    b = _batch()
    b["cat"][:, 0] = torch.tensor([2, 2, 3, 3, 4])
    with torch.no_grad():
        ctx.embedding.weight.normal_()
        ctx.numeric.weight.zero_()  # make the gate depend on the user only
    g = gating.gate(b, 5)
    torch.testing.assert_close(g[0], g[1])
    assert not torch.allclose(g[1], g[2])
