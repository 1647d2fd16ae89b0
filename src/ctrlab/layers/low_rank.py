"""Low-rank replacements of trained layers (used by :mod:`ctrlab.recipes.compress`)."""
from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """``y = B (A x + b_A) + b_B``: a ``Linear(n, d)`` factored through ``k`` dimensions, with
    ``k (n + d) + k + d`` parameters instead of ``n d + d`` (a saving when ``k < n d / (n + d)``).

    ``down`` (``A``, ``k x n``) and ``up`` (``B``, ``d x k``) are plain ``nn.Linear`` layers, so the
    module exports to ONNX as two matrix products."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in 1..min(in_features, out_features) = {min(in_features, out_features)}, "
                             f"got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank)
        self.up = nn.Linear(rank, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @staticmethod
    def parameter_count(in_features: int, out_features: int, rank: int) -> int:
        return rank * (in_features + out_features) + rank + out_features

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def apply_low_rank(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Replace the named ``nn.Linear`` layers of ``model`` by (untrained) :class:`LowRankLinear` ones
    of the given ranks, in place: how a compressed run's architecture is rebuilt before its weights
    are loaded (``low_rank`` in its ``run_config.yaml`` and in an artifact's manifest)."""
    for name, rank in ranks.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"low_rank: {name!r} is not an nn.Linear layer of {type(model).__name__}")
        parent, _, attr = name.rpartition(".")
        new = LowRankLinear(linear.in_features, linear.out_features, int(rank))
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model
