"""Multi-gate mixture of experts (MMoE, Ma et al., KDD 2018): experts shared by all tasks, one
softmax gate per task."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .mlp import MLPBlock


class MixtureOfExperts(nn.Module):
    """``x (B, n)`` -> one ``(B, e)`` input per task: ``f_t(x) = Σ_k g_t(x)_k · E_k(x)`` with
    ``g_t(x) = softmax(G_t(x))`` over the ``num_experts`` experts.

    Experts ``E_k``: MLPs ``n -> expert_units`` (their last width is ``e``, :attr:`output_dim`);
    gates ``G_t``: MLPs ``n -> gate_units -> num_experts`` (linear output). ``num_experts=1`` is a
    shared bottom (the gate's softmax over one expert is 1).
    """

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int = 4, expert_units: Sequence[int] = (512, 256, 128),
                 gate_units: Sequence[int] = (128, 64), activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        if int(num_experts) < 1 or int(num_tasks) < 1:
            raise ValueError(f"MixtureOfExperts needs num_experts >= 1 and num_tasks >= 1, got {num_experts}, {num_tasks}")
        if not expert_units:
            raise ValueError("MixtureOfExperts: expert_units must name at least one layer (the experts' output width)")
        self.experts = nn.ModuleList(MLPBlock(input_dim, expert_units, activation=activation, dropout=dropout,
                                              batch_norm=batch_norm) for _ in range(int(num_experts)))
        self.gates = nn.ModuleList(MLPBlock(input_dim, gate_units, activation=activation, output_dim=int(num_experts))
                                   for _ in range(int(num_tasks)))
        self.output_dim = int(expert_units[-1])

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, K)``: each task's softmax weights over the experts."""
        return torch.stack([torch.softmax(g(x), dim=-1) for g in self.gates], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, K, e)
        mixed = torch.matmul(self.gate_weights(x), experts)  # (B, T, e)
        return list(mixed.unbind(dim=1))
