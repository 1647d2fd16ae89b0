"""QIN's adaptive sparse target attention (ReLU instead of softmax; QIN spec sheet)."""
import pytest
import torch

from ctrlab.layers.sparse_target_attention import ReLUTargetAttention

MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]).bool()


def test_matches_a_loop_over_the_real_behaviours():
    B, L, d = 3, 5, 4
    att = ReLUTargetAttention(d)
    assert att.attention_dim == 2 * d  # d_a = 2·d_i
    q, s = torch.randn(B, d), torch.randn(B, L, d)
    Q, K, V = att.W_q(q), att.W_k(s), att.W_v(s)
    want = q.clone()
    weights = torch.zeros(B, L)
    for b in range(B):
        for j in MASK[b].nonzero().flatten():
            weights[b, j] = torch.relu(Q[b] @ K[b, j] / (2 * d) ** 0.5)
        want[b] += att.W_o(weights[b] @ V[b])
    torch.testing.assert_close(att.weights(q, s, MASK), weights)
    torch.testing.assert_close(att(q, s, MASK), want)
    w = att.weights(q, s, MASK)
    assert (w[0] == 0).any() and (w[0] > 0).any()  # sparse: some behaviours get exactly 0
    assert not torch.allclose(w[0].sum(), torch.tensor(1.0))  # not normalised (no softmax)
    assert sum(p.numel() for p in att.parameters()) == 2 * (2 * d) * (d + d)


def test_empty_history_or_all_negative_scores_give_the_target_exactly():
    d = 6
    att = ReLUTargetAttention(d)
    with torch.no_grad():
        att.W_k.weight.copy_(att.W_q.weight)  # k_j = W_q s_j: s_j = −v_t scores −‖W_q v_t‖² / √d_a < 0
    q = torch.randn(3, d)
    s = -q.unsqueeze(1).expand(3, 5, d) * torch.rand(3, 5, 1).add(0.5)
    full = torch.ones(3, 5, dtype=torch.bool)
    assert (att.weights(q, s, full) == 0).all()
    assert torch.equal(att(q, s, full), q)
    assert torch.equal(att(q, torch.randn(3, 5, d), torch.zeros(3, 5, dtype=torch.bool)), q)
    assert not torch.equal(att(q, -s, full), q)  # positive scores do move it


def test_padding_never_contributes():
    """Whatever the padded positions hold (huge values), whichever side and however much padding."""
    d = 4
    att = ReLUTargetAttention(d)
    q, s = torch.randn(3, d), torch.randn(3, 5, d)
    ref = att(q, s, MASK)
    noisy = torch.where(MASK.unsqueeze(-1), s, torch.randn(3, 5, d) * 1e6)
    assert torch.equal(att(q, noisy, MASK), ref)
    longer = torch.cat([torch.randn(3, 3, d) * 1e6, s], dim=1)
    torch.testing.assert_close(att(q, longer, torch.cat([torch.zeros(3, 3, dtype=torch.bool), MASK], 1)), ref)


def test_narrower_behaviours_equal_zero_padded_ones():
    """``key_dim < query_dim`` (QIN's target-only multimodal slot) is the square layer on behaviours
    padded with zeros to the target's width."""
    dq, dk = 6, 4
    narrow = ReLUTargetAttention(dq, key_dim=dk, attention_dim=8)
    square = ReLUTargetAttention(dq, attention_dim=8)
    with torch.no_grad():
        square.W_q.weight.copy_(narrow.W_q.weight)
        square.W_o.weight.copy_(narrow.W_o.weight)
        for wide, small in ((square.W_k, narrow.W_k), (square.W_v, narrow.W_v)):
            wide.weight.zero_()
            wide.weight[:, :dk] = small.weight
    q, s = torch.randn(3, dq), torch.randn(3, 5, dk)
    padded = torch.cat([s, torch.zeros(3, 5, dq - dk)], dim=-1)
    torch.testing.assert_close(narrow(q, s, MASK), square(q, padded, MASK))
    with pytest.raises(ValueError, match="widths must be >= 1"):
        ReLUTargetAttention(4, attention_dim=0)
