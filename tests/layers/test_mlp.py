import pytest
import torch
from torch import nn

from ctrlab.layers import MLPBlock


def test_structure_and_output_dim():
    m = MLPBlock(12, [32, 16], activation="ReLU", dropout=0.1, batch_norm=True, output_dim=3)
    kinds = [type(x) for x in m.hidden]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2
    assert m.output_dim == 3 and m(torch.randn(5, 12)).shape == (5, 3)
    assert MLPBlock(12, [32, 16]).output_dim == 16
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == (12 * 32 + 32) + 2 * 32 + (32 * 16 + 16) + 2 * 16 + (16 * 3 + 3)


def test_no_hidden_no_output_is_identity():
    m = MLPBlock(7, [])
    x = torch.randn(4, 7)
    assert torch.equal(m(x), x) and m.output_dim == 7


def test_init_xavier_normal_zero_bias():
    torch.manual_seed(0)
    m = MLPBlock(400, [400], output_dim=None)
    lin = m.hidden[0]
    assert torch.count_nonzero(lin.bias) == 0
    std = lin.weight.std().item()
    assert abs(std - (2 / 800) ** 0.5) < 0.002


def test_per_layer_activations_and_errors():
    m = MLPBlock(4, [3, 3], activation=["tanh", "relu"])
    assert isinstance(m.hidden[1], nn.Tanh) and isinstance(m.hidden[3], nn.ReLU)
    with pytest.raises(ValueError, match="swish2"):
        MLPBlock(4, [3], activation="swish2")
    with pytest.raises(ValueError):
        MLPBlock(4, [3, 3], dropout=[0.1])
