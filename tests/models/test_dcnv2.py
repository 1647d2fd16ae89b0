import pytest
import torch

from ctrlab.models import create

from .synthetic import random_batch


def _dnn_and_dcn(fmap, structure, D=4, H=(16, 8)):
    dnn = create("DNN", fmap, embedding_dim=D, hidden_units=list(H))
    dcn = create("DCNv2", fmap, embedding_dim=D, hidden_units=list(H), num_cross_layers=0,
                 model_structure=structure)
    with torch.no_grad():
        for p in dnn.parameters():
            p.normal_(std=0.3)
    dcn.embedding.load_state_dict(dnn.embedding.state_dict())
    return dnn, dcn


def test_zero_cross_layers_stacked_equals_dnn(mixed_map):
    dnn, dcn = _dnn_and_dcn(mixed_map, "stacked")
    dcn.stacked_dnn.hidden.load_state_dict(dnn.mlp.hidden.state_dict())
    dcn.fc.load_state_dict(dnn.mlp.out.state_dict())
    b = random_batch(mixed_map, batch_size=16)
    torch.testing.assert_close(dcn(b)["logit"], dnn(b)["logit"])


def test_zero_cross_layers_parallel_equals_dnn_when_x0_part_of_fc_is_zero(mixed_map):
    dnn, dcn = _dnn_and_dcn(mixed_map, "parallel")
    dcn.parallel_dnn.hidden.load_state_dict(dnn.mlp.hidden.state_dict())
    d = mixed_map.num_fields * 4
    with torch.no_grad():
        dcn.fc.weight.zero_()
        dcn.fc.weight[:, d:] = dnn.mlp.out.weight
        dcn.fc.bias.copy_(dnn.mlp.out.bias)
    b = random_batch(mixed_map, batch_size=16)
    torch.testing.assert_close(dcn(b)["logit"], dnn(b)["logit"])


@pytest.mark.parametrize("structure", ["crossnet_only", "stacked", "parallel", "stacked_parallel"])
def test_parameter_count(cat_map, structure):
    D, L, H = 4, 3, [16, 8]
    m = create("DCNv2", cat_map, embedding_dim=D, num_cross_layers=L, hidden_units=H, model_structure=structure)
    d = 3 * D
    emb = 23 * D
    cross = L * (d * d + d)
    tower = (d * 16 + 16) + (16 * 8 + 8)
    towers = tower * (("stacked" in structure) + ("parallel" in structure))
    final = {"crossnet_only": d, "stacked": 8, "parallel": d + 8, "stacked_parallel": 16}[structure]
    assert m.count_parameters() == emb + cross + towers + final + 1
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_low_rank_mixture_and_tower_overrides(cat_map):
    D, L, r, E = 4, 2, 3, 2
    m = create("dcnv2", cat_map, embedding_dim=D, num_cross_layers=L, use_low_rank_mixture=True,
               low_rank=r, num_experts=E, model_structure="stacked_parallel",
               stacked_dnn_hidden_units=[5], parallel_dnn_hidden_units=[7])
    d = 3 * D
    assert sum(p.numel() for p in m.crossnet.parameters()) == L * (E * (2 * d * r + r * r) + d) + E * d
    assert m.stacked_dnn.output_dim == 5 and m.parallel_dnn.output_dim == 7 and m.fc.in_features == 12
    assert m(random_batch(cat_map))["logit"].shape == (8,)


def test_bad_structure(cat_map):
    with pytest.raises(ValueError, match="model_structure"):
        create("DCNv2", cat_map, model_structure="serial")


def test_low_rank_mixture_init_matches_fuxictr_whole_tensor_xavier():
    """Issue 14.13: FuxiCTR's (and DeepCTR-Torch's) CrossNetMix runs ``xavier_normal_`` on each
    layer's whole ``(E, rows, cols)`` tensor: torch's fans of a 3-D tensor are
    ``fan_in = rows·cols``, ``fan_out = E·cols``. The old per-expert init was ~9x larger here.
    Each expert's gate is a ``Linear(d, 1)`` (Xavier: ``2 / (d + 1)``); biases start at 0."""
    from ctrlab.layers import CrossNetV2

    torch.manual_seed(0)
    d, r, E, L = 400, 32, 4, 3
    net = CrossNetV2(d, L, low_rank=r, num_experts=E)

    def xavier_std(rows, cols):
        return (2.0 / (rows * cols + E * cols)) ** 0.5

    for name, want in (("U", xavier_std(d, r)), ("V", xavier_std(d, r)), ("C", xavier_std(r, r))):
        got = torch.stack(list(getattr(net, name))).std().item()
        assert abs(got / want - 1) < 0.03, (name, got, want)
    assert abs(net.gate.weight.std().item() / (2.0 / (d + 1)) ** 0.5 - 1) < 0.05
    assert all(b.abs().sum() == 0 for b in net.bias)


def _sized_map(mixed_map):
    mixed_map.categorical[1].embedding_dim = 6  # item, and hist sharing its rows
    mixed_map.numeric[0].embedding_dim = 2
    mixed_map.field_order = ["price", "user", "hist", "item", "img", "ctx", "tags", "age"]
    return mixed_map


def test_per_field_embedding_dims(mixed_map, tmp_path):
    """Issue 14.15: DCNv2 flattens the embeddings, so fields may set their own embedding_dim
    (x0 = their concatenation); it exports to ONNX with parity. Stacking models refuse such a
    map, naming the fields."""
    import numpy as np

    from ctrlab.serve.artifact import check_parity, example_arrays, export_onnx, torch_probabilities

    fmap = _sized_map(mixed_map)
    D = 4
    m = create("DCNv2", fmap, embedding_dim=D, hidden_units=[8], num_cross_layers=2).eval()
    d = sum({"price": 2, "item": 6, "hist": 6}.get(n, D) for n in fmap.field_names())
    assert m.embedding.output_dim == d == m.crossnet.input_dim == 2 + 4 + 6 + 6 + 4 + 4 + 4 + 4
    b = random_batch(fmap, batch_size=16)
    with torch.no_grad():
        for table in m.embedding_parameters():
            table.normal_(0.0, 0.3)
        torch.testing.assert_close(m(b)["logit"], m.fc(torch.cat([m.crossnet(m.embedding.forward_flat(b)),
                                                                   m.parallel_dnn(m.embedding.forward_flat(b))], 1))[:, 0])
    export_onnx(m, fmap, tmp_path / "model.onnx")
    rows = example_arrays(fmap, 500)
    parity = check_parity(tmp_path / "model.onnx", m, fmap, rows)
    assert parity["max_abs_diff"] <= 1e-5 and np.isfinite(parity["max_abs_diff"]), parity
    assert torch_probabilities(m, rows, fmap).std() > 1e-3  # parity on varying outputs
    with pytest.raises(ValueError, match=r"'price' \(embedding_dim 2\)"):
        create("DeepFM", fmap, embedding_dim=D)
