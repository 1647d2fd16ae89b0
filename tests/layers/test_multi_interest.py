"""OMIE (DiffuMIN): orthonormal channel directions with a fixed sign, routing and filtering, pooling."""
import pytest
import torch

from ctrlab.layers.multi_interest import OrthogonalMultiInterest, orthonormal_columns


def test_qr_is_orthonormal_with_positive_diagonal_and_reconstructs():
    T = torch.randn(64, 10, 4)
    Q, R = orthonormal_columns(T)
    eye = torch.eye(4).expand(64, 4, 4)
    assert (Q.transpose(1, 2) @ Q - eye).abs().max() < 1e-5  # QᵀQ = I_K for every sample
    assert (torch.diagonal(R, dim1=1, dim2=2) > 0).all()
    assert torch.tril(R, diagonal=-1).abs().max() < 1e-5  # upper triangular
    torch.testing.assert_close(Q @ R, T, atol=1e-5, rtol=1e-5)
    # the unique thin QR with diag(R) > 0: LAPACK's, its signs flipped where its diag(R) < 0
    Ql, Rl = torch.linalg.qr(T)
    sign = torch.sign(torch.diagonal(Rl, dim1=1, dim2=2)).unsqueeze(1)
    torch.testing.assert_close(Q, Ql * sign, atol=1e-5, rtol=1e-4)


def test_qr_stays_orthonormal_for_nearly_dependent_columns():
    """Gram–Schmidt applied twice: orthonormal to float precision even when columns nearly coincide."""
    base = torch.randn(8, 10, 1)
    T = base + 1e-3 * torch.randn(8, 10, 4)
    Q, R = orthonormal_columns(T)
    assert (Q.transpose(1, 2) @ Q - torch.eye(4)).abs().max() < 1e-5
    assert (torch.diagonal(R, dim1=1, dim2=2) > 0).all()


def test_more_channels_than_dimensions_is_refused():
    with pytest.raises(ValueError, match="K <= d"):
        orthonormal_columns(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="num_channels"):
        OrthogonalMultiInterest(3, 3, num_channels=4)


def _inputs(B=6, L=30, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, L, generator=g) < 0.7
    mask[0] = False  # an empty history
    mask[1, :-2] = False  # two behaviours
    h = torch.randn(B, L, d, generator=g) * mask.unsqueeze(-1)
    return torch.randn(B, d, generator=g), h, mask


@pytest.mark.parametrize("top_k", [3, 100])
def test_routing_one_channel_per_behaviour_top_k_per_channel_no_padding(top_k):
    omie = OrthogonalMultiInterest(8, 8, num_channels=4, top_k=top_k)
    t, h, mask = _inputs()
    q = omie.directions(t)
    s = h @ q.transpose(1, 2)
    M = omie.routing(s, mask)
    assert (M.sum(-1) <= 1).all()  # each behaviour in at most one channel
    assert (M.sum(1) <= top_k).all()  # each channel keeps at most top_k
    assert not M[~mask].any()  # padding in none
    routed = s.argmax(-1, keepdim=True) == torch.arange(4)
    assert not (M & ~routed).any()  # only to its argmax channel
    dropped = routed & mask.unsqueeze(-1) & ~M
    for b in range(6):
        for k in range(4):
            if M[b, :, k].any() and dropped[b, :, k].any():  # the kept ones are the channel's largest
                assert s[b, M[b, :, k], k].min() >= s[b, dropped[b, :, k], k].max()
    if top_k >= 30:  # nothing filtered: every real behaviour is in exactly one channel
        assert torch.equal(M.sum(-1) == 1, mask)
    else:
        assert dropped.any()  # the filter did act in this example


@pytest.mark.parametrize("normalize", ["routed", "behaviours"])
def test_interests_follow_the_formula_and_ignore_padding(normalize):
    omie = OrthogonalMultiInterest(8, 8, num_channels=3, top_k=5, normalize=normalize)
    t, h, mask = _inputs()
    r, q, M = omie(t, h, mask)
    s = h @ q.transpose(1, 2)
    for b in range(6):
        for k in range(3):
            n = M[b, :, k].sum() if normalize == "routed" else mask[b].sum()
            want = (M[b, :, k, None] * s[b, :, k, None] * h[b]).sum(0) / max(int(n), 1)
            torch.testing.assert_close(r[b, k], want)
    assert torch.all(r[0] == 0)  # empty history -> zero interests
    # padding: more of it, and on the other side, changes nothing
    longer = torch.cat([torch.zeros(6, 7, 8), h], 1), torch.cat([torch.zeros(6, 7, dtype=torch.bool), mask], 1)
    torch.testing.assert_close(omie(t, *longer)[0], r)
    order = torch.argsort((~mask).float(), dim=1, stable=True)  # real positions first, in order ("post")
    post_h, post_m = h.gather(1, order.unsqueeze(-1).expand_as(h)), mask.gather(1, order)
    assert not torch.equal(post_m, mask)
    torch.testing.assert_close(omie(t, post_h, post_m)[0], r)


def test_bad_options_name_the_parameter():
    with pytest.raises(ValueError, match="top_k"):
        OrthogonalMultiInterest(8, 8, top_k=0)
    with pytest.raises(ValueError, match="normalize"):
        OrthogonalMultiInterest(8, 8, normalize="mean")
