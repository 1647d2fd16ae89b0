"""OMIE (DiffuMIN): split a long behaviour sequence into K interest channels along orthogonal
directions derived from the candidate item."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import init_linear


def orthonormal_columns(T: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of ``T`` (…, d, K), K ≤ d, by Gram–Schmidt applied twice per column ("CGS2", orthogonal
    to float precision): ``T = Q R``, ``QᵀQ = I_K``, R upper triangular with **diag(R) > 0**.

    The sign convention is fixed by construction (``q_k`` points along the part of column k that is
    orthogonal to the earlier columns), so routing by signed similarities never depends on a LAPACK
    sign choice; plain tensor ops also export to ONNX (``torch.linalg.qr`` does not). A column in the
    span of the earlier ones (never for a generic ``T``) gets an arbitrary unit-norm-or-zero ``q_k``.
    Returns ``(Q (…, d, K), R (…, K, K))``."""
    d, K = T.shape[-2], T.shape[-1]
    if K > d:
        raise ValueError(f"orthonormal_columns: {K} columns cannot be orthonormal in dimension {d} (need K <= d)")
    cols: list[torch.Tensor] = []
    for k in range(K):
        v = T[..., k]
        for _ in range(2):
            for q in cols:
                v = v - (q * v).sum(-1, keepdim=True) * q
        cols.append(v / v.norm(dim=-1, keepdim=True).clamp(min=eps))
    Q = torch.stack(cols, dim=-1)
    return Q, Q.transpose(-1, -2) @ T


class OrthogonalMultiInterest(nn.Module):
    """``(target t (B, d_t), behaviours h (B, L, d), mask (B, L)) → (r (B, K, d), q (B, K, d), M (B, L, K))``.

    * directions: ``T = reshape(W t + b, (d, K))``, ``[q_1 … q_K] = Q`` of its QR
      (:func:`orthonormal_columns`, diag(R) > 0), so ``q_kᵀ q_l = δ_kl``;
    * similarities ``s_jk = h_j · q_k``;
    * routing: behaviour j goes to channel ``argmax_k s_jk`` only (real positions only); filtering:
      inside each channel only the ``top_k`` routed behaviours with the largest ``s_jk`` stay →
      0/1 mask ``M_jk`` (each behaviour in at most one channel, each channel ≤ top_k, padding in none);
    * interests ``r_k = (1/n_k) Σ_j M_jk s_jk h_j`` with ``n_k`` = the channel's kept count
      (``normalize="routed"``, default: a mean over the channel's behaviours, so an interest held by
      few of a long history's behaviours is not diluted) or the row's number of real behaviours
      (``"behaviours"``: the paper's 1/L without counting padding); n ≥ 1. On the planted
      multi-interest task (tests/models/test_diffumin.py) "behaviours" fell below mean pooling.
    """

    NORMALIZE = ("routed", "behaviours")

    def __init__(self, target_dim: int, behaviour_dim: int, num_channels: int = 4, top_k: int = 100,
                 normalize: str = "routed"):
        super().__init__()
        if not 1 <= num_channels <= behaviour_dim:
            raise ValueError(f"num_channels={num_channels} orthogonal channels need 1 <= num_channels <= the "
                             f"behaviour vector width {behaviour_dim}; lower num_channels or raise embedding_dim")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (behaviours kept per channel), got {top_k}")
        if normalize not in self.NORMALIZE:
            raise ValueError(f"normalize={normalize!r}: choose from {self.NORMALIZE}")
        self.dim, self.num_channels, self.top_k, self.normalize = int(behaviour_dim), int(num_channels), int(top_k), normalize
        self.project = init_linear(nn.Linear(target_dim, behaviour_dim * num_channels))

    def directions(self, target: torch.Tensor) -> torch.Tensor:
        """``(B, K, d)``: the orthonormal channel directions ``q_k`` as rows."""
        T = self.project(target).view(target.shape[0], self.dim, self.num_channels)
        return orthonormal_columns(T)[0].transpose(1, 2)

    def routing(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Boolean ``M (B, L, K)`` from similarities ``(B, L, K)`` and the real positions ``(B, L)``."""
        K = scores.shape[-1]
        routed = (scores.argmax(dim=-1, keepdim=True) == torch.arange(K, device=scores.device)) & mask.unsqueeze(-1)
        k = min(self.top_k, scores.shape[1])
        ranked = scores.masked_fill(~routed, torch.finfo(scores.dtype).min)
        idx = ranked.topk(k, dim=1).indices
        top = torch.zeros_like(scores).scatter(1, idx, torch.ones_like(idx, dtype=scores.dtype))  # (ONNX: no bool scatter)
        return routed & (top > 0)

    def forward(self, target: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor):
        q = self.directions(target)
        s = behaviours @ q.transpose(1, 2)  # (B, L, K)
        M = self.routing(s, mask)
        weights = (s * M.to(s.dtype)).transpose(1, 2)  # (B, K, L)
        if self.normalize == "routed":
            n = M.sum(dim=1).unsqueeze(-1)  # (B, K, 1)
        else:
            n = mask.sum(dim=1).view(-1, 1, 1)
        r = weights @ behaviours / n.clamp(min=1).to(s.dtype)
        return r, q, M

