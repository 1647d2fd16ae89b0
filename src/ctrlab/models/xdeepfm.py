"""xDeepFM: LR + compressed interaction network (CIN) + MLP, sharing one embedding table."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import CIN, FeatureEmbedding, LinearLogit, MLPBlock, init_linear
from .base import CTRModel
from .registry import register


@register
class xDeepFM(CTRModel):
    """``logit = LR(x) + wᵀ[p¹; …; p^K] + MLP(flatten(E))``, with ``p^k = Σ_D X^k`` the sum-pooled
    maps of the CIN layers ``X^k_h = Σ_i Σ_j W^{k,h}_{ij} (X^{k−1}_i ⊙ X⁰_j)``, ``X⁰ = E``
    (by default, as FuxiCTR: no activation, no split-half). ``w`` is one Linear(Σ_k H_k, 1) and carries the
    model's only output bias (the LR term has none, as in FuxiCTR).
    With ``hidden_units=[]`` there is no MLP term (LR + CIN, as in FuxiCTR).

    Hyperparameters (defaults; FuxiCTR config template): ``embedding_dim=10``,
    ``cin_hidden_units=(32, 32, 32)`` (numbers of maps H_k), ``hidden_units=(500, 500, 500)``
    (FuxiCTR ``dnn_hidden_units``), ``hidden_activations="relu"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``cin_activation=None`` and ``cin_split_half=False`` (the paper's and
    DeepCTR's CIN options, see :class:`~ctrlab.layers.CIN`; DeepCTR uses ``"relu"`` and ``True``),
    ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 cin_hidden_units: Sequence[int] = (32, 32, 32),
                 hidden_units: Sequence[int] = (500, 500, 500), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 cin_activation: str | None = None, cin_split_half: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.linear = LinearLogit(feature_map, bias=False)  # cin_fc has the bias
        self.cin = CIN(self.embedding.num_fields, cin_hidden_units, activation=cin_activation,
                       split_half=cin_split_half)
        self.cin_fc = init_linear(nn.Linear(self.cin.output_dim, 1))
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, hidden_units,
                            activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1) if hidden_units else None

    def forward(self, batch):
        emb = self.embedding(batch)
        logit = self.linear(batch) + self.cin_fc(self.cin(emb))
        if self.mlp is not None:
            logit = logit + self.mlp(emb.flatten(start_dim=1))
        return {"logit": logit.squeeze(-1)}
