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


@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_split_half_and_activation_match_the_xdeepfm_paper(activation):
    """Issue 14.15: the paper's (and DeepCTR's) options. Layer k's maps go through the activation;
    with ``split_half`` the first H_k/2 feed layer k+1 and the other H_k/2 go to the output
    (the last layer outputs all of its maps). Off by default, as in FuxiCTR."""
    B, F, D, H = 4, 3, 5, [4, 6, 3]
    cin = CIN(F, H, activation=activation, split_half=True).double()
    with torch.no_grad():
        for conv in cin.convs:
            conv.bias.normal_()
    act = {None: lambda x: x, "relu": torch.relu, "tanh": torch.tanh}[activation]
    E = torch.randn(B, F, D, dtype=torch.float64)
    X, pooled = E, []
    for k, conv in enumerate(cin.convs):
        W = conv.weight[:, :, 0].reshape(conv.out_channels, X.shape[1], F)
        Z = act(torch.stack([
            sum(W[h, i, j] * X[:, i] * E[:, j] for i in range(X.shape[1]) for j in range(F)) + conv.bias[h]
            for h in range(conv.out_channels)], dim=1))
        if k < len(H) - 1:
            X, out_maps = Z[:, :H[k] // 2], Z[:, H[k] // 2:]
        else:
            out_maps = Z
        pooled.append(out_maps.sum(dim=-1))
    assert [c.in_channels for c in cin.convs] == [F * F, 2 * F, 3 * F]
    assert cin.output_dim == 2 + 3 + 3
    torch.testing.assert_close(cin(E), torch.cat(pooled, dim=-1))


def test_split_half_needs_even_layers_but_the_last():
    CIN(3, [4, 5], split_half=True)
    with pytest.raises(ValueError, match="even"):
        CIN(3, [5, 4], split_half=True)


def test_activation_without_split_half():
    cin = CIN(3, [2, 2], activation="relu")
    out = cin(torch.randn(5, 3, 4))
    assert out.shape == (5, 4) and cin.output_dim == 4
    assert (out >= 0).all() and (CIN(3, [2, 2])(torch.randn(50, 3, 4)) < 0).any()  # pooled ReLU maps
