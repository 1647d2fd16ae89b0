"""Shared-bottom multi-task model (Caruana 1997): one MLP shared by all tasks, a tower per task."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, MLPBlock
from .multitask import MultiTaskModel
from .registry import register


@register
class SharedBottom(MultiTaskModel):
    """``h = MLP_bottom(flatten(E))``, ``logit_t = tower_t(h)`` for each task ``t`` (one label
    column each, :class:`~ctrlab.models.multitask.MultiTaskModel`); loss ``Σ_t w_t·BCE_t``.

    Hyperparameters (FuxiCTR's ``SharedBottom`` widths; embedding_dim as the other ctrlab models):
    ``embedding_dim=10``, ``tasks=None`` (label columns, main first; None = all labels),
    ``task_weights=None`` (all 1), ``bottom_hidden_units=(512, 256, 128)``,
    ``tower_hidden_units=(128, 64)``, ``hidden_activations="relu"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, tasks: Sequence[str] | None = None,
                 task_weights: Sequence[float] | None = None, bottom_hidden_units: Sequence[int] = (512, 256, 128),
                 tower_hidden_units: Sequence[int] = (128, 64), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, tasks, task_weights, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.bottom = MLPBlock(self.embedding.num_fields * embedding_dim, bottom_hidden_units,
                               activation=hidden_activations, dropout=net_dropout, batch_norm=batch_norm)
        self.towers = torch.nn.ModuleList(
            MLPBlock(self.bottom.output_dim, tower_hidden_units, activation=hidden_activations, dropout=net_dropout,
                     batch_norm=batch_norm, output_dim=1) for _ in self.task_names)

    def forward(self, batch):
        h = self.bottom(self.embedding(batch).flatten(start_dim=1))
        return self.outputs(torch.cat([tower(h) for tower in self.towers], dim=1))
