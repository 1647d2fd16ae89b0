"""AutoInt / AutoInt+: stacked multi-head self-attention over the fields (+ a parallel MLP)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, LinearLogit, MLPBlock, MultiHeadSelfAttention, init_linear
from .base import CTRModel
from .registry import register


@register
class AutoInt(CTRModel):
    """``O⁰ = E``; ``O^l = ReLU([LN](MHSA(O^{l−1}) + O^{l−1} W_res))`` for ``l = 1..attention_layers``
    (see :class:`~ctrlab.layers.MultiHeadSelfAttention`); ``logit = wᵀ flatten(O^L) + b``
    (``w ∈ R^{F·A}``), ``+ MLP(flatten(E))`` when ``hidden_units`` is non-empty (the DNN reads the
    raw embeddings, in parallel: AutoInt+), ``+ LR(x)`` (no bias of its own) when ``use_wide``.

    ``AutoInt`` defaults to no DNN (the paper's AutoInt); :class:`AutoIntPlus` is the same model
    with ``hidden_units=(400, 400)``. ``net_dropout`` applies to the attention weights and to the
    MLP (FuxiCTR).

    Hyperparameters (defaults; FuxiCTR config template, embedding_dim 10): ``embedding_dim=10``,
    ``attention_layers=3``, ``num_heads=2``, ``attention_dim=40`` (A, divisible by num_heads),
    ``use_residual=True``, ``use_scale=False`` (divide scores by √(A/H)), ``layer_norm=False``,
    ``use_wide=False``, ``hidden_units=()`` (FuxiCTR ``dnn_hidden_units``),
    ``hidden_activations="relu"``, ``net_dropout=0.``, ``batch_norm=False``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, attention_layers: int = 3,
                 num_heads: int = 2, attention_dim: int = 40, use_residual: bool = True,
                 use_scale: bool = False, layer_norm: bool = False, use_wide: bool = False,
                 hidden_units: Sequence[int] = (), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        F = self.embedding.num_fields
        self.attention = nn.Sequential(*[
            MultiHeadSelfAttention(embedding_dim if l == 0 else attention_dim, attention_dim, num_heads,
                                   dropout=net_dropout, use_residual=use_residual,
                                   use_scale=use_scale, layer_norm=layer_norm)
            for l in range(attention_layers)])
        self.fc = init_linear(nn.Linear(F * (attention_dim if attention_layers > 0 else embedding_dim), 1))
        self.mlp = MLPBlock(F * embedding_dim, hidden_units, activation=hidden_activations,
                            dropout=net_dropout, batch_norm=batch_norm, output_dim=1) if hidden_units else None
        self.linear = LinearLogit(feature_map, bias=False) if use_wide else None  # fc has the bias

    def forward(self, batch):
        emb = self.embedding(batch)
        logit = self.fc(self.attention(emb).flatten(start_dim=1))
        if self.mlp is not None:
            logit = logit + self.mlp(emb.flatten(start_dim=1))
        if self.linear is not None:
            logit = logit + self.linear(batch)
        return {"logit": logit.squeeze(-1)}


@register(defaults={"hidden_units": (400, 400)})
class AutoIntPlus(AutoInt):
    """AutoInt+ (created as ``"AutoIntPlus"``): :class:`AutoInt` whose default ``hidden_units`` is
    ``(400, 400)`` (FuxiCTR template), i.e. a parallel MLP on the raw embeddings is on by default.

    Hyperparameters: those of :class:`AutoInt` with the same defaults (``embedding_dim``,
    ``attention_layers``, ``num_heads``, ``attention_dim``, ``use_residual``, ``use_scale``,
    ``layer_norm``, ``use_wide``, ``hidden_activations``, ``net_dropout``, ``batch_norm``,
    ``embedding_regularizer``, ``net_regularizer``), except ``hidden_units=(400, 400)``.
    """
