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
    """Replace the named ``nn.Linear`` layers of ``model`` by (untrained) :class:`LowRankLinear` ones,
    and the named fused tables of :class:`~ctrlab.layers.embedding.FeatureEmbedding` layers
    (``<layer>.embedding``) by :class:`LowRankEmbedding` ones, of the given ranks, in place: how a compressed run's architecture is rebuilt before its weights
    are loaded (``low_rank`` in its ``run_config.yaml`` and in an artifact's manifest)."""
    for name, rank in ranks.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(layer, nn.Linear):
            new = LowRankLinear(layer.in_features, layer.out_features, int(rank))
        elif isinstance(layer, nn.Embedding) and hasattr(owner, "row_blocks") and attr == "embedding":
            new = LowRankEmbedding(layer.num_embeddings, layer.embedding_dim, int(rank),
                                   [start for start, _, _ in owner.row_blocks()])
        else:
            raise ValueError(f"low_rank: {name!r} is not an nn.Linear layer or a FeatureEmbedding's table of "
                             f"{type(model).__name__}")
        setattr(owner, attr, new)
    return model


class LowRankEmbedding(nn.Module):
    """A fused embedding table (``rows x D``, blocks of rows per field) stored as ``rows x k`` codes
    and, per block ``f``, a decoder ``U_f^T`` (``k x D``) and a mean ``mu_f``:
    ``e_v = t_v U_f^T + mu_f`` for a row ``v`` of block ``f``. Parameters
    ``rows k + blocks (k D + D)`` instead of ``rows D``.

    ``block_starts``: the first row of each block, ascending, the first one 0 (a
    :class:`~ctrlab.layers.embedding.FeatureEmbedding`'s :meth:`row_blocks`). Looked up through
    :func:`~ctrlab.layers.embedding.lookup` like the table it replaces."""

    takes_block_rows = True
    """:func:`~ctrlab.layers.embedding.lookup` passes the field blocks' first rows when it knows them."""

    def __init__(self, rows: int, dim: int, rank: int, block_starts: list[int]):
        super().__init__()
        if not 0 < rank <= dim:
            raise ValueError(f"rank must be in 1..{dim} (the embedding size), got {rank}")
        if not block_starts or block_starts[0] != 0 or sorted(set(block_starts)) != list(block_starts):
            raise ValueError(f"block_starts must ascend from 0, got {block_starts}")
        self.rows, self.embedding_dim, self.rank = rows, dim, rank
        self.codes = nn.Embedding(rows, rank)
        self.decoders = nn.Parameter(torch.zeros(len(block_starts), rank, dim))
        self.means = nn.Parameter(torch.zeros(len(block_starts), dim))
        block = torch.zeros(rows, dtype=torch.long)
        for b, start in enumerate(block_starts[1:], 1):
            block[start:] = b
        self.register_buffer("row_block", block, persistent=False)

    def forward(self, ids: torch.Tensor, block_rows: torch.Tensor | int | None = None) -> torch.Tensor:
        """``(*ids.shape, D)``. ``block_rows`` (see :func:`~ctrlab.layers.embedding.lookup`): the
        first row of each column's block (``(F,)`` for ``(B, F)`` ids) or of every id's (an int):
        each column is then decoded by one product with its block's decoder; without it, every
        id's decoder is gathered (any ids)."""
        t = self.codes(ids)  # (..., k)
        if block_rows is None:
            b = self.row_block[ids]
            return (t.unsqueeze(-2) @ self.decoders[b]).squeeze(-2) + self.means[b]
        b = self.row_block[torch.as_tensor(block_rows, device=self.row_block.device)]
        if b.dim() == 0:  # every id in one block (a sequence)
            return t @ self.decoders[b] + self.means[b]
        # (B, F, k) x (F, k, D) -> (B, F, D): one batched product over the fields
        return torch.einsum("bfk,fkd->bfd", t, self.decoders[b]) + self.means[b]

    @staticmethod
    def parameter_count(rows: int, dim: int, rank: int, blocks: int) -> int:
        return rows * rank + blocks * (rank * dim + dim)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, embedding_dim={self.embedding_dim}, rank={self.rank}, blocks={len(self.means)}"
