"""DeepFM: FM and an MLP sharing one embedding table."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.feature_map import FeatureMap
from ..layers import FactorizationMachine, FeatureEmbedding, LinearLogit, MLPBlock
from .base import CTRModel
from .registry import register


@register
class DeepFM(CTRModel):
    """``logit = LR(x) + FM₂(E) + MLP(flatten(E))``; FM and MLP share the embeddings ``E``.

    Hyperparameters (defaults; widths from the FuxiCTR config template): ``embedding_dim=10``,
    ``hidden_units=(300, 300, 300)``, ``hidden_activations="relu"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    BARS Frappe_x1: hidden [400,400,400], batch_norm, dropout 0.2, embedding_regularizer 0.05.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 hidden_units: Sequence[int] = (300, 300, 300), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.linear = LinearLogit(feature_map)
        self.fm = FactorizationMachine()
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

    def forward(self, batch):
        emb = self.embedding(batch)
        logit = self.linear(batch) + self.fm(emb) + self.mlp(emb.flatten(start_dim=1))
        return {"logit": logit.squeeze(-1)}
