"""FCN / DCNv3 blocks: multi-head half-split embedding, Self-Mask, Linear and Exponential Cross Networks.

Shapes: ``B`` batch, ``F`` fields, ``D`` per-head embedding width, ``H`` heads, ``d = F·D``.
"""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


def multi_head_half_split(emb: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, F, D·H)`` field embeddings → ``X0`` of shape ``(B, H, F·D)``.

    Head ``h`` sees coordinates ``[h·D, (h+1)·D)`` of every field. Inside a head, the D
    coordinates are cut into halves; ``x0 = [first halves of all fields ; second halves of all
    fields]`` (each flattened field-major). The layout decides which coordinates later meet the
    unmasked (first) and the masked (second) half of ``c̃``; it is FCN's official layout.
    """
    B, F, width = emb.shape
    if width % num_heads:
        raise ValueError(f"embedding width {width} is not divisible by num_heads={num_heads}")
    D = width // num_heads
    if D % 2:
        raise ValueError(f"FCN needs an even per-head embedding_dim, got {D}")
    heads = emb.reshape(B, F, num_heads, D).transpose(1, 2)  # (B, H, F, D)
    first, second = heads[..., : D // 2], heads[..., D // 2:]
    return torch.cat([first.flatten(start_dim=2), second.flatten(start_dim=2)], dim=-1)


class SelfMask(nn.Module):
    """``c ∈ R^{d/2}`` → ``c̃ = [c ; c ⊙ m] ∈ R^d`` with ``m = ReLU(LayerNorm(c))`` (``ReLU(c)``
    without LayerNorm). LayerNorm centres each row, so ``m`` zeroes about half of the second half.
    ``enabled=False`` sets ``m = 1`` (``c̃ = [c ; c]``; used to test the polynomial degree).
    """

    def __init__(self, dim: int, layer_norm: bool = True, enabled: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else None
        self.enabled = bool(enabled)

    def mask(self, c: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return torch.ones_like(c)
        return torch.relu(self.norm(c) if self.norm is not None else c)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([c, c * self.mask(c)], dim=-1)


class _MaskedCrossNetwork(nn.Module):
    """Shared body of LCN and ECN on ``X0`` of shape ``(B, H, d)`` (any leading axes) → ``x_L``.

    Layer l: ``c = W_l x_l`` (``W_l ∈ R^{(d/2)×d}``, no bias), optional ``BatchNorm1d(H)`` on
    ``c`` (channels = heads, so the input must be ``(B, H, ·)``), ``c̃ = SelfMask(c)``, then
    ``x_{l+1} = base ⊙ (c̃ + b_l) + x_l`` and dropout on ``x_{l+1}``; ``base = x0`` (LCN) or
    ``x_l`` (ECN). W, b and LayerNorm act on the last axis and are shared by every head.
    Init (official): W Xavier-normal, ``b_l ~ U(0, 1)``, LayerNorm γ = 1, β = 0.
    Parameters per layer: ``d·d/2 + d`` (+ ``d`` with LayerNorm, + ``2H`` with BatchNorm).
    """

    exponential: bool = False

    def __init__(self, input_dim: int, num_layers: int, dropout: float = 0.0, layer_norm: bool = True,
                 batch_norm: bool = False, num_heads: int = 1, self_mask: bool = True):
        super().__init__()
        d = int(input_dim)
        if d % 2:
            raise ValueError(f"cross network input_dim must be even, got {d}")
        self.input_dim = self.output_dim = d
        self.num_layers = int(num_layers)
        self.W = nn.ModuleList(init_linear(nn.Linear(d, d // 2, bias=False)) for _ in range(self.num_layers))
        self.b = nn.ParameterList(nn.Parameter(torch.rand(d)) for _ in range(self.num_layers))
        self.masks = nn.ModuleList(SelfMask(d // 2, layer_norm, self_mask) for _ in range(self.num_layers))
        self.batch_norms = (nn.ModuleList(nn.BatchNorm1d(num_heads) for _ in range(self.num_layers))
                            if batch_norm else None)
        self.dropout = nn.Dropout(dropout) if dropout and dropout > 0 else nn.Identity()

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for l in range(self.num_layers):
            c = self.W[l](x)
            if self.batch_norms is not None:
                c = self.batch_norms[l](c)
            base = x if self.exponential else x0
            x = self.dropout(base * (self.masks[l](c) + self.b[l]) + x)
        return x

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, num_layers={self.num_layers}"


class LinearCrossNetwork(_MaskedCrossNetwork):
    """LCN: ``x_{l+1} = x0 ⊙ (c̃_l + b_l) + x_l``; after L layers, polynomial degree L + 1.
    See :class:`_MaskedCrossNetwork` for the layer, its options and parameter count."""

    exponential = False


class ExponentialCrossNetwork(_MaskedCrossNetwork):
    """ECN: ``x_{l+1} = x_l ⊙ (c̃_l + b_l) + x_l``; after L layers, polynomial degree 2^L.
    See :class:`_MaskedCrossNetwork` for the layer, its options and parameter count."""

    exponential = True
