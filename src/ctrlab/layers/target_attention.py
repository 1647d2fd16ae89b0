"""DIN's target attention: a local activation unit scoring each history item against the candidate,
and the Dice activation used inside it."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .mlp import MLPBlock, get_activation


class Dice(nn.Module):
    """Data-adaptive activation (DIN): ``f(x) = p·x + (1 − p)·α·x`` with
    ``p = sigmoid((x − E[x]) / sqrt(Var[x] + eps))`` per unit, ``α ∈ R^units`` learned (init 0).

    ``E[x]``, ``Var[x]``: batch statistics over the rows of a ``(N, units)`` input in training
    (biased variance; the running estimates get the unbiased one, ``momentum=0.01``, like an
    ``affine=False`` BatchNorm1d), running estimates in eval (init 0 and 1). A training batch with
    fewer than 2 rows uses the running estimates and leaves them unchanged.
    """

    def __init__(self, units: int, eps: float = 1e-9, momentum: float = 0.01):
        super().__init__()
        self.units, self.eps, self.momentum = int(units), float(eps), float(momentum)
        self.alpha = nn.Parameter(torch.zeros(self.units))
        self.register_buffer("running_mean", torch.zeros(self.units))
        self.register_buffer("running_var", torch.ones(self.units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.size(0) > 1:
            xf = x.float()  # statistics in float32, also under autocast
            mean, var = xf.mean(dim=0), xf.var(dim=0, unbiased=False)
            with torch.no_grad():
                n = x.size(0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.eps))
        return x * (self.alpha + (1 - self.alpha) * p)  # = p·x + (1 − p)·α·x

    def extra_repr(self) -> str:
        return f"units={self.units}, eps={self.eps}, momentum={self.momentum}"


def activations_with_dice(activations: str | Sequence[str], hidden_units: Sequence[int]) -> list:
    """Per-layer activations for :class:`MLPBlock`: ``"Dice"`` (any case) becomes a
    ``Dice(units)`` module of that layer's width; other names pass through."""
    hidden_units = [int(h) for h in hidden_units]
    names = list(activations) if isinstance(activations, (list, tuple)) else [activations] * len(hidden_units)
    if len(names) != len(hidden_units):
        raise ValueError(f"{len(names)} activations for {len(hidden_units)} hidden layers")
    return [Dice(u) if isinstance(a, str) and a.lower() == "dice" else a for a, u in zip(names, hidden_units)]


class TargetAttention(nn.Module):
    """DIN local activation unit: ``(e_t (B, D), e (B, L, D), mask (B, L)) → u (B, D)``.

    ``a_j = MLP([e_t, e_j, e_t − e_j, e_t ⊙ e_j])`` (hidden layers ``hidden_units`` with
    ``hidden_activations`` (default Dice) and ``dropout``, then ``Linear(·, 1)`` and
    ``output_activation``); ``a_j = 0`` where ``mask`` is False; with ``use_softmax`` the masked
    scores are softmax-normalised over the real positions (an all-padding row gets all zeros);
    ``u = Σ_j a_j e_j``.

    Only real positions go through the MLP, so padding never reaches it (nor Dice's batch
    statistics): the output does not depend on what ``e`` holds at padded positions.
    Parameters: ``4D·h_1 + h_1 + … + h_k + 1`` plus ``h_i`` per Dice layer.
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_units: Sequence[int] = (64,),
        hidden_activations: str | Sequence[str] = "Dice",
        output_activation: str | None = None,
        dropout: float = 0.0,
        use_softmax: bool = False,
    ):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.use_softmax = bool(use_softmax)
        self.mlp = MLPBlock(4 * self.embedding_dim, hidden_units,
                            activation=activations_with_dice(hidden_activations, hidden_units),
                            dropout=dropout, output_dim=1)
        self.output_activation = get_activation(output_activation)

    def scores(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, L)``: 0 at padded positions."""
        t = target.unsqueeze(1).expand_as(seq)[mask]  # (N, D) over the N real positions
        e = seq[mask]
        a = self.output_activation(self.mlp(torch.cat([t, e, t - e, t * e], dim=-1))).squeeze(-1)
        scores = a.new_zeros(mask.shape).masked_scatter(mask, a)
        if self.use_softmax:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1) * mask
        return scores

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq = seq.masked_fill(~mask.unsqueeze(-1), 0.0)
        return (self.scores(target, seq, mask).unsqueeze(-1) * seq).sum(dim=1)
