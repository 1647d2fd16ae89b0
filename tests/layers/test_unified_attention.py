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
