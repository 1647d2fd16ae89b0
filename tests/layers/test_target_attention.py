import pytest
import torch
from torch import nn

from ctrlab.layers.mlp import MLPBlock
from ctrlab.layers.sequence import SequencePooling, sequence_mask
from ctrlab.layers.target_attention import Dice, TargetAttention, activations_with_dice


def _data(D=3):
    ids = torch.tensor([[3, 5, 0, 0], [0, 0, 0, 0], [7, 0, 2, 4], [1, 0, 0, 0]])
    mask = sequence_mask(ids)
    seq = torch.randn(4, 4, D) * mask.unsqueeze(-1)
    return torch.randn(4, D), seq, mask


def _constant(att: TargetAttention, value: float = 1.0) -> TargetAttention:
    with torch.no_grad():
        att.mlp.out.weight.zero_()
        att.mlp.out.bias.fill_(value)
    return att


# ---- Dice -----------------------------------------------------------------------------------
def test_dice_is_sigmoid_of_affine_free_batchnorm():
    """p = sigmoid(BN(x)) with BatchNorm1d(affine=False, eps=1e-9, momentum=0.01): same outputs in
    train and eval mode and the same running statistics."""
    dice, bn = Dice(5), nn.BatchNorm1d(5, affine=False, eps=1e-9, momentum=0.01)
    with torch.no_grad():
        dice.alpha.copy_(torch.randn(5))
    for _ in range(3):
        x = torch.randn(32, 5) * 3 + 1
        p = torch.sigmoid(bn(x))
        torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    torch.testing.assert_close(dice.running_mean, bn.running_mean)
    torch.testing.assert_close(dice.running_var, bn.running_var)
    dice.eval(), bn.eval()
    x = torch.randn(7, 5)
    p = torch.sigmoid(bn(x))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)


def test_dice_limits_and_tiny_batches():
    x = torch.randn(16, 4)
    dice = Dice(4)
    with torch.no_grad():
        dice.alpha.fill_(1.0)
    torch.testing.assert_close(dice(x), x)  # alpha = 1: identity
    dice = Dice(4)
    y = dice(x)  # alpha = 0 at init: p·x, between 0 and x
    assert torch.all(y.abs() <= x.abs() + 1e-6) and torch.all(y * x >= 0)
    # a training batch of one row (or none) uses the running statistics and leaves them alone
    mean, var = dice.running_mean.clone(), dice.running_var.clone()
    one = torch.randn(1, 4)
    p = torch.sigmoid((one - mean) / torch.sqrt(var + dice.eps))
    torch.testing.assert_close(dice(one), p * one)
    assert dice(torch.zeros(0, 4)).shape == (0, 4)
    assert torch.equal(dice.running_mean, mean) and torch.equal(dice.running_var, var)
    assert [n for n, _ in dice.named_parameters()] == ["alpha"]


def test_activations_with_dice():
    acts = activations_with_dice("Dice", [8, 3])
    assert [type(a) for a in acts] == [Dice, Dice] and [a.units for a in acts] == [8, 3]
    acts = activations_with_dice(["relu", "DICE"], [8, 3])
    assert acts[0] == "relu" and isinstance(acts[1], Dice) and acts[1].units == 3
    assert activations_with_dice("ReLU", [4]) == ["ReLU"]
    with pytest.raises(ValueError, match="activations"):
        activations_with_dice(["relu"], [4, 4])


# ---- TargetAttention ------------------------------------------------------------------------
def test_scores_follow_the_formula_on_real_positions():
    D = 3
    target, seq, mask = _data(D)
    att = TargetAttention(D, hidden_units=[6, 5], hidden_activations=["Dice", "relu"]).eval()
    with torch.no_grad():
        att.mlp.hidden[1].running_mean.normal_()
        att.mlp.out.bias.fill_(0.3)
    a = att.scores(target, seq, mask)
    for b in range(4):
        for j in range(4):
            t, e = target[b], seq[b, j]
            want = att.mlp(torch.cat([t, e, t - e, t * e])[None])[0, 0] if mask[b, j] else torch.tensor(0.0)
            torch.testing.assert_close(a[b, j], want)
    torch.testing.assert_close(att(target, seq, mask), (a.unsqueeze(-1) * seq).sum(1))
    assert torch.equal(att(target, seq, mask)[1], torch.zeros(D))  # empty history


def test_output_activation_and_softmax():
    target, seq, mask = _data()
    att = TargetAttention(3, [4], output_activation="sigmoid").eval()
    a = att.scores(target, seq, mask)
    assert torch.all(a[mask] > 0) and torch.all(a[mask] < 1) and torch.all(a[~mask] == 0)
    soft = TargetAttention(3, [4], use_softmax=True).eval()
    w = soft.scores(target, seq, mask)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert torch.all(w[~mask] == 0)
    # masking happens before the softmax: weights are the softmax of the real positions' scores
    raw = TargetAttention(3, [4]).eval()
    raw.load_state_dict(soft.state_dict())
    r = raw.scores(target, seq, mask)
    torch.testing.assert_close(w[2, [0, 2, 3]], r[2, [0, 2, 3]].softmax(0))


def test_constant_attention_is_sum_pooling_and_with_softmax_mean_pooling():
    target, seq, mask = _data()
    att = _constant(TargetAttention(3, [4]))
    torch.testing.assert_close(att(target, seq, mask), SequencePooling("sum")(seq, mask))
    soft = _constant(TargetAttention(3, [4], use_softmax=True), value=-2.0)
    torch.testing.assert_close(soft(target, seq, mask), SequencePooling("mean")(seq, mask))


@pytest.mark.parametrize("softmax", [False, True])
def test_padded_positions_never_matter(softmax):
    """Anything (even NaN) at padded positions changes neither the output nor, in training mode,
    Dice's batch statistics: only real positions reach the attention MLP."""
    target, seq, mask = _data()
    att = TargetAttention(3, [6], use_softmax=softmax).train()
    ref = att(target, seq, mask)
    stats = att.mlp.hidden[1].running_mean.clone()
    junk = seq.clone()
    junk[~mask] = torch.randn(int((~mask).sum()), 3) * 1e3
    torch.testing.assert_close(att(target, junk, mask), ref)
    junk[~mask] = float("nan")
    junk.requires_grad_(True)
    out = att(target, junk, mask)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert torch.isfinite(junk.grad).all() and torch.all(junk.grad[~mask] == 0)
    # Dice's statistics came from the real positions only (one update from zeros)
    t, e = target[:, None].expand_as(seq)[mask], seq[mask]
    h = att.mlp.hidden[0](torch.cat([t, e, t - e, t * e], dim=-1))
    torch.testing.assert_close(stats, 0.01 * h.mean(0))


def test_parameter_count():
    D, H = 5, [7, 3]
    att = TargetAttention(D, H)  # Dice layers add one alpha per unit
    assert sum(p.numel() for p in att.parameters()) == (4 * D * 7 + 7) + 7 + (7 * 3 + 3) + 3 + (3 + 1)
    relu = TargetAttention(D, H, hidden_activations="relu")
    assert sum(p.numel() for p in relu.parameters()) == sum(
        p.numel() for p in MLPBlock(4 * D, H, output_dim=1).parameters())


def test_runs_under_bf16_autocast():
    """Dice keeps float32 statistics when autocast hands it bfloat16 activations."""
    target, seq, mask = _data()
    att = TargetAttention(3, [6])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = att(target, seq, mask)
    out.float().sum().backward()
    dice = att.mlp.hidden[1]
    assert dice.running_mean.dtype == torch.float32 and torch.isfinite(out).all()
    assert dice.running_mean.abs().sum() > 0 and att.mlp.hidden[0].weight.grad is not None
