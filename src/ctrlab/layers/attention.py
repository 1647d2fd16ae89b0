"""Self-attention over fields: AutoInt's interacting layer."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


class MultiHeadSelfAttention(nn.Module):
    """AutoInt interacting layer on ``(B, F, D_in)`` field vectors → ``(B, F, A)``.

    Per head ``h`` (``A = attention_dim = H·d'``): ``Q = X W_Q^h``, ``K = X W_K^h``, ``V = X W_V^h``
    (``(B, F, d')``, bias-free linear maps); ``S = Q Kᵀ`` (divided by ``√d'`` if ``use_scale``),
    softmax over the key axis (optional dropout on the weights), ``O^h = softmax(S) V``;
    ``O = concat_h O^h``. Then ``O + X W_res`` if ``use_residual`` (``W_res`` bias-free, only when
    ``D_in ≠ A``, else the identity), optional ``LayerNorm(A)``, and ReLU — FuxiCTR's order.

    ``attention_dim=None`` means ``A = D_in``; ``A`` must be divisible by ``num_heads``.
    Parameters: ``3·D_in·A`` (+ ``D_in·A`` for ``W_res``) (+ ``2A`` with ``layer_norm``).
    Linear weights Xavier-normal, as FuxiCTR's model-wide reset.
    """

    def __init__(self, input_dim: int, attention_dim: int | None = None, num_heads: int = 1,
                 dropout: float = 0.0, use_residual: bool = True, use_scale: bool = False,
                 layer_norm: bool = False):
        super().__init__()
        d_in = int(input_dim)
        a = d_in if attention_dim is None else int(attention_dim)
        if num_heads < 1 or a % num_heads:
            raise ValueError(f"attention_dim={a} is not divisible by num_heads={num_heads}")
        self.input_dim, self.output_dim, self.num_heads = d_in, a, int(num_heads)
        self.head_dim = a // self.num_heads
        self.use_residual, self.use_scale = bool(use_residual), bool(use_scale)
        self.W_q = init_linear(nn.Linear(d_in, a, bias=False))
        self.W_k = init_linear(nn.Linear(d_in, a, bias=False))
        self.W_v = init_linear(nn.Linear(d_in, a, bias=False))
        self.W_res = init_linear(nn.Linear(d_in, a, bias=False)) if self.use_residual and d_in != a else None
        self.dropout = nn.Dropout(dropout) if dropout and dropout > 0 else None
        self.layer_norm = nn.LayerNorm(a) if layer_norm else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, F, _ = x.shape
        return x.view(B, F, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, F, d')

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``softmax(Q Kᵀ [/√d'])`` per head: ``(B, H, F_query, F_key)``, rows sum to 1."""
        scores = self._heads(self.W_q(x)) @ self._heads(self.W_k(x)).transpose(-1, -2)
        if self.use_scale:
            scores = scores / self.head_dim ** 0.5
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, F, _ = x.shape
        att = self.attention_weights(x)
        if self.dropout is not None:
            att = self.dropout(att)
        out = (att @ self._heads(self.W_v(x))).transpose(1, 2).reshape(B, F, self.output_dim)
        if self.use_residual:
            out = out + (self.W_res(x) if self.W_res is not None else x)
        if self.layer_norm is not None:
            out = self.layer_norm(out)
        return torch.relu(out)

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, attention_dim={self.output_dim}, num_heads={self.num_heads}, "
                f"use_residual={self.use_residual}, use_scale={self.use_scale}")
