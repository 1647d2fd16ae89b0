"""SUAN and LightSUAN (Lai et al. 2025, "Exploring Scaling Laws of CTR Model for Online Performance
Improvement"): Unified Attention Blocks over the behaviour sequence with the candidate as its last
token; LightSUAN with sparse (local + dilated) self-attention. Both score many candidates of one
user from one encoding of the history (:meth:`SUAN.encode_history`, :meth:`SUAN.score_candidates`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..data.feature_map import FeatureMap
from ..layers.embedding import EMBEDDING_INIT_STD, FeatureEmbedding
from ..layers.mlp import MLPBlock
from ..layers.target_attention import activations_with_dice
from ..layers.unified_attention import UnifiedAttentionBlock, auto_stride, time_buckets
from .base import CTRModel
from .din import DEFAULT_SEQUENCE, DEFAULT_TARGET, din_pairs
from .registry import register


def _group(value, what: str) -> tuple[str, ...] | None:
    """A ``suan_*_field`` value -> one group of names: a name, a list/tuple of names, or a list
    holding one such list (DIN's grouped form)."""
    if value is None or isinstance(value, str):
        return value if value is None else (value,)
    value = list(value)
    if len(value) == 1 and not isinstance(value[0], str):
        value = list(value[0])
    if not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"SUAN: {what} must be a field name or one group (list) of names, got {value!r}; "
                         "SUAN attends over one behaviour sequence (a group of aligned sequences)")
    return tuple(value)


def suan_fields(feature_map: FeatureMap, target_field, sequence_field) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The candidate's target group and the behaviour sequence group (paired in order, each
    sequence sharing its target's vocabulary, one ``max_len``), checked by
    :func:`ctrlab.models.din.din_pairs`. Neither given: every sequence that shares a categorical
    field's vocabulary and has the main sequence's ``max_len`` (one per shared field), the main
    one first: ``history`` / ``item_id`` when the map has them, else the first such sequence; so
    ``history`` + ``cate_history`` become one token per event. Otherwise as DIN infers a missing
    one (:func:`ctrlab.models.din.infer_din_fields`), the whole value being one group."""
    targets, sequences = _group(target_field, "target_field"), _group(sequence_field, "sequence_field")
    if targets is None and sequences is None:
        sharing = [s for s in feature_map.sequences if s.shares is not None]
        if len(sharing) > 1:
            main = next((s for s in sharing if s.name == DEFAULT_SEQUENCE and s.shares == DEFAULT_TARGET), sharing[0])
            group, shared = [main], {main.shares}
            for s in sharing:
                if s is not main and s.max_len == main.max_len and s.shares not in shared:
                    group.append(s)
                    shared.add(s.shares)
            targets, sequences = tuple(s.shares for s in group), tuple(s.name for s in group)
    pairs = din_pairs(feature_map, targets, sequences)
    if len(pairs) != 1:  # (an inferred single target/sequence comes back as one pair)
        raise ValueError(f"SUAN attends over one behaviour group, got {len(pairs)}: {pairs}")
    return pairs[0]


@register
class SUAN(CTRModel):
    """Tokens (oldest → newest behaviour → candidate, ``T = L + 1``): behaviour ``j`` is
    ``[e_s1,j; …; e_sk,j; side_j]`` (the sequence group's embeddings side by side, then any
    behaviour-only side sequences), width ``d = Σ D``; the candidate is the target group's
    ``[e_t1; …; e_tk]``, zero-padded to ``d``; every token gets ``+ pos[r_i]`` (a learned
    absolute position per rank ``r_i`` = the number of real tokens up to ``i``, so the padding side
    does not matter) and, with a time field, ``+ time[bucket(t_i)]`` (a learned embedding of the
    event's log-scaled bucket of seconds before the request; the candidate's ``t = 0``).
    ``n_layers`` :class:`~ctrlab.layers.unified_attention.UnifiedAttentionBlock` (pre-RMSNorm,
    causal self-attention with relative-position bias ``p_{r_i − r_j}`` and time-gap bias
    ``τ_bucket(|t_i − t_j|)`` shared by the heads, post-RMSNorm; cross-attention to the profile =
    the categorical fields outside the target group, fused by squeeze-excitation with a causal
    (running-mean) squeeze; SwiGLU FFN of hidden ``3d``). Output:
    ``logit = MLP([h_cand; flatten(E)])`` with ``h_cand`` the candidate token's final state and
    ``E`` every field except the behaviour sequences (categorical incl. the targets, numeric,
    other sequences mean-pooled, dense), as in :class:`FeatureEmbedding`.

    Causality: a token attends only to itself and earlier real tokens and the fusion's squeeze
    averages only up to the token, so behaviour states never depend on the candidate
    (:meth:`encode_history` once per user, :meth:`score_candidates` for many candidates).

    Hyperparameters (the official repo's configs unless noted):
    ``embedding_dim=10`` (the repo uses 8; 10 like the other ctrlab models, for comparable runs),
    ``target_field=None``, ``sequence_field=None`` (one name each or one group (list) of
    names, paired in order; each sequence shares its target's vocabulary; None: inferred, see
    :func:`suan_fields`), ``side_field=None`` (sequences with the group's ``max_len`` added to
    behaviour tokens only, e.g. a behaviour type), ``time_field=None`` (a numeric sequence
    of seconds before the request, batch key ``numseq:<name>``, aligned with the behaviours;
    None: no time bias and no time embedding), ``n_layers=2``, ``n_heads=2`` (must divide
    ``d``), ``num_time_buckets=128``, ``time_max_gap=3.2e7`` (seconds, about a year: the last
    bucket's start; ours, the repo's bucketing was not retrieved), ``use_time_bias=True`` and
    ``use_time_embedding=True`` (switches for ablations; both need ``time_field``),
    ``attention_window=None`` / ``attention_stride=None`` (dense attention; see
    :class:`LightSUAN`), ``attention_dropout=0.`` (the repo's dropout 0), ``dnn_hidden_units=(1024,
    512, 256)``, ``dnn_activations="Dice"``, ``net_dropout=0.``, ``batch_norm=False``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``. Position and time embeddings start from
    N(0, 1e-4²) like the field embeddings; the attention biases from 0.
    """

    needs_sequence = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 target_field: str | Sequence[str | Sequence[str]] | None = None,
                 sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 side_field: str | Sequence[str] | None = None, time_field: str | None = None,
                 n_layers: int = 2, n_heads: int = 2, num_time_buckets: int = 128, time_max_gap: float = 3.2e7,
                 use_time_bias: bool = True, use_time_embedding: bool = True,
                 attention_window: int | None = None, attention_stride: int | None = None,
                 attention_dropout: float = 0.0, dnn_hidden_units: Sequence[int] = (1024, 512, 256),
                 dnn_activations: str = "Dice", net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        name = type(self).__name__
        self.targets, self.sequences = suan_fields(feature_map, target_field, sequence_field)
        seqs = {s.name: s for s in feature_map.sequences}
        self.max_len = seqs[self.sequences[0]].max_len
        self.side = _group(side_field, "side_field") or ()
        for s in self.side:
            if s not in seqs or s in self.sequences:
                raise ValueError(f"{name}: side_field {s!r} must be a sequence field outside the behaviour "
                                 f"group {list(self.sequences)}; sequence fields are {sorted(seqs)}")
            if seqs[s].max_len != self.max_len:
                raise ValueError(f"{name}: side_field {s!r} has max_len {seqs[s].max_len}, the behaviour "
                                 f"sequences {self.max_len}; side sequences must be aligned with them")
        self.time_field = time_field
        if time_field is not None:
            numseqs = {s.name: s for s in getattr(feature_map, "numeric_sequences", None) or []}
            if time_field not in numseqs:
                raise ValueError(f"{name}: time_field {time_field!r} is not a numeric sequence of the "
                                 f"feature map (numeric sequences: {sorted(numseqs)}); declare it in the dataset "
                                 "config with kind: sequence, values: numbers, or set time_field: null")
            if int(numseqs[time_field].max_len) != self.max_len:
                raise ValueError(f"{name}: time_field {time_field!r} has max_len "
                                 f"{numseqs[time_field].max_len}, the behaviour sequences {self.max_len}")
        if attention_window is not None and attention_window < 0:
            raise ValueError(f"{name}: attention_window must be >= 0 or null (dense), got {attention_window}")
        if attention_stride is not None and attention_stride < 1:
            raise ValueError(f"{name}: attention_stride must be >= 1 or null (automatic), got {attention_stride}")
        self.embedding = FeatureEmbedding(feature_map, embedding_dim, mixed_dims=True)
        dims = dict(zip(self.embedding.field_names, self.embedding.field_dims))
        target_dim = sum(dims[t] for t in self.targets)
        self.token_dim = target_dim + sum(dims[s] for s in self.side)
        if self.token_dim % n_heads:
            raise ValueError(f"{name}: n_heads={n_heads} must divide the token width {self.token_dim} (the sum of "
                             f"the embedding sizes of {list(self.targets) + list(self.side)}); change n_heads or "
                             "embedding_dim")
        self.profile = [f.name for f in feature_map.categorical if f.name not in self.targets]
        profile_dims = {dims[p] for p in self.profile}
        if len(profile_dims) > 1:
            raise ValueError(f"{name}: the profile fields {self.profile} (cross-attention keys) need one embedding "
                             f"size, got {sorted(profile_dims)}; remove their own embedding_dim")
        self.position = nn.Embedding(self.max_len + 2, self.token_dim)  # ranks 0 (leading padding) .. L + 1
        with_time = time_field is not None
        self.time_embedding = (nn.Embedding(num_time_buckets, self.token_dim)
                               if with_time and use_time_embedding else None)
        self.num_time_buckets, self.time_max_gap = int(num_time_buckets), float(time_max_gap)
        window, stride = attention_window, attention_stride
        if window is not None and stride is None:
            stride = auto_stride(self.max_len + 1)
        self.attention_window, self.attention_stride = window, stride
        self.blocks = nn.ModuleList(
            UnifiedAttentionBlock(self.token_dim, n_heads, profile_dim=next(iter(profile_dims), None),
                                  max_distance=self.max_len, num_time_buckets=num_time_buckets,
                                  time_max_gap=time_max_gap, use_time_bias=with_time and use_time_bias,
                                  window=window, stride=stride, dropout=attention_dropout)
            for _ in range(int(n_layers)))
        dropped = set(self.sequences) | set(self.side)
        starts, col = {}, 0
        for n, d in zip(self.embedding.field_names, self.embedding.field_dims):
            starts[n], col = col, col + d
        kept = [starts[n] + i for n, d in zip(self.embedding.field_names, self.embedding.field_dims)
                if n not in dropped for i in range(d)]
        self.register_buffer("other_columns", torch.tensor(kept, dtype=torch.long), persistent=False)
        self.mlp = MLPBlock(self.token_dim + len(kept), dnn_hidden_units,
                            activation=activations_with_dice(dnn_activations, dnn_hidden_units),
                            dropout=net_dropout, batch_norm=batch_norm, output_dim=1)
        for table in (self.position, self.time_embedding):
            if table is not None:
                nn.init.normal_(table.weight, 0.0, EMBEDDING_INIT_STD)

    # ---- pieces -----------------------------------------------------------------------------
    def _profile(self, batch) -> torch.Tensor | None:
        if not self.profile:
            return None
        return torch.stack([self.embedding.categorical_embedding(batch, p) for p in self.profile], 1)

    def _times(self, batch) -> torch.Tensor | None:
        if self.time_field is None:
            return None
        key = "numseq:" + self.time_field
        if key not in batch:
            raise KeyError(f"{type(self).__name__}: the batch has no {key!r} (time_field {self.time_field!r})")
        return batch[key].float().clamp(min=0.0)

    def _add_time(self, tokens: torch.Tensor, time: torch.Tensor | None) -> torch.Tensor:
        if self.time_embedding is None or time is None:
            return tokens
        return tokens + self.time_embedding(time_buckets(time, self.num_time_buckets, self.time_max_gap))

    def _history(self, batch):
        """Behaviour tokens ``(B, L, d)``, ranks ``(B, L)``, real flags, times (or None)."""
        seqs = [self.embedding.sequence_embedding(batch, s) for s in (*self.sequences, *self.side)]
        real = seqs[0][1]  # the group's first sequence marks the real positions (as DIN)
        rank = torch.cumsum(real.long(), 1)
        time = self._times(batch)
        tokens = torch.cat([e for e, _ in seqs], -1) + self.position(rank)
        return self._add_time(tokens, time), rank, real, time

    def _candidate(self, batch, n_real: torch.Tensor):
        """The candidate token ``(B, 1, d)``, its rank (``n_real + 1``), real flag and time (0)."""
        token = torch.cat([self.embedding.categorical_embedding(batch, t) for t in self.targets], -1)
        token = F.pad(token, (0, self.token_dim - token.shape[-1])).unsqueeze(1)
        rank = (n_real + 1).view(-1, 1)
        token = token + self.position(rank)
        time = torch.zeros(rank.shape, dtype=torch.float32, device=token.device) if self.time_field else None
        real = torch.ones(rank.shape, dtype=torch.bool, device=token.device)
        return self._add_time(token, time), rank, real, time

    def _output(self, batch, h: torch.Tensor) -> torch.Tensor:
        other = self.embedding.forward_flat(batch).index_select(1, self.other_columns)
        return self.mlp(torch.cat([h, other], 1)).squeeze(-1)

    def token_states(self, batch) -> torch.Tensor:
        """``(B, L + 1, d)``: every token's final state (behaviours, then the candidate)."""
        x, rank, real, time = self._history(batch)
        cx, crank, creal, ctime = self._candidate(batch, real.sum(1))
        x, rank, real = torch.cat([x, cx], 1), torch.cat([rank, crank], 1), torch.cat([real, creal], 1)
        time = None if time is None else torch.cat([time, ctime], 1)
        profile = self._profile(batch)
        pairs = self.blocks[0].pairs_for(rank, real, time) if len(self.blocks) else None  # one index, every layer
        for block in self.blocks:
            x, _ = block(x, rank, real, time, profile, cache=False, pairs=pairs)
        return x

    def forward(self, batch):
        return {"logit": self._output(batch, self.token_states(batch)[:, -1])}

    # ---- parallel inference ------------------------------------------------------------------
    supports_user_state = True

    def user_state_fields(self) -> list[str]:
        return [*self.sequences, *self.side, *([self.time_field] if self.time_field else [])]

    def encode_user(self, batch) -> dict:
        """:meth:`encode_history` (the serving protocol's name)."""
        return self.encode_history(batch)

    def score_with_user(self, state: dict, candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`score_candidates` (the serving protocol's name)."""
        return self.score_candidates(state, candidates)

    def encode_history(self, batch) -> dict:
        """One user's history (a batch of one row) -> a cache: per layer the behaviour tokens'
        keys, values, ranks, times, real flags and the fusion's running sum and count, computed
        without any candidate. Score that user's candidates with :meth:`score_candidates`."""
        rows = batch["seq:" + self.sequences[0]].shape[0]
        if rows != 1:
            raise ValueError(f"{type(self).__name__}.encode_history takes one user's row (batch size 1), got {rows}")
        x, rank, real, time = self._history(batch)
        profile = self._profile(batch)
        pairs = self.blocks[0].pairs_for(rank, real, time) if len(self.blocks) else None
        layers = []
        for block in self.blocks:
            x, present = block(x, rank, real, time, profile, pairs=pairs)
            layers.append(present)
        return {"layers": layers, "n_real": real.sum(1)}

    def score_candidates(self, cache: dict, candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N,)`` of the N candidate rows of ``candidates`` (the user's rows, one per
        candidate item: target fields, profile and other fields; the behaviour sequences may be
        absent) from the cache of :meth:`encode_history`. Equals ``forward`` on the full rows
        when the profile fields equal those of the row the cache was built from."""
        batch = dict(candidates)
        n = batch["cat"].shape[0]
        for s in (*self.sequences, *self.side):  # not read (the cache holds them); forward_flat wants the keys
            batch.setdefault("seq:" + s, torch.zeros(n, self.max_len, dtype=torch.long, device=batch["cat"].device))
        x, rank, real, time = self._candidate(batch, cache["n_real"].expand(n))
        profile = self._profile(batch)
        pairs = self.blocks[0].pairs_for(rank, real, time, cache["layers"][0]) if len(self.blocks) else None
        for block, past in zip(self.blocks, cache["layers"]):
            x, _ = block(x, rank, real, time, profile, past=past, cache=False, pairs=pairs)
        return self._output(batch, x[:, -1])


@register
class LightSUAN(SUAN):
    """:class:`SUAN` with sparse self-attention (the paper's low-grade served model): a token
    attends to itself, the ``attention_window`` most recent real tokens before it, and every
    ``attention_stride``-th earlier one (dilated, counted back from it), always causally
    (:func:`~ctrlab.layers.unified_attention.sparse_pattern`). Same equations, parameters and
    parallel inference as SUAN; with ``attention_window >= L`` it is SUAN exactly.

    Hyperparameters: those of :class:`SUAN` with the same defaults (``embedding_dim=10``,
    ``target_field=None``, ``sequence_field=None``, ``side_field=None``,
    ``time_field=None``, ``n_layers=2``, ``n_heads=2``, ``num_time_buckets=128``,
    ``time_max_gap=3.2e7``, ``use_time_bias=True``, ``use_time_embedding=True``,
    ``attention_dropout=0.``, ``dnn_hidden_units=(1024, 512, 256)``, ``dnn_activations="Dice"``,
    ``net_dropout=0.``, ``batch_norm=False``, ``embedding_regularizer=0.``,
    ``net_regularizer=0.``), except ``attention_window=16`` (ours: the paper gives no value; the
    last 16 behaviours in full) and ``attention_stride=None`` (``⌈√(L + 1)⌉``, so the attended
    pairs grow as ``O(L·(window + √L))`` instead of ``O(L²)``; a fixed stride ``s`` gives
    ``O(L·(window + L/s))``, still quadratic in ``L``). The paper trains it by online
    distillation from a high-grade SUAN: that is a separate, generic recipe, not part of the model.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 target_field: str | Sequence[str | Sequence[str]] | None = None,
                 sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 side_field: str | Sequence[str] | None = None, time_field: str | None = None,
                 n_layers: int = 2, n_heads: int = 2, num_time_buckets: int = 128, time_max_gap: float = 3.2e7,
                 use_time_bias: bool = True, use_time_embedding: bool = True,
                 attention_window: int = 16, attention_stride: int | None = None,
                 attention_dropout: float = 0.0, dnn_hidden_units: Sequence[int] = (1024, 512, 256),
                 dnn_activations: str = "Dice", net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        if attention_window is None:
            raise ValueError("LightSUAN: attention_window must be an int >= 0 (use SUAN for dense attention)")
        super().__init__(feature_map, embedding_dim, target_field, sequence_field, side_field,
                         time_field, n_layers, n_heads, num_time_buckets, time_max_gap, use_time_bias,
                         use_time_embedding, attention_window, attention_stride, attention_dropout,
                         dnn_hidden_units, dnn_activations, net_dropout, batch_norm, embedding_regularizer,
                         net_regularizer)
