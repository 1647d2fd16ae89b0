"""FM: factorization machine."""
from __future__ import annotations

from ..data.feature_map import FeatureMap
from ..layers import FactorizationMachine, FeatureEmbedding, LinearLogit
from .base import CTRModel
from .registry import register


@register
class FM(CTRModel):
    """Factorization machine ``logit = b + Σ_f w_{x_f} + Σ_{i<j} <e_i, e_j>``.

    The first-order weights are a separate dimension-1 embedding (as in FuxiCTR); with only
    categorical fields the model has ``Σ vocab·D + Σ vocab + 1`` parameters.

    Hyperparameters (defaults): ``embedding_dim=10``, ``embedding_regularizer=0.``,
    ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.linear = LinearLogit(feature_map)
        self.fm = FactorizationMachine()

    def forward(self, batch):
        logit = self.linear(batch) + self.fm(self.embedding(batch))
        return {"logit": logit.squeeze(-1)}
