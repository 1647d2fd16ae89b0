"""OptEmbed's embedding table (Lyu et al., CIKM 2022; spec sheet ``docs/models/OptEmbed.md``).

A fused table ``E`` (rows x D, one block of rows per field) read through two masks:

* the **feature mask** ``m(x) = S(||e_x||_1 - t_f)``, ``f`` the field (block) of row ``x``, ``t`` one
  learnable threshold per field: a row whose L1 norm is not above its field's threshold reads as a
  zero vector (the feature is pruned). ``S`` is the unit step; its backward is the sheet's surrogate
  derivative (:class:`UnitStep`), so the thresholds and the rows near them get gradients;
* the **dimension mask**: field ``f`` keeps the first ``k_f`` coordinates (a prefix) and zeroes the
  rest.

:class:`OptEmbedTable` has two modes. ``supernet``: thresholds are parameters, the feature mask is
computed from the full-width rows, and in training every sample draws every field's width
``k ~ Uniform{1..D}`` independently (weight sharing over all widths); in evaluation the widths are
full, or a candidate's (:attr:`OptEmbedTable.search_widths`, the evolutionary search). ``fixed``: both
masks are buffers (``keep``: per row, ``widths``: per field), so the model is a plain one that exports
to ONNX and serves like any other; its masked coordinates and pruned rows get exactly zero gradient.

:func:`apply_opt_embed` swaps the tables of a model in place; the recipe
(:mod:`ctrlab.recipes.opt_embed`) trains, searches and retrains.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .embedding import FeatureEmbedding, lookup

MODES = ("supernet", "fixed")


class UnitStep(torch.autograd.Function):
    """``S(z) = 1 if z > 0 else 0``; backward: the surrogate derivative ``2 - 4|z|`` for ``|z| <= 0.4``,
    ``0.4`` for ``0.4 < |z| <= 1``, ``0`` beyond (the step's true derivative is 0 almost everywhere,
    which would never move a threshold)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return grad * surrogate_derivative(z)


def surrogate_derivative(z: torch.Tensor) -> torch.Tensor:
    """The piecewise derivative :class:`UnitStep` uses in its backward pass."""
    a = z.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4), torch.zeros_like(a)))


def pack_keep(keep: torch.Tensor) -> str:
    """A per-row kept mask as text for a run config: base64 of the bits (numpy ``packbits``)."""
    return base64.b64encode(np.packbits(keep.detach().cpu().numpy().astype(bool)).tobytes()).decode("ascii")


def unpack_keep(text: str, rows: int) -> torch.Tensor:
    """Inverse of :func:`pack_keep`."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8))
    if len(bits) < rows or bits[rows:].any():
        raise ValueError(f"the keep mask holds {len(bits)} bits, not one per row of a {rows}-row table")
    return torch.from_numpy(bits[:rows].astype(bool))


class OptEmbedTable(nn.Module):
    """A fused table read through OptEmbed's feature and dimension masks (see the module docstring).

    ``block_starts``: the first row of each field's block, ascending from 0
    (:meth:`~ctrlab.layers.embedding.FeatureEmbedding.row_blocks`). ``alpha``: weight of the
    threshold penalty ``alpha * sum_f exp(-t_f)`` (it pushes thresholds up, i.e. prunes more);
    ``threshold_lr``: the thresholds' plain-SGD learning rate (:meth:`optimizer_group`)."""

    takes_block_rows = True
    """:func:`~ctrlab.layers.embedding.lookup` passes the fields' first rows: a supernet then draws one
    width per sample and field (one per sample for a sequence's ids)."""

    def __init__(self, table: nn.Embedding, block_starts: list[int], mode: str = "supernet",
                 alpha: float = 1e-2, threshold_lr: float = 1e-2, field_names: list[str] | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not block_starts or block_starts[0] != 0 or sorted(set(block_starts)) != list(block_starts):
            raise ValueError(f"block_starts must ascend from 0, got {block_starts}")
        self.table = table
        self.mode = mode
        self.rows, self.embedding_dim = table.num_embeddings, table.embedding_dim
        self.alpha, self.threshold_lr = float(alpha), float(threshold_lr)
        self.block_starts = list(block_starts)
        self.field_names = list(field_names) if field_names is not None else [f"block{b}" for b in
                                                                               range(len(block_starts))]
        """The field (or own-vocabulary sequence) of each block, for reports."""
        block = torch.zeros(self.rows, dtype=torch.long)
        for b, start in enumerate(block_starts[1:], 1):
            block[start:] = b
        self.register_buffer("row_block", block, persistent=False)
        self.register_buffer("coords", torch.arange(self.embedding_dim), persistent=False)
        blocks = len(block_starts)
        if mode == "supernet":
            self.thresholds = nn.Parameter(torch.zeros(blocks))
            self.search_widths: torch.Tensor | None = None
            """Per-field widths that evaluation uses instead of full width (set by the search)."""
        else:
            self.register_buffer("keep", torch.ones(self.rows, dtype=torch.bool))
            self.register_buffer("widths", torch.full((blocks,), self.embedding_dim, dtype=torch.long))

    @property
    def num_blocks(self) -> int:
        return len(self.block_starts)

    def block_sizes(self) -> list[int]:
        ends = self.block_starts[1:] + [self.rows]
        return [e - s for s, e in zip(self.block_starts, ends)]

    # ---- the masks ----------------------------------------------------------------------------
    def feature_mask(self, rows: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """Supernet: ``S(||e||_1 - t_f)`` of looked-up rows ``rows`` (ids) with full-width vectors ``full``."""
        return UnitStep.apply(full.abs().sum(-1) - self.thresholds[self.row_block[rows]])

    @torch.no_grad()
    def kept_rows(self) -> torch.Tensor:
        """Per row of the table, whether its feature survives: the supernet's current feature mask,
        or the fixed ``keep``."""
        if self.mode == "fixed":
            return self.keep.clone()
        w = self.table.weight
        return (w.abs().sum(-1) - self.thresholds[self.row_block]) > 0

    def _sampled_widths(self, ids: torch.Tensor, block_rows) -> torch.Tensor:
        """``k ~ Uniform{1..D}`` per sample and field, broadcastable to ``ids``: one per element of a
        ``(B, F)`` lookup (fields are columns), one per row of a sequence's ``(B, L)`` lookup."""
        if block_rows is not None and torch.as_tensor(block_rows).dim() == 0 and ids.dim() >= 2:
            shape = (*ids.shape[:1], *([1] * (ids.dim() - 1)))  # one width per sample for a sequence
        else:
            shape = tuple(ids.shape)
        return torch.randint(1, self.embedding_dim + 1, shape, device=ids.device)

    def forward(self, ids: torch.Tensor, block_rows: torch.Tensor | int | None = None) -> torch.Tensor:
        e = lookup(self.table, ids)  # (*ids.shape, D)
        if self.mode == "fixed":
            width = self.widths[self.row_block[ids]]
            mask = self.keep[ids].unsqueeze(-1) & (self.coords < width.unsqueeze(-1))
            return e * mask.to(e.dtype)
        e = e * self.feature_mask(ids, e).unsqueeze(-1)  # the norm of the full-width vector (sheet)
        if self.training:
            width = self._sampled_widths(ids, block_rows)
            width = width.expand(ids.shape) if width.shape != ids.shape else width
        elif self.search_widths is not None:
            width = self.search_widths.to(ids.device)[self.row_block[ids]]
        else:
            return e
        return e * (self.coords < width.unsqueeze(-1)).to(e.dtype)

    # ---- hooks the model collects (CTRModel.optimizer_groups / regularization) ----------------
    def optimizer_group(self) -> dict[str, Any] | None:
        """The thresholds trained by plain SGD at ``threshold_lr`` (the official code's separate
        optimizer; Adam would rescale the penalty's small gradient to full steps)."""
        if self.mode != "supernet":
            return None
        return {"name": "opt_embed_thresholds", "params": [self.thresholds], "optimizer": "sgd",
                "lr": self.threshold_lr, "weight_decay": 0.0}

    def loss_penalty(self) -> torch.Tensor | None:
        """``alpha * sum_f exp(-t_f)``: pushes the thresholds up (prunes more) against the task loss."""
        if self.mode != "supernet" or self.alpha == 0:
            return None
        return self.alpha * torch.exp(-self.thresholds).sum()

    # ---- fixed masks ---------------------------------------------------------------------------
    @torch.no_grad()
    def set_masks(self, keep: torch.Tensor, widths: torch.Tensor | list[int]) -> None:
        """Fixed mode: set the per-row kept mask and the per-field widths (checked)."""
        if self.mode != "fixed":
            raise ValueError("set_masks is for a fixed-mode table (the supernet's masks are learned)")
        keep = torch.as_tensor(keep, dtype=torch.bool)
        widths = torch.as_tensor(widths, dtype=torch.long)
        if keep.shape != (self.rows,):
            raise ValueError(f"keep must have one entry per row ({self.rows}), got shape {tuple(keep.shape)}")
        if widths.shape != (self.num_blocks,) or int(widths.min()) < 1 or int(widths.max()) > self.embedding_dim:
            raise ValueError(f"widths must be {self.num_blocks} integers in 1..{self.embedding_dim} (one per field), "
                             f"got {widths.tolist()}")
        self.keep.copy_(keep)
        self.widths.copy_(widths)

    def kept_per_block(self, keep: torch.Tensor | None = None) -> list[int]:
        keep = self.kept_rows() if keep is None else keep
        return [int(keep[s:s + n].sum()) for s, n in zip(self.block_starts, self.block_sizes())]

    def extra_repr(self) -> str:
        return f"rows={self.rows}, embedding_dim={self.embedding_dim}, fields={self.num_blocks}, mode={self.mode}"


def embedding_parameters_kept(kept_per_field: list[int], widths: list[int]) -> int:
    """``sum_f (#kept features in f) * k_f``: the parameters a pruned table needs (the sheet's formula;
    not ``|V| * D``)."""
    if len(kept_per_field) != len(widths):
        raise ValueError("one kept count and one width per field")
    return int(sum(int(n) * int(k) for n, k in zip(kept_per_field, widths)))


def sparsity(kept_per_field: list[int], widths: list[int], rows: int, dim: int) -> float:
    """``1 - sum_f kept_f * k_f / (|V| * D)``."""
    return 1.0 - embedding_parameters_kept(kept_per_field, widths) / float(rows * dim)


def prunable_tables(model: nn.Module) -> dict[str, FeatureEmbedding]:
    """``{"<layer>.embedding": layer}`` for each :class:`FeatureEmbedding` whose fused table is a
    trainable ``nn.Embedding`` wider than 1: the tables OptEmbed can prune. Left out: first-order
    terms' width-1 tables (``LinearLogit``: no width to choose, one weight per feature), frozen
    pretrained tables, and tables already replaced (low-rank or OptEmbed ones)."""
    return {f"{name}.embedding" if name else "embedding": m for name, m in model.named_modules()
            if isinstance(m, FeatureEmbedding) and isinstance(m.embedding, nn.Embedding)
            and m.embedding.embedding_dim > 1 and m.embedding.weight.requires_grad}


def opt_embed_tables(model: nn.Module) -> dict[str, OptEmbedTable]:
    """The model's :class:`OptEmbedTable` modules by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, OptEmbedTable)}


def apply_opt_embed(model: nn.Module, spec: Mapping[str, Any]) -> dict[str, OptEmbedTable]:
    """Wrap the model's prunable tables (:func:`prunable_tables`) in :class:`OptEmbedTable` ones, in
    place, as ``spec`` (a run config's ``opt_embed``) says; returns them by name. ``{}``: nothing.

    * ``{"mode": "supernet", "alpha": a, "threshold_lr": lr}``: every prunable table, thresholds at 0;
    * ``{"mode": "fixed", "tables": {name: {"widths": [k_f per field], "keep": pack_keep(...),
      "rows": n}}}``: the named tables with these masks (a searched model: how a run is rebuilt
      before its weights load, for training, evaluation, export and serving)."""
    if not spec:
        return {}
    unknown = set(spec) - {"mode", "alpha", "threshold_lr", "tables"}
    if unknown:
        raise ValueError(f"opt_embed: unknown key(s) {sorted(unknown)}; keys are mode, alpha, threshold_lr, tables")
    mode = spec.get("mode")
    if mode not in MODES:
        raise ValueError(f"opt_embed.mode must be one of {MODES}, got {mode!r}")
    candidates = prunable_tables(model)
    if not candidates:
        raise ValueError(
            f"opt_embed: {type(model).__name__} has no embedding table to prune (OptEmbed needs a FeatureEmbedding "
            "table wider than 1: a first-order term's width-1 weights, as LR has only, are not pruned; low-rank or "
            "frozen pretrained tables are not either)")
    if mode == "supernet":
        if "tables" in spec:
            raise ValueError("opt_embed: a supernet learns its masks; 'tables' is for mode fixed")
        chosen = {n: None for n in candidates}
    else:
        tables = spec.get("tables")
        if not isinstance(tables, Mapping) or not tables:
            raise ValueError("opt_embed.tables: mode fixed needs the masks of each table, "
                             "{name: {widths, keep, rows}} (written by ctrlab optembed)")
        missing = [n for n in tables if n not in candidates]
        if missing:
            raise ValueError(f"opt_embed.tables: {missing} are not prunable tables of {type(model).__name__}; "
                             f"they are {sorted(candidates)}")
        chosen = dict(tables)
    out: dict[str, OptEmbedTable] = {}
    for name, masks in chosen.items():
        layer = candidates[name]
        blocks = layer.row_blocks()
        table = OptEmbedTable(layer.embedding, [start for start, _, _ in blocks], mode,
                              alpha=float(spec.get("alpha", 1e-2)), threshold_lr=float(spec.get("threshold_lr", 1e-2)),
                              field_names=[field for _, _, field in blocks])
        if masks is not None:
            if set(masks) - {"widths", "keep", "rows", "fields"} or "widths" not in masks or "keep" not in masks:
                raise ValueError(f"opt_embed.tables.{name}: give widths (one per field) and keep (packed mask)")
            rows = int(masks.get("rows", table.rows))
            if rows != table.rows:
                raise ValueError(f"opt_embed.tables.{name}: the masks are for {rows} rows, the table has {table.rows} "
                                 "(another feature map than the run's)")
            if "fields" in masks and list(masks["fields"]) != table.field_names:
                raise ValueError(f"opt_embed.tables.{name}: the masks are for the fields {list(masks['fields'])}, the "
                                 f"table holds {table.field_names} (another feature map than the run's)")
            table.set_masks(unpack_keep(masks["keep"], table.rows), masks["widths"])
        layer.embedding = table
        out[name] = table
    return out


def fixed_spec(tables: Mapping[str, OptEmbedTable], widths: Mapping[str, list[int]],
               keep: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The run config's ``opt_embed`` for a searched model: per table its widths and packed keep mask
    (the field names too, for a reader)."""
    return {"mode": "fixed", "tables": {
        name: {"rows": t.rows, "fields": list(t.field_names), "widths": [int(k) for k in widths[name]],
               "keep": pack_keep(keep[name])}
        for name, t in tables.items()}}


def table_report(table: OptEmbedTable, widths: list[int] | None = None, keep: torch.Tensor | None = None
                 ) -> dict[str, Any]:
    """What a table keeps: per field its width and kept features (of how many), the kept embedding
    parameters (:func:`embedding_parameters_kept`) of the full ``rows x D`` and the sparsity. Default
    masks: the table's own (a supernet: its thresholds' feature mask at full width)."""
    if widths is None:
        widths = table.widths.tolist() if table.mode == "fixed" else [table.embedding_dim] * table.num_blocks
    kept = table.kept_per_block(keep)
    return {
        "fields": table.field_names, "widths": [int(k) for k in widths], "kept_features": kept,
        "features": table.block_sizes(), "embedding_dim": table.embedding_dim,
        "parameters_kept": embedding_parameters_kept(kept, widths), "parameters_full": table.rows * table.embedding_dim,
        "sparsity": sparsity(kept, widths, table.rows, table.embedding_dim),
        **({"thresholds": [float(t) for t in table.thresholds.detach().cpu()]} if table.mode == "supernet" else {}),
    }


def opt_embed_summary(tables: Mapping[str, OptEmbedTable], initial_digest: str | None = None) -> dict[str, Any]:
    """A run's ``metrics.json`` record: every table's :func:`table_report` and the totals."""
    reports = {name: table_report(t) for name, t in tables.items()}
    kept = sum(r["parameters_kept"] for r in reports.values())
    full = sum(r["parameters_full"] for r in reports.values())
    return {"mode": next(iter(tables.values())).mode if tables else None, "tables": reports,
            "embedding_parameters_kept": kept, "embedding_parameters_full": full,
            "sparsity": 1.0 - kept / full if full else 0.0,
            **({"initial_weights_sha256": initial_digest} if initial_digest else {})}


@torch.no_grad()
def initial_weights_digest(model: nn.Module) -> str:
    """sha256 of the model's weights and buffers except OptEmbed's own (thresholds, masks): equal for
    the supernet and the retrained model exactly when retraining starts from the supernet's initial
    weights."""
    import hashlib

    own = {f"{name}.{attr}" for name, _ in opt_embed_tables(model).items() for attr in ("thresholds", "keep", "widths")}
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if key in own:
            continue
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
