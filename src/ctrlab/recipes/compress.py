"""Low-rank compression of a trained model's linear layers (issue 16, first step: the layer rewrite).

Two methods, side by side (spec sheet ``AtomicFeatureMimicking.md``):

* ``afm`` (Atomic Feature Mimicking, Yu et al., KDD 2024): data-aware. The frozen model runs in eval
  mode over training rows; for each layer ``y = W x + b`` the mean ``mu`` and covariance ``C`` of its
  outputs are accumulated in float64, ``C = U diag(lambda) U^T``, and with ``U_k`` the top-``k``
  eigenvectors the layer becomes ``A = U_k^T W``, ``b_A = U_k^T b``, ``B = U_k``,
  ``b_B = (I - U_k U_k^T) mu``, so that ``y ~ U_k U_k^T (y - mu) + mu``. The expected squared error
  on data like the statistics' is the eigenvalue tail ``sum_{i > k} lambda_i``.
* ``svd``: the truncated SVD of ``W`` alone (``W ~ U_k S_k V_k^T``), blind to the data.

Not yet here (next steps of the issue): embedding tables, the ``ctrlab compress`` command writing a new
run folder, fine-tuning, and the efficiency tables.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..layers.low_rank import LowRankLinear

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
                    batches: Iterable[Mapping[str, torch.Tensor]] | None = None) -> list[LayerReport]:
    """Replace the named ``nn.Linear`` layers of ``model`` in place by :class:`LowRankLinear` ones.

    ``ranks``: layer name -> rank ``k`` (an int), or, for ``afm``, the share of output variance to
    keep (a float in (0, 1), e.g. 0.99). ``batches``: training batches for ``afm``'s statistics. A
    rank that would not save parameters (``k >= n d / (n + d)``) is refused."""
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
    reports = []
    for name, spec in ranks.items():
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
        if not 0 < k <= min(n, d):
            raise ValueError(f"{name}: rank {k} is outside 1..min(in, out) = {min(n, d)}")
        if after >= before and k < min(n, d):
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
