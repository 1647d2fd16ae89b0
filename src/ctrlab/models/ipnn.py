"""IPNN: product-based neural network with inner products."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, InnerProducts, MLPBlock
from .base import CTRModel
from .registry import register


@register
class IPNN(CTRModel):
    """``z = [flatten(E) ; (⟨e_i, e_j⟩)_{i<j}]`` (width ``F·D + F(F−1)/2``), ``logit = MLP(z)``.

    As in FuxiCTR's ``PNN(product_type="inner")`` the raw inner products are concatenated (the
    paper's product layer multiplies them by learned kernels first).

    Hyperparameters (defaults; widths from the FuxiCTR config template): ``embedding_dim=10``,
    ``hidden_units=(300, 300, 300)``, ``hidden_activations="relu"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 hidden_units: Sequence[int] = (300, 300, 300), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        F = self.embedding.num_fields
        self.inner_products = InnerProducts(F)
        self.mlp = MLPBlock(F * embedding_dim + self.inner_products.output_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

    def forward(self, batch):
        emb = self.embedding(batch)
        z = torch.cat([emb.flatten(start_dim=1), self.inner_products(emb)], dim=-1)
        return {"logit": self.mlp(z).squeeze(-1)}
