import itertools

import torch

from ctrlab.models import create

from .synthetic import random_batch


def test_parameter_count(cat_map):
    D = 6
    m = create("FM", cat_map, embedding_dim=D)
    vocab = sum(f.vocab_size for f in cat_map.categorical)
    assert m.count_parameters() == vocab * D + vocab + 1


def test_equals_explicit_fm(cat_map):
    m = create("FM", cat_map, embedding_dim=4)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    b = random_batch(cat_map, batch_size=16)
    offsets = [0, 7, 18]
    V = m.embedding.embedding.weight
    w = m.linear.weights.embedding.weight[:, 0]
    rows = [b["cat"][:, f] + o for f, o in enumerate(offsets)]
    expected = m.linear.bias + sum(w[r] for r in rows)
    expected = expected + sum((V[rows[i]] * V[rows[j]]).sum(-1) for i, j in itertools.combinations(range(3), 2))
    torch.testing.assert_close(m(b)["logit"], expected)


def test_regularizer_covers_both_tables(cat_map):
    m = create("FM", cat_map, embedding_regularizer=0.1)
    emb = m.embedding_parameters()
    assert len(emb) == 2 and m.net_parameters() == [m.linear.bias]
    expected = 0.05 * sum(p.pow(2).sum() for p in emb)
    torch.testing.assert_close(m.regularization(), expected)
