"""Wide&Deep: logistic regression (wide) plus an MLP on the embeddings (deep)."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, LinearLogit, MLPBlock
from .base import CTRModel
from .registry import register


@register
class WideDeep(CTRModel):
    """``logit = LR_wide(x) + MLP(flatten(E))``.

    The paper's wide part also takes hand-made cross-product features; as in FuxiCTR the wide
    part here is plain LR over the same fields (its own dimension-1 weights, not shared with E)
    and without a bias of its own: the MLP's output layer carries it (FuxiCTR's ``use_bias=False``).

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
        self.linear = LinearLogit(feature_map, bias=False)  # the MLP's output layer has the bias
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

    def forward(self, batch):
        logit = self.linear(batch) + self.mlp(self.embedding(batch).flatten(start_dim=1))
        return {"logit": logit.squeeze(-1)}
