"""Pooling of a padded id sequence's embeddings into one vector."""
from __future__ import annotations

import torch
from torch import nn


def sequence_mask(ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, L)`` mask of real (non-padding) positions: ``ids != 0``."""
    return ids != 0


class SequencePooling(nn.Module):
    """Pool ``(B, L, D)`` embeddings over the positions where ``mask`` is True → ``(B, D)``.

    ``mode``: ``"mean"`` (default; masked mean), ``"sum"`` or ``"max"``. An all-padding
    sequence pools to the zero vector in every mode.
    """

    MODES = ("mean", "sum", "max")

    def __init__(self, mode: str = "mean"):
        super().__init__()
        mode = mode.lower()
        if mode not in self.MODES:
            raise ValueError(f"unknown pooling mode {mode!r}; choose from {self.MODES}")
        self.mode = mode

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(emb.dtype)  # (B, L, 1)
        if self.mode == "max":
            neg = torch.finfo(emb.dtype).min
            pooled = emb.masked_fill(~mask.unsqueeze(-1), neg).amax(dim=1)
            return pooled * (m.sum(dim=1) > 0).to(emb.dtype)  # empty sequence -> 0
        summed = (emb * m).sum(dim=1)
        if self.mode == "sum":
            return summed
        return summed / m.sum(dim=1).clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
