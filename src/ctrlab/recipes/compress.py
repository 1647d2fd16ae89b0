"""Low-rank compression of a trained model's linear layers (issue 16, first step: the layer rewrite).

Two methods, side by side (spec sheet ``AtomicFeatureMimicking.md``):

* ``afm`` (Atomic Feature Mimicking, Yu et al., KDD 2024): data-aware. The frozen model runs in eval
  mode over training rows; for each layer ``y = W x + b`` the mean ``mu`` and covariance ``C`` of its
  outputs are accumulated in float64, ``C = U diag(lambda) U^T``, and with ``U_k`` the top-``k``
  eigenvectors the layer becomes ``A = U_k^T W``, ``b_A = U_k^T b``, ``B = U_k``,
  ``b_B = (I - U_k U_k^T) mu``, so that ``y ~ U_k U_k^T (y - mu) + mu``. The expected squared error
  on data like the statistics' is the eigenvalue tail ``sum_{i > k} lambda_i``.
* ``svd``: the truncated SVD of ``W`` alone (``W ~ U_k S_k V_k^T``), blind to the data.

Embedding tables (:func:`compress_embedding`): per block of a :class:`FeatureEmbedding`'s fused table
(one field's rows), the statistics of the embeddings *as training rows look them up* (each row
weighted by how often its id occurs in train), ``t_v = U_k^T (e_v - mu)``, decoded as
``e ~ U_k t + mu`` (:class:`~ctrlab.layers.low_rank.LowRankEmbedding`); ``svd`` factors each block's
rows unweighted and uncentred.

Not yet here (next steps of the issue): fine-tuning and the efficiency tables.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..layers.embedding import FeatureEmbedding
from ..layers.low_rank import LowRankEmbedding, LowRankLinear

METHODS = ("afm", "svd")


@dataclass
class OutputStats:
    """Running float64 sums of one layer's outputs: ``sum y``, ``sum y y^T`` and the row count."""

    dim: int
    count: int = 0
    total: torch.Tensor = field(default=None)  # type: ignore[assignment]
    outer: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.dim, dtype=torch.float64)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def add(self, y: torch.Tensor) -> None:
        y = y.detach().reshape(-1, self.dim).to(torch.float64).cpu()
        self.count += y.shape[0]
        self.total += y.sum(0)
        self.outer += y.T @ y

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, C)``: the mean and the (population) covariance of the outputs seen."""
        if self.count == 0:
            raise ValueError("no rows were seen: collect statistics on at least one batch")
        mu = self.total / self.count
        cov = self.outer / self.count - torch.outer(mu, mu)
        return mu, (cov + cov.T) / 2


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's ``nn.Linear`` layers by name (the candidates for compression)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def collect_output_stats(model: nn.Module, names: Iterable[str], batches: Iterable[Mapping[str, torch.Tensor]]
                         ) -> dict[str, OutputStats]:
    """Run ``model`` in eval mode (no dropout, BatchNorm on its running statistics) over ``batches``
    and accumulate the outputs of the named ``nn.Linear`` layers; the model's mode is restored."""
    layers = linear_layers(model)
    missing = [n for n in names if n not in layers]
    if missing:
        raise ValueError(f"not nn.Linear layers of {type(model).__name__}: {missing}; candidates: {sorted(layers)}")
    stats = {n: OutputStats(layers[n].out_features) for n in names}
    hooks = [layers[n].register_forward_hook(lambda mod, inp, out, n=n: stats[n].add(out)) for n in stats]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def principal_components(stats: OutputStats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(eigenvalues descending, eigenvectors as columns in that order, mu)`` of the outputs' covariance."""
    mu, cov = stats.moments()
    values, vectors = torch.linalg.eigh(cov)  # ascending
    return values.flip(0).clamp(min=0.0), vectors.flip(1), mu


def rank_for_energy(eigenvalues: torch.Tensor, keep: float) -> int:
    """The smallest ``k`` whose top-``k`` eigenvalues hold at least ``keep`` (0..1] of the variance."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    share = torch.cumsum(eigenvalues, 0) / total
    return int(torch.searchsorted(share, torch.tensor(keep, dtype=share.dtype) - 1e-12).item()) + 1


@torch.no_grad()
def afm_linear(linear: nn.Linear, stats: OutputStats, rank: int) -> LowRankLinear:
    """The AFM factorisation of ``linear`` at ``rank`` from its output statistics."""
    _, vectors, mu = principal_components(stats)
    u = vectors[:, :rank]  # d x k, float64
    w = linear.weight.detach().to(torch.float64).cpu()
    b = linear.bias.detach().to(torch.float64).cpu() if linear.bias is not None else torch.zeros(w.shape[0],
                                                                                                 dtype=torch.float64)
    out = LowRankLinear(linear.in_features, linear.out_features, rank)
    _set(out, down_w=u.T @ w, down_b=u.T @ b, up_w=u, up_b=mu - u @ (u.T @ mu), like=linear)
    return out


@torch.no_grad()
def svd_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The truncated-SVD factorisation of ``linear``'s weight at ``rank`` (data-blind)."""
    w = linear.weight.detach().to(torch.float64).cpu()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    b = linear.bias.detach().to(torch.float64).cpu() if linear.bias is not None else torch.zeros(w.shape[0],
                                                                                                 dtype=torch.float64)
    out = LowRankLinear(linear.in_features, linear.out_features, rank)
    _set(out, down_w=s[:rank, None] * vh[:rank], down_b=torch.zeros(rank, dtype=torch.float64), up_w=u[:, :rank],
         up_b=b, like=linear)
    return out


def _set(out: LowRankLinear, down_w, down_b, up_w, up_b, like: nn.Linear) -> None:
    dtype, device = like.weight.dtype, like.weight.device
    out.down.weight.copy_(down_w)
    out.down.bias.copy_(down_b)
    out.up.weight.copy_(up_w)
    out.up.bias.copy_(up_b)
    out.to(device=device, dtype=dtype)


@dataclass
class LayerReport:
    name: str
    rank: int
    in_features: int
    out_features: int
    parameters_before: int
    parameters_after: int
    eigen_tail: float | None
    """AFM: the expected squared reconstruction error on data like the statistics' (sum of the
    dropped eigenvalues); None for SVD."""


@torch.no_grad()
def compress_linear(model: nn.Module, ranks: Mapping[str, int | float], method: str = "afm",
                    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
                    skip_unprofitable: bool = False) -> list[LayerReport]:
    """Replace the named ``nn.Linear`` layers of ``model`` in place by :class:`LowRankLinear` ones.

    ``ranks``: layer name -> rank ``k`` (an int), or, for ``afm``, the share of output variance to
    keep (a float in (0, 1), e.g. 0.99). ``batches``: training batches for ``afm``'s statistics. A
    rank below full that would not save parameters (``k (n + d) + k + d >= n d + d``) is refused,
    or, with ``skip_unprofitable``, leaves that layer as it is (it has no report), as does a rank at or
    above the layer's full rank."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = linear_layers(model)
    missing = [n for n in ranks if n not in layers]
    if missing:
        raise ValueError(f"not nn.Linear layers of {type(model).__name__}: {missing}; candidates: {sorted(layers)}")
    stats = {}
    if method == "afm":
        if batches is None:
            raise ValueError("afm needs training batches to collect the layers' output statistics")
        stats = collect_output_stats(model, list(ranks), batches)
        unseen = [n for n in ranks if stats[n].count == 0]
        if unseen and not skip_unprofitable:
            raise ValueError(f"{unseen} did not run in a prediction-time forward pass (a training-only head, such as "
                             "DiffuMIN's contrastive projectors): leave them out, compressing them saves no "
                             "prediction cost")
    reports = []
    for name, spec in ranks.items():
        if method == "afm" and stats[name].count == 0:  # a training-only layer (skip_unprofitable): kept
            continue
        linear = layers[name]
        n, d = linear.in_features, linear.out_features
        tail = None
        if method == "afm":
            values, _, _ = principal_components(stats[name])
            k = rank_for_energy(values, float(spec)) if isinstance(spec, float) else int(spec)
        else:
            if isinstance(spec, float):
                raise ValueError(f"{name}: svd takes an integer rank, got {spec}")
            k = int(spec)
        before = n * d + (d if linear.bias is not None else 0)
        after = LowRankLinear.parameter_count(n, d, k)
        if skip_unprofitable and (k > min(n, d) or after >= before):  # (a narrow layer, or full rank)
            continue
        if not 0 < k <= min(n, d):
            raise ValueError(f"{name}: rank {k} is outside 1..min(in, out) = {min(n, d)}")
        if after >= before and k < min(n, d):  # (full rank is allowed when asked for: exact, for checks)
            raise ValueError(f"{name}: rank {k} saves nothing ({after:,} parameters vs {before:,}); use a rank below "
                             f"{n * d / (n + d):.0f}")
        new = afm_linear(linear, stats[name], k) if method == "afm" else svd_linear(linear, k)
        if method == "afm":
            tail = float(values[k:].sum())
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
        reports.append(LayerReport(name, k, n, d, before, after, tail))
    return reports


def reconstruction_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """Mean over rows of the squared distance between two layers' outputs."""
    return float(((np.asarray(reference, np.float64) - np.asarray(approx, np.float64)) ** 2).sum(1).mean())


def embedding_tables(model: nn.Module) -> dict[str, FeatureEmbedding]:
    """``{"<layer>.embedding": layer}`` for each FeatureEmbedding with a fused table (the candidates)."""
    return {f"{name}.embedding" if name else "embedding": m for name, m in model.named_modules()
            if isinstance(m, FeatureEmbedding) and isinstance(m.embedding, nn.Embedding)}


def _row_counts(layer: FeatureEmbedding, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """How often each row of ``layer``'s fused table is looked up by the rows of ``arrays`` (encoded
    train arrays): categorical columns, and own-vocabulary sequences' non-padding ids."""
    counts = np.zeros(layer.num_rows, dtype=np.float64)
    if layer.cat_names:
        cat = np.asarray(arrays["cat"])[:, layer.cat_cols.cpu().numpy()].astype(np.int64)
        counts += np.bincount((cat + layer.cat_offsets.cpu().numpy()).ravel(), minlength=layer.num_rows)
    for name in layer.seq_names:
        ids = np.asarray(arrays[f"seq:{name}"]).astype(np.int64)
        ids = ids[ids > 0] + layer._seq_offset[name]
        counts += np.bincount(ids, minlength=layer.num_rows)
    return counts


@dataclass
class TableReport:
    name: str
    rank: int
    rows: int
    dim: int
    blocks: int
    parameters_before: int
    parameters_after: int
    eigen_tail: float | None
    """AFM: per training lookup, the expected squared error of an embedding (the dropped
    eigenvalues, summed over blocks, weighted by the blocks' lookups); None for SVD."""


@torch.no_grad()
def compress_embedding(model: nn.Module, name: str, rank: int | float, method: str,
                       arrays: Mapping[str, np.ndarray] | None = None) -> TableReport:
    """Replace the fused table ``name`` (see :func:`embedding_tables`) by a
    :class:`~ctrlab.layers.low_rank.LowRankEmbedding` of ``rank`` (``afm``: or the share of each
    block's variance to keep, the largest block rank taken), in place. ``arrays``: the encoded train
    split (``afm``'s lookup counts)."""
    tables = embedding_tables(model)
    if name not in tables:
        raise ValueError(f"{name!r} is not a FeatureEmbedding table of {type(model).__name__}; candidates: "
                         f"{sorted(tables)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layer = tables[name]
    weight = layer.embedding.weight.detach().to(torch.float64).cpu()
    rows, dim = weight.shape
    blocks = layer.row_blocks()
    counts = None
    if method == "afm":
        if arrays is None:
            raise ValueError("afm needs the encoded train arrays to weight the table's rows by their lookups")
        counts = torch.from_numpy(_row_counts(layer, arrays))
    # afm: per block, the lookup-weighted mean and the covariance's eigenpairs (a float rank needs
    # them all before k is known)
    spectra: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = []  # mu, values, vectors, lookups
    if method == "afm":
        for start, size, _ in blocks:
            e, c = weight[start:start + size], counts[start:start + size]
            n = float(c.sum())
            if n > 0:
                mu = (c[:, None] * e).sum(0) / n
                cov = (c[:, None] * e).T @ e / n - torch.outer(mu, mu)
            else:  # a block never looked up in train: its rows' own spread
                mu = e.mean(0)
                cov = torch.cov(e.T, correction=0) if size > 1 else torch.zeros(dim, dim, dtype=torch.float64)
            values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
            spectra.append((mu, values.flip(0).clamp(min=0.0), vectors.flip(1), n))
    if isinstance(rank, float):
        if method != "afm":
            raise ValueError("svd takes an integer rank")
        k = max(rank_for_energy(values, rank) for _, values, _, _ in spectra)
    else:
        k = int(rank)
    if not 0 < k <= dim:
        raise ValueError(f"{name}: rank {k} is outside 1..{dim} (the embedding size)")
    new = LowRankEmbedding(rows, dim, k, [start for start, _, _ in blocks])
    tail, lookups = 0.0, 0.0
    for b, (start, size, _) in enumerate(blocks):
        e = weight[start:start + size]
        if method == "afm":
            mu, values, vectors, n = spectra[b]
            u = vectors[:, :k]  # D x k
            codes, decoder, mean = (e - mu) @ u, u.T, mu
            tail, lookups = tail + n * float(values[k:].sum()), lookups + n
        else:  # the block's rows unweighted and uncentred: e = U S V^T, codes U_k S_k, decoder V_k^T
            u, sv, vh = torch.linalg.svd(e, full_matrices=False)
            width = min(k, len(sv))
            codes = torch.zeros(size, k, dtype=torch.float64)
            decoder = torch.zeros(k, dim, dtype=torch.float64)
            codes[:, :width], decoder[:width] = u[:, :width] * sv[:width], vh[:width]
            mean = torch.zeros(dim, dtype=torch.float64)
        new.codes.weight[start:start + size] = codes.to(new.codes.weight)
        new.decoders[b] = decoder.to(new.decoders)
        new.means[b] = mean.to(new.means)
    new.to(layer.embedding.weight.device)
    layer.embedding = new
    return TableReport(name, k, rows, dim, len(blocks), rows * dim,
                       LowRankEmbedding.parameter_count(rows, dim, k, len(blocks)),
                       tail / lookups if method == "afm" and lookups else None)
