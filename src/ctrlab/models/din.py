"""DIN: deep interest network — target attention pools the behaviour history per candidate item."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers.embedding import FeatureEmbedding
from ..layers.mlp import MLPBlock
from ..layers.target_attention import TargetAttention, activations_with_dice
from .base import CTRModel
from .registry import register


def din_pairs(feature_map: FeatureMap, target_field, sequence_field) -> list[tuple[str, str]]:
    """``(target, sequence)`` pairs from one name each or two equally long lists of names; each
    target must be a categorical field and each sequence a sequence sharing its vocabulary."""
    targets = [target_field] if isinstance(target_field, str) else list(target_field)
    sequences = [sequence_field] if isinstance(sequence_field, str) else list(sequence_field)
    if not targets or len(targets) != len(sequences):
        raise ValueError(f"DIN needs as many target fields as sequence fields, got {targets} and {sequences}")
    if not all(isinstance(f, str) for f in targets + sequences):
        raise ValueError(f"DIN pairs single field names (grouped/tuple fields are not supported), "
                         f"got {targets} and {sequences}")
    if len(set(sequences)) != len(sequences):
        raise ValueError(f"DIN: each sequence field may be attended once, got {sequences}")
    cats = {f.name for f in feature_map.categorical}
    seqs = {s.name: s for s in feature_map.sequences}
    for t, s in zip(targets, sequences):
        if t not in cats:
            raise ValueError(f"DIN target field {t!r} is not a categorical field; "
                             f"categorical fields are {sorted(cats)}")
        if s not in seqs:
            raise ValueError(f"DIN sequence field {s!r} is not a sequence field; sequence fields are {sorted(seqs)}")
        if seqs[s].shares != t:
            raise ValueError(
                f"DIN sequence {s!r} must share the vocabulary of target {t!r} (it shares {seqs[s].shares!r}); "
                f"set share_vocab_with: {t} on {s!r} in the dataset config"
            )
    return list(zip(targets, sequences))


@register
class DIN(CTRModel):
    """For each pair (target field t, sequence s): ``u_s = Σ_j a_j e_j`` with
    ``a_j = MLP_att([e_t, e_j, e_t − e_j, e_t ⊙ e_j])`` over the real positions of s (0 at padding;
    softmax over them if ``din_use_softmax``); ``u_s`` replaces the pooled s in ``E`` (all other
    fields — categorical incl. ``e_t``, numeric, other sequences mean-pooled, dense — as in
    :class:`FeatureEmbedding`); ``logit = MLP(flatten(E))``. Only real history positions reach
    ``MLP_att``, so Dice's batch statistics ignore padding (FuxiCTR's include it).

    Hyperparameters (FuxiCTR class/template defaults; D = 10 like the other ctrlab models):
    ``embedding_dim=10``, ``din_target_field="item_id"``, ``din_sequence_field="history"``
    (or two equally long lists, paired in order; each sequence must share its target's
    vocabulary), ``attention_hidden_units=(64,)``, ``attention_hidden_activations="Dice"``,
    ``attention_output_activation=None``, ``attention_dropout=0.``, ``din_use_softmax=False``,
    ``dnn_hidden_units=(500, 500, 500)``, ``dnn_activations="ReLU"`` (``"Dice"`` allowed),
    ``net_dropout=0.``, ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 din_target_field: str | list[str] = "item_id", din_sequence_field: str | list[str] = "history",
                 attention_hidden_units: Sequence[int] = (64,), attention_hidden_activations: str = "Dice",
                 attention_output_activation: str | None = None, attention_dropout: float = 0.0,
                 din_use_softmax: bool = False, dnn_hidden_units: Sequence[int] = (500, 500, 500),
                 dnn_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float = 0.0, net_regularizer: float = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.pairs = din_pairs(feature_map, din_target_field, din_sequence_field)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.attention = nn.ModuleList(
            TargetAttention(embedding_dim, attention_hidden_units, attention_hidden_activations,
                            attention_output_activation, attention_dropout, din_use_softmax)
            for _ in self.pairs)
        columns = [self.embedding.field_names.index(s) for _, s in self.pairs]
        self.register_buffer("sequence_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, dnn_hidden_units,
                            activation=activations_with_dice(dnn_activations, dnn_hidden_units),
                            dropout=net_dropout, batch_norm=batch_norm, output_dim=1)

    def interests(self, batch) -> torch.Tensor:
        """``(B, n_pairs, D)``: the attention-pooled sequences ``u_s``."""
        return torch.stack([att(self.embedding.categorical_embedding(batch, t),
                                *self.embedding.sequence_embedding(batch, s))
                            for att, (t, s) in zip(self.attention, self.pairs)], dim=1)

    def forward(self, batch):
        E = self.embedding(batch).index_copy(1, self.sequence_columns, self.interests(batch))
        return {"logit": self.mlp(E.flatten(start_dim=1)).squeeze(-1)}
