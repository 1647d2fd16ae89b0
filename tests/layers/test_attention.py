import pytest
import torch

from ctrlab.layers import MultiHeadSelfAttention


def _explicit(layer, X):
    """Per-head loop straight from the AutoInt equations (FuxiCTR order: residual, LN, ReLU)."""
    H, dh = layer.num_heads, layer.head_dim
    Q, K, V = X @ layer.W_q.weight.T, X @ layer.W_k.weight.T, X @ layer.W_v.weight.T
    heads = []
    for h in range(H):
        q, k, v = (M[..., h * dh:(h + 1) * dh] for M in (Q, K, V))
        s = q @ k.transpose(1, 2)
        if layer.use_scale:
            s = s / dh ** 0.5
        heads.append(torch.softmax(s, dim=-1) @ v)   # normalise over keys for each query field
    out = torch.cat(heads, dim=-1)
    if layer.use_residual:
        out = out + (X @ layer.W_res.weight.T if layer.W_res is not None else X)
    if layer.layer_norm is not None:
        out = layer.layer_norm(out)
    return torch.relu(out)


@pytest.mark.parametrize("d_in,A,H,scale,res,ln", [
    (5, 8, 2, False, True, False),   # W_res (5 != 8)
    (8, 8, 4, True, True, False),    # identity residual
    (6, 6, 3, True, False, True),    # no residual, layer norm
    (4, 12, 3, False, True, True),
])
def test_equals_explicit_per_head_computation(d_in, A, H, scale, res, ln):
    layer = MultiHeadSelfAttention(d_in, A, H, use_residual=res, use_scale=scale, layer_norm=ln).double()
    assert (layer.W_res is not None) == (res and d_in != A)
    X = torch.randn(3, 7, d_in, dtype=torch.float64)
    out = layer(X)
    assert out.shape == (3, 7, A) and layer.output_dim == A
    torch.testing.assert_close(out, _explicit(layer, X))
    w = layer.attention_weights(X)
    assert w.shape == (3, H, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, H, 7, dtype=torch.float64))


@pytest.mark.parametrize("d_in,A,res,ln,expected", [
    (5, 8, True, False, 4 * 5 * 8),
    (8, 8, True, False, 3 * 8 * 8),
    (8, 8, False, False, 3 * 8 * 8),
    (5, 8, False, True, 3 * 5 * 8 + 2 * 8),
    (10, 40, True, True, 4 * 10 * 40 + 2 * 40),
])
def test_parameter_count(d_in, A, res, ln, expected):
    layer = MultiHeadSelfAttention(d_in, A, 2, use_residual=res, layer_norm=ln)
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_uniform_attention_when_query_is_zero():
    """W_Q = 0: every query attends uniformly, so each row = mean of the V rows + residual."""
    layer = MultiHeadSelfAttention(5, 6, 2).double()
    torch.nn.init.zeros_(layer.W_q.weight)
    X = torch.randn(4, 7, 5, dtype=torch.float64)
    V = X @ layer.W_v.weight.T
    expected = torch.relu(V.mean(dim=1, keepdim=True) + X @ layer.W_res.weight.T)
    torch.testing.assert_close(layer(X), expected)


def test_identity_like_setting():
    """W_V = 0 and an identity residual (D_in = A): the layer is ReLU(X), the identity on X ≥ 0."""
    layer = MultiHeadSelfAttention(6, 6, 3, use_scale=True)
    torch.nn.init.zeros_(layer.W_v.weight)
    X = torch.rand(2, 5, 6)
    torch.testing.assert_close(layer(X), X)
    torch.testing.assert_close(layer(X - 0.5), torch.relu(X - 0.5))


def test_permutation_equivariance():
    layer = MultiHeadSelfAttention(5, 8, 2, use_scale=True, layer_norm=True).double()
    X = torch.randn(3, 6, 5, dtype=torch.float64)
    perm = torch.randperm(6)
    torch.testing.assert_close(layer(X[:, perm]), layer(X)[:, perm])


def test_scale_divides_scores_by_sqrt_head_dim():
    a = MultiHeadSelfAttention(4, 8, 2, use_scale=False)
    b = MultiHeadSelfAttention(4, 8, 2, use_scale=True)
    b.load_state_dict(a.state_dict())
    X = torch.randn(2, 5, 4)
    with torch.no_grad():
        b.W_q.weight.mul_(4 ** 0.5)   # head_dim = 4: scaling Q by √4 undoes the division
    torch.testing.assert_close(b.attention_weights(X), a.attention_weights(X))


def test_heads_must_divide_attention_dim():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(4, 10, 3)
