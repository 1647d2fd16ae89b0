import torch

from ctrlab.models import create

from .synthetic import random_batch


def test_parameter_count_and_formula(cat_map):
    m = create("LR", cat_map)
    assert m.count_parameters() == sum(f.vocab_size for f in cat_map.categorical) + 1
    with torch.no_grad():
        m.linear.weights.embedding.weight.normal_()
        m.linear.bias.fill_(0.3)
    b = random_batch(cat_map)
    w = m.linear.weights.embedding.weight[:, 0]
    expected = 0.3 + w[b["cat"][:, 0]] + w[7 + b["cat"][:, 1]] + w[18 + b["cat"][:, 2]]
    torch.testing.assert_close(m(b)["logit"], expected)


def test_all_field_kinds(mixed_map):
    m = create("lr", mixed_map)
    b = random_batch(mixed_map)
    out = m(b)["logit"]
    assert out.shape == (8,)
    # numeric weight times value, dense linear term
    n_rows = 7 + 11 + 5 + 9
    assert m.count_parameters() == n_rows + 2 + 6 + 1
