"""FinalMLP feature selection: context-conditioned element-wise gates on the flat embedding."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from .embedding import FeatureEmbedding
from .mlp import MLPBlock


class FeatureGating(nn.Module):
    """``h = g ⊙ e`` with ``g = 2·sigmoid(MLP(c))`` of width ``output_dim`` (= F·D: one gate per
    embedding element).

    Context ``c``: with no ``context_fields``, a zero-initialised learnable vector ``b ∈ R^D``
    repeated over the batch, so at init every gate is exactly 1; otherwise the concatenated
    embeddings of ``context_fields`` from a *separate* :class:`FeatureEmbedding` (not shared with
    the model's main table, as in FuxiCTR). ``MLP``: ReLU hidden layers ``hidden_units``, then a
    linear output layer (Xavier weight, zero bias).
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        embedding_dim: int,
        output_dim: int,
        hidden_units: Sequence[int] = (64,),
        context_fields: Sequence[str] = (),
        activation: str = "relu",
    ):
        super().__init__()
        self.context_fields = list(context_fields)
        if self.context_fields:
            self.context_embedding = FeatureEmbedding(feature_map, embedding_dim, fields=self.context_fields)
            self.context_bias = None
            ctx_dim = embedding_dim * self.context_embedding.num_fields
        else:
            self.context_embedding = None
            self.context_bias = nn.Parameter(torch.zeros(1, embedding_dim))
            ctx_dim = embedding_dim
        self.mlp = MLPBlock(ctx_dim, hidden_units, activation=activation, output_dim=output_dim)

    def gate(self, batch: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """Gates ``(B, output_dim)`` in (0, 2)."""
        if self.context_embedding is None:
            ctx = self.context_bias.expand(batch_size, -1)
        else:
            ctx = self.context_embedding(batch).flatten(start_dim=1)
        return 2.0 * torch.sigmoid(self.mlp(ctx))

    def forward(self, batch: dict[str, torch.Tensor], flat_emb: torch.Tensor) -> torch.Tensor:
        return flat_emb * self.gate(batch, flat_emb.size(0))
