import pytest
import torch
from torch import nn

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers import FeatureEmbedding, LinearLogit

FMAP = FeatureMap.from_fields(
    {"user": 7, "item": 11, "ctx": 5},
    numeric=["price", "age"],
    sequences={"hist": (4, "item"), "tags": (3, 9)},
    dense={"img": 6},
)


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "cat": torch.stack([torch.randint(0, v, (n,), generator=g) for v in (7, 11, 5)], 1),
        "num": torch.randn(n, 2, generator=g),
        "seq:hist": torch.randint(0, 11, (n, 4), generator=g),
        "seq:tags": torch.randint(0, 9, (n, 3), generator=g),
        "dense:img": torch.randn(n, 6, generator=g),
    }


def test_output_shape_and_field_order():
    emb = FeatureEmbedding(FMAP, 5)
    out = emb(_batch())
    assert out.shape == (6, FMAP.num_fields, 5) == (6, 8, 5)
    assert emb.field_names == FMAP.field_names() == ["user", "item", "ctx", "price", "age", "hist", "tags", "img"]


def test_one_fused_table_with_offsets():
    emb = FeatureEmbedding(FMAP, 4)
    tables = [m for m in emb.modules() if isinstance(m, nn.Embedding)]
    assert tables == [emb.embedding, emb.numeric]
    # rows: user 7 + item 11 + ctx 5 + tags 9 (hist shares item's rows)
    assert emb.embedding.num_embeddings == 7 + 11 + 5 + 9
    assert emb.cat_offsets.tolist() == [0, 7, 18]
    b = _batch()
    out = emb(b)
    for f, off in enumerate([0, 7, 18]):
        torch.testing.assert_close(out[:, f], emb.embedding.weight[b["cat"][:, f] + off])
        torch.testing.assert_close(emb.categorical_embedding(b, FMAP.categorical[f].name), out[:, f])


def test_init_std():
    torch.manual_seed(0)
    w = FeatureEmbedding(FeatureMap.from_fields({"a": 5000}), 20).embedding.weight
    assert abs(w.std().item() - 1e-4) < 5e-6 and abs(w.mean().item()) < 5e-6


def test_shared_sequence_uses_the_field_rows():
    emb = FeatureEmbedding(FMAP, 4)
    with torch.no_grad():
        emb.embedding.weight.normal_()
    b = _batch()
    b["seq:hist"] = torch.stack([b["cat"][:, 1], torch.zeros_like(b["cat"][:, 1]),
                                 b["cat"][:, 1], b["cat"][:, 1]], 1)
    seq, mask = emb.sequence_embedding(b, "hist")
    item = emb.categorical_embedding(b, "item")
    nonpad = b["cat"][:, 1] != 0
    torch.testing.assert_close(seq[nonpad][:, 0], item[nonpad])
    assert torch.equal(seq[:, 1], torch.zeros_like(seq[:, 1])) and not mask[:, 1].any()
    # pooled (mean) history of copies of the item id is the item vector
    out = emb(b)
    torch.testing.assert_close(out[nonpad][:, 5], item[nonpad])


def test_own_vocab_sequence_mean_pooling_ignores_padding():
    emb = FeatureEmbedding(FMAP, 3)
    with torch.no_grad():
        emb.embedding.weight.normal_()
    b = _batch(n=2)
    b["seq:tags"] = torch.tensor([[4, 0, 6], [0, 0, 0]])
    off = 7 + 11 + 5
    w = emb.embedding.weight
    out = emb(b)
    torch.testing.assert_close(out[0, 6], (w[off + 4] + w[off + 6]) / 2)
    torch.testing.assert_close(out[1, 6], torch.zeros(3))
    with torch.no_grad():  # padding rows of every block are never read by pooling
        w[off] = 99.0
        w[7] = 99.0
    torch.testing.assert_close(emb(b)[:, 6], out[:, 6])


def test_numeric_and_dense_flow_into_output():
    emb = FeatureEmbedding(FMAP, 4)
    b = _batch()
    out = emb(b)
    torch.testing.assert_close(out[:, 3], b["num"][:, :1] * emb.numeric.weight[0])
    torch.testing.assert_close(out[:, 4], b["num"][:, 1:2] * emb.numeric.weight[1])
    torch.testing.assert_close(out[:, 7], emb.dense[0](b["dense:img"]))
    full = FeatureEmbedding(FMAP, 4)
    # gradients reach every kind of parameter
    full(b).sum().backward()
    for name, p in full.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_embedding_dim_one_and_linear_logit():
    emb = FeatureEmbedding(FMAP, 1)
    assert emb(_batch()).shape == (6, 8, 1)
    lin = LinearLogit(FMAP)
    with torch.no_grad():
        lin.bias.fill_(0.5)
    b = _batch()
    out = lin(b)
    assert out.shape == (6, 1)
    torch.testing.assert_close(out, lin.weights(b).sum(1) + 0.5)


def test_field_subset_and_errors():
    sub = FeatureEmbedding(FMAP, 2, fields=["price", "item", "hist"])
    assert sub.field_names == ["item", "price", "hist"]  # feature-map order
    assert sub.embedding.num_embeddings == 11
    assert sub(_batch()).shape == (6, 3, 2)
    only_seq = FeatureEmbedding(FMAP, 2, fields=["hist"])  # shared field not selected: own copy
    assert only_seq.embedding.num_embeddings == 11 and only_seq(_batch()).shape == (6, 1, 2)
    with pytest.raises(ValueError, match="nope"):
        FeatureEmbedding(FMAP, 2, fields=["nope"])


def test_per_field_dim_override_is_rejected():
    fmap = FeatureMap.from_fields({"a": 5, "b": 6})
    fmap.categorical[1].embedding_dim = 16
    with pytest.raises(ValueError, match="'b'"):
        FeatureEmbedding(fmap, 8)
    FeatureEmbedding(fmap, 16, fields=["b"])  # matching override is fine
    assert LinearLogit(fmap)(_batch_ab()).shape == (3, 1)  # dim-1 linear part ignores overrides


def _batch_ab():
    return {"cat": torch.tensor([[1, 2], [3, 4], [0, 5]])}


def test_row_lookup_matches_nn_embedding_bit_for_bit():
    """The fused table's lookup (faster CPU backward) returns the same rows and the same weight
    gradient as nn.Embedding, repeated ids included; sparse tables keep nn.Embedding's path."""
    import torch
    from torch import nn

    from ctrlab.layers.embedding import lookup

    torch.manual_seed(0)
    table = nn.Embedding(50, 4)
    ids = torch.randint(0, 50, (64, 3, 5))  # many repeats
    weights = torch.randn(64, 3, 5, 4)
    ref = table(ids)
    (ref * weights).sum().backward()
    want = table.weight.grad.clone()
    table.weight.grad = None
    got = lookup(table, ids)
    assert torch.equal(got, ref)
    assert got.grad_fn is not None and "RowLookup" in type(got.grad_fn).__name__
    (got * weights).sum().backward()
    assert torch.equal(table.weight.grad, want)
    table.sparse = True
    assert "Embedding" in type(lookup(table, ids).grad_fn).__name__
    with torch.no_grad():  # inference: no graph at all
        assert lookup(table, ids).grad_fn is None


def test_out_of_range_ids_raise_naming_the_field():
    """Issue 14.1: an id encoded with a grown vocabulary (>= the field's vocab size) used to read
    the next field's rows silently; now it raises, naming the field and the sizes."""
    emb = FeatureEmbedding(FMAP, 4)
    b = _batch()
    b["cat"][2, 0] = 7  # user has 7 ids (0..6): id 7 is item's row 0 in the fused table
    with pytest.raises(IndexError, match=r"'user'.*7.*vocab_size 7"):
        emb(b)
    with pytest.raises(IndexError, match="'user'"):
        emb.categorical_embedding(b, "user")
    b = _batch()
    b["cat"][0, 2] = -1
    with pytest.raises(IndexError, match="'ctx'.*-1"):
        emb(b)
    b = _batch()
    b["seq:tags"][1, 1] = 9  # own vocabulary of 9 ids
    with pytest.raises(IndexError, match="'tags'.*9"):
        emb(b)
    b = _batch()
    b["seq:hist"][1, 1] = 11  # shares item's 11 rows
    with pytest.raises(IndexError, match="'hist'"):
        emb.sequence_embedding(b, "hist")
    with pytest.raises(IndexError, match="'user'"):  # the subset layers check too
        b = _batch()
        b["cat"][0, 0] = 100
        LinearLogit(FMAP)(b)
    emb(_batch())  # in-range ids pass


@pytest.mark.parametrize("dim", [1, 10])
def test_numeric_vectors_start_xavier_normal_like_fuxictr(dim):
    """Issue 14.13: FuxiCTR embeds a numeric field with ``nn.Linear(1, D, bias=False)``, which
    its ``reset_parameters`` Xavier-normal initialises: std ``sqrt(2 / (1 + D))`` (1 for the LR
    term's D = 1), not the N(0, 1e-4²) of the categorical rows."""
    torch.manual_seed(0)
    fmap = FeatureMap.from_fields({"a": 2000}, numeric=[f"n{i}" for i in range(4000)])
    emb = FeatureEmbedding(fmap, dim)
    want = (2.0 / (1 + dim)) ** 0.5
    assert abs(emb.numeric.weight.std().item() / want - 1) < 0.03
    assert abs(emb.embedding.weight.std().item() - 1e-4) < 1e-5  # categorical rows unchanged


def test_fields_follow_the_feature_maps_order():
    """Issue 14.13: a map built from a dataset config lists its fields in the config's order
    (``field_order``), and the embedding stacks them in that order (FuxiCTR stacks fields in its
    feature_cols order; FGCNN's convolutions see neighbours in that order). A map saved before
    (no ``field_order``) keeps the old kind-grouped layout."""
    fmap = FeatureMap.from_fields({"user": 7, "item": 11}, numeric=["price"], sequences={"hist": (4, "item")})
    assert fmap.field_names() == ["user", "item", "price", "hist"]  # no order given: by kind
    fmap.field_order = ["price", "item", "hist", "user"]
    assert fmap.field_names() == ["price", "item", "hist", "user"]
    emb = FeatureEmbedding(fmap, 3)
    assert emb.field_names == ["price", "item", "hist", "user"]
    b = {"cat": torch.tensor([[1, 2], [3, 4]]), "num": torch.tensor([[0.5], [2.0]]),
         "seq:hist": torch.tensor([[0, 0, 2, 3], [1, 1, 1, 1]])}
    out = emb(b)
    torch.testing.assert_close(out[:, 0], b["num"] * emb.numeric.weight[0])
    torch.testing.assert_close(out[:, 1], emb.categorical_embedding(b, "item"))
    torch.testing.assert_close(out[:, 3], emb.categorical_embedding(b, "user"))
    sub = FeatureEmbedding(fmap, 3, fields=["user", "price"])
    assert sub.field_names == ["price", "user"]
    # JSON round trip keeps the order; an old map (no field_order key) loads with the kind order
    d = fmap.to_dict()
    assert FeatureMap.from_dict(d).field_names() == ["price", "item", "hist", "user"]
    d.pop("field_order")
    for f in d["categorical"] + d["sequences"]:  # nor the pretrained keys, as written before issue 14
        del f["pretrained_emb"], f["freeze_emb"]
    old = FeatureMap.from_dict(d)
    assert old.field_names() == ["user", "item", "price", "hist"]
    assert FeatureEmbedding(old, 3).field_perm is None  # the old layout, as the saved weights expect
    fmap.field_order = ["price", "item", "user"]  # inconsistent with the fields: clear error
    with pytest.raises(ValueError, match="field_order.*hist"):
        fmap.field_names()


# ---- per-field sizes and pretrained vectors (issue 14.15) -----------------------------------------
def _sized_map():
    fmap = FeatureMap.from_fields({"user": 7, "item": 11, "ctx": 5}, numeric=["price"],
                                  sequences={"hist": (4, "item"), "tags": (3, 9)}, dense={"img": 6})
    fmap.categorical[1].embedding_dim = 6   # item (and hist, which shares its rows)
    fmap.numeric[0].embedding_dim = 2       # price
    fmap.field_order = ["price", "user", "hist", "item", "img", "ctx", "tags"]
    return fmap


def test_per_field_embedding_dims_flatten_in_field_order():
    """Issue 14.15: a field's own embedding_dim overrides the model's; the layer's flat output
    has each field's vector at its size, in field order, and a stacking read raises naming the
    fields."""
    fmap = _sized_map()
    emb = FeatureEmbedding(fmap, 4, mixed_dims=True)
    assert emb.field_names == ["price", "user", "hist", "item", "img", "ctx", "tags"]
    assert emb.field_dims == [2, 4, 6, 6, 4, 4, 4] and emb.output_dim == 30
    b = _batch()
    b["num"] = b["num"][:, :1]
    flat = emb.forward_flat(b)
    assert flat.shape == (6, 30)
    sizes = {n: d for n, d in zip(emb.field_names, emb.field_dims)}
    parts = dict(zip(emb.field_names, flat.split(emb.field_dims, dim=1)))
    torch.testing.assert_close(parts["item"], emb.categorical_embedding(b, "item"))
    torch.testing.assert_close(parts["user"], emb.categorical_embedding(b, "user"))
    hist, mask = emb.sequence_embedding(b, "hist")
    assert hist.shape[-1] == sizes["hist"] == 6
    price_group = emb.groups[emb._group_of["price"]]
    torch.testing.assert_close(parts["price"], b["num"] * price_group.numeric.weight[0])
    with pytest.raises(ValueError, match="forward_flat"):
        emb(b)
    with pytest.raises(ValueError, match=r"'price' \(embedding_dim 2\).*'item' \(embedding_dim 6\)"):
        FeatureEmbedding(fmap, 4)  # a stacking model: one size
    fmap.sequences[0].embedding_dim = 3  # hist shares item's rows: its size is item's
    with pytest.raises(ValueError, match="'hist' shares the rows of 'item'"):
        FeatureEmbedding(fmap, 4, mixed_dims=True)


def _vocab_map(tmp_path, freeze):
    import numpy as np
    fmap = FeatureMap.from_fields({"user": 5, "item": 6}, sequences={"hist": (3, "item")})
    fmap.encoders = {"item": {"vocab": ["10", "11", "12", "13"]}, "user": {"vocab": ["a", "b", "c"]}}
    path = tmp_path / "item.npz"
    np.savez(path, key=np.array([12, 10, 99]), value=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    fmap.categorical[1].pretrained_emb = str(path)
    fmap.categorical[1].freeze_emb = freeze
    return fmap


@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_vectors_aligned_by_token(tmp_path, freeze):
    """Issue 14.15: rows of tokens in the file get their vectors (matched by token, not position;
    keys outside the vocabulary ignored), the others keep N(0, 1e-4²); frozen ones get no
    gradient and no regularizer, trained ones do."""
    fmap = _vocab_map(tmp_path, freeze)
    emb = FeatureEmbedding(fmap, 2)
    b = {"cat": torch.tensor([[2, 4], [3, 2], [1, 3], [0, 5]]), "seq:hist": torch.tensor([[0, 4, 2]] * 4)}
    item = emb.categorical_embedding(b, "item")
    torch.testing.assert_close(item[0], torch.tensor([1.0, 2.0]))   # id 4 = token "12"
    torch.testing.assert_close(item[1], torch.tensor([3.0, 4.0]))   # id 2 = token "10"
    assert item[2].abs().max() < 1e-3 and item[3].abs().max() < 1e-3  # "11", "13": not in the file
    hist, _ = emb.sequence_embedding(b, "hist")  # the sharing sequence reads the same rows
    torch.testing.assert_close(hist[0, 1:], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    out = emb(b)
    assert emb.field_names == ["user", "item", "hist"] and out.shape == (4, 3, 2)
    out.sum().backward()
    trainable = [p for p in emb.parameters() if p.requires_grad]
    if freeze:
        assert emb.groups is not None and len(trainable) == 1  # user's table only
        frozen = emb.groups[emb._group_of["item"]].embedding.weight
        assert not frozen.requires_grad and frozen.grad is None
    else:
        assert emb.groups is None and emb.embedding.weight.grad[5 + 4].abs().sum() > 0
    assert LinearLogit(fmap).weights.embedding.weight.abs().max() < 1e-3  # the LR term ignores them
    only_hist = FeatureEmbedding(fmap, 2, fields=["hist"])  # its own copy of item's rows, vectors included
    torch.testing.assert_close(only_hist.sequence_embedding(b, "hist")[0], hist)


def test_pretrained_file_errors(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    fmap = _vocab_map(tmp_path, True)
    with pytest.raises(Exception, match="embedding_dim is 3; set embedding_dim: 2"):
        FeatureEmbedding(fmap, 3)
    save_file({"13": np.array([7.0, 8.0], dtype=np.float32)}, str(tmp_path / "item.safetensors"))
    fmap.categorical[1].pretrained_emb = str(tmp_path / "item.safetensors")
    emb = FeatureEmbedding(fmap, 2)
    torch.testing.assert_close(emb.categorical_embedding({"cat": torch.tensor([[0, 5]])}, "item")[0],
                               torch.tensor([7.0, 8.0]))
    fmap.categorical[1].pretrained_emb = str(tmp_path / "gone.npz")
    with pytest.warns(UserWarning, match="gone.npz"):  # serving rebuilds the model, then loads weights
        FeatureEmbedding(fmap, 2)


def test_sequence_group_embedding_is_one_lookup_equal_to_the_concatenated_sequences():
    """A behaviour's item and category vectors side by side: the fused one-gather path gives the
    per-sequence vectors concatenated (bit for bit, gradients too), masked by the first sequence;
    without zeroing, only the padded positions differ; other layouts fall back to the concatenation."""
    fmap = FeatureMap.from_fields({"user": 7, "item": 11}, sequences={"hist": (5, "item"), "cate_hist": (5, 9)})
    g = torch.Generator().manual_seed(1)
    b = {"cat": torch.stack([torch.randint(0, 7, (4,), generator=g), torch.randint(0, 11, (4,), generator=g)], 1),
         "seq:hist": torch.randint(1, 11, (4, 5), generator=g), "seq:cate_hist": torch.randint(1, 9, (4, 5), generator=g)}
    b["seq:hist"][:, :2] = 0  # left padding, aligned in both sequences
    b["seq:cate_hist"][:, :2] = 0
    emb = FeatureEmbedding(fmap, 3)
    with torch.no_grad():
        emb.embedding.weight.normal_()
    parts = [emb.sequence_embedding(b, n) for n in ("hist", "cate_hist")]
    want = torch.cat([parts[0][0], parts[1][0]], -1)
    got, mask = emb.sequence_group_embedding(b, ["hist", "cate_hist"])
    assert torch.equal(got, want) and torch.equal(mask, parts[0][1]) and got.shape == (4, 5, 6)
    raw, _ = emb.sequence_group_embedding(b, ["hist", "cate_hist"], zero_padding=False)
    assert torch.equal(raw[mask], want[mask]) and not torch.equal(raw[~mask], want[~mask])
    (got * torch.arange(6.0)).sum().backward()
    fused_grad, emb.embedding.weight.grad = emb.embedding.weight.grad.clone(), None
    (want * torch.arange(6.0)).sum().backward()
    torch.testing.assert_close(fused_grad, emb.embedding.weight.grad)
    # one sequence: its own embedding; fields of other sizes (sub-layers): the concatenation
    assert torch.equal(emb.sequence_group_embedding(b, ["hist"])[0], parts[0][0])
    fmap.categorical[1].embedding_dim = 4
    mixed = FeatureEmbedding(fmap, 3, mixed_dims=True)
    got, _ = mixed.sequence_group_embedding(b, ["hist", "cate_hist"])
    assert got.shape == (4, 5, 7)
    torch.testing.assert_close(got, torch.cat([mixed.sequence_embedding(b, n)[0] for n in ("hist", "cate_hist")], -1))
    b["seq:cate_hist"][0, 3] = 9  # out of the category vocabulary: named, not read from another block
    with pytest.raises(IndexError, match="cate_hist"):
        emb.sequence_group_embedding(b, ["hist", "cate_hist"])
