import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.models import create

from .synthetic import random_batch


def test_gates_are_identity_at_init(mixed_map):
    with_fs = create("FinalMLP", mixed_map, embedding_dim=4, fs_hidden_units=[8])
    no_fs = create("FinalMLP", mixed_map, embedding_dim=4, use_fs=False)
    b = random_batch(mixed_map, batch_size=16)
    d = mixed_map.num_fields * 4
    for gate in (with_fs.gate1, with_fs.gate2):
        assert torch.equal(gate.gate(b, 16), torch.ones(16, d))
    missing, unexpected = no_fs.load_state_dict(with_fs.state_dict(), strict=False)
    assert not missing and all(k.startswith("gate") for k in unexpected)
    torch.testing.assert_close(with_fs(b)["logit"], no_fs(b)["logit"])


def test_parameter_count(cat_map):
    D, H1, H2, FS, k = 4, [12], [8], [6], 2
    m = create("FinalMLP", cat_map, embedding_dim=D, mlp1_hidden_units=H1, mlp2_hidden_units=H2,
               fs_hidden_units=FS, num_heads=k)
    d = 3 * D
    emb = 23 * D
    gate = D + (D * 6 + 6) + (6 * d + d)  # context vector + gate MLP
    mlps = (d * 12 + 12) + (d * 8 + 8)
    fusion = 12 + 8 + 2 + 12 * 8 // k
    assert sum(p.numel() for p in m.fusion.parameters()) == fusion
    assert m.count_parameters() == emb + 2 * gate + mlps + fusion


def test_bars_frappe_config_with_context_fields():
    fmap = FeatureMap.from_fields({"user": 9, "item": 13, "daytime": 9, "weekday": 9, "country": 7})
    m = create("FinalMLP", fmap, embedding_dim=10, mlp1_hidden_units=[400], mlp1_batch_norm=True,
               mlp1_dropout=0.4, mlp2_hidden_units=[100], mlp2_batch_norm=True, mlp2_dropout=0.4,
               use_fs=True, fs_hidden_units=[400], fs1_context=["user"], fs2_context=["item"],
               num_heads=5, embedding_regularizer=0.05)
    # the gate contexts have their own tables, holding only the context field's rows
    assert m.gate1.context_embedding.embedding is not m.embedding.embedding
    assert m.gate1.context_embedding.embedding.num_embeddings == 9
    assert m.gate2.context_embedding.embedding.num_embeddings == 13
    assert len(m.embedding_parameters()) == 3
    b = random_batch(fmap, batch_size=32)
    out = m(b)
    assert out["logit"].shape == (32,)
    m.loss(b, out).backward()
    assert m.gate1.context_embedding.embedding.weight.grad.abs().sum() > 0


def test_heads_must_divide(cat_map):
    with pytest.raises(ValueError, match="divisible"):
        create("FinalMLP", cat_map, mlp1_hidden_units=[10], mlp2_hidden_units=[9], num_heads=2)


def test_forward_composes_each_gate_with_its_own_stream(mixed_map):
    m = create("FinalMLP", mixed_map, embedding_dim=4, mlp1_hidden_units=[12], mlp2_hidden_units=[8],
               fs_hidden_units=[6], num_heads=2)
    with torch.no_grad():
        m.gate1.context_bias.normal_()
        m.gate2.context_bias.normal_()
    b = random_batch(mixed_map, batch_size=16)
    e = m.embedding(b).flatten(1)
    g1, g2 = m.gate1.gate(b, 16), m.gate2.gate(b, 16)
    assert not torch.allclose(g1, g2)
    expected = m.fusion(m.mlp1(g1 * e), m.mlp2(g2 * e))[:, 0]
    torch.testing.assert_close(m(b)["logit"], expected)
