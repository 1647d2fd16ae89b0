"""FGCNN feature generation: convolution + max-pooling along the field axis, and a recombination
layer per convolution that turns the pooled map into new feature embeddings."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .mlp import get_activation, init_linear


def _per_layer(value, n: int, what: str) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} convolution layers")
        return [int(v) for v in value]
    return [int(value)] * n


class FeatureGenerationCNN(nn.Module):
    """``(B, F, D)`` field embeddings → ``(B, N_new, D)`` generated feature embeddings.

    The embedding matrix is a 1-channel image (B, 1, F, D). Conv layer i (channels ``C_i``,
    kernel height ``k_i``, pooling ``p_i``, recombination ``r_i``):

    * ``Conv2d(C_{i-1}, C_i, (k_i, 1))`` with "same" zero padding along fields only (the kernel
      never mixes embedding coordinates), optional ``BatchNorm2d``, activation (tanh);
    * ``MaxPool2d((p_i, 1), ceil_mode=True)``: height ``F_i = ceil(F_{i-1} / p_i)``, the last
      window may be partial;
    * recombination ``Linear(C_i·F_i·D → r_i·F_i·D)`` + activation on the flattened pooled map
      (channel-major, as FuxiCTR flattens it), reshaped to ``(B, F_i·r_i, D)``.

    The pooled map (not the recombined one) feeds conv layer i + 1; the new features of all
    layers are concatenated, ``N_new = Σ_i F_i·r_i``. ``heights`` = ``[F_1, …, F_n]``.

    Recombination layers are Xavier-normal with zero bias; convolutions keep PyTorch's default initialisation (as in FuxiCTR, whose reset touches only
    Linear/Conv1d).
    Deviations from FuxiCTR: ceil-mode pooling instead of symmetric padding ``F % p`` (same
    heights for p = 2; FuxiCTR's padding gives wrong heights or errors for other p), and
    asymmetric "same" padding for even kernel heights (FuxiCTR shrinks the map by one row).
    """

    def __init__(self, num_fields: int, embedding_dim: int, channels: Sequence[int] = (14, 16, 18, 20),
                 kernel_heights: int | Sequence[int] = 7, pooling_sizes: int | Sequence[int] = 2,
                 recombined_channels: int | Sequence[int] = 2, activation: str = "tanh",
                 batch_norm: bool = True):
        super().__init__()
        channels = [int(c) for c in channels]
        n = len(channels)
        if n == 0:
            raise ValueError("FeatureGenerationCNN needs at least one convolution layer")
        kernels = _per_layer(kernel_heights, n, "kernel_heights")
        pools = _per_layer(pooling_sizes, n, "pooling_sizes")
        recombined = _per_layer(recombined_channels, n, "recombined_channels")
        self.embedding_dim = D = int(embedding_dim)
        self.num_fields = int(num_fields)
        self.convs = nn.ModuleList()
        self.recombine = nn.ModuleList()
        self.heights: list[int] = []
        self.num_new_per_layer: list[int] = []
        height, c_in = self.num_fields, 1
        for c, k, p, r in zip(channels, kernels, pools, recombined):
            top = (k - 1) // 2
            self.convs.append(nn.Sequential(
                nn.ZeroPad2d((0, 0, top, k - 1 - top)),
                nn.Conv2d(c_in, c, kernel_size=(k, 1)),
                *([nn.BatchNorm2d(c)] if batch_norm else []),
                get_activation(activation),
                nn.MaxPool2d((p, 1), ceil_mode=True),
            ))
            height = math.ceil(height / p)
            self.recombine.append(nn.Sequential(init_linear(nn.Linear(c * height * D, r * height * D)),
                                                get_activation(activation)))
            self.heights.append(height)
            self.num_new_per_layer.append(height * r)
            c_in = c
        self.num_new_features = sum(self.num_new_per_layer)

    def conv_maps(self, emb: torch.Tensor) -> list[torch.Tensor]:
        """The pooled maps ``(B, C_i, F_i, D)`` of every conv layer."""
        x, maps = emb.unsqueeze(1), []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)
        return maps

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        B = emb.shape[0]
        new = [rec(m.flatten(start_dim=1)).view(B, -1, self.embedding_dim)
               for m, rec in zip(self.conv_maps(emb), self.recombine)]
        return torch.cat(new, dim=1)

    def extra_repr(self) -> str:
        return f"num_fields={self.num_fields}, heights={self.heights}, num_new_features={self.num_new_features}"
