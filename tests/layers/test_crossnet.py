import pytest
import torch

from ctrlab.layers import CrossNet


def test_matches_recurrence_and_param_count():
    d, L = 6, 3
    net = CrossNet(d, L)
    with torch.no_grad():
        for b in net.b:
            b.normal_()
    assert sum(p.numel() for p in net.parameters()) == L * 2 * d
    x0 = torch.randn(5, d, dtype=torch.float64)
    net = net.double()
    x = x0
    for w, b in zip(net.w, net.b):
        scalar = (x * w.weight[0]).sum(-1, keepdim=True)   # w_lᵀ x_l, one number per sample
        x = x0 * scalar + b + x
    out = net(x0)
    assert out.shape == (5, d)
    torch.testing.assert_close(out, x)


def test_cross_term_is_a_scalar_times_x0():
    """One layer with b = 0: x1 − x0 = x0 · (wᵀx0), i.e. parallel to x0 (not x0 ⊙ w)."""
    d = 7
    net = CrossNet(d, 1).double()
    x0 = torch.randn(4, d, dtype=torch.float64)
    delta = net(x0) - x0
    ratio = delta / x0
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    torch.testing.assert_close(ratio[:, 0], x0 @ net.w[0].weight[0])


def test_zero_weights_and_biases_give_x0():
    d, L = 8, 4
    net = CrossNet(d, L)
    x0 = torch.randn(3, d)
    assert not torch.allclose(net(x0), x0)
    for w in net.w:
        torch.nn.init.zeros_(w.weight)
    torch.testing.assert_close(net(x0), x0)
    assert torch.equal(CrossNet(d, 0)(x0), x0)


@pytest.mark.parametrize("L", [1, 2, 3])
def test_polynomial_degree_is_layers_plus_one(L):
    """With b = 0, x_L(t·x0) is a polynomial in t of degree exactly L + 1 (no activation)."""
    d = 5
    net = CrossNet(d, L).double()
    x0 = torch.randn(2, d, dtype=torch.float64)
    ts = torch.arange(1, L + 4, dtype=torch.float64)
    ys = torch.stack([net(t * x0) for t in ts])          # (L+3, 2, d)
    V = torch.vander(ts, N=L + 3, increasing=True)          # exact interpolation with degree L+2
    coef = torch.linalg.solve(V, ys.reshape(len(ts), -1))   # coefficients of t^0 .. t^{L+2}
    assert coef[L + 2].abs().max() < 1e-8
    assert coef[L + 1].abs().max() > 1e-6
