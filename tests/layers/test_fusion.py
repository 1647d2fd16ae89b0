import pytest
import torch

from ctrlab.layers import MultiHeadBilinearFusion


@pytest.mark.parametrize("d1,d2,k", [(6, 4, 2), (12, 9, 3), (5, 7, 1)])
def test_equals_explicit_block_diagonal_bilinear(d1, d2, k):
    f = MultiHeadBilinearFusion(d1, d2, k)
    o1, o2 = torch.randn(8, d1), torch.randn(8, d2)
    # build W by hand: zeros everywhere except block j at rows j*d1/k.., cols j*d2/k..
    W = torch.zeros(d1, d2)
    a, b = d1 // k, d2 // k
    for j in range(k):
        W[j * a:(j + 1) * a, j * b:(j + 1) * b] = f.W[j].detach()
    expected = (o1 @ W * o2).sum(-1) + o1 @ f.w1.weight[0] + f.w1.bias + o2 @ f.w2.weight[0] + f.w2.bias
    out = f(o1, o2)
    assert out.shape == (8, 1)
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(f.block_diagonal(), W)


def test_parameter_count():
    d1, d2, k = 400, 100, 5
    f = MultiHeadBilinearFusion(d1, d2, k)
    assert sum(p.numel() for p in f.parameters()) == d1 + d2 + 2 + d1 * d2 // k


def test_heads_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadBilinearFusion(10, 9, 2)
