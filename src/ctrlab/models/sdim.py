"""SDIM: sampling-based deep interest modeling (Cao et al., CIKM 2022) — long behaviour sequences
pooled by SimHash bucket collisions with the candidate, recent ones by target attention."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.feature_map import FeatureMap
from ..layers.embedding import FeatureEmbedding
from ..layers.mlp import MLPBlock
from ..layers.multihead_target_attention import MultiHeadTargetAttention, last_real_positions
from ..layers.simhash import SimHash
from .base import CTRModel
from .din import din_pairs
from .registry import register

TABLES_KEY = "sdim_tables:"
"""Batch key prefix of a sequence's precomputed bucket tables ``(B, m, 2^τ, d)``."""
SHORT_KEY = "sdim_short:"
"""Batch key prefix of a sequence's last ``short_seq_len`` behaviour vectors ``(B, S, d)``."""
SHORT_MASK_KEY = "sdim_short_mask:"
"""Batch key prefix of their mask ``(B, S)`` (bool, True = real behaviour)."""


def _pairs(feature_map: FeatureMap, target_field, sequence_field):
    """DIN's field pairing (:func:`ctrlab.models.din.din_pairs`), its errors naming SDIM's params."""
    try:
        return din_pairs(feature_map, target_field, sequence_field)
    except ValueError as exc:
        msg = str(exc).replace("din_target_field", "target_field").replace("din_sequence_field", "sequence_field")
        raise ValueError(msg.replace("DIN", "SDIM")) from None


@register
class SDIM(CTRModel):
    """For each pair (target group t, behaviour sequence group s, paired as in DIN, see below):
    ``q = [e_t1; …; e_tk]`` (``(B, d)``, ``d = k·D``), ``s_j = [e_s1,j; …; e_sk,j]`` (``(B, L, d)``,
    real positions = those of s_1);

    * long-term interest, the whole sequence: ``u_long = (1/m) Σ_h u_h``,
      ``u_h = Σ_j mask_j 1[sig_h(s_j) = sig_h(q)] s_j`` (optionally divided by the number of
      collided behaviours, ``bucket_mean``, and/or L2-normalised, ``l2_norm``), SimHash
      signatures ``sig_h(v) = Σ_t 1[⟨v, R_{:,h,t}⟩ > 0] 2^t`` with fixed Gaussian ``R (d, m, τ)``
      (:class:`~ctrlab.layers.simhash.SimHash`; ``m = num_hashes``, ``τ = hash_bits``);
    * short-term interest, the last ``short_seq_len`` real behaviours: ``u_short =``
      multi-head target attention of q over them
      (:class:`~ctrlab.layers.multihead_target_attention.MultiHeadTargetAttention`, Q/K/V/O
      projections to ``attention_dim`` with ``use_qkvo``).

    ``logit = MLP([flatten(E) ; u_short of each pair])``: ``E`` holds every field as in
    :class:`FeatureEmbedding` (categorical incl. the targets, numeric, dense, other sequences
    mean-pooled), except that each attended sequence's column holds its part of ``u_long`` (split
    back per field for a group, as DIN does with its interest); ``u_short`` (width ``d``) is
    appended per pair. MLP input: ``(num_fields + Σ_pairs k)·D`` (``num_fields·D`` without the
    short-term part, ``short_seq_len=0``).

    R is drawn once from ``hash_seed`` (pair ``i`` uses ``hash_seed + i``), stored as a buffer
    (saved and exported with the weights) and never trained. ``reuse_hash=False`` redraws R before
    every *training* forward (a regulariser, FuxiCTR's option); evaluation and serving always use
    the stored R. The target item must not be in its own history: ctrlab's data builds histories
    from earlier events only, so nothing is sliced out (FuxiCTR packs the target last and slices).

    Two-stage serving (the paper's BSE): :meth:`encode_behaviours` gives per user, for each pair's
    first sequence ``<s>``, ``"sdim_tables:<s>"`` (``(B, m, 2^τ, d)`` bucket sums) and, with a
    short-term part, ``"sdim_short:<s>"`` (``(B, S, d)``, the last ``S = min(short_seq_len, L)``
    behaviour vectors) and ``"sdim_short_mask:<s>"`` (``(B, S)`` bool). :meth:`forward` uses these
    keys when the batch has them (no ``"seq:"`` key of the pair is then needed) and gives the same
    logits bit for bit on CPU as from the sequences; the tables depend on the embeddings and R,
    so recompute them after training.

    Hyperparameters (FuxiCTR's ``SDIM`` class defaults, embedding_dim as the other ctrlab models):
    ``embedding_dim=10``, ``target_field=None``, ``sequence_field=None`` (DIN's
    ``din_target_field`` / ``din_sequence_field`` forms: names, groups, lists; None is inferred from
    ``share_vocab_with``, see :func:`ctrlab.models.din.infer_din_fields`), ``num_hashes=1``,
    ``hash_bits=4``, ``reuse_hash=True``, ``l2_norm=False``, ``bucket_mean=False`` (ctrlab: each
    bucket's mean instead of its sum, so the interest keeps the embeddings' scale whatever the
    history length, as mean pooling does; see docs/models.md), ``hash_seed=0`` (ctrlab),
    ``short_seq_len=50`` (0: no short-term part), ``attention_dim=64``, ``num_heads=1``,
    ``use_qkvo=True``, ``attention_dropout=0.``, ``dnn_hidden_units=(512, 128, 64)``,
    ``dnn_activations="ReLU"``, ``net_dropout=0.``, ``batch_norm=False``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    needs_sequence = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 target_field: str | Sequence[str | Sequence[str]] | None = None,
                 sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 num_hashes: int = 1, hash_bits: int = 4, reuse_hash: bool = True, l2_norm: bool = False,
                 bucket_mean: bool = False, hash_seed: int = 0, short_seq_len: int = 50, attention_dim: int = 64,
                 num_heads: int = 1,
                 use_qkvo: bool = True, attention_dropout: float = 0.0,
                 dnn_hidden_units: Sequence[int] = (512, 128, 64), dnn_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        if int(short_seq_len) < 0:
            raise ValueError(f"short_seq_len must be >= 0 (0 turns the short-term attention off), got {short_seq_len}")
        self.pairs = _pairs(feature_map, target_field, sequence_field)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        D = self.embedding.embedding_dim
        self.reuse_hash, self.short_seq_len = bool(reuse_hash), int(short_seq_len)
        self.simhash = torch.nn.ModuleList(
            SimHash(D * len(t), num_hashes, hash_bits, l2_norm, seed=int(hash_seed) + i, bucket_mean=bucket_mean)
            for i, (t, _) in enumerate(self.pairs))
        self.short_attention = torch.nn.ModuleList(
            MultiHeadTargetAttention(D * len(t), attention_dim, num_heads, use_qkvo, attention_dropout)
            for t, _ in self.pairs) if self.short_seq_len else None
        self.attended = [s for _, group in self.pairs for s in group]
        columns = [self.embedding.field_names.index(s) for s in self.attended]
        self.register_buffer("sequence_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        short_width = len(self.attended) * D if self.short_seq_len else 0
        self.mlp = MLPBlock(self.embedding.num_fields * D + short_width, dnn_hidden_units,
                            activation=dnn_activations, dropout=net_dropout, batch_norm=batch_norm, output_dim=1)

    # ---- behaviours ------------------------------------------------------------------------
    def _target(self, batch, targets) -> torch.Tensor:
        return torch.cat([self.embedding.categorical_embedding(batch, t) for t in targets], dim=-1)

    def _behaviours(self, batch, sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s (B, L, d), mask (B, L))`` of a group: its sequences' vectors side by side, masked
        by the first sequence's padding (as DIN)."""
        missing = [s for s in sequences if "seq:" + s not in batch]
        if missing:
            raise ValueError(f"SDIM: the batch has neither sequence(s) {missing} (keys 'seq:<name>') nor their "
                             f"precomputed interests ('{TABLES_KEY}{sequences[0]}', see encode_behaviours)")
        # SimHash and the short-term attention leave padded positions out by the mask: no zeroing pass
        return self.embedding.sequence_group_embedding(batch, list(sequences), zero_padding=False)

    def _short(self, seq, mask):
        index, valid = last_real_positions(mask, self.short_seq_len)
        return seq.gather(1, index.unsqueeze(-1).expand(-1, -1, seq.shape[-1])), valid

    supports_user_state = True

    def user_state_fields(self) -> list[str]:
        return [s for _, sequences in self.pairs for s in sequences]

    def encode_user(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`encode_behaviours` of one user's row (the BSE step the paper serves apart)."""
        rows = next(v for k, v in batch.items() if k.startswith("seq:")).shape[0]
        if rows != 1:
            raise ValueError(f"SDIM.encode_user takes one user's row (batch size 1), got {rows}")
        return self.encode_behaviours(batch)

    def score_with_user(self, state: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of N candidates from one user's stored tables: each candidate hashes its target
        and gathers ``m`` bucket sums, O(m·d) whatever the history length."""
        n = candidates["cat"].shape[0]
        return self({**candidates, **{k: v.expand(n, *v.shape[1:]) for k, v in state.items()}})["logit"]

    def encode_behaviours(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-user part of the forward pass, independent of the candidate: for each pair's
        first sequence ``<s>``, ``"sdim_tables:<s>"`` and (with a short-term part)
        ``"sdim_short:<s>"`` / ``"sdim_short_mask:<s>"`` (see the class docstring). Merge them into
        a batch of candidates (rows aligned) and :meth:`forward` skips the sequences."""
        out = {}
        for sh, (_, sequences) in zip(self.simhash, self.pairs):
            seq, mask = self._behaviours(batch, sequences)
            out[TABLES_KEY + sequences[0]] = sh.bucket_tables(seq, mask)
            if self.short_seq_len:
                out[SHORT_KEY + sequences[0]], out[SHORT_MASK_KEY + sequences[0]] = self._short(seq, mask)
        return out

    def interests(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(u_long, u_short)``: ``(B, n_sequences, D)`` each (a group's sequences in its order;
        ``u_short`` None without a short-term part), from the batch's precomputed keys where present."""
        longs, shorts = [], []
        for i, (targets, sequences) in enumerate(self.pairs):
            name = sequences[0]
            q = self._target(batch, targets)
            tables = batch.get(TABLES_KEY + name)
            need_short = self.short_seq_len and SHORT_KEY + name not in batch
            if tables is None or need_short:
                seq, mask = self._behaviours(batch, sequences)
            if tables is None:
                u = self.simhash[i](q, seq, mask)
            else:
                if self.training and not self.reuse_hash:
                    raise ValueError("SDIM: precomputed bucket tables cannot be used in training with "
                                     "reuse_hash=False (R is redrawn every step); pass the sequences")
                u = self.simhash[i].lookup(tables.to(q.dtype), q)
            longs.append(u.view(u.shape[0], len(sequences), -1))
            if self.short_seq_len:
                if need_short:
                    short, short_mask = self._short(seq, mask)
                else:
                    short, short_mask = batch[SHORT_KEY + name].to(q.dtype), batch[SHORT_MASK_KEY + name].bool()
                v = self.short_attention[i](q, short, short_mask)
                shorts.append(v.view(v.shape[0], len(sequences), -1))
        return torch.cat(longs, dim=1), (torch.cat(shorts, dim=1) if shorts else None)

    def forward(self, batch):
        if self.training and not self.reuse_hash:
            for sh in self.simhash:
                sh.redraw()
        u_long, u_short = self.interests(batch)
        # the attended sequences' columns are overwritten: embed them as empty instead of pooling L positions
        empty = torch.zeros_like(batch["cat"][:, :1])
        E = self.embedding({**batch, **{"seq:" + s: empty for s in self.attended}})
        E = E.index_copy(1, self.sequence_columns, u_long.to(E.dtype))
        x = E.flatten(start_dim=1)
        if u_short is not None:
            x = torch.cat([x, u_short.flatten(start_dim=1).to(x.dtype)], dim=1)
        return {"logit": self.mlp(x).squeeze(-1)}
