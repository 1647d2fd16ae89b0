"""layers.low_rank: the compressed table's per-field decode (one batched product per field) equals
the per-id gather it replaces, for categorical columns and a sequence, and inside a FeatureEmbedding."""
import torch

from ctrlab.layers.low_rank import LowRankEmbedding, LowRankLinear


def _table(seed=0):
    torch.manual_seed(seed)
    table = LowRankEmbedding(rows=30, dim=6, rank=3, block_starts=[0, 7, 19])
    with torch.no_grad():
        for p in table.parameters():
            p.normal_()
    return table


def test_block_decode_equals_the_per_id_gather():
    table = _table()
    starts = torch.tensor([0, 7, 19])
    ids = torch.stack([torch.randint(0, 7, (50,)), torch.randint(7, 19, (50,)), torch.randint(19, 30, (50,))], 1)
    want = table(ids)
    got = table(ids, starts)
    assert got.shape == (50, 3, 6)
    assert torch.allclose(got, want, atol=1e-5)
    # every id of one block (a sequence of that field): a scalar block row
    seq = torch.randint(7, 19, (4, 9))
    assert torch.allclose(table(seq, 7), table(seq), atol=1e-5)
    # and the decode really depends on the block: the wrong block gives other vectors
    assert not torch.allclose(table(ids, torch.tensor([0, 0, 0])), want, atol=1e-3)


def test_feature_embedding_with_a_compressed_table_uses_the_block_path(monkeypatch):
    from ctrlab.data.feature_map import FeatureMap
    from ctrlab.layers.embedding import FeatureEmbedding
    from ctrlab.layers.low_rank import apply_low_rank

    fmap = FeatureMap.from_fields(categorical={"a": 7, "b": 12})
    layer = FeatureEmbedding(fmap, 6)
    holder = torch.nn.Module()
    holder.emb = layer
    apply_low_rank(holder, {"emb.embedding": 3})
    with torch.no_grad():
        for p in layer.embedding.parameters():
            p.normal_()
    batch = {"cat": torch.stack([torch.randint(0, 7, (20,)), torch.randint(0, 12, (20,))], 1)}
    calls = []
    original = LowRankEmbedding.forward
    monkeypatch.setattr(LowRankEmbedding, "forward", lambda self, ids, block_rows=None: (
        calls.append(block_rows is not None), original(self, ids, block_rows))[1])
    out = layer(batch)
    assert calls == [True]
    assert torch.allclose(out, layer.embedding(batch["cat"] + layer.cat_offsets), atol=1e-5)


def test_low_rank_linear_parameter_count():
    layer = LowRankLinear(40, 30, 5)
    assert sum(p.numel() for p in layer.parameters()) == LowRankLinear.parameter_count(40, 30, 5) == 5 * 70 + 5 + 30
