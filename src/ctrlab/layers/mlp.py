"""Multi-layer perceptron block."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": nn.LeakyReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "linear": nn.Identity,
    "identity": nn.Identity,
    "none": nn.Identity,
}


def get_activation(name: str | nn.Module | None) -> nn.Module:
    """Activation module from a (case-insensitive) name such as ``"ReLU"``; ``None`` → identity."""
    if name is None:
        return nn.Identity()
    if isinstance(name, nn.Module):
        return name
    try:
        return _ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def _per_layer(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} hidden layers")
        return list(value)
    return [value] * n


def init_linear(layer: nn.Linear) -> nn.Linear:
    """FuxiCTR initialisation: Xavier-normal weight, zero bias."""
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class MLPBlock(nn.Module):
    """Hidden layers ``Linear → [BatchNorm] → [LayerNorm] → activation → [Dropout]``, then an optional plain
    ``Linear(hidden_units[-1], output_dim)`` (no activation).

    ``activation`` and ``dropout`` may be one value or one per hidden layer. With no hidden units
    and no ``output_dim`` the block is the identity. ``output_dim`` attribute: the output width.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (),
        activation: str | Sequence[str] = "relu",
        dropout: float | Sequence[float] = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
        layer_norm: bool = False,
    ):
        super().__init__()
        hidden_units = [int(h) for h in hidden_units]
        acts = _per_layer(activation, len(hidden_units), "activation")
        drops = _per_layer(dropout, len(hidden_units), "dropout")
        layers: list[nn.Module] = []
        dim = int(input_dim)
        for units, act, p in zip(hidden_units, acts, drops):
            layers.append(init_linear(nn.Linear(dim, units)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            if layer_norm:  # OptInter's MLP: Linear -> LayerNorm -> ReLU
                layers.append(nn.LayerNorm(units))
            layers.append(get_activation(act))
            if p and p > 0:
                layers.append(nn.Dropout(p))
            dim = units
        self.hidden = nn.Sequential(*layers)
        self.out = init_linear(nn.Linear(dim, output_dim)) if output_dim is not None else None
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim) if output_dim is not None else dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden(x)
        return self.out(x) if self.out is not None else x


class ResidualMLPBlock(nn.Module):
    """``x + Dropout1(Linear(Dropout0(act(Linear([LayerNorm](x))))))``: a two-layer residual block
    ``d -> hidden -> d`` (TabR's encoder and predictor blocks, Gorishniy et al. 2024). ``prenorm``:
    a LayerNorm on the block's input (TabR: every block but the encoder's first). Linear layers keep
    PyTorch's default initialisation, as in TabR's code."""

    def __init__(self, dim: int, hidden: int, activation: str = "relu", dropout0: float = 0.0,
                 dropout1: float = 0.0, prenorm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if prenorm else None
        self.up = nn.Linear(dim, hidden)
        self.act = get_activation(activation)
        self.drop0 = nn.Dropout(dropout0)
        self.down = nn.Linear(hidden, dim)
        self.drop1 = nn.Dropout(dropout1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) if self.norm is not None else x
        return x + self.drop1(self.down(self.drop0(self.act(self.up(h)))))
