"""A small post-LayerNorm transformer block (self-attention, optional cross-attention, FFN) over a
handful of tokens: DiffuMIN's denoiser and its short-term sequence summary."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


class MultiHeadAttention(nn.Module):
    """``(query (B, N, d), memory (B, M, d), key_mask (B, M) or None) → (B, N, d)``.

    Per head ``h`` (``d = H·d_h``): ``softmax(Q_h K_hᵀ / √d_h) V_h`` with ``Q = query W_Q``,
    ``K = memory W_K``, ``V = memory W_V``, heads concatenated, then ``W_O``. Keys where
    ``key_mask`` is False get weight 0 (a query whose keys are all masked gets uniform weights over
    them instead of NaN; callers keep one key real). Plain tensor ops, so the block exports to ONNX.
    """

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = int(dim), int(num_heads), int(dim) // int(num_heads)
        self.W_q, self.W_k, self.W_v, self.W_o = (init_linear(nn.Linear(dim, dim)) for _ in range(4))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d_h)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self._split(self.W_q(query)) @ self._split(self.W_k(memory)).transpose(-1, -2) / self.head_dim ** 0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        out = scores.softmax(dim=-1) @ self._split(self.W_v(memory))
        return self.W_o(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.dim))


class TransformerBlock(nn.Module):
    """``x ← LN(x + SelfAtt(x))``; with ``cross=True`` also ``x ← LN(x + CrossAtt(x, c))``; then
    ``x ← LN(x + W_2 ReLU(W_1 x))`` (FFN width ``dff·d``). Input and output ``(B, N, d)``."""

    def __init__(self, dim: int, num_heads: int = 1, dff: int = 3, cross: bool = False):
        super().__init__()
        self.self_att, self.norm1 = MultiHeadAttention(dim, num_heads), nn.LayerNorm(dim)
        self.cross_att = MultiHeadAttention(dim, num_heads) if cross else None
        self.norm2 = nn.LayerNorm(dim) if cross else None
        self.ffn = nn.Sequential(init_linear(nn.Linear(dim, dff * dim)), nn.ReLU(), init_linear(nn.Linear(dff * dim, dim)))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, N): real tokens (keys of the self-attention); ``condition`` (B, M, d): the
        cross-attention memory (required when the block was built with ``cross=True``)."""
        x = self.norm1(x + self.self_att(x, x, mask))
        if self.cross_att is not None:
            if condition is None:
                raise ValueError("this TransformerBlock has cross-attention: pass condition=(B, M, d)")
            x = self.norm2(x + self.cross_att(x, condition))
        return self.norm3(x + self.ffn(x))
