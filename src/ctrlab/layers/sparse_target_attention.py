"""Adaptive sparse target attention (QIN): ReLU of scaled dot-product scores instead of a softmax,
so weights are non-negative, unnormalised and exactly 0 for negative scores and padding."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


class ReLUTargetAttention(nn.Module):
    """``(v_t (B, d_q), S (B, L, d_k), mask (B, L)) -> o (B, d_q)``:

    ``q = W_q v_t``, ``K = S W_k``, ``V = S W_v`` (bias-free ``Linear`` to ``d_a = attention_dim``),
    ``a_j = ReLU((q·k_j / √d_a) · mask_j)``, ``o = W_o Σ_j a_j v_j + v_t`` (bias-free
    ``W_o: d_a -> d_q``, residual to the target).

    No softmax: the weights do not sum to 1 and a behaviour whose score is negative gets exactly 0.
    Padding is masked by multiplying its score by 0 before the ReLU (never −∞, which would give
    NaN when multiplied), so it never contributes; an empty history, or one whose scores are all
    negative, gives ``o = v_t`` exactly (``W_o`` has no bias). ``key_dim`` (default ``query_dim``):
    the behaviour vectors' width when it differs from the target's (equivalent to zero-padding the
    behaviours to ``d_q``, without the dead weights). ``attention_dim`` default ``2·query_dim``
    (QIN). Parameters: ``2·d_a·(d_q + d_k)``. Weights Xavier-normal.
    """

    def __init__(self, query_dim: int, key_dim: int | None = None, attention_dim: int | None = None):
        super().__init__()
        dq = int(query_dim)
        dk = dq if key_dim is None else int(key_dim)
        da = 2 * dq if attention_dim is None else int(attention_dim)
        if min(dq, dk, da) < 1:
            raise ValueError(f"ReLUTargetAttention: widths must be >= 1, got query_dim={query_dim}, "
                             f"key_dim={key_dim}, attention_dim={attention_dim}")
        self.query_dim, self.key_dim, self.attention_dim = dq, dk, da
        self.W_q = init_linear(nn.Linear(dq, da, bias=False))
        self.W_k = init_linear(nn.Linear(dk, da, bias=False))
        self.W_v = init_linear(nn.Linear(dk, da, bias=False))
        self.W_o = init_linear(nn.Linear(da, dq, bias=False))

    def weights(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``a (B, L)``: ``ReLU((q·k_j / √d_a) · mask_j)``, 0 at padding and negative scores."""
        q = self.W_q(target).unsqueeze(1)  # (B, 1, d_a)
        k = self.W_k(seq)  # (B, L, d_a)
        scores = (q @ k.transpose(-1, -2)).squeeze(1) / self.attention_dim ** 0.5
        return torch.relu(scores * mask.to(scores.dtype))

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.weights(target, seq, mask)
        pooled = (a.unsqueeze(1) @ self.W_v(seq)).squeeze(1)  # Σ_j a_j v_j, (B, d_a)
        return self.W_o(pooled) + target

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, attention_dim={self.attention_dim}"
