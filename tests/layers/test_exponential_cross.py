"""FCN blocks: half-split multi-head layout, Self-Mask, LCN/ECN recurrences, degree, parameter count."""
import numpy as np
import pytest
import torch

from ctrlab.layers.exponential_cross import (
    ExponentialCrossNetwork,
    LinearCrossNetwork,
    SelfMask,
    multi_head_half_split,
)


def test_half_split_layout():
    B, F, D, H = 2, 3, 4, 2
    emb = torch.arange(B * F * D * H, dtype=torch.float32).view(B, F, D * H)
    x0 = multi_head_half_split(emb, H)
    assert x0.shape == (B, H, F * D)
    for h in range(H):
        head = emb[:, :, h * D:(h + 1) * D]  # (B, F, D): head h's slice of every field
        expected = torch.cat([head[:, :, :D // 2].reshape(B, -1), head[:, :, D // 2:].reshape(B, -1)], dim=1)
        assert torch.equal(x0[:, h], expected)
    # field 0's first half, then field 1's first half, ...; second halves after all first halves
    assert x0[0, 0].tolist()[:4] == [0, 1, 8, 9] and x0[0, 0].tolist()[6:8] == [2, 3]
    with pytest.raises(ValueError, match="even"):
        multi_head_half_split(torch.zeros(2, 3, 6), 2)  # D = 3 per head


def test_self_mask_concatenates_and_masks_about_half():
    torch.manual_seed(0)
    mask = SelfMask(64)
    c = torch.randn(256, 64) * 5 + 3  # shifted and scaled: LayerNorm re-centres each row
    out = mask(c)
    assert out.shape == (256, 128)
    assert torch.equal(out[:, :64], c)  # first half untouched
    ln = torch.nn.functional.layer_norm(c, (64,))
    torch.testing.assert_close(out[:, 64:], c * torch.relu(ln))
    zero_share = (out[:, 64:] == 0).float().mean().item()
    assert 0.4 < zero_share < 0.6  # ~half of the masked half is zeroed, whatever the scale/shift
    assert (out[:, :64] == 0).float().mean().item() == 0.0
    # without LayerNorm the mask is ReLU(c): a shifted input is barely masked
    plain = SelfMask(64, layer_norm=False)(c)
    torch.testing.assert_close(plain[:, 64:], c * torch.relu(c))
    assert (plain[:, 64:] == 0).float().mean().item() < 0.35
    # disabled: m = 1
    assert torch.equal(SelfMask(64, enabled=False)(c), torch.cat([c, c], dim=1))
    assert sum(p.numel() for p in mask.parameters()) == 2 * 64


def _manual(net, x0, exponential):
    x = x0
    for l in range(net.num_layers):
        c = x @ net.W[l].weight.T
        m = torch.relu(torch.nn.functional.layer_norm(c, c.shape[-1:], net.masks[l].norm.weight,
                                                      net.masks[l].norm.bias))
        ct = torch.cat([c, c * m], dim=-1)
        x = (x if exponential else x0) * (ct + net.b[l]) + x
    return x


@pytest.mark.parametrize("cls,exponential", [(LinearCrossNetwork, False), (ExponentialCrossNetwork, True)])
def test_recurrence_and_parameter_count(cls, exponential):
    d, L, H = 8, 3, 2
    net = cls(d, L, num_heads=H).eval()
    assert all(((b >= 0) & (b < 1)).all() and b.abs().sum() > 0 for b in net.b)  # b ~ U(0, 1), not zero
    assert sum(p.numel() for p in net.parameters()) == L * (d * d // 2 + d + d)
    assert sum(p.numel() for p in cls(d, L, layer_norm=False).parameters()) == L * (d * d // 2 + d)
    assert sum(p.numel() for p in cls(d, L, batch_norm=True, num_heads=H).parameters()) == L * (d * d // 2 + 2 * d + 2 * H)
    x0 = torch.randn(5, H, d)
    torch.testing.assert_close(net(x0), _manual(net, x0, exponential))
    # the other rule gives a different result (x0 vs x_l in the update)
    assert not torch.allclose(net(x0), _manual(net, x0, not exponential))


def test_sheet_layer_size_example():
    """F = 39, D = 16 -> d = 624 -> 195,936 parameters per layer with LayerNorm."""
    assert sum(p.numel() for p in ExponentialCrossNetwork(624, 1).parameters()) == 195_936
    assert sum(p.numel() for p in LinearCrossNetwork(624, 2).parameters()) == 2 * 195_936


def test_heads_share_weights():
    net = ExponentialCrossNetwork(6, 2, num_heads=3).eval()
    x0 = torch.randn(4, 3, 6)
    out = net(x0)
    for h in range(3):
        torch.testing.assert_close(out[:, h], net(x0[:, h]))


def test_batch_norm_over_heads_and_dropout_on_output():
    net = LinearCrossNetwork(6, 1, batch_norm=True, num_heads=3, dropout=0.5)
    assert isinstance(net.batch_norms[0], torch.nn.BatchNorm1d) and net.batch_norms[0].num_features == 3
    net.train()
    out = net(torch.randn(64, 3, 6) + 1)
    assert (out == 0).float().mean() > 0.3  # dropout acts on x_{l+1}
    net.eval()
    assert (net(torch.randn(64, 3, 6) + 1) != 0).all()


def _slope(net, x0):
    """log-log slope of |v·x_L(s·x0)| at large s (mask and biases off)."""
    v = torch.randn(x0.shape[-1], dtype=torch.float64)
    s = np.array([1e3, 1e4, 1e5])
    with torch.no_grad():
        y = [abs(float((net(si * x0) @ v).sum())) for si in s]
    return np.polyfit(np.log(s), np.log(y), 1)[0]


@pytest.mark.parametrize("L", [1, 2, 3])
def test_polynomial_degree(L):
    """Sheet: with m = 1 and b = 0 the LCN has degree L + 1, the ECN degree 2^L."""
    torch.manual_seed(L)
    x0 = torch.randn(1, 8, dtype=torch.float64)
    slopes = {}
    for cls in (LinearCrossNetwork, ExponentialCrossNetwork):
        net = cls(8, L, self_mask=False).double().eval()
        with torch.no_grad():
            for b in net.b:
                b.zero_()
        slopes[cls] = _slope(net, x0)
    assert slopes[LinearCrossNetwork] == pytest.approx(L + 1, abs=0.05)
    assert slopes[ExponentialCrossNetwork] == pytest.approx(2 ** L, abs=0.05)
