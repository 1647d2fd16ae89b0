"""Field embeddings: one fused table for every categorical field and sequence vocabulary."""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

from ..data.feature_map import FeatureMap
from ..data.pretrained import pretrained_rows
from .mlp import init_linear
from .sequence import SequencePooling, sequence_mask

EMBEDDING_INIT_STD = 1e-4
"""FuxiCTR initialises embedding rows from N(0, 1e-4²) (numeric-field vectors: Xavier, see
:meth:`FeatureEmbedding.reset_parameters`)."""


class _RowLookup(torch.autograd.Function):
    """``weight[ids]`` whose backward accumulates with ``index_add_`` into a dense gradient.

    The same gradient as ``nn.Embedding``'s (bit for bit on CPU, where ``index_add_`` sums in
    row order), at half the cost: torch's CPU ``embedding_dense_backward`` sorts the ids first,
    and it was 30% of a bf16 DeepFM training step (benchmarks/profile_train_step.py)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = weight.shape[0]
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        dim = grad.shape[-1]
        grad_weight = grad.new_zeros(ctx.rows, dim)
        grad_weight.index_add_(0, ids.reshape(-1), grad.reshape(-1, dim))
        return grad_weight, None


def _ids_checked() -> bool:
    """Whether ids are range-checked: not while tracing/compiling a graph (ONNX export,
    torch.compile), where the check's data-dependent branch cannot be recorded."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def check_id_range(ids: torch.Tensor, sizes: torch.Tensor | int, names: list[str]) -> None:
    """Raise ``IndexError`` naming the field when an id of column ``k`` of ``ids`` (``(B, K)``) is
    outside ``[0, sizes[k])``; with one name and an int size, every id of ``ids`` is checked.

    Each field owns a block of rows of a fused table, so such an id would silently read another
    field's row. One min/max reduction per batch (``aminmax``), about 1% of a training step."""
    if ids.numel() == 0 or not _ids_checked():
        return
    if isinstance(sizes, int):
        lo, hi = torch.aminmax(ids)
        if 0 <= int(lo) and int(hi) < sizes:
            return
        k, lo, hi, size = 0, int(lo), int(hi), sizes
    else:
        lo, hi = torch.aminmax(ids, dim=0)
        bad = (lo < 0) | (hi >= sizes)
        if not bool(bad.any()):
            return
        k = int(bad.nonzero()[0, 0])
        lo, hi, size = int(lo[k]), int(hi[k]), int(sizes[k])
    value = lo if lo < 0 else hi
    raise IndexError(
        f"field {names[k]!r}: id {value} is outside its vocabulary (vocab_size {size}: ids 0..{size - 1}). "
        "The batch was encoded with another feature map than the model's (e.g. a vocabulary refitted "
        "on other data); encode inputs with the run's own feature_map.json"
    )


def lookup(table: nn.Embedding, ids: torch.Tensor, block_rows: torch.Tensor | int | None = None) -> torch.Tensor:
    """Rows of ``table`` for ``ids`` (any shape) -> ``(*ids.shape, dim)``: ``table(ids)``, with the
    faster backward of :class:`_RowLookup` for dense gradients on CPU (sparse tables, other
    devices and inference use ``nn.Embedding`` itself).

    ``block_rows``: where the caller knows it, the first row of the block (field) that every id of
    a column reads: one per column of a ``(B, F)`` lookup, or one for all ids. A compressed table
    (:class:`~ctrlab.layers.low_rank.LowRankEmbedding`) then decodes each column with its field's
    decoder in one batched product instead of gathering a decoder per id; other tables ignore it
    (a module opts in with a ``takes_block_rows = True`` attribute)."""
    if not isinstance(table, nn.Embedding):  # a compressed table (layers.low_rank.LowRankEmbedding)
        return table(ids, block_rows) if block_rows is not None and getattr(table, "takes_block_rows", False) else table(ids)
    w = table.weight
    if table.sparse or w.device.type != "cpu" or not (torch.is_grad_enabled() and w.requires_grad):
        return table(ids)
    return _RowLookup.apply(w, ids)


class FeatureEmbedding(nn.Module):
    """Embed a batch into ``(B, num_fields, D)``, fields in ``feature_map.field_names()`` order.

    * categorical fields: rows of ONE fused ``nn.Embedding`` (``self.embedding``); field ``f`` owns
      rows ``[offset_f, offset_f + vocab_f)`` and is looked up as ``cat + offsets`` in one call;
    * sequences with their own vocabulary get their own block of rows in the same table;
      a sequence with ``shares=<cat field>`` looks up that field's block (same vectors for the
      same id); each sequence is pooled to one vector by :class:`SequencePooling` (masked over
      ids != 0);
    * numeric field ``f``: ``x_f · v_f`` with one learned vector per field (``self.numeric``,
      an ``nn.Embedding`` so that the embedding regularizer covers it);
    * dense vector ``"dense:<name>"``: ``Linear(dim, D, bias=False)``.

    ``fields`` restricts the layer to a subset of field names (output keeps feature-map order);
    used e.g. for FinalMLP's separate gate-context embedding. A sequence sharing a field that is
    not selected still gets (its own copy of) that field's rows.
    Fields are stacked in ``feature_map.field_names()`` order (the dataset config's feature order
    for maps fitted by ``prepare``). Embedding rows start from N(0, 1e-4²); numeric vectors
    Xavier-normal like FuxiCTR's ``Linear(1, D)``, std ``sqrt(2 / (1 + D))``.
    Per-field sizes: a field's own ``embedding_dim`` in the feature map overrides the model's
    (a sequence sharing a field has that field's size). A layer with fields of different sizes
    needs ``mixed_dims=True`` and is read through :meth:`forward_flat` (``(B, Σ_f D_f)``, what
    models that flatten the embeddings use); otherwise it raises ``ValueError`` naming the
    fields, as models that stack fields into ``(B, F, D)`` need one size.
    ``check_field_dims=False`` ignores the overrides (:class:`LinearLogit`).
    Pretrained vectors (``pretrained_emb`` on a categorical field or own-vocabulary sequence,
    aligned with the vocabulary by token, see :mod:`ctrlab.data.pretrained`) initialise the
    rows they cover; with ``freeze_emb`` those fields live in a table of their own that is not
    trained (nor regularized). Fields of other sizes or frozen ones are embedded by one
    sub-layer per (size, frozen) group (``self.groups``); the fields' order is unchanged.
    Ids are range-checked (:func:`check_id_range`): an id outside a field's vocabulary raises
    ``IndexError`` naming the field instead of reading another field's rows.
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        embedding_dim: int,
        fields: Iterable[str] | None = None,
        pooling: str = "mean",
        check_field_dims: bool = True,
        mixed_dims: bool = False,
        use_pretrained: bool = True,
        _frozen: bool | None = None,
    ):
        super().__init__()
        fmap = feature_map
        dim = int(embedding_dim)
        if dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        all_names = fmap.field_names()
        if fields is None:
            wanted = set(all_names)
        else:
            fields = list(fields)
            unknown = [f for f in fields if f not in all_names]
            if unknown:
                raise ValueError(f"unknown field(s) {unknown}; fields are {all_names}")
            wanted = set(fields)
        if not wanted:
            raise ValueError("FeatureEmbedding needs at least one field")
        self.embedding_dim = dim
        self.field_names = [n for n in all_names if n in wanted]
        self.use_pretrained = bool(use_pretrained)
        keys = _field_keys(fmap, dim, check_field_dims, self.use_pretrained)  # name -> (size, frozen)
        self.field_dims = [keys[n][0] for n in self.field_names]
        other = [n for n in self.field_names if keys[n][0] != dim]
        if other and not mixed_dims:
            raise ValueError(
                f"field(s) {', '.join(f'{n!r} (embedding_dim {keys[n][0]})' for n in other)} set their own "
                f"embedding size but this layer stacks every field at the model's embedding_dim={dim} "
                "(models such as FM, DeepFM, AutoInt, DIN need one size); remove embedding_dim from those "
                f"features, set it to {dim}, or use a model that flattens the embeddings (e.g. DCNv2)"
            )
        self.groups = None
        if _frozen is None and (other or any(keys[n][1] for n in self.field_names)):
            self._init_groups(fmap, keys, pooling, check_field_dims)
            return
        self._frozen = bool(_frozen)
        # forward() builds the fields grouped by kind; a permutation puts them in map order
        by_kind = [f.name for group in (fmap.categorical, fmap.numeric, fmap.sequences, fmap.dense)
                   for f in group if f.name in wanted]
        perm = [by_kind.index(n) for n in self.field_names]
        self.register_buffer("field_perm", torch.tensor(perm, dtype=torch.long) if perm != sorted(perm) else None,
                             persistent=False)

        # ---- rows of the fused table -------------------------------------------------------
        rows = 0
        block: dict[str, int] = {}  # categorical field name -> its first row
        cat_cols, cat_offsets, cat_sizes = [], [], []
        self.cat_names: list[str] = []
        for i, f in enumerate(fmap.categorical):
            if f.name in wanted:
                block[f.name] = rows
                cat_cols.append(i)
                cat_offsets.append(rows)
                cat_sizes.append(int(f.vocab_size))
                self.cat_names.append(f.name)
                rows += int(f.vocab_size)
        self.seq_names: list[str] = []
        self._seq_offset: dict[str, int] = {}
        self._seq_size: dict[str, int] = {}
        for s in fmap.sequences:
            if s.name not in wanted:
                continue
            self._seq_size[s.name] = int(s.vocab_size)
            if s.shares is not None:
                shared = next((c for c in fmap.categorical if c.name == s.shares), None)
                if shared is None:
                    raise ValueError(f"sequence {s.name!r} shares unknown categorical field {s.shares!r}")
                if int(s.vocab_size) != int(shared.vocab_size):
                    raise ValueError(
                        f"sequence {s.name!r} shares {s.shares!r} but vocab sizes differ "
                        f"({s.vocab_size} vs {shared.vocab_size})"
                    )
                if s.shares not in block:
                    block[s.shares] = rows
                    rows += int(shared.vocab_size)
                self._seq_offset[s.name] = block[s.shares]
            else:
                self._seq_offset[s.name] = rows
                rows += int(s.vocab_size)
            self.seq_names.append(s.name)
        self._cat_block = block
        self.num_rows = rows
        # (field, file, first row, vocabulary) of the blocks that start from pretrained vectors
        self._pretrained: list[tuple[str, str, int, list[str]]] = []
        if self.use_pretrained:
            for f in [*fmap.categorical, *fmap.sequences]:
                # a field's block may be here only as a sharing sequence's copy: it gets the vectors too
                if getattr(f, "pretrained_emb", None) and (f.name in block or f.name in self._seq_offset):
                    first = block[f.name] if f.name in block else self._seq_offset[f.name]
                    vocab = fmap.encoders.get(f.name, {}).get("vocab")
                    if vocab is None:
                        raise ValueError(f"field {f.name!r} has pretrained_emb but the feature map holds no "
                                         "vocabulary for it (fit the map with prepare)")
                    self._pretrained.append((f.name, f.pretrained_emb, first, vocab))
        self.embedding = nn.Embedding(rows, dim) if rows > 0 else None
        self.register_buffer("cat_cols", torch.tensor(cat_cols, dtype=torch.long), persistent=False)
        self.register_buffer("cat_offsets", torch.tensor(cat_offsets, dtype=torch.long), persistent=False)
        self.register_buffer("cat_sizes", torch.tensor(cat_sizes, dtype=torch.long), persistent=False)
        self._all_cat = cat_cols == list(range(len(fmap.categorical)))

        # ---- numeric and dense -------------------------------------------------------------
        num_cols = [i for i, f in enumerate(fmap.numeric) if f.name in wanted]
        self.register_buffer("num_cols", torch.tensor(num_cols, dtype=torch.long), persistent=False)
        self._all_num = num_cols == list(range(len(fmap.numeric)))
        self.numeric = nn.Embedding(len(num_cols), dim) if num_cols else None
        self.dense_names = [d.name for d in fmap.dense if d.name in wanted]
        self.dense = nn.ModuleList(
            init_linear(nn.Linear(int(d.dim), dim, bias=False)) for d in fmap.dense if d.name in wanted
        )
        self.pooling = SequencePooling(pooling)
        self.reset_parameters()
        if self._frozen and self.embedding is not None:
            self.embedding.weight.requires_grad_(False)

    def _init_groups(self, fmap: FeatureMap, keys: dict, pooling: str, check_field_dims: bool) -> None:
        """One sub-layer per (size, frozen) group of fields, and the permutations that put their
        outputs back in field order."""
        by_key: dict[tuple[int, bool], list[str]] = {}
        for n in self.field_names:
            by_key.setdefault(keys[n], []).append(n)
        self.groups = nn.ModuleList(
            FeatureEmbedding(fmap, size, fields=names, pooling=pooling, check_field_dims=check_field_dims,
                             mixed_dims=True, use_pretrained=self.use_pretrained, _frozen=frozen)
            for (size, frozen), names in by_key.items())
        self.embedding = self.numeric = None
        self._group_of = {n: g for g, sub in enumerate(self.groups) for n in sub.field_names}
        stacked = [n for sub in self.groups for n in sub.field_names]
        self.register_buffer("field_perm", torch.tensor([stacked.index(n) for n in self.field_names]),
                             persistent=False)
        start, cols = {}, 0
        for sub in self.groups:
            for n, d in zip(sub.field_names, sub.field_dims):
                start[n], cols = cols, cols + d
        flat = [start[n] + i for n, d in zip(self.field_names, self.field_dims) for i in range(d)]
        self.register_buffer("flat_perm", torch.tensor(flat), persistent=False)

    def row_blocks(self) -> list[tuple[int, int, str]]:
        """``(first row, rows, field)`` of each block of the fused table, by first row: a categorical
        field's block, or an own-vocabulary sequence's (a sharing sequence reads its field's)."""
        blocks = {start: name for name, start in self._cat_block.items()}
        for name, start in self._seq_offset.items():
            blocks.setdefault(start, name)
        starts = sorted(blocks)
        ends = starts[1:] + [self.num_rows]
        return [(s, e - s, blocks[s]) for s, e in zip(starts, ends)]

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @property
    def output_dim(self) -> int:
        """Width of :meth:`forward_flat`: the sum of the fields' embedding sizes."""
        return sum(self.field_dims)

    def reset_parameters(self) -> None:
        if self.groups is not None:
            for sub in self.groups:
                sub.reset_parameters()
            return
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, mean=0.0, std=EMBEDDING_INIT_STD)
            self._load_pretrained()
        if self.numeric is not None:
            # FuxiCTR embeds a numeric field with Linear(1, D, bias=False), Xavier-normal: 2 / (1 + D)
            nn.init.normal_(self.numeric.weight, mean=0.0, std=(2.0 / (1 + self.embedding_dim)) ** 0.5)
        for lin in self.dense:
            init_linear(lin)

    @torch.no_grad()
    def _load_pretrained(self) -> None:
        """Copy each pretrained field's vectors into the rows of the tokens they cover. A missing
        file only warns: a model rebuilt to load trained weights (serving, export) does not
        need it; the map's fit checked that it existed for training."""
        for name, path, first, vocab in self._pretrained:
            try:
                ids, vectors = pretrained_rows(path, vocab, self.embedding_dim, name)
            except FileNotFoundError as exc:
                warnings.warn(f"{exc}: its rows start random (fine when trained weights are loaded next)",
                              stacklevel=3)
                continue
            w = self.embedding.weight
            w[torch.from_numpy(ids).to(w.device) + first] = torch.from_numpy(vectors).to(w)

    # ---- raw lookups (for target attention etc.) ---------------------------------------------
    def categorical_embedding(self, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """``(B, D)`` embedding of one categorical field."""
        if self.groups is not None and name in self._group_of:
            return self.groups[self._group_of[name]].categorical_embedding(batch, name)
        if self.groups is not None or name not in self.cat_names:
            raise KeyError(f"{name!r} is not a categorical field of this embedding: {self.cat_names}")
        k = self.cat_names.index(name)
        ids = batch["cat"][:, int(self.cat_cols[k])]
        check_id_range(ids.unsqueeze(1), self.cat_sizes[k:k + 1], [name])
        return lookup(self.embedding, ids + self._cat_block[name], self._cat_block[name])

    def sequence_embedding(self, batch: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``((B, L, D), mask (B, L))`` for sequence ``name``; padded positions are zero vectors."""
        if self.groups is not None and name in self._group_of:
            return self.groups[self._group_of[name]].sequence_embedding(batch, name)
        if self.groups is not None or name not in self._seq_offset:
            raise KeyError(f"{name!r} is not a sequence of this embedding: {self.seq_names}")
        ids = batch["seq:" + name]
        check_id_range(ids, self._seq_size[name], [name])
        mask = sequence_mask(ids)
        emb = lookup(self.embedding, ids + self._seq_offset[name], self._seq_offset[name])
        return emb * mask.unsqueeze(-1).to(emb.dtype), mask

    def sequence_group_embedding(self, batch: dict[str, torch.Tensor], names: list[str],
                                 zero_padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``((B, L, k·D), mask (B, L))``: the k sequences ``names`` side by side per position (a
        behaviour's item, category, … vectors), ``mask`` = the first sequence's real positions.

        Sequences in this embedding's fused table are looked up in ONE gather of the stacked ids
        (no per-sequence tensors to concatenate: at L = 1,000 the concatenation and the per-sequence
        padding products cost as much as the lookup); otherwise one :meth:`sequence_embedding` each.
        ``zero_padding=False`` skips zeroing the first sequence's padded positions (they then hold
        the padding rows) for callers that leave them out by ``mask`` anyway; the per-sequence path
        always zeroes each sequence's own padding."""
        names = list(names)
        fused = (self.groups is None and isinstance(self.embedding, nn.Embedding) and len(names) > 1
                 and all(n in self._seq_offset for n in names))
        if not fused:
            embs = [self.sequence_embedding(batch, n) for n in names]
            return (torch.cat([e for e, _ in embs], dim=-1) if len(embs) > 1 else embs[0][0]), embs[0][1]
        for n in names:
            check_id_range(batch["seq:" + n], self._seq_size[n], [n])
        ids = torch.stack([batch["seq:" + n] + self._seq_offset[n] for n in names], dim=-1)  # (B, L, k)
        mask = sequence_mask(batch["seq:" + names[0]])
        emb = lookup(self.embedding, ids).flatten(-2)
        return (emb * mask.unsqueeze(-1).to(emb.dtype) if zero_padding else emb), mask

    # ---- forward ------------------------------------------------------------------------------
    def forward_flat(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, Σ_f D_f)``: the fields' embeddings side by side in field order (fields of any
        sizes; equals ``forward(batch).flatten(1)`` when they share one size)."""
        if self.groups is None:
            return self(batch).flatten(start_dim=1)
        flat = torch.cat([sub.forward_flat(batch) for sub in self.groups], dim=1)
        return flat.index_select(1, self.flat_perm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.groups is not None:
            if len(set(self.field_dims)) > 1:
                raise ValueError(f"fields of different embedding sizes {dict(zip(self.field_names, self.field_dims))} "
                                 "cannot be stacked into (B, F, D); read them with forward_flat()")
            return torch.cat([sub(batch) for sub in self.groups], dim=1).index_select(1, self.field_perm)
        parts = []
        if self.cat_names:
            cat = batch["cat"] if self._all_cat else batch["cat"][:, self.cat_cols]
            check_id_range(cat, self.cat_sizes, self.cat_names)
            parts.append(lookup(self.embedding, cat + self.cat_offsets, self.cat_offsets))  # (B, n_cat, D)
        if self.numeric is not None:
            num = batch["num"] if self._all_num else batch["num"][:, self.num_cols]
            parts.append(num.unsqueeze(-1) * self.numeric.weight)  # (B, n_num, D)
        for name in self.seq_names:
            emb, mask = self.sequence_embedding(batch, name)
            parts.append(self.pooling(emb, mask).unsqueeze(1))
        for name, lin in zip(self.dense_names, self.dense):
            parts.append(lin(batch["dense:" + name]).unsqueeze(1))
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return out if self.field_perm is None else out.index_select(1, self.field_perm)


def enable_sparse_gradients(module: nn.Module) -> list[nn.Parameter]:
    """Switch every fused categorical/sequence table of the :class:`FeatureEmbedding` layers inside
    ``module`` to sparse gradients (``nn.Embedding(sparse=True)``: a backward pass yields only the
    looked-up rows) and return those tables' weights, for a sparse-aware optimizer.

    Only these tables are switched: they are read solely through lookups. Numeric-field vectors
    are used as a whole (``x_f · v_f``) and keep dense gradients."""
    tables = []
    for m in module.modules():
        if isinstance(m, FeatureEmbedding) and m.embedding is not None and m.embedding.weight.requires_grad:
            m.embedding.sparse = True
            tables.append(m.embedding.weight)
    return tables


def _field_keys(fmap: FeatureMap, dim: int, own_dims: bool, use_pretrained: bool) -> dict[str, tuple[int, bool]]:
    """Every field's (embedding size, frozen): its own ``embedding_dim`` when ``own_dims`` (else
    ``dim``), frozen when it starts from pretrained vectors with ``freeze_emb``. A sequence that
    shares a field's rows has that field's key."""
    def size(f) -> int:
        return int(f.embedding_dim) if own_dims and getattr(f, "embedding_dim", None) is not None else dim

    def frozen(f) -> bool:
        return bool(use_pretrained and getattr(f, "pretrained_emb", None) and getattr(f, "freeze_emb", True))

    keys = {f.name: (size(f), frozen(f)) for f in fmap.categorical}
    keys.update({f.name: (size(f), False) for f in fmap.numeric})
    for s in fmap.sequences:
        if s.shares is None or s.shares not in keys:
            keys[s.name] = (size(s), frozen(s))
            continue
        keys[s.name] = keys[s.shares]
        if own_dims and s.embedding_dim is not None and int(s.embedding_dim) != keys[s.shares][0]:
            raise ValueError(f"sequence {s.name!r} shares the rows of {s.shares!r} (embedding_dim "
                             f"{keys[s.shares][0]}) but sets embedding_dim={s.embedding_dim}")
    keys.update({d.name: (dim, False) for d in fmap.dense})
    return keys


class LinearLogit(nn.Module):
    """First-order term ``[b +] Σ_f w_f(x_f)`` → ``(B, 1)``: the sum of dimension-1 field embeddings
    (:class:`FeatureEmbedding` with ``embedding_dim=1``) plus, with ``bias=True``, a
    zero-initialised bias.

    Models that add this term to another one that already ends in a biased ``Linear`` (Wide&Deep,
    xDeepFM, AutoInt's ``use_wide``) pass ``bias=False``, as FuxiCTR does: a second bias would not
    add capacity, but under Adam each bias moves by about ``lr`` per step, so two of them move the
    output offset twice as fast as the reference model does early in training."""

    def __init__(self, feature_map: FeatureMap, fields: Iterable[str] | None = None, pooling: str = "mean",
                 bias: bool = True):
        super().__init__()
        self.weights = FeatureEmbedding(feature_map, 1, fields=fields, pooling=pooling, check_field_dims=False,
                                        use_pretrained=False)  # FuxiCTR's LR term never uses pretrained vectors
        if bias:
            self.bias = nn.Parameter(torch.zeros(1))
        else:
            self.register_parameter("bias", None)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.weights(batch).sum(dim=1)
        return out if self.bias is None else out + self.bias
