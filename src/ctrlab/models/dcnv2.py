"""DCNv2: matrix cross network (optionally a mixture of low-rank experts) with an MLP."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers import CrossNetV2, FeatureEmbedding, MLPBlock, init_linear
from .base import CTRModel
from .registry import register

STRUCTURES = ("crossnet_only", "stacked", "parallel", "stacked_parallel")


@register
class DCNv2(CTRModel):
    """``x0 = flatten(E)``, ``x_L = CrossNetV2(x0)`` (``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``), then
    by ``model_structure``:

    * ``crossnet_only``:    ``logit = fc(x_L)``
    * ``stacked``:          ``logit = fc(MLP_s(x_L))``
    * ``parallel``:         ``logit = fc([x_L ; MLP_p(x0)])``
    * ``stacked_parallel``: ``logit = fc([MLP_s(x_L) ; MLP_p(x0)])``

    ``fc`` is one Linear(·, 1); the MLPs end at their last hidden layer. Fields may set their own
    ``embedding_dim`` in the dataset config (``x0`` is their concatenation).

    Hyperparameters (defaults; FuxiCTR template): ``embedding_dim=10``,
    ``model_structure="parallel"``, ``num_cross_layers=3``, ``hidden_units=(500, 500, 500)``
    (every MLP tower), ``hidden_activations="relu"``, ``net_dropout=0.``, ``batch_norm=False``,
    ``use_low_rank_mixture=False``, ``low_rank=32``, ``num_experts=4``,
    ``stacked_dnn_hidden_units=None`` / ``parallel_dnn_hidden_units=None`` (FuxiCTR names;
    override ``hidden_units`` for that tower), ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    BARS Frappe_x1: parallel, hidden [400,400,400], batch_norm, 4 cross layers, dropout 0.4,
    embedding_regularizer 0.05.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 model_structure: str = "parallel", num_cross_layers: int = 3,
                 hidden_units: Sequence[int] = (500, 500, 500), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 use_low_rank_mixture: bool = False, low_rank: int = 32, num_experts: int = 4,
                 stacked_dnn_hidden_units: Sequence[int] | None = None,
                 parallel_dnn_hidden_units: Sequence[int] | None = None,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        if model_structure not in STRUCTURES:
            raise ValueError(f"model_structure must be one of {STRUCTURES}, got {model_structure!r}")
        self.model_structure = model_structure
        # flattened embeddings: fields may have their own embedding_dim (d = Σ_f D_f)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim, mixed_dims=True)
        d = self.embedding.output_dim
        self.crossnet = CrossNetV2(d, num_cross_layers,
                                   low_rank=low_rank if use_low_rank_mixture else None,
                                   num_experts=num_experts if use_low_rank_mixture else 1)

        def tower(units):
            return MLPBlock(d, hidden_units if units is None else units, activation=hidden_activations,
                            dropout=net_dropout, batch_norm=batch_norm)

        self.stacked_dnn = tower(stacked_dnn_hidden_units) if "stacked" in model_structure else None
        self.parallel_dnn = tower(parallel_dnn_hidden_units) if "parallel" in model_structure else None
        final_dim = self.stacked_dnn.output_dim if self.stacked_dnn is not None else d
        if self.parallel_dnn is not None:
            final_dim += self.parallel_dnn.output_dim
        self.fc = init_linear(nn.Linear(final_dim, 1))

    def forward(self, batch):
        x0 = self.embedding.forward_flat(batch)
        h = self.crossnet(x0)
        if self.stacked_dnn is not None:
            h = self.stacked_dnn(h)
        if self.parallel_dnn is not None:
            h = torch.cat([h, self.parallel_dnn(x0)], dim=-1)
        return {"logit": self.fc(h).squeeze(-1)}
