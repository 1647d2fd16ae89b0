"""Quadratic neural network (QIN's QNN): residual layers ``x + act(BN(x ⊙ (Wx + b)))``, each of
which doubles the polynomial degree of its input."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import get_activation, init_linear


class QuadraticLayer(nn.Module):
    """``x (B, n) -> x ⊙ h``, ``h = Σ_{r=1..R} (W_r x + b_r)`` with ``R = num_row``.

    The R rows are one ``Linear(n, R·n)`` followed by ``dropout``, reshaped to ``(B, R, n)`` and
    summed over R *before* the Hadamard product. Without dropout the layer therefore equals one
    row with ``W = Σ_r W_r``, ``b = Σ_r b_r`` (:meth:`merged_weight`): R changes the
    parameterisation, the initial scale and the dropout noise, not the functions it can express.
    Parameters: ``R·(n² + n)``. Weight Xavier-normal, bias zero (FuxiCTR).
    """

    def __init__(self, input_dim: int, num_row: int = 2, dropout: float = 0.0):
        super().__init__()
        n, r = int(input_dim), int(num_row)
        if n < 1 or r < 1:
            raise ValueError(f"QuadraticLayer: input_dim and num_row must be >= 1, got {input_dim}, {num_row}")
        self.input_dim, self.num_row = n, r
        self.linear = init_linear(nn.Linear(n, r * n))
        self.dropout = nn.Dropout(dropout) if dropout and dropout > 0 else None

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``h = Σ_r (W_r x + b_r)``, ``(B, n)`` (dropout on each row's output, as FuxiCTR)."""
        h = self.linear(x)
        if self.dropout is not None:
            h = self.dropout(h)
        return h.unflatten(-1, (self.num_row, self.input_dim)).sum(dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.rows(x)

    @torch.no_grad()
    def merged_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_r W_r (n, n), Σ_r b_r (n,))``: the one-row layer this one equals without dropout."""
        n, r = self.input_dim, self.num_row
        return self.linear.weight.view(r, n, n).sum(0), self.linear.bias.view(r, n).sum(0)

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, num_row={self.num_row}"


class QuadraticNetwork(nn.Module):
    """QNN: ``num_layers`` residual quadratic layers, then an optional output ``Linear``.

    Layer ``l``: ``z = dropout(act(BN(QuadraticLayer_l(x))))``, ``x <- x + z``; BatchNorm1d with
    ``batch_norm``, ``activation`` (PReLU by default, one slope per layer as FuxiCTR's
    ``nn.PReLU()``; None: identity), ``dropout`` inside each quadratic layer (on its rows) and
    after the activation. Without BN and activation each layer maps a polynomial of degree d to
    one of degree 2d, so the network's output has degree ``2^num_layers`` in its input.
    ``output_dim``: the width of a final ``Linear(n, output_dim)`` (``logit = wᵀx + b`` with 1);
    None returns ``x`` itself, ``(B, n)``.
    """

    def __init__(self, input_dim: int, num_layers: int = 3, num_row: int = 2, dropout: float = 0.0,
                 batch_norm: bool = True, activation: str | None = "PReLU", output_dim: int | None = 1):
        super().__init__()
        n = int(input_dim)
        if int(num_layers) < 0:
            raise ValueError(f"QuadraticNetwork: num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList(QuadraticLayer(n, num_row, dropout) for _ in range(int(num_layers)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(n) for _ in self.layers) if batch_norm else None
        self.activations = nn.ModuleList(get_activation(activation) for _ in self.layers)
        self.dropout = nn.Dropout(dropout) if dropout and dropout > 0 else None
        self.fc = init_linear(nn.Linear(n, int(output_dim))) if output_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (layer, act) in enumerate(zip(self.layers, self.activations)):
            z = layer(x)
            if self.norms is not None:
                z = self.norms[i](z)
            z = act(z)
            if self.dropout is not None:
                z = self.dropout(z)
            x = x + z
        return x if self.fc is None else self.fc(x)
