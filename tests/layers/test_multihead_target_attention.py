import pytest
import torch

from ctrlab.layers.multihead_target_attention import MultiHeadTargetAttention, last_real_positions


def test_last_real_positions_whatever_the_padding_side():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 1]]).bool()
    index, valid = last_real_positions(mask, 3)
    assert index[valid.all(1)].tolist() == [[5, 4, 3], [2, 1, 0], [5, 4, 2]]
    assert valid.tolist() == [[True] * 3, [True] * 3, [False] * 3, [True] * 3]
    index, valid = last_real_positions(mask, 10)  # k > L: every position, padding marked invalid
    assert index.shape == (4, 6) and valid.sum(1).tolist() == [4, 3, 0, 4]
    with pytest.raises(ValueError, match="k must be >= 1"):
        last_real_positions(mask, 0)


@pytest.mark.parametrize("heads, qkvo", [(1, True), (2, True), (2, False)])
def test_matches_a_per_head_loop(heads, qkvo):
    torch.manual_seed(0)
    B, L, d = 3, 5, 4
    att = MultiHeadTargetAttention(d, attention_dim=6 if qkvo else 64, num_heads=heads, use_qkvo=qkvo)
    q, s = torch.randn(B, d), torch.randn(B, L, d)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]).bool()
    Q, K, V = (att.W_q(q), att.W_k(s), att.W_v(s)) if qkvo else (q, s, s)
    A = Q.shape[-1]
    dh = A // heads
    want = torch.zeros(B, A)
    for b in range(B):
        real = mask[b].nonzero().flatten()
        for h in range(heads):
            if len(real) == 0:
                continue
            sl = slice(h * dh, (h + 1) * dh)
            w = (K[b, real, sl] @ Q[b, sl] / dh ** 0.5).softmax(0)
            want[b, sl] = w @ V[b, real, sl]
    want = att.W_o(want) if qkvo else want
    torch.testing.assert_close(att(q, s, mask), want)
    assert torch.all(att(q, s, mask)[2] == 0)  # no real behaviour -> 0
    assert sum(p.numel() for p in att.parameters()) == (4 * d * 6 if qkvo else 0)


def test_bad_head_count_is_named():
    with pytest.raises(ValueError, match="attention_dim=6 must be >= 1 and divisible by num_heads=4"):
        MultiHeadTargetAttention(4, attention_dim=6, num_heads=4)
    with pytest.raises(ValueError, match="use_qkvo=False"):
        MultiHeadTargetAttention(5, num_heads=2, use_qkvo=False)
