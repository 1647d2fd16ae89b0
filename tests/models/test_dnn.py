import torch

from ctrlab.models import create

from .synthetic import random_batch


def test_parameter_count_and_forward(mixed_map):
    D, H = 5, [16, 8]
    m = create("DNN", mixed_map, embedding_dim=D, hidden_units=H, batch_norm=True, net_dropout=0.1)
    d = mixed_map.num_fields * D
    emb = (7 + 11 + 5 + 9) * D + 2 * D + 6 * D
    mlp = (d * 16 + 16) + 2 * 16 + (16 * 8 + 8) + 2 * 8 + (8 + 1)
    assert m.count_parameters() == emb + mlp
    m.eval()
    b = random_batch(mixed_map)
    torch.testing.assert_close(m(b)["logit"], m.mlp(m.embedding(b).flatten(1))[:, 0])
