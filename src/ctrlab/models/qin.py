"""QIN: quadratic interest network (Li et al., arXiv 2504.17699; WWW 2025 multimodal CTR challenge) —
ReLU ("adaptive sparse") target attention over the behaviours, then a quadratic network instead of an MLP."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..layers.embedding import FeatureEmbedding
from ..layers.mlp import init_linear
from ..layers.quadratic import QuadraticNetwork
from ..layers.sparse_target_attention import ReLUTargetAttention
from .base import CTRModel
from .din import din_pairs
from .registry import register


def _pair(feature_map: FeatureMap, target_field, sequence_field) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DIN's field pairing (:func:`ctrlab.models.din.din_pairs`), errors naming QIN's params; QIN
    attends one pair (one target field or group, one sequence or group)."""
    try:
        pairs = din_pairs(feature_map, target_field, sequence_field)
    except ValueError as exc:
        msg = str(exc).replace("din_target_field", "target_field").replace("din_sequence_field", "sequence_field")
        raise ValueError(msg.replace("DIN", "QIN")) from None
    if len(pairs) != 1:
        raise ValueError(f"QIN attends one behaviour sequence (or one group of them), got {len(pairs)} pairs "
                         f"{[(list(t), list(s)) for t, s in pairs]}; set target_field / sequence_field to one name "
                         "each, or one group each (target_field: [[item_id, cate_id]], sequence_field: "
                         "[[history, cate_history]])")
    return pairs[0]


def _frozen(feature_map: FeatureMap, name: str) -> bool:
    f = next(c for c in feature_map.categorical if c.name == name)
    return bool(f.pretrained_emb) and bool(f.freeze_emb)


@register
class QIN(CTRModel):
    """Item vector ``v = [e_t1; …; e_tk (; P·mm)]`` of the target group ``(t_1, …, t_k)``
    (``target_field``; ``P·mm`` with ``multimodal_field``), behaviours ``S_j = [e_s1,j; …; e_sk,j]``
    of the paired sequence group (``sequence_field``, s_i sharing t_i's vocabulary, real positions
    those of s_1; fields paired as in DIN, see below);

    * adaptive sparse target attention (:class:`~ctrlab.layers.sparse_target_attention.ReLUTargetAttention`):
      ``q = W_q v_t``, ``K = S W_k``, ``V = S W_v`` (no biases, width ``d_a = attention_dim``,
      default ``2·d_i``), ``a_j = ReLU((q·k_j / √d_a)·mask_j)`` (no softmax: 0 for negative scores
      and padding), ``o = W_o Σ_j a_j v_j + v_t`` (``o = v_t`` exactly for an empty history);
    * ``x_0 = [flatten(other fields) ; v_t ; o]``: every field except the target group, the
      attended sequences and the multimodal vector, embedded as in :class:`FeatureEmbedding`
      (other sequences mean-pooled, fields of their own ``embedding_dim`` at that width);
    * QNN (:class:`~ctrlab.layers.quadratic.QuadraticNetwork`), ``num_layers`` layers of
      ``x <- x + dropout(PReLU(BN(x ⊙ Σ_{r=1..R} (W_r x + b_r))))`` (``R = num_row``, dropout also
      on the rows), ``logit = wᵀx + b``.

    Multimodal vectors (frozen inputs, only their projection learns):

    * ``multimodal_field``: a dense-vector feature of the *target* item (``DenseVectorSpec``,
      batch key ``dense:<name>``); ``P·mm`` is its :class:`FeatureEmbedding` vector (a bias-free
      ``Linear(dim, D)``), appended to ``v_t`` (``d_i = (k+1)·D``). ctrlab has no per-behaviour
      dense vectors, so the behaviours keep width ``k·D``: ``W_k``, ``W_v`` read ``k·D`` values,
      which equals giving every behaviour a zero multimodal slot. The target's vector still shapes
      the query, ``v_t``, ``o`` and the QNN's input.
    * Behaviours' multimodal vectors: a frozen pretrained table of the item vocabulary, i.e. a
      categorical feature with ``pretrained_emb`` (vectors keyed by item id), ``freeze_emb: true``
      and ``embedding_dim`` = the vectors' width, read from the item column (``source``), paired
      with a sequence that shares its vocabulary (``share_vocab_with``) read from the history
      column; put both in the groups (``target_field: [[item_id, item_mm]]``, ``sequence_field:
      [[history, history_mm]]``). Every group field that is frozen or not of width D is projected
      by a bias-free ``Linear(d_f, D)`` of its own, the same for the target and the behaviours.

    The target item must not be in its own history: ctrlab's data builds histories from earlier
    events only (FuxiCTR's loader appends the target last and slices it off).

    Hyperparameters (the official ``QIN_variety_v9`` class defaults, FuxiCTR 2.3.7):
    ``embedding_dim=10``, ``target_field=None``, ``sequence_field=None`` (DIN's
    ``din_target_field`` / ``din_sequence_field`` forms, one pair: a name or one group each; None
    is inferred from ``share_vocab_with``, see :func:`ctrlab.models.din.infer_din_fields`),
    ``multimodal_field=None`` (ctrlab), ``attention_dim=None`` (``2·d_i``, the official code's
    fixed width), ``num_layers=3``, ``num_row=2``, ``net_dropout=0.``, ``batch_norm=True`` (the
    official class default is False; the paper's QNN and the winning config use it),
    ``embedding_regularizer=0.``, ``net_regularizer=0.``. Winning config (MicroLens-1M):
    embedding_dim 128, num_layers 4, num_row 4, net_dropout 0.1, embedding_regularizer 2e-4.
    """

    needs_sequence = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 target_field: str | Sequence[str | Sequence[str]] | None = None,
                 sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 multimodal_field: str | None = None, attention_dim: int | None = None,
                 num_layers: int = 3, num_row: int = 2, net_dropout: float = 0.0, batch_norm: bool = True,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.targets, self.sequences = _pair(feature_map, target_field, sequence_field)
        dense = [d.name for d in feature_map.dense]
        if multimodal_field is not None and multimodal_field not in dense:
            raise ValueError(f"QIN multimodal_field {multimodal_field!r} is not a dense-vector feature; "
                             f"dense features are {dense}")
        self.multimodal_field = multimodal_field
        self.embedding = FeatureEmbedding(feature_map, embedding_dim, mixed_dims=True)
        D = self.embedding.embedding_dim
        start, width, col = {}, {}, 0
        for name, w in zip(self.embedding.field_names, self.embedding.field_dims):
            start[name], width[name], col = col, w, col + w

        def columns(names):
            return torch.tensor([start[n] + i for n in names for i in range(width[n])], dtype=torch.long)

        item = [*self.targets, *self.sequences, *([multimodal_field] if multimodal_field else [])]
        self.register_buffer("other_columns", columns([n for n in self.embedding.field_names if n not in item]),
                             persistent=False)
        self.register_buffer("target_columns", columns(self.targets), persistent=False)
        self.register_buffer("multimodal_columns", columns([multimodal_field] if multimodal_field else []),
                             persistent=False)
        self.item_widths = [width[t] for t in self.targets]
        self.item_projections = nn.ModuleList(
            init_linear(nn.Linear(width[t], D, bias=False))
            if width[t] != D or (self.embedding.use_pretrained and _frozen(feature_map, t)) else nn.Identity()
            for t in self.targets)
        self.projected = any(isinstance(p, nn.Linear) for p in self.item_projections)
        key_dim = D * len(self.targets)
        item_dim = key_dim + (D if multimodal_field else 0)
        self.attention = ReLUTargetAttention(item_dim, key_dim, attention_dim)
        self.qnn = QuadraticNetwork(len(self.other_columns) + 2 * item_dim, num_layers, num_row, net_dropout,
                                    batch_norm, activation="PReLU", output_dim=1)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``[e_1; …; e_k]`` (last dim Σ d_f) -> ``[P_1 e_1; …; P_k e_k]`` (last dim k·D)."""
        if not self.projected:
            return x
        return torch.cat([p(e) for p, e in zip(self.item_projections, x.split(self.item_widths, dim=-1))], dim=-1)

    def items(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(v_t (B, d_i), S (B, L, k·D), mask (B, L), others (B, n_other))``."""
        # the attended sequences are not in x_0: embed them as empty instead of pooling L positions
        empty = torch.zeros_like(batch["cat"][:, :1])
        flat = self.embedding.forward_flat({**batch, **{"seq:" + s: empty for s in self.sequences}})
        v_t = self._project(flat.index_select(1, self.target_columns))
        if self.multimodal_field is not None:
            v_t = torch.cat([v_t, flat.index_select(1, self.multimodal_columns)], dim=1)
        seq, mask = self.embedding.sequence_group_embedding(batch, list(self.sequences), zero_padding=False)
        return v_t, self._project(seq), mask, flat.index_select(1, self.other_columns)

    def forward(self, batch):
        v_t, S, mask, others = self.items(batch)
        o = self.attention(v_t, S, mask)
        return {"logit": self.qnn(torch.cat([others, v_t, o], dim=1)).squeeze(-1)}
