"""Multi-head target attention (one query, the candidate, over a behaviour sequence) and the
selection of the last k real behaviours of a padded sequence."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


def last_real_positions(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``k`` real positions of each row of ``mask (B, L)`` (True = real), whatever side
    the padding is on: ``(index (B, k'), valid (B, k'))`` with ``k' = min(k, L)``, newest first;
    a row with fewer than ``k'`` real positions has ``valid`` False in its remaining slots (their
    index points at padding)."""
    if k < 1:
        raise ValueError(f"last_real_positions: k must be >= 1, got {k}")
    L = mask.shape[1]
    positions = torch.arange(L, device=mask.device).expand_as(mask)
    key = torch.where(mask, positions, torch.full_like(positions, -1))
    top, index = key.topk(min(int(k), int(L)), dim=1)
    return index, top >= 0


class MultiHeadTargetAttention(nn.Module):
    """``(q (B, d), s (B, L, d), mask (B, L)) -> (B, d)``: scaled dot-product attention of the
    target over the real behaviours, ``H = num_heads`` heads.

    With ``use_qkvo`` (FuxiCTR's default): ``Q = q W_Q``, ``K = s W_K``, ``V = s W_V`` (bias-free
    ``Linear(d, A)``, ``A = attention_dim``), per head ``h`` (width ``A/H``):
    ``a^h = softmax_j(⟨Q^h, K^h_j⟩ / √(A/H))`` over the real positions, ``o^h = Σ_j a^h_j V^h_j``,
    output ``concat_h o^h · W_O`` (bias-free ``Linear(A, d)``). Without it ``Q = q``, ``K = V = s``
    (``A = d``, split into heads) and no ``W_O``. An all-padding row gives 0 (the softmax is
    masked, then multiplied by the mask). ``dropout`` on the attention weights.
    Parameters: ``4·d·A`` with ``use_qkvo``, else 0. Linear weights Xavier-normal.
    """

    def __init__(self, input_dim: int, attention_dim: int = 64, num_heads: int = 1, use_qkvo: bool = True,
                 dropout: float = 0.0, use_scale: bool = True):
        super().__init__()
        d = int(input_dim)
        a = int(attention_dim) if use_qkvo else d
        if int(num_heads) < 1 or a < 1 or a % int(num_heads):
            what = "attention_dim" if use_qkvo else "the behaviour vector width (use_qkvo=False)"
            raise ValueError(f"{what}={a} must be >= 1 and divisible by num_heads={num_heads}")
        self.input_dim, self.attention_dim, self.num_heads = d, a, int(num_heads)
        self.head_dim = a // self.num_heads
        self.use_qkvo, self.use_scale = bool(use_qkvo), bool(use_scale)
        if self.use_qkvo:
            self.W_q, self.W_k, self.W_v = (init_linear(nn.Linear(d, a, bias=False)) for _ in range(3))
            self.W_o = init_linear(nn.Linear(a, d, bias=False))
        self.dropout = nn.Dropout(dropout) if dropout and dropout > 0 else None

    def weights(self, query: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, H, L)``: 0 at padding, each row with a real position sums to 1."""
        B, L = mask.shape
        q = self.W_q(query) if self.use_qkvo else query
        k = self.W_k(seq) if self.use_qkvo else seq
        q = q.view(B, self.num_heads, 1, self.head_dim)
        k = k.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d')
        scores = (q @ k.transpose(-1, -2)).squeeze(2)  # (B, H, L)
        if self.use_scale:
            scores = scores / self.head_dim ** 0.5
        m = mask.unsqueeze(1)
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1) * m.to(scores.dtype)

    def forward(self, query: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L = mask.shape
        att = self.weights(query, seq, mask)
        if self.dropout is not None:
            att = self.dropout(att)
        v = self.W_v(seq) if self.use_qkvo else seq
        v = v.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d')
        out = (att.unsqueeze(2) @ v).reshape(B, self.attention_dim)
        return self.W_o(out) if self.use_qkvo else out

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, attention_dim={self.attention_dim}, num_heads={self.num_heads}, "
                f"use_qkvo={self.use_qkvo}, use_scale={self.use_scale}")
