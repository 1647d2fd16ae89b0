"""OptEmbed's table (ctrlab.layers.opt_embed): the sheet's verification tests (surrogate gradient,
no-op case, prefix property, parameter formula) and the fixed mode a searched model runs in."""
from __future__ import annotations

import copy

import pytest
import torch

from ctrlab.data.feature_map import FeatureMap
from ctrlab.layers.opt_embed import (
    OptEmbedTable,
    UnitStep,
    apply_opt_embed,
    embedding_parameters_kept,
    fixed_spec,
    pack_keep,
    prunable_tables,
    sparsity,
    unpack_keep,
)
from ctrlab.models import create

SIZES = {"a": 7, "b": 5, "c": 11}


def _fmap():
    return FeatureMap.from_fields(SIZES)


def _batch(rows=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, n, (rows,), generator=g) for n in SIZES.values()], 1)
    return {"cat": cat, "label": torch.randint(0, 2, (rows, 1), generator=g).float()}


def test_surrogate_gradient_matches_the_sheets_piecewise_derivative():
    z = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64, requires_grad=True)
    out = UnitStep.apply(z)
    assert torch.equal(out, (z > 0).double())
    out.sum().backward()
    a = z.detach().abs()
    expected = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0))
    assert torch.allclose(z.grad, expected)
    # spot values on each piece
    for value, grad in ((0.0, 2.0), (0.25, 1.0), (-0.25, 1.0), (0.4, 0.4), (0.7, 0.4), (-1.0, 0.4), (1.2, 0.0)):
        zz = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        UnitStep.apply(zz).backward()
        assert zz.grad.item() == pytest.approx(grad), value


@pytest.mark.parametrize("model_name", ["DeepFM", "DCNv2", "FinalMLP", "FCN"])
def test_thresholds_at_minus_infinity_give_the_base_models_outputs_exactly(model_name):
    torch.manual_seed(0)
    fmap = _fmap()
    params = {"fs1_context": ["a"], "fs2_context": ["b"]} if model_name == "FinalMLP" else {}
    base = create(model_name, fmap, embedding_dim=8, **params)
    with torch.no_grad():  # rows well away from 0, as after training
        for layer in prunable_tables(base).values():
            layer.embedding.weight.normal_(0, 0.3)
    wrapped = copy.deepcopy(base)
    tables = apply_opt_embed(wrapped, {"mode": "supernet"})
    assert tables and all(isinstance(t, OptEmbedTable) for t in tables.values())
    with torch.no_grad():
        for t in tables.values():
            t.thresholds.fill_(-float("inf"))
    base.eval(), wrapped.eval()
    batch = _batch()
    assert torch.equal(base(batch)["logit"], wrapped(batch)["logit"])
    # and thresholds at 0 already keep every row whose norm is positive
    with torch.no_grad():
        for t in tables.values():
            t.thresholds.zero_()
    assert torch.equal(base(batch)["logit"], wrapped(batch)["logit"])


def test_pruned_rows_read_as_zero_and_thresholds_get_the_surrogate_gradient():
    table = OptEmbedTable(torch.nn.Embedding(6, 4), [0, 3], mode="supernet")
    with torch.no_grad():
        table.table.weight.copy_(torch.tensor([[0.1] * 4, [0.5] * 4, [0.05] * 4, [1.0] * 4, [0.2] * 4, [0.3] * 4]))
        table.thresholds.copy_(torch.tensor([0.5, 1.0]))  # norms: 0.4 0.2 0.2 | 4 0.8 1.2
    table.eval()
    out = table(torch.arange(6))
    assert table.kept_rows().tolist() == [False, True, False, True, False, True]
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[1], torch.full((4,), 0.5))
    out.sum().backward()
    # d/dt of sum(e * S(|e|_1 - t)) = -sum(e) * S'(z): rows 0 (z=-0.1), 1 (1.5: 0), 2 (-0.3) of field 0
    expected0 = -(0.4 * 1.6 + 0.2 * 0.8)
    expected1 = -(4.0 * 0.0 + 0.8 * 1.2 + 1.2 * 1.2)  # z = 3, -0.2, 0.2
    assert table.thresholds.grad.tolist() == pytest.approx([expected0, expected1])


def test_prefix_property_coordinates_beyond_a_fields_width_get_exactly_zero_gradient():
    torch.manual_seed(0)
    table = OptEmbedTable(torch.nn.Embedding(23, 8), [0, 7, 12], mode="supernet")
    widths = torch.tensor([3, 8, 1])
    table.eval()
    table.search_widths = widths
    ids = torch.stack([torch.randint(0, 7, (50,)), torch.randint(7, 12, (50,)), torch.randint(12, 23, (50,))], 1)
    out = table(ids, torch.tensor([0, 7, 12]))
    for f, k in enumerate(widths.tolist()):
        assert torch.equal(out[:, f, k:], torch.zeros_like(out[:, f, k:]))
    (out * torch.randn_like(out)).sum().backward()
    grad = table.table.weight.grad
    for f, (lo, hi) in enumerate(((0, 7), (7, 12), (12, 23))):
        k = int(widths[f])
        assert torch.equal(grad[lo:hi, k:], torch.zeros_like(grad[lo:hi, k:]))
        assert grad[lo:hi, :k].abs().sum() > 0


def test_training_samples_a_prefix_width_per_sample_and_field():
    torch.manual_seed(0)
    table = OptEmbedTable(torch.nn.Embedding(20, 16), [0, 10], mode="supernet")
    with torch.no_grad():
        table.table.weight.fill_(1.0)
    table.train()
    ids = torch.stack([torch.randint(0, 10, (400,)), torch.randint(10, 20, (400,))], 1)
    out = table(ids, torch.tensor([0, 10]))
    widths = (out != 0).sum(-1)
    # a prefix: every nonzero coordinate comes before every zero one
    assert torch.equal(out != 0, torch.arange(16) < widths.unsqueeze(-1))
    assert widths.min() >= 1 and widths.max() <= 16
    assert len(widths.unique()) == 16  # uniform over 1..D
    assert not torch.equal(widths[:, 0], widths[:, 1])  # fields draw independently
    seq = table(torch.randint(0, 10, (50, 6)), 0)  # a sequence: one width per sample
    seq_widths = (seq != 0).sum(-1)
    assert torch.equal(seq_widths, seq_widths[:, :1].expand(-1, 6))


def test_parameter_formula_and_sparsity():
    assert embedding_parameters_kept([3, 0, 10], [4, 8, 2]) == 3 * 4 + 0 + 10 * 2
    assert sparsity([3, 0, 10], [4, 8, 2], rows=20, dim=8) == pytest.approx(1 - 32 / 160)
    assert sparsity([5, 5], [8, 8], rows=10, dim=8) == 0.0
    with pytest.raises(ValueError):
        embedding_parameters_kept([1, 2], [3])


def test_keep_mask_round_trips_as_text():
    keep = torch.rand(1003) > 0.4
    assert torch.equal(unpack_keep(pack_keep(keep), 1003), keep)
    with pytest.raises(ValueError, match="one per row"):
        unpack_keep(pack_keep(keep), 2000)


def test_fixed_mode_equals_the_supernet_at_the_searched_widths_and_is_rebuilt_from_its_spec():
    torch.manual_seed(0)
    fmap = _fmap()
    supernet = create("DeepFM", fmap, embedding_dim=8)
    tables = apply_opt_embed(supernet, {"mode": "supernet"})
    (name, table), = tables.items()
    with torch.no_grad():
        table.table.weight.normal_(0, 0.3)
        table.thresholds.fill_(1.9)  # about the median L1 norm: prunes some rows of each field
    widths = [3, 8, 5]
    table.search_widths = torch.tensor(widths)
    supernet.eval()
    keep = table.kept_rows()
    assert 0 < int(keep.sum()) < table.rows  # some rows pruned, some kept
    spec = fixed_spec(tables, {name: widths}, {name: keep})

    fixed = create("DeepFM", fmap, embedding_dim=8)
    (fixed_table,) = apply_opt_embed(fixed, spec).values()
    state = {k: v for k, v in supernet.state_dict().items() if not k.endswith("thresholds")}
    fixed.load_state_dict({**state, **{k: v for k, v in fixed.state_dict().items() if k.endswith(("keep", "widths"))}})
    fixed.eval()
    batch = _batch(64)
    assert torch.equal(supernet(batch)["logit"], fixed(batch)["logit"])
    assert fixed_table.widths.tolist() == widths and torch.equal(fixed_table.keep, keep)
    assert fixed_table.kept_per_block() == table.kept_per_block()
    # the fixed model is plain: no thresholds, no optimizer group, no penalty, masks in its state
    assert fixed.optimizer_groups() == [] and fixed.layer_penalties() is None
    assert {"embedding.embedding.keep", "embedding.embedding.widths"} <= set(fixed.state_dict())
    # pruned rows and masked coordinates get exactly zero gradient
    fixed.train()
    fixed.loss(batch, fixed(batch)).backward()
    grad = fixed_table.table.weight.grad
    assert torch.equal(grad[~keep], torch.zeros_like(grad[~keep]))
    for f, (start, k) in enumerate(zip(fixed_table.block_starts, widths)):
        n = fixed_table.block_sizes()[f]
        assert torch.equal(grad[start:start + n, k:], torch.zeros_like(grad[start:start + n, k:]))


def test_supernet_declares_its_thresholds_optimizer_and_penalty():
    model = create("DCNv2", _fmap(), embedding_dim=8, net_regularizer=1e-3)
    (table,) = apply_opt_embed(model, {"mode": "supernet", "alpha": 0.5, "threshold_lr": 0.25}).values()
    groups = model.optimizer_groups()
    assert len(groups) == 1 and groups[0]["optimizer"] == "sgd" and groups[0]["lr"] == 0.25
    assert groups[0]["params"][0] is table.thresholds
    assert all(p is not table.thresholds for p in model.net_parameters())  # no L2 on thresholds
    with torch.no_grad():
        table.thresholds.fill_(1.0)
    l2 = float(sum((1e-3 / 2) * p.detach().pow(2).sum() for p in model.net_parameters()))
    assert model.regularization().detach().item() == pytest.approx(float(l2 + 0.5 * 3 * torch.exp(torch.tensor(-1.0))))


def test_clear_errors():
    with pytest.raises(ValueError, match="no embedding table to prune"):
        apply_opt_embed(create("LR", _fmap()), {"mode": "supernet"})
    model = create("DeepFM", _fmap(), embedding_dim=8)
    with pytest.raises(ValueError, match="mode"):
        apply_opt_embed(model, {"mode": "search"})
    with pytest.raises(ValueError, match="unknown key"):
        apply_opt_embed(model, {"mode": "supernet", "alfa": 1})
    with pytest.raises(ValueError, match="not prunable tables"):
        apply_opt_embed(model, {"mode": "fixed", "tables": {"linear.weights.embedding": {"widths": [1], "keep": ""}}})
    table = OptEmbedTable(torch.nn.Embedding(23, 8), [0, 7, 12], "fixed", field_names=["a", "b", "c"])
    bad = fixed_spec({"embedding.embedding": table}, {"embedding.embedding": [9, 1, 1]},
                     {"embedding.embedding": torch.ones(23, dtype=torch.bool)})
    with pytest.raises(ValueError, match="widths must be 3 integers in 1..8"):
        apply_opt_embed(create("DeepFM", _fmap(), embedding_dim=8), bad)
    bad["tables"]["embedding.embedding"].update(widths=[1, 1, 1], fields=["a", "c", "b"])
    with pytest.raises(ValueError, match=r"for the fields \['a', 'c', 'b'\], the table holds \['a', 'b', 'c'\]"):
        apply_opt_embed(create("DeepFM", _fmap(), embedding_dim=8), bad)
    # the width-1 first-order table is not a candidate
    assert list(prunable_tables(create("DeepFM", _fmap(), embedding_dim=8))) == ["embedding.embedding"]
