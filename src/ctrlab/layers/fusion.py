"""FinalMLP stream fusion: multi-head bilinear aggregation of two vectors into one logit."""
from __future__ import annotations

import math

import torch
from torch import nn

from .mlp import init_linear


class MultiHeadBilinearFusion(nn.Module):
    """``logit = w1ᵀo1 + b1 + w2ᵀo2 + b2 + Σ_j (o1^j)ᵀ W^j o2^j`` → ``(B, 1)``.

    ``o1 (B, d1)`` and ``o2 (B, d2)`` are split into ``num_heads`` chunks of ``d1/k`` and ``d2/k``;
    chunk j of o1 only meets chunk j of o2 (a block-diagonal bilinear form). Parameters:
    ``d1 + d2 + 2 + d1·d2/k`` (two linear terms with their own bias, as in FuxiCTR, plus the
    ``k`` blocks ``W^j ∈ R^{(d1/k)×(d2/k)}``). The blocks start from N(0, 2/(d1·d2/k + 1))
    (Xavier-normal of the flattened ``(d1·d2/k, 1)`` weight), which keeps the bilinear term's
    scale O(1) at init.
    """

    def __init__(self, d1: int, d2: int, num_heads: int = 1):
        super().__init__()
        k = int(num_heads)
        if k < 1 or d1 % k or d2 % k:
            raise ValueError(f"d1={d1} and d2={d2} must both be divisible by num_heads={num_heads}")
        self.d1, self.d2, self.num_heads = int(d1), int(d2), k
        self.h1, self.h2 = d1 // k, d2 // k
        self.w1 = init_linear(nn.Linear(d1, 1))
        self.w2 = init_linear(nn.Linear(d2, 1))
        self.W = nn.Parameter(torch.randn(k, self.h1, self.h2) * math.sqrt(2.0 / (k * self.h1 * self.h2 + 1)))

    def block_diagonal(self) -> torch.Tensor:
        """The full ``(d1, d2)`` block-diagonal matrix of the bilinear part (for inspection/tests)."""
        return torch.block_diag(*self.W.unbind(0))

    def forward(self, o1: torch.Tensor, o2: torch.Tensor) -> torch.Tensor:
        a = o1.reshape(-1, self.num_heads, self.h1)
        b = o2.reshape(-1, self.num_heads, self.h2)
        bilinear = torch.einsum("bka,kac,bkc->b", a, self.W, b).unsqueeze(-1)
        return self.w1(o1) + self.w2(o2) + bilinear

    def extra_repr(self) -> str:
        return f"d1={self.d1}, d2={self.d2}, num_heads={self.num_heads}"
