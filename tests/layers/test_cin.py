import pytest
import torch

from ctrlab.layers import CIN


def test_equals_explicit_maps_and_sum_pooling():
    B, F, D, H = 4, 3, 5, [4, 2, 3]
    cin = CIN(F, H).double()
    with torch.no_grad():
        for conv in cin.convs:
            conv.bias.normal_()
    E = torch.randn(B, F, D, dtype=torch.float64)
    X, pooled = E, []
    for conv in cin.convs:
        W = conv.weight[:, :, 0].reshape(conv.out_channels, X.shape[1], F)  # W[h, i, j]
        # X^k_h = Σ_i Σ_j W_hij (X^{k-1}_i ⊙ X⁰_j) + b_h
        X = torch.stack([
            sum(W[h, i, j] * X[:, i] * E[:, j] for i in range(X.shape[1]) for j in range(F)) + conv.bias[h]
            for h in range(conv.out_channels)], dim=1)
        pooled.append(X.sum(dim=-1))    # sum over the embedding axis, one number per map
    out = cin(E)
    assert out.shape == (B, sum(H)) and cin.output_dim == sum(H)
    torch.testing.assert_close(out, torch.cat(pooled, dim=-1))


@pytest.mark.parametrize("F,H", [(3, [4, 2, 3]), (6, [32, 32, 32]), (39, [200, 200, 200])])
def test_parameter_count(F, H):
    cin = CIN(F, H)
    dims = [F] + H
    expected = sum(dims[k] * dims[k - 1] * F + dims[k] for k in range(1, len(dims)))
    assert sum(p.numel() for p in cin.parameters()) == expected


def test_no_activation_layer_k_is_homogeneous_of_degree_k_plus_1():
    """Zero biases: p^k(t·E) = t^{k+1} p^k(E) exactly (no nonlinearity anywhere)."""
    F, D, H = 4, 3, [3, 2, 2]
    cin = CIN(F, H).double()
    E = torch.randn(6, F, D, dtype=torch.float64)
    t = 1.7
    a, b = cin(E), cin(t * E)
    start = 0
    for k, h in enumerate(H, start=1):
        torch.testing.assert_close(b[:, start:start + h], t ** (k + 1) * a[:, start:start + h])
        start += h


def test_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        CIN(3, [])
