"""DNN: an MLP on the concatenated field embeddings."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, MLPBlock
from .base import CTRModel
from .registry import register


@register
class DNN(CTRModel):
    """``x0 = flatten(E)`` (d = F·D), ``logit = MLP(x0)`` (hidden layers, then Linear(·, 1)).

    Hyperparameters (defaults; widths from the FuxiCTR config template, D from the class
    default / BARS tuning): ``embedding_dim=10``, ``hidden_units=(500, 500, 500)``,
    ``hidden_activations="relu"`` (one name or one per layer), ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 hidden_units: Sequence[int] = (500, 500, 500), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

    def forward(self, batch):
        x0 = self.embedding(batch).flatten(start_dim=1)
        return {"logit": self.mlp(x0).squeeze(-1)}
