"""LR: logistic regression on one weight per feature value."""
from __future__ import annotations

from ..data.feature_map import FeatureMap
from ..layers import LinearLogit
from .base import CTRModel
from .registry import register


@register
class LR(CTRModel):
    """Logistic regression ``logit = b + Σ_f w_{x_f}`` (numeric field: ``w_f·x_f``; sequence:
    mean of its ids' weights; dense vector: ``w_fᵀ v``).

    Hyperparameters (defaults): ``embedding_dim=10`` (accepted so that one shared config fits
    every model; unused, LR's weights have dimension 1), ``embedding_regularizer=0.``,
    ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.linear = LinearLogit(feature_map)

    def forward(self, batch):
        return {"logit": self.linear(batch).squeeze(-1)}
