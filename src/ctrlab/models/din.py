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


def _entries(value) -> list[tuple[str, ...]]:
    """A ``din_*_field`` value -> its entries, each a tuple of field names: a name is one entry of
    one field, a tuple is one group (FuxiCTR's form), a list holds entries (names or groups)."""
    if isinstance(value, str):
        return [(value,)]
    if isinstance(value, tuple):
        return [value]
    return [(e,) if isinstance(e, str) else tuple(e) for e in value]


DEFAULT_TARGET, DEFAULT_SEQUENCE = "item_id", "history"
"""The pair DIN takes, when neither field is given and the feature map has it (FuxiCTR's defaults)."""


def infer_din_fields(feature_map: FeatureMap, target_field, sequence_field) -> tuple:
    """``din_target_field`` / ``din_sequence_field`` with a missing one (None) found from the
    sequences' ``share_vocab_with``, so that a dataset whose item column is not ``item_id`` needs
    no model params:

    * neither given: ``item_id`` / ``history`` when the map has that sharing pair (the old
      defaults); otherwise the one sequence that shares a categorical's vocabulary, and that
      categorical; none or several is an error naming the candidates and the params to set;
    * only the sequence(s) given: each one's shared field;
    * only one target name given: the one sequence that shares its vocabulary."""
    if target_field is not None and sequence_field is not None:
        return target_field, sequence_field
    seqs = {s.name: s for s in feature_map.sequences}
    sharing = [s for s in feature_map.sequences if s.shares is not None]
    if target_field is None and sequence_field is None:
        default = seqs.get(DEFAULT_SEQUENCE)
        if default is not None and default.shares == DEFAULT_TARGET:
            return DEFAULT_TARGET, DEFAULT_SEQUENCE
        if len(sharing) == 1:
            return sharing[0].shares, sharing[0].name
        found = ", ".join(f"{s.name!r} (shares {s.shares!r})" for s in sharing) or "none"
        raise ValueError(
            f"DIN: cannot tell which sequence to attend with which target: sequences sharing a categorical "
            f"field's vocabulary (share_vocab_with): {found}. Set model_params din_target_field and "
            f"din_sequence_field (e.g. din_target_field: {sharing[0].shares if sharing else 'item_id'}, "
            f"din_sequence_field: {sharing[0].name if sharing else 'history'})"
            + ("" if sharing else ", and share_vocab_with on that sequence in the dataset config"))
    if target_field is None:  # the sequences given: their shared fields, in the same shape
        def shared(name):
            if name not in seqs or seqs[name].shares is None:
                raise ValueError(f"DIN: sequence field {name!r} does not share a categorical field's vocabulary "
                                 f"(share_vocab_with), so its target cannot be inferred; set din_target_field")
            return seqs[name].shares
        return [tuple(shared(n) for n in group) for group in _entries(sequence_field)], sequence_field
    if isinstance(target_field, str):
        matches = [s.name for s in sharing if s.shares == target_field]
        if len(matches) == 1:
            return target_field, matches[0]
        raise ValueError(f"DIN: din_sequence_field is not set and {len(matches)} sequences share the vocabulary "
                         f"of target {target_field!r} ({matches}); set din_sequence_field")
    raise ValueError("DIN: din_target_field lists several fields; set din_sequence_field too (paired in order)")


def din_pairs(feature_map: FeatureMap, target_field, sequence_field) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(targets, sequences)`` groups, paired in order, from ``din_target_field`` /
    ``din_sequence_field``: one name each, a group of names (a tuple, or a list inside the list),
    or a list of names and groups; a missing one (None) is inferred (:func:`infer_din_fields`).
    The k-th sequence of a group must share the vocabulary of the group's k-th target, and a
    group's sequences must have one ``max_len``."""
    target_field, sequence_field = infer_din_fields(feature_map, target_field, sequence_field)
    targets, sequences = _entries(target_field), _entries(sequence_field)
    if not targets or len(targets) != len(sequences):
        raise ValueError(f"DIN needs as many target fields (or groups) as sequence fields, got "
                         f"{[list(t) for t in targets]} and {[list(s) for s in sequences]}")
    for t, s in zip(targets, sequences):
        if not t or not all(isinstance(f, str) for f in t + s):
            raise ValueError(f"DIN: a target or sequence group is empty or not field names: {list(t)}, {list(s)}")
        if len(t) != len(s):
            raise ValueError(f"DIN target group {list(t)} has {len(t)} fields but sequence group {list(s)} "
                             f"has {len(s)}; each target needs its own sequence")
    flat = [f for s in sequences for f in s]
    if len(set(flat)) != len(flat):
        raise ValueError(f"DIN: each sequence field may be attended once, got {flat}")
    cats = {f.name for f in feature_map.categorical}
    seqs = {s.name: s for s in feature_map.sequences}
    for group_t, group_s in zip(targets, sequences):
        for t, s in zip(group_t, group_s):
            if t not in cats:
                raise ValueError(f"DIN target field {t!r} is not a categorical field; "
                                 f"categorical fields are {sorted(cats)}")
            if s not in seqs:
                raise ValueError(f"DIN sequence field {s!r} is not a sequence field; "
                                 f"sequence fields are {sorted(seqs)}")
            if seqs[s].shares != t:
                raise ValueError(
                    f"DIN sequence {s!r} must share the vocabulary of target {t!r} (it shares {seqs[s].shares!r}); "
                    f"set share_vocab_with: {t} on {s!r} in the dataset config"
                )
        lens = {s: seqs[s].max_len for s in group_s}
        if len(set(lens.values())) > 1:
            raise ValueError(f"DIN: the sequences of a group must have the same max_len (their positions are "
                             f"attended together), got {', '.join(f'{k!r} {v}' for k, v in lens.items())}")
    return list(zip(targets, sequences))


@register
class DIN(CTRModel):
    """For each pair (target field t, sequence s): ``u_s = Σ_j a_j e_j`` with
    ``a_j = MLP_att([e_t, e_j, e_t − e_j, e_t ⊙ e_j])`` over the real positions of s (0 at padding;
    softmax over them if ``din_use_softmax``); ``u_s`` replaces the pooled s in ``E`` (all other
    fields — categorical incl. ``e_t``, numeric, other sequences mean-pooled, dense — as in
    :class:`FeatureEmbedding`); ``logit = MLP(flatten(E))``. Only real history positions reach
    ``MLP_att``, so Dice's batch statistics ignore padding (FuxiCTR's include it).

    Grouped fields (FuxiCTR's tuples, BARS' AmazonElectronics_x1): a target group
    ``(t_1, …, t_k)`` paired with a sequence group ``(s_1, …, s_k)`` (s_i sharing t_i's
    vocabulary, one ``max_len``) attends with ``e_t = [e_t1; …; e_tk]`` over
    ``e_j = [e_s1,j; …; e_sk,j]`` (an ``MLP_att`` of input ``4kD``), masked by s_1's padding as in
    FuxiCTR; ``u`` is split back into k vectors that replace s_1 … s_k in ``E``. In YAML::

        din_target_field: [[item_id, cate_id]]
        din_sequence_field: [[click_history, cate_history]]

    (a flat list ``[item_id, cate_id]`` is two separate pairs; in Python a tuple is one group).

    Hyperparameters (FuxiCTR class/template defaults; D = 10 like the other ctrlab models):
    ``embedding_dim=10``, ``din_target_field=None``, ``din_sequence_field=None`` (one name each,
    or two equally long lists of names or groups, paired in order; each sequence must share its
    target's vocabulary; None: ``item_id`` / ``history`` when the map has them, else inferred from
    the one sequence with ``share_vocab_with``, see :func:`infer_din_fields`), ``attention_hidden_units=(64,)``, ``attention_hidden_activations="Dice"``,
    ``attention_output_activation=None``, ``attention_dropout=0.``, ``din_use_softmax=False``,
    ``dnn_hidden_units=(500, 500, 500)``, ``dnn_activations="ReLU"`` (``"Dice"`` allowed),
    ``net_dropout=0.``, ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    needs_sequence = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 din_target_field: str | Sequence[str | Sequence[str]] | None = None,
                 din_sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 attention_hidden_units: Sequence[int] = (64,), attention_hidden_activations: str = "Dice",
                 attention_output_activation: str | None = None, attention_dropout: float = 0.0,
                 din_use_softmax: bool = False, dnn_hidden_units: Sequence[int] = (500, 500, 500),
                 dnn_activations: str = "ReLU", net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.pairs = din_pairs(feature_map, din_target_field, din_sequence_field)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        self.attention = nn.ModuleList(
            TargetAttention(embedding_dim * len(targets), attention_hidden_units, attention_hidden_activations,
                            attention_output_activation, attention_dropout, din_use_softmax)
            for targets, _ in self.pairs)
        columns = [self.embedding.field_names.index(s) for _, group in self.pairs for s in group]
        self.register_buffer("sequence_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.mlp = MLPBlock(self.embedding.num_fields * embedding_dim, dnn_hidden_units,
                            activation=activations_with_dice(dnn_activations, dnn_hidden_units),
                            dropout=net_dropout, batch_norm=batch_norm, output_dim=1)

    def interests(self, batch) -> torch.Tensor:
        """``(B, n_sequences, D)``: the attention-pooled sequences ``u_s``, in pair order (a
        group's sequences in the group's order)."""
        out = []
        for att, (targets, sequences) in zip(self.attention, self.pairs):
            target = torch.cat([self.embedding.categorical_embedding(batch, t) for t in targets], dim=-1)
            seqs = [self.embedding.sequence_embedding(batch, s) for s in sequences]
            mask = seqs[0][1]  # the group's first sequence marks the real positions (as FuxiCTR)
            u = att(target, torch.cat([e for e, _ in seqs], dim=-1), mask)
            out.append(u.view(u.shape[0], len(sequences), -1))
        return torch.cat(out, dim=1)

    def forward(self, batch):
        E = self.embedding(batch).index_copy(1, self.sequence_columns, self.interests(batch))
        return {"logit": self.mlp(E.flatten(start_dim=1)).squeeze(-1)}
