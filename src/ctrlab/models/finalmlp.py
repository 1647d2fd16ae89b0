"""FinalMLP: two gated MLP streams fused by a multi-head bilinear layer."""
from __future__ import annotations

from collections.abc import Sequence

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, FeatureGating, MLPBlock, MultiHeadBilinearFusion
from .base import CTRModel
from .registry import register


@register
class FinalMLP(CTRModel):
    """``e = flatten(E)``; ``h_s = g_s ⊙ e`` with ``g_s = 2·sigmoid(MLP_gate_s(c_s))`` (s = 1, 2);
    ``o1 = MLP1(h_1)``, ``o2 = MLP2(h_2)`` (both end at their last hidden layer);
    ``logit = b + w1ᵀo1 + w2ᵀo2 + Σ_j (o1^j)ᵀ W^j o2^j`` over ``num_heads`` chunks.

    Gate context ``c_s``: fields ``fs{s}_context`` embedded by a separate table (FuxiCTR: not
    shared with the main one), or a zero-initialised learnable vector when empty.

    Hyperparameters (FuxiCTR class defaults): ``embedding_dim=10``,
    ``mlp1_hidden_units=(64, 64, 64)``, ``mlp1_hidden_activations="relu"``, ``mlp1_dropout=0.``,
    ``mlp1_batch_norm=False``, ``mlp2_hidden_units=(64, 64, 64)``, ``mlp2_hidden_activations="relu"``,
    ``mlp2_dropout=0.``, ``mlp2_batch_norm=False``, ``use_fs=True``, ``fs_hidden_units=(64,)``,
    ``fs1_context=()``, ``fs2_context=()``, ``num_heads=1``, ``embedding_regularizer=0.``,
    ``net_regularizer=0.``. BARS Frappe_x1: mlp1 [400] BN dropout 0.4, mlp2 [100] BN dropout 0.4,
    fs_hidden [400], fs1_context ["user"], fs2_context ["item"], 5 heads, embedding_regularizer 0.05.
    ``mlp1_hidden_units[-1]`` and ``mlp2_hidden_units[-1]`` must be divisible by ``num_heads``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 mlp1_hidden_units: Sequence[int] = (64, 64, 64), mlp1_hidden_activations: str = "relu",
                 mlp1_dropout: float = 0.0, mlp1_batch_norm: bool = False,
                 mlp2_hidden_units: Sequence[int] = (64, 64, 64), mlp2_hidden_activations: str = "relu",
                 mlp2_dropout: float = 0.0, mlp2_batch_norm: bool = False,
                 use_fs: bool = True, fs_hidden_units: Sequence[int] = (64,),
                 fs1_context: Sequence[str] = (), fs2_context: Sequence[str] = (), num_heads: int = 1,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        d = self.embedding.num_fields * embedding_dim
        self.use_fs = bool(use_fs)
        if self.use_fs:
            self.gate1 = FeatureGating(feature_map, embedding_dim, d, fs_hidden_units, fs1_context)
            self.gate2 = FeatureGating(feature_map, embedding_dim, d, fs_hidden_units, fs2_context)
        self.mlp1 = MLPBlock(d, mlp1_hidden_units, activation=mlp1_hidden_activations,
                             dropout=mlp1_dropout, batch_norm=mlp1_batch_norm)
        self.mlp2 = MLPBlock(d, mlp2_hidden_units, activation=mlp2_hidden_activations,
                             dropout=mlp2_dropout, batch_norm=mlp2_batch_norm)
        self.fusion = MultiHeadBilinearFusion(self.mlp1.output_dim, self.mlp2.output_dim, num_heads)

    def forward(self, batch):
        e = self.embedding(batch).flatten(start_dim=1)
        h1 = self.gate1(batch, e) if self.use_fs else e
        h2 = self.gate2(batch, e) if self.use_fs else e
        return {"logit": self.fusion(self.mlp1(h1), self.mlp2(h2)).squeeze(-1)}
