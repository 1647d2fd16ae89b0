"""QIN's quadratic layer and network (QIN spec sheet, "How to verify")."""
import math

import pytest
import torch

from ctrlab.layers.quadratic import QuadraticLayer, QuadraticNetwork


def test_layer_is_x_times_the_sum_of_its_rows():
    n, R = 5, 3
    layer = QuadraticLayer(n, num_row=R)
    with torch.no_grad():
        layer.linear.bias.normal_()
    x = torch.randn(4, n)
    W, b = layer.linear.weight.view(R, n, n), layer.linear.bias.view(R, n)
    want = x * sum(x @ W[r].T + b[r] for r in range(R))
    torch.testing.assert_close(layer(x), want)
    assert sum(p.numel() for p in layer.parameters()) == R * (n * n + n)


@pytest.mark.parametrize("R", [2, 4])
def test_rows_equal_one_row_with_the_summed_weights(R):
    """Sheet: the rows are summed before the Hadamard product, so R rows == one row with
    W = Σ_r W_r, b = Σ_r b_r (dropout off; in eval mode a layer with dropout too)."""
    n = 6
    layer = QuadraticLayer(n, num_row=R, dropout=0.3)
    with torch.no_grad():
        layer.linear.bias.normal_()
    one = QuadraticLayer(n, num_row=1)
    W, b = layer.merged_weight()
    with torch.no_grad():
        one.linear.weight.copy_(W)
        one.linear.bias.copy_(b)
    x = torch.randn(32, n)
    layer.eval()
    torch.testing.assert_close(layer(x), one(x))
    layer.train()  # dropout acts on each row's output: no longer one row's function
    assert not torch.allclose(layer(x), one(x))


@pytest.mark.parametrize("N", [1, 2, 3])
def test_output_is_a_polynomial_of_degree_two_to_the_n(N):
    """Sheet's degree test: without BN and activation, N residual quadratic layers give a polynomial
    of degree 2^N: the log-log slope of ‖f(s·x)‖ at large s is 2^N."""
    torch.manual_seed(N)
    net = QuadraticNetwork(8, num_layers=N, num_row=2, batch_norm=False, activation=None, output_dim=None).double()
    with torch.no_grad():
        for layer in net.layers:
            layer.linear.bias.normal_()
    x = torch.randn(16, 8, dtype=torch.float64)
    with torch.no_grad():
        norms = [net(s * x).norm().item() for s in (1e3, 1e4)]
    slope = math.log(norms[1] / norms[0]) / math.log(10.0)
    assert slope == pytest.approx(2 ** N, abs=0.02), slope
    with torch.no_grad():  # near 0 the identity (residual) term dominates: slope 1
        small = [net(s * x).norm().item() for s in (1e-6, 1e-5)]
    assert math.log(small[1] / small[0]) / math.log(10.0) == pytest.approx(1.0, abs=0.02)


def test_network_equation_and_parameter_count():
    n, N, R = 7, 2, 3
    net = QuadraticNetwork(n, num_layers=N, num_row=R, dropout=0.2, batch_norm=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
        for bn in net.norms:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(5, n)
    h = x
    for layer, bn, act in zip(net.layers, net.norms, net.activations):
        z = bn(h * sum(h @ layer.linear.weight.view(R, n, n)[r].T + layer.linear.bias.view(R, n)[r]
                       for r in range(R)))
        h = h + torch.where(z >= 0, z, act.weight * z)
    torch.testing.assert_close(net(x), h @ net.fc.weight.T + net.fc.bias)
    per_layer = R * (n * n + n) + 2 * n + 1  # rows, BN affine, one PReLU slope
    assert sum(p.numel() for p in net.parameters()) == N * per_layer + n + 1
    assert QuadraticNetwork(n, num_layers=0)(x).shape == (5, 1)  # no layer: logistic regression on x
    with pytest.raises(ValueError, match="num_row"):
        QuadraticLayer(n, num_row=0)
