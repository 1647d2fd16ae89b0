"""Sparse-aware optimizer pieces: the global-norm clip over sparse + dense gradients and the
SparseAdam + Adam pairing's state round trip."""
import pytest
import torch
from torch import nn

from ctrlab.config import ConfigError
from ctrlab.train.optim import CompositeOptimizer, SparseDenseOptimizer, clip_grad_norm, make_optimizer


def _grads(sparse: bool):
    torch.manual_seed(0)
    table = nn.Embedding(50, 4, sparse=sparse)
    lin = nn.Linear(4, 1)
    ids = torch.tensor([[1, 7, 7, 3], [7, 1, 49, 0]])  # repeated rows: the sparse grad is uncoalesced
    loss = (lin(table(ids)).squeeze(-1) * torch.arange(8.0).view(2, 4)).sum()
    loss.backward()
    return [table.weight, lin.weight, lin.bias]


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_clip_with_sparse_gradients_equals_torch_clip_on_dense_ones(max_norm):
    dense, sparse = _grads(False), _grads(True)
    assert sparse[0].grad.is_sparse and not sparse[0].grad.is_coalesced()
    want = nn.utils.clip_grad_norm_(dense, max_norm)
    got = clip_grad_norm(sparse, max_norm)
    assert torch.allclose(got, want, rtol=1e-6)
    assert sparse[0].grad.is_coalesced()  # the optimizer will not coalesce again
    for d, s in zip(dense, sparse):
        g = s.grad.to_dense() if s.grad.is_sparse else s.grad
        assert torch.allclose(g, d.grad, rtol=1e-6, atol=1e-9)
    if max_norm < 1:  # clipping really happened
        assert float(want) > max_norm * 10


def test_make_optimizer_routes_tables_to_sparse_adam_and_refuses_adamw():
    params = _grads(True)
    opt = make_optimizer("adam", params, 0.01, sparse_params=[params[0]])
    assert isinstance(opt, CompositeOptimizer) and isinstance(opt.optimizers[-1], torch.optim.SparseAdam)
    kinds = [type(o).__name__ for o in opt.optimizers]
    assert kinds == ["Adam", "SparseAdam"]
    assert opt.optimizers[1].param_groups[0]["params"] == [params[0]]
    assert isinstance(make_optimizer("sgd", params, 0.01, sparse_params=[params[0]]), torch.optim.SGD)
    assert isinstance(make_optimizer("adam", params, 0.01), torch.optim.Adam)
    with pytest.raises(ConfigError, match="adamw"):
        make_optimizer("adamw", params, 0.01, sparse_params=[params[0]])


def test_sparse_dense_optimizer_state_round_trip_continues_identically():
    def run(steps_before, reload):
        params = _grads(True)
        opt = SparseDenseOptimizer(params, [params[0]], 0.01)
        for _ in range(steps_before):
            opt.step()
        if reload:
            sd = opt.state_dict()
            # global indices: position in params, like a single torch optimizer
            assert sorted(sd["state"]) == [0, 1, 2]
            assert [g["params"] for g in sd["param_groups"]] == [[1, 2], [0]]
            fresh = SparseDenseOptimizer(params, [params[0]], 0.5)
            fresh.load_state_dict(sd)
            assert [g["lr"] for g in fresh.param_groups] == [0.01, 0.01]
            opt = fresh
        opt.step()
        return [p.detach().clone() for p in params]

    a, b = run(3, reload=False), run(3, reload=True)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_lr_changes_reach_both_optimizers():
    params = _grads(True)
    opt = SparseDenseOptimizer(params, [params[0]], 0.01)
    for g in opt.param_groups:
        g["lr"] = 0.123
    assert [o.param_groups[0]["lr"] for o in opt.optimizers] == [0.123, 0.123]


def test_extra_groups_get_their_own_optimizer_and_leave_the_main_one():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(4))]
    opt = make_optimizer("adam", params, 0.01,
                         extra_groups=[{"name": "thresholds", "params": [params[1]], "optimizer": "sgd", "lr": 0.5}])
    assert isinstance(opt, CompositeOptimizer)
    main, extra = opt.optimizers
    assert isinstance(main, torch.optim.Adam) and isinstance(extra, torch.optim.SGD)
    assert [id(p) for g in main.param_groups for p in g["params"]] == [id(params[0]), id(params[2])]
    assert [g["base_lr"] for g in opt.param_groups] == [0.01, 0.5]
    before = [p.detach().clone() for p in params]
    sum((p * torch.arange(1.0, p.numel() + 1)).sum() for p in params).backward()
    opt.step()
    # plain SGD on the group: exactly -lr * grad
    assert torch.allclose(params[1], before[1] - 0.5 * torch.tensor([1.0, 2.0]))
    # Adam's first step moves every coordinate by about lr
    assert torch.allclose((params[0] - before[0]).abs(), torch.full((3,), 0.01), atol=1e-5)
    state = opt.state_dict()
    assert sorted(state["state"]) == [0, 2]  # SGD without momentum keeps no state; positions are global
    again = make_optimizer("adam", params, 0.01,
                           extra_groups=[{"name": "thresholds", "params": [params[1]], "optimizer": "sgd", "lr": 0.5}])
    again.load_state_dict(state)
    assert torch.equal(again.optimizers[0].state[params[0]]["exp_avg"], main.state[params[0]]["exp_avg"])
    with pytest.raises(ValueError, match="more than one group"):
        make_optimizer("adam", params, 0.01, extra_groups=[{"params": [params[1]], "lr": 1.0},
                                                           {"params": [params[1]], "lr": 1.0}])
    with pytest.raises(ValueError, match="one of the model's parameters"):
        make_optimizer("adam", params, 0.01, extra_groups=[{"params": [nn.Parameter(torch.ones(1))], "lr": 1.0}])
