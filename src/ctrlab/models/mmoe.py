"""MMoE (Ma et al., KDD 2018): experts shared by the tasks, mixed per task by its own gate."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, MixtureOfExperts, MLPBlock
from .multitask import MultiTaskModel
from .registry import register


@register
class MMoE(MultiTaskModel):
    """``x = flatten(E)``; ``f_t(x) = Σ_k softmax(G_t(x))_k · E_k(x)``
    (:class:`~ctrlab.layers.mixture.MixtureOfExperts`); ``logit_t = tower_t(f_t(x))`` for each task
    (one label column each, :class:`~ctrlab.models.multitask.MultiTaskModel`); loss ``Σ_t w_t·BCE_t``.

    Hyperparameters (FuxiCTR's ``MMoE`` widths; embedding_dim as the other ctrlab models):
    ``embedding_dim=10``, ``tasks=None`` (label columns, main first; None = all labels),
    ``task_weights=None`` (all 1), ``num_experts=4``, ``expert_hidden_units=(512, 256, 128)``,
    ``gate_hidden_units=(128, 64)``, ``tower_hidden_units=(128, 64)``, ``hidden_activations="relu"``,
    ``net_dropout=0.``, ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, tasks: Sequence[str] | None = None,
                 task_weights: Sequence[float] | None = None, num_experts: int = 4,
                 expert_hidden_units: Sequence[int] = (512, 256, 128), gate_hidden_units: Sequence[int] = (128, 64),
                 tower_hidden_units: Sequence[int] = (128, 64), hidden_activations: str = "relu",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, tasks, task_weights, embedding_regularizer, net_regularizer)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.experts = MixtureOfExperts(self.embedding.num_fields * embedding_dim, self.num_tasks, num_experts,
                                        expert_hidden_units, gate_hidden_units, hidden_activations, net_dropout,
                                        batch_norm)
        self.towers = torch.nn.ModuleList(
            MLPBlock(self.experts.output_dim, tower_hidden_units, activation=hidden_activations, dropout=net_dropout,
                     batch_norm=batch_norm, output_dim=1) for _ in self.task_names)

    def forward(self, batch):
        mixed = self.experts(self.embedding(batch).flatten(start_dim=1))
        return self.outputs(torch.cat([tower(h) for tower, h in zip(self.towers, mixed)], dim=1))
