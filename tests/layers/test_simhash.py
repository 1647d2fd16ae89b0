"""SimHash bucket pooling (SDIM): the SimHash kernel, the τ = 0 and padding cases, the two-stage
(bucket tables + lookup) form, and the fixed projections."""
import math

import pytest
import torch

from ctrlab.layers.simhash import MAX_HASH_BITS, SimHash


def _data(B=6, L=9, d=8, seed=0, pad="pre"):
    """Random behaviours with 0-4 padded positions per row (row 0 all padding) and targets, some
    of which equal one of their row's behaviours."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(B, L, d, generator=g)
    lengths = torch.randint(L - 4, L + 1, (B,), generator=g)
    lengths[0] = 0
    pos = torch.arange(L).expand(B, L)
    mask = pos >= (L - lengths[:, None]) if pad == "pre" else pos < lengths[:, None]
    q = torch.randn(B, d, generator=g)
    q[1:3] = seq[1:3, -1]
    return q, seq, mask


def test_signatures_follow_the_definition_with_one_tie_convention():
    sh = SimHash(5, num_hashes=3, hash_bits=4, seed=3)
    v = torch.randn(7, 5)
    R = sh.projections
    want = torch.zeros(7, 3, dtype=torch.long)
    for i in range(7):
        for h in range(3):
            for t in range(4):
                want[i, h] += int(float(v[i] @ R[:, h, t]) > 0) * 2 ** t
    assert torch.equal(sh.signatures(v), want)
    assert sh.signatures(v).max() < 16 and sh.signatures(v).dtype == torch.long
    # <v, r> == 0 gives bit 0 on every side: the zero vector, and a vector orthogonal to every column
    assert torch.equal(sh.signatures(torch.zeros(2, 5)), torch.zeros(2, 3, dtype=torch.long))
    one = SimHash(2, num_hashes=1, hash_bits=1)
    with torch.no_grad():
        one.projections.copy_(torch.tensor([[[1.0]], [[0.0]]]))
    assert one.signatures(torch.tensor([[0.0, 5.0], [1e-30, 0.0], [-1.0, 3.0]])).flatten().tolist() == [0, 1, 0]


def test_kernel_property_monte_carlo():
    """E[u_h] = Σ_j (1 − θ_j/π)^τ s_j: with m = 4096 hashes the mean matches it to a few percent,
    and the kernel of another τ does not."""
    torch.manual_seed(0)
    B, L, d, tau = 4, 12, 16, 2
    q, seq, mask = _data(B, L, d, seed=1)
    mask[:] = True
    seq[:, :4] = q[:, None] + 0.6 * torch.randn(B, 4, d)  # some behaviours near the target
    sh = SimHash(d, num_hashes=4096, hash_bits=tau, seed=7)
    with torch.no_grad():
        u = sh(q, seq, mask)

    def kernel(t):
        cos = torch.nn.functional.cosine_similarity(seq, q[:, None], dim=-1).clamp(-1, 1)
        return ((1 - torch.arccos(cos) / math.pi) ** t).unsqueeze(-1).mul(seq).sum(1)

    err = lambda want: float((u - want).norm() / want.norm())  # noqa: E731
    assert err(kernel(tau)) < 0.03, err(kernel(tau))
    assert err(kernel(tau + 2)) > 0.15 and err(kernel(tau - 2)) > 0.15


def test_zero_bits_is_masked_sum_pooling():
    q, seq, mask = _data()
    with torch.no_grad():
        u = SimHash(8, num_hashes=1, hash_bits=0)(q, seq, mask)
    acc = torch.zeros(6, 8)
    for j in range(seq.shape[1]):  # position-ordered sum over the real behaviours
        acc = torch.where(mask[:, j, None], acc + seq[:, j], acc)
    assert torch.equal(u, acc)
    torch.testing.assert_close(SimHash(8, num_hashes=3, hash_bits=0)(q, seq, mask),
                               (seq * mask[..., None]).sum(1))


def _direct_and_tables_agree_under_autograd(sh, q, seq, mask, direct):
    """With autograd on, the direct form is a matrix product: the same values as ``direct`` up to
    rounding, and the same gradients as tables + lookup."""
    s1, s2 = seq.clone().requires_grad_(), seq.clone().requires_grad_()
    a, b = sh(q, s1, mask), sh.lookup(sh.bucket_tables(s2, mask), q)
    torch.testing.assert_close(a, direct)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_bucket_mean_divides_by_the_collisions_and_zero_bits_is_masked_mean_pooling():
    q, seq, mask = _data()
    with torch.no_grad():
        u = SimHash(8, num_hashes=3, hash_bits=0, bucket_mean=True)(q, seq, mask)
        counts = mask.sum(1, keepdim=True)
        torch.testing.assert_close(u[1:], (seq * mask[..., None]).sum(1)[1:] / counts[1:])
        assert torch.equal(u[0], torch.zeros(8))  # row 0 is all padding: an empty bucket gives 0, not NaN
        # with bits: each hash's sum over its collided behaviours divided by their number
        sh = SimHash(8, num_hashes=4, hash_bits=2, bucket_mean=True, seed=3)
        plain = SimHash(8, num_hashes=4, hash_bits=2, seed=3)
        hit = (sh.signatures(seq) == sh.signatures(q).unsqueeze(1)) & mask.unsqueeze(-1)  # (B, L, m)
        per_hash = torch.einsum("blm,bld->bmd", hit.float(), seq) / hit.sum(1).clamp(min=1).unsqueeze(-1)
        torch.testing.assert_close(sh(q, seq, mask), per_hash.mean(1))
        assert not torch.allclose(plain(q, seq, mask)[1:], sh(q, seq, mask)[1:])
        # the scale does not grow with the history: every behaviour twice gives the same interest
        twice = torch.cat([seq, seq], 1), torch.cat([mask, mask], 1)
        torch.testing.assert_close(sh(q, *twice), sh(q, seq, mask))
        torch.testing.assert_close(plain(q, *twice), 2 * plain(q, seq, mask))


@pytest.mark.parametrize("m, tau, l2", [(1, 4, False), (8, 3, False), (3, 0, False), (4, 2, True)])
@pytest.mark.parametrize("pad", ["pre", "post"])
def test_bucket_mean_tables_and_lookup_reproduce_the_direct_form_bit_for_bit(m, tau, l2, pad):
    q, seq, mask = _data(B=16, L=40, d=12, seed=4, pad=pad)
    sh = SimHash(12, num_hashes=m, hash_bits=tau, l2_norm=l2, seed=5, bucket_mean=True)
    plain = SimHash(12, num_hashes=m, hash_bits=tau, seed=5)
    with torch.no_grad():
        sh.ordered_sums = True
        direct = sh(q, seq, mask)
        tables = sh.bucket_tables(seq, mask)
        assert torch.equal(sh.lookup(tables, q), direct)
        other = torch.randn(16, 12)
        assert torch.equal(sh.lookup(tables, other), sh(other, seq, mask))
        # the tables hold each bucket's mean: its sum divided by its number of real behaviours
        sums = plain.bucket_tables(seq, mask)
        sig = torch.where(mask.unsqueeze(-1), sh.signatures(seq), 2 ** tau)  # (B, L, m)
        counts = torch.stack([torch.stack([(sig[..., h] == k).sum(1) for k in range(2 ** tau)], 1)
                              for h in range(m)], 1)  # (B, m, 2^τ)
        torch.testing.assert_close(tables, sums / counts.clamp(min=1).unsqueeze(-1))
    _direct_and_tables_agree_under_autograd(sh, q, seq, mask, direct)


@pytest.mark.parametrize("m, tau, l2", [(1, 4, False), (16, 3, False), (4, 0, False), (2, 8, True), (5, 1, True)])
@pytest.mark.parametrize("pad", ["pre", "post"])
def test_bucket_tables_and_lookup_reproduce_the_direct_form_bit_for_bit(m, tau, l2, pad):
    q, seq, mask = _data(B=16, L=40, d=12, seed=2, pad=pad)
    sh = SimHash(12, num_hashes=m, hash_bits=tau, l2_norm=l2, seed=5)
    with torch.no_grad():
        fast = sh(q, seq, mask)  # the default direct form: a matrix product
        sh.ordered_sums = True  # the direct form summed in position order: the reference of the BSE test
        direct = sh(q, seq, mask)
        torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-6)
        tables = sh.bucket_tables(seq, mask)
        assert tables.shape == (16, m, 2 ** tau, 12)
        assert torch.equal(sh.lookup(tables, q), direct)
        # the tables hold every real behaviour once per hash, in the bucket of its signature
        torch.testing.assert_close(tables.sum(2), (seq * mask[..., None]).sum(1, keepdim=True).expand(-1, m, -1))
        other = torch.randn(16, 12)  # other candidates, the same tables
        assert torch.equal(sh.lookup(tables, other), sh(other, seq, mask))
    _direct_and_tables_agree_under_autograd(sh, q, seq, mask, direct)


def test_padding_never_collides():
    q, seq, mask = _data(B=5, L=10, d=6, seed=3)
    sh = SimHash(6, num_hashes=2, hash_bits=3)
    sh.ordered_sums = True  # bit-for-bit comparisons with the tables below
    with torch.no_grad():
        assert torch.all(sh(q, seq, mask)[0] == 0)  # row 0: all padding
        assert torch.all(sh.bucket_tables(seq, mask)[0] == 0)
        # padding holding the target itself (it would collide) or zero vectors (signature 0, as a
        # zero target has) changes nothing
        ref = sh(q, seq, mask)
        for fill in (q[:, None].expand_as(seq), torch.zeros_like(seq)):
            s = torch.where(mask[..., None], seq, fill)
            assert torch.equal(sh(q, s, mask), ref)
            assert torch.equal(sh.lookup(sh.bucket_tables(s, mask), q), ref)
        zero_q = torch.zeros_like(q)
        assert torch.equal(sh(zero_q, torch.zeros_like(seq), mask), torch.zeros_like(q))
    # only collided real behaviours get a gradient
    s = seq.clone().requires_grad_()
    sh(q, s, mask).sum().backward()
    hit = (sh.signatures(seq) == sh.signatures(q)[:, None]).any(-1) & mask
    assert torch.all(s.grad[~hit] == 0) and torch.all(s.grad[hit] != 0)


def test_projections_are_a_fixed_persistent_buffer():
    sh = SimHash(8, num_hashes=3, hash_bits=4, seed=11)
    assert "projections" in sh.state_dict() and sh.projections.shape == (8, 3, 4)
    assert not list(sh.parameters())
    assert torch.equal(SimHash(8, 3, 4, seed=11).projections, sh.projections)
    assert not torch.equal(SimHash(8, 3, 4, seed=12).projections, sh.projections)
    q, seq, mask = _data(d=8)
    first = sh(q, seq, mask)
    assert torch.equal(sh(q, seq, mask), first)
    before = sh.projections.clone()
    sh.redraw(torch.Generator().manual_seed(0))
    assert not torch.equal(sh.projections, before)
    loaded = SimHash(8, 3, 4, seed=99)
    loaded.load_state_dict({**sh.state_dict()})
    assert torch.equal(loaded(q, seq, mask), sh(q, seq, mask))


def test_long_sequences_and_wide_tables_stay_small():
    """L = 10,000 with 2^12 buckets: no (B, L, 2^τ) one-hot is built (it would be 5 GB here)."""
    torch.manual_seed(0)
    B, L, d = 32, 10_000, 8
    seq, mask, q = torch.randn(B, L, d), torch.rand(B, L) > 0.2, torch.randn(B, d)
    sh = SimHash(d, num_hashes=2, hash_bits=12)
    with torch.no_grad():
        tables = sh.bucket_tables(seq, mask)
        assert tables.shape == (B, 2, 4096, d)
        torch.testing.assert_close(sh.lookup(tables, q), sh(q, seq, mask), rtol=1e-5, atol=1e-5)
        sh.ordered_sums = True
        assert torch.equal(sh.lookup(tables, q), sh(q, seq, mask))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_hashes"):
        SimHash(4, num_hashes=0)
    with pytest.raises(ValueError, match="hash_bits"):
        SimHash(4, hash_bits=MAX_HASH_BITS + 1)
    with pytest.raises(ValueError, match="hash_bits"):
        SimHash(4, hash_bits=-1)
    sh = SimHash(4, num_hashes=2, hash_bits=3)
    with pytest.raises(ValueError, match=r"seq must be \(B, L, 4\)"):
        sh(torch.randn(2, 4), torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"tables must be \(B, num_hashes, 2\^hash_bits, dim\) = \(B, 2, 8, 4\)"):
        sh.lookup(torch.zeros(2, 2, 4, 4), torch.randn(2, 4))


@pytest.mark.parametrize("chunk_rows", [4, 20, 4096])  # one user per chunk (L > rows), 2 users, all at once
def test_collisions_follow_the_definition_in_every_chunking(chunk_rows, monkeypatch):
    q, seq, mask = _data(B=7, L=9, d=8, seed=5)
    sh = SimHash(8, num_hashes=5, hash_bits=3, seed=2)
    want = ((sh.signatures(seq) == sh.signatures(q).unsqueeze(1)) & mask.unsqueeze(-1)).float()
    monkeypatch.setattr(SimHash, "SIGNATURE_CHUNK_ROWS", chunk_rows)
    hit = sh.collisions(q, seq, mask)
    assert hit.dtype == torch.float32 and torch.equal(hit, want)
    assert want[1:3].any() and not want[0].any()  # targets copied from the history collide; padding never does
    q16, seq16 = q.bfloat16(), seq.bfloat16()  # in the inputs' dtype, from their own signatures
    want16 = (sh.signatures(seq16) == sh.signatures(q16).unsqueeze(1)) & mask.unsqueeze(-1)
    assert torch.equal(sh.collisions(q16, seq16, mask), want16.bfloat16())
