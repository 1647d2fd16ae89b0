"""DCN: cross network (v1, vector weights) in parallel with an MLP."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import CrossNet, FeatureEmbedding, MLPBlock, init_linear
from .base import CTRModel
from .registry import register


@register
class DCN(CTRModel):
    """``x0 = flatten(E)``, ``x_L = CrossNet(x0)`` (``x_{l+1} = x0 · (w_lᵀ x_l) + b_l + x_l``),
    ``h = MLP(x0)`` (ends at its last hidden layer), ``logit = fc([x_L ; h])`` with one
    Linear(·, 1). With ``hidden_units=()`` there is no DNN: ``logit = fc(x_L)`` (FuxiCTR).

    Hyperparameters (defaults; FuxiCTR config template): ``embedding_dim=10``,
    ``num_cross_layers=3``, ``hidden_units=(1024, 512, 256)`` (FuxiCTR ``dnn_hidden_units``),
    ``hidden_activations="relu"`` (FuxiCTR ``dnn_activations``), ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, num_cross_layers: int = 3,
                 hidden_units: Sequence[int] = (1024, 512, 256), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        d = self.embedding.num_fields * embedding_dim
        self.crossnet = CrossNet(d, num_cross_layers)
        self.dnn = MLPBlock(d, hidden_units, activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm) if hidden_units else None
        final_dim = d + (self.dnn.output_dim if self.dnn is not None else 0)
        self.fc = init_linear(nn.Linear(final_dim, 1))

    def forward(self, batch):
        x0 = self.embedding(batch).flatten(start_dim=1)
        h = self.crossnet(x0)
        if self.dnn is not None:
            h = torch.cat([h, self.dnn(x0)], dim=-1)
        return {"logit": self.fc(h).squeeze(-1)}
