import torch

from ctrlab.models import create

from .synthetic import random_batch


def test_zero_mlp_output_equals_fm(mixed_map):
    fm = create("FM", mixed_map, embedding_dim=4)
    deep = create("DeepFM", mixed_map, embedding_dim=4, hidden_units=[16, 16])
    with torch.no_grad():
        for p in fm.parameters():
            p.normal_()
    missing, unexpected = deep.load_state_dict(fm.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mlp.") for k in missing)
    b = random_batch(mixed_map, batch_size=16)
    assert not torch.allclose(deep(b)["logit"], fm(b)["logit"])
    with torch.no_grad():
        deep.mlp.out.weight.zero_()
        deep.mlp.out.bias.zero_()
    torch.testing.assert_close(deep(b)["logit"], fm(b)["logit"])


def test_parameter_count_is_fm_plus_mlp(cat_map):
    D = 4
    fm = create("FM", cat_map, embedding_dim=D)
    deep = create("DeepFM", cat_map, embedding_dim=D, hidden_units=[16])
    d = 3 * D
    assert deep.count_parameters() == fm.count_parameters() + (d * 16 + 16) + (16 + 1)
