import math

import pytest
import torch

from ctrlab.layers.unified_attention import (
    RMSNorm,
    UnifiedAttentionBlock,
    attended_pairs,
    attention_mask,
    auto_stride,
    time_buckets,
)

D, T = 8, 12


def _inputs(b=3, t=T, seed=0, pad=2):
    """Tokens with ``pad`` leading padding positions in row 0, ranks, real flags, times, a profile."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g)
    real = torch.ones(b, t, dtype=torch.bool)
    real[0, :pad] = False
    rank = torch.cumsum(real.long(), 1)
    time = torch.sort(torch.rand(b, t, generator=g) * 1e5, dim=1, descending=True).values * real
    profile = torch.randn(b, 4, 6, generator=g)
    return x, rank, real, time, profile


def _block(**kw):
    torch.manual_seed(0)
    block = UnifiedAttentionBlock(D, n_heads=2, profile_dim=6, max_distance=T, **kw)
    with torch.no_grad():  # zero-initialised biases would not show whether they are used
        block.position_bias.normal_(0, 1.0)
        if block.time_bias is not None:
            block.time_bias.normal_(0, 1.0)
    return block.eval()


def test_changing_a_token_changes_no_earlier_token():
    block = _block()
    x, rank, real, time, profile = _inputs()
    out, _ = block(x, rank, real, time, profile)
    for j in (3, 7, T - 1):
        x2 = x.clone()
        x2[:, j] += 5.0
        out2, _ = block(x2, rank, real, time, profile)
        torch.testing.assert_close(out2[:, :j], out[:, :j], rtol=0, atol=1e-6)
        assert (out2[:, j] - out[:, j]).abs().max() > 1e-3  # the token itself does change


def test_padding_keys_are_ignored():
    """What a padding token holds never reaches a real token."""
    block = _block()
    x, rank, real, time, profile = _inputs(pad=4)
    out, _ = block(x, rank, real, time, profile)
    x2 = x.clone()
    x2[0, :4] = torch.randn(4, D) * 10
    out2, _ = block(x2, rank, real, time, profile)
    torch.testing.assert_close(out2[:, 4:], out[:, 4:], rtol=0, atol=1e-6)
    assert torch.isfinite(out2).all()


@pytest.mark.parametrize("window", [None, 3])
def test_a_prefix_cache_gives_the_full_pass_outputs(window):
    """Encoding tokens < P once and attending to them from later tokens (the ``past``) equals the
    full pass, also with a batch-1 past broadcast over several continuations."""
    block = _block(window=window, stride=2 if window is not None else None)
    x, rank, real, time, profile = _inputs()
    full, _ = block(x, rank, real, time, profile)
    p = 8
    _, past = block(x[:, :p], rank[:, :p], real[:, :p], time[:, :p], profile)
    tail, _ = block(x[:, p:], rank[:, p:], real[:, p:], time[:, p:], profile, past=past, cache=False)
    torch.testing.assert_close(tail, full[:, p:], rtol=0, atol=1e-5)
    one = {k: v[1:2] for k, v in past.items()}  # row 1's prefix, three different last tokens
    last = x[1:2, p:].repeat(3, 1, 1)
    last[:, -1] = torch.randn(3, D)
    cont, _ = block(last, rank[1:2, p:].repeat(3, 1), real[1:2, p:].repeat(3, 1), time[1:2, p:].repeat(3, 1),
                    profile[1:2].repeat(3, 1, 1), past=one, cache=False)
    for i in range(3):
        xi = torch.cat([x[1:2, :p], last[i:i + 1]], 1)
        ref, _ = block(xi, rank[1:2], real[1:2], time[1:2], profile[1:2])
        torch.testing.assert_close(cont[i], ref[0, p:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_time", [True, False])
def test_the_pair_index_reads_the_bias_table_and_masks_with_its_last_entry(with_time):
    """Dense attention's logit bias is one gather from ``bias_table``: ``p[min(d, P)] + τ[bucket]``
    where the pair is allowed, ``-inf`` elsewhere; the index shared by a stack (``pairs``) gives
    the same outputs as each block computing it, also against a cached prefix."""
    block = _block(window=3, stride=4)
    x, rank, real, time, profile = _inputs()
    t = time if with_time else None
    index = block.pair_index(rank, rank, t, t, real)
    bias = block.bias_table(with_time)[index]
    distance = (rank.unsqueeze(2) - rank.unsqueeze(1)).clamp(0, block.max_distance)
    want = block.position_bias.detach()[distance]
    if with_time:
        gap = (time.unsqueeze(2) - time.unsqueeze(1)).abs()
        want = want + block.time_bias.detach()[time_buckets(gap, block.num_time_buckets, block.time_max_gap)]
    slots = torch.arange(T)
    causal = slots.unsqueeze(1) >= slots.unsqueeze(0)
    allowed = causal & (real.unsqueeze(1) | torch.eye(T, dtype=torch.bool))
    allowed &= ((distance <= 3) | (distance % 4 == 0)) | torch.eye(T, dtype=torch.bool)
    assert torch.equal(torch.isinf(bias), ~allowed)
    torch.testing.assert_close(bias[allowed], want[allowed], rtol=0, atol=0)
    block.sparse_kernel = False  # the dense path reads the index (the sparse kernel builds its own pairs)
    ref, _ = block(x, rank, real, t, profile)
    shared, _ = block(x, rank, real, t, profile, pairs=block.pairs_for(rank, real, t))
    assert torch.equal(shared, ref)
    p = 8
    _, past = block(x[:, :p], rank[:, :p], real[:, :p], None if t is None else t[:, :p], profile)
    args = (rank[:, p:], real[:, p:], None if t is None else t[:, p:])
    ref, _ = block(x[:, p:], *args[:2], args[2], profile, past=past, cache=False)
    shared, _ = block(x[:, p:], *args[:2], args[2], profile, past=past, cache=False, pairs=block.pairs_for(*args, past))
    assert torch.equal(shared, ref)


def test_sparse_with_a_window_covering_the_sequence_is_dense_exactly():
    dense = _block()
    x, rank, real, time, profile = _inputs()
    want, _ = dense(x, rank, real, time, profile)
    for stride in (1, 5):
        sparse = _block(window=T - 1, stride=stride)
        sparse.load_state_dict(dense.state_dict())
        got, _ = sparse(x, rank, real, time, profile)
        assert torch.equal(got, want)
    narrow = _block(window=2, stride=5)
    narrow.load_state_dict(dense.state_dict())
    got, _ = narrow(x, rank, real, time, profile)
    assert (got[:, -1] - want[:, -1]).abs().max() > 1e-4  # a narrow window does drop keys


def test_sparse_pattern_and_its_cost():
    """Local window + dilated grid, causal; the attended pairs grow as O(L·(window + L/stride)),
    and with the automatic stride ⌈√L⌉ sub-quadratically."""
    m = attention_mask(10, window=2, stride=4)
    assert m[9].nonzero().flatten().tolist() == [1, 5, 7, 8, 9]  # d = 8, 4 (grid), 2, 1, 0 (window)
    assert not m.triu(1).any()  # causal
    assert torch.equal(attention_mask(10, window=9, stride=4), attention_mask(10))
    window = 16
    counts = {}
    for length in (100, 1000, 4000):
        stride = auto_stride(length)
        n = attended_pairs(length, window, stride)
        if length <= 1000:
            assert n == int(attention_mask(length, window, stride).sum())
        assert n <= length * (window + 1 + length / stride + 1)
        assert attended_pairs(length, window, 8) <= length * (window + 1 + length / 8 + 1)
        counts[length] = n
    dense = {L: L * (L + 1) // 2 for L in counts}
    assert counts[4000] / counts[1000] < 0.6 * (dense[4000] / dense[1000])  # L^1.5-like, not L^2
    assert counts[4000] < 0.05 * dense[4000]
    print({L: (counts[L], dense[L]) for L in counts})


def test_time_buckets_are_log_scaled_and_carry_no_gradient():
    gaps = torch.tensor([0.0, 1.0, 60.0, 3600.0, 86400.0, 3.2e7, 1e12, -5.0], requires_grad=True)
    ids = time_buckets(gaps, 128, 3.2e7)
    assert not ids.requires_grad and ids.dtype == torch.long
    assert ids.tolist()[:6] == sorted(ids.tolist()[:6]) and ids[0] == 0 and ids[-1] == 0
    assert ids[5] == 127 and ids[6] == 127  # clamped
    assert ids[1] == math.floor(math.log(2) * 127 / math.log1p(3.2e7))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: what the ONNX export uses
def test_rmsnorm_formula_used_for_export_equals_torchs():
    norm = RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 5, D)
    traced = torch.jit.trace(norm, (x,))
    torch.testing.assert_close(traced(x), norm(x))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_heads"):
        UnifiedAttentionBlock(10, n_heads=3)
    with pytest.raises(ValueError, match="window"):
        UnifiedAttentionBlock(8, window=-1)


# ---- the sparse kernel (LightSUAN's attention without T × T tensors) -----------------------------

def _padded_rows(t, seed):
    """Real flags of rows with pre-, post- and scattered padding, one all-padding row, one with a
    single real token and one shorter than any window used below (3 real tokens)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, t, (3,), generator=g)
    slots = torch.arange(t)
    rows = [slots >= t - n[0],  # pre-padding
            slots < n[1],  # post-padding
            torch.rand(t, generator=g) < 0.6,  # padding anywhere
            torch.zeros(t, dtype=torch.bool),  # all padding
            slots == t - 1,  # one real token
            (slots >= 2) & (slots < 5),  # three real tokens between padding
            torch.ones(t, dtype=torch.bool)]
    return torch.stack(rows)


@pytest.mark.parametrize("t,window,stride", [(12, 2, 5), (12, 3, 1), (30, 4, 6), (30, 0, 3), (30, 5, 40),
                                             (41, 7, 3), (17, 15, 2), (25, 6, 7)])
@pytest.mark.parametrize("with_time,with_profile", [(True, True), (False, False), (True, False)])
def test_the_sparse_kernel_equals_the_masked_dense_attention(t, window, stride, with_time, with_profile):
    """Values and gradients (inputs and every parameter) of the sparse kernel equal the dense
    attention with the pattern as a mask, on the real tokens (what padding tokens hold is read by
    nothing; it only has to be finite)."""
    torch.manual_seed(t + window)
    block = UnifiedAttentionBlock(D, n_heads=2, profile_dim=6 if with_profile else None, max_distance=t,
                                  window=window, stride=stride, use_time_bias=with_time).double()
    with torch.no_grad():
        block.position_bias.normal_()
        if block.time_bias is not None:
            block.time_bias.normal_()
    real = _padded_rows(t, seed=t)
    b = real.shape[0]
    rank = torch.cumsum(real.long(), 1)
    x = torch.randn(b, t, D, dtype=torch.float64, requires_grad=True)
    time = torch.sort(torch.rand(b, t, dtype=torch.float64) * 1e6, 1, descending=True).values * real
    time = time if with_time else None
    profile = torch.randn(b, 3, 6, dtype=torch.float64) if with_profile else None
    probe = torch.randn(b, t, D, dtype=torch.float64) * real.unsqueeze(-1)  # a loss on the real tokens only
    results = []
    for sparse in (True, False):
        block.sparse_kernel = sparse
        assert block.uses_sparse_kernel(t) is sparse
        block.zero_grad()
        x.grad = None
        out, present = block(x, rank, real, time, profile)
        (out * probe).sum().backward()
        assert torch.isfinite(out).all()
        results.append((out.detach()[real], x.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()
                                                            if p.grad is not None}, present))
    (got, got_dx, got_dp, got_present), (want, want_dx, want_dp, want_present) = results
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, rtol=0, atol=1e-5)
    assert got_dp.keys() == want_dp.keys() and "position_bias" in got_dp
    for name in want_dp:
        torch.testing.assert_close(got_dp[name], want_dp[name], rtol=1e-5, atol=1e-5, msg=name)
    for name in ("k", "v", "rank", "real"):  # the cache a later call attends to is the dense path's
        assert torch.equal(got_present[name], want_present[name])


def test_the_sparse_kernel_is_used_only_where_it_leaves_keys_out():
    block = _block(window=3, stride=2)
    assert block.uses_sparse_kernel(T) and block.uses_sparse_kernel(5)
    assert not block.uses_sparse_kernel(4)  # window 3 >= 4 − 1: every causal pair, dense exactly
    x, rank, real, time, profile = _inputs()
    _, past = block(x[:, :8], rank[:, :8], real[:, :8], time[:, :8], profile)
    assert not block.uses_sparse_kernel(4, past)  # few queries against a cached prefix: dense with a mask
    assert not _block().uses_sparse_kernel(T)  # dense SUAN


def test_the_sparse_kernel_is_causal_slot_by_slot_padding_included():
    """Changing a token changes no earlier slot's state, padding slots included (SUAN's candidate,
    the last token, must not move the behaviours' states, wherever the padding is)."""
    block = _block(window=2, stride=3)
    block.eval()
    t = 10
    real = _padded_rows(t, seed=1)
    rank = torch.cumsum(real.long(), 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(real.shape[0], t, D, generator=g)
    time = torch.sort(torch.rand(real.shape[0], t, generator=g) * 1e5, 1, descending=True).values * real
    profile = torch.randn(real.shape[0], 4, 6, generator=g)
    assert block.uses_sparse_kernel(t)
    out, _ = block(x, rank, real, time, profile)
    for j in (4, t - 1):
        x2 = x.clone()
        x2[:, j] += 5.0
        out2, _ = block(x2, rank, real, time, profile)
        torch.testing.assert_close(out2[:, :j], out[:, :j], rtol=0, atol=1e-6)
        assert (out2[:, j] - out[:, j]).abs().max() > 1e-3


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_the_sparse_kernel_never_builds_a_t_by_t_tensor():
    """At T = 20,000 (B = 1) no tensor of the forward or backward pass reaches T²/20 elements
    (a dense T × T score tensor has T² per head); the same bound catches the dense path (run on
    the meta device: shapes only). Largest tensor: H·T·(2(window + 1) + ⌈T/stride⌉)."""
    t, window = 20_000, 16
    stride = auto_stride(t)
    torch.manual_seed(0)
    block = UnifiedAttentionBlock(D, n_heads=2, profile_dim=6, max_distance=t, window=window, stride=stride)
    real = torch.ones(1, t, dtype=torch.bool)
    real[0, :1000] = False
    rank = torch.cumsum(real.long(), 1)
    time = torch.linspace(1e7, 0, t).unsqueeze(0) * real
    x = torch.randn(1, t, D, requires_grad=True)
    with _LargestTensor() as record:
        out, _ = block(x, rank, real, time, torch.randn(1, 3, 6), cache=False)
        out[:, -1].sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    bound = t * t // 20
    assert record.largest <= 2 * t * (2 * (window + 1) + -(-t // stride)) < bound, record.largest
    block.sparse_kernel = False
    meta = block.to("meta")
    with _LargestTensor() as dense:
        meta(*(a.detach().to("meta") for a in (x, rank, real, time, torch.randn(1, 3, 6))), cache=False)
    assert dense.largest >= 2 * t * t > bound


def test_table_lookup_gradient_equals_plain_indexing():
    """The bias tables' bincount backward sums exactly what indexing's backward sums."""
    from ctrlab.layers.unified_attention import table_lookup

    g = torch.Generator().manual_seed(0)
    table = torch.randn(17, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 17, (3, 9, 9), generator=g)
    weight = torch.randn(3, 9, 9, dtype=torch.float64, generator=g)
    (table_lookup(table, idx) * weight).sum().backward()
    fast = table.grad.clone()
    table.grad = None
    (table[idx] * weight).sum().backward()
    assert torch.equal(table_lookup(table, idx), table[idx])
    torch.testing.assert_close(fast, table.grad, rtol=1e-12, atol=1e-12)
    assert fast.abs().sum() > 0
