"""Contrastive losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE over a batch: ``anchor``, ``positive`` (B, d), row i of each a positive pair, every
    other row of ``positive`` a negative of anchor i:

        L = −(1/B) Σ_i log softmax_j(⟨â_i, p̂_j⟩ / τ)_i        (â, p̂: L2-normalised rows)

    Minimal (→ 0 as τ → 0) when each anchor is nearest its own positive. Fewer than 2 rows have no
    negative: the loss is 0 (a zero that keeps the graph, so ``backward`` still works)."""
    if anchor.shape != positive.shape or anchor.dim() != 2:
        raise ValueError(f"info_nce needs two (B, d) tensors of one shape, got {tuple(anchor.shape)} "
                         f"and {tuple(positive.shape)}")
    if anchor.shape[0] < 2:
        return (anchor.sum() + positive.sum()) * 0.0
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))
