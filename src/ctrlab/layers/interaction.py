"""Explicit feature-interaction layers: FM pairwise term, inner products, DCNv2 cross network."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import get_activation, init_linear


class FactorizationMachine(nn.Module):
    """FM second-order term ``Σ_{i<j} <e_i, e_j>`` of ``(B, F, D)`` embeddings → ``(B, 1)``,
    computed in O(F·D) as ``½ Σ_k [(Σ_f e_fk)² − Σ_f e_fk²]``."""

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        square_of_sum = emb.sum(dim=1).pow(2)
        sum_of_square = emb.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=-1, keepdim=True)


class InnerProducts(nn.Module):
    """All pairwise inner products ``<e_i, e_j>``, ``i < j`` (row-major order) of ``(B, F, D)``
    embeddings → ``(B, F(F−1)/2)``."""

    def __init__(self, num_fields: int):
        super().__init__()
        i, j = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("idx_i", i, persistent=False)
        self.register_buffer("idx_j", j, persistent=False)
        self.num_fields = num_fields

    @property
    def output_dim(self) -> int:
        return self.num_fields * (self.num_fields - 1) // 2

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(emb, emb.transpose(1, 2))  # (B, F, F)
        return gram[:, self.idx_i, self.idx_j]


class CrossNetV2(nn.Module):
    """DCNv2 cross network on ``x0 ∈ R^d`` (``(B, d)`` → ``(B, d)``).

    * ``low_rank=None`` (matrix cross): ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``,
      ``W_l ∈ R^{d×d}``; ``d² + d`` parameters per layer.
    * ``low_rank=r`` (mixture of ``num_experts`` low-rank experts):
      ``x_{l+1} = Σ_e g_e(x_l) · [x0 ⊙ (U_e,l tanh(C_e,l tanh(V_e,lᵀ x_l)) + b_l)] + x_l`` with
      ``U, V ∈ R^{d×r}``, ``C ∈ R^{r×r}``, ``g = softmax_e(w_eᵀ x_l)``. As in FuxiCTR the bias
      ``b_l`` is per layer and shared by the experts, and the gate vectors ``w_e`` are shared by
      all layers: ``L·(E·(2dr + r²) + d) + E·d`` parameters. Initialisation as FuxiCTR: each
      layer's ``(E, d, r)`` / ``(E, r, r)`` tensor is Xavier-normal as a whole (std
      ``sqrt(2 / (d·r + E·r))`` for U and V), gate rows Xavier as ``Linear(d, 1)``, ``b_l = 0``.
    ``num_layers=0`` is the identity.
    """

    def __init__(self, input_dim: int, num_layers: int, low_rank: int | None = None, num_experts: int = 1):
        super().__init__()
        d, self.num_layers = int(input_dim), int(num_layers)
        self.low_rank = None if low_rank is None else int(low_rank)
        self.num_experts = int(num_experts)
        if self.low_rank is None:
            self.cross = nn.ModuleList(init_linear(nn.Linear(d, d)) for _ in range(self.num_layers))
        else:
            if self.low_rank < 1 or self.num_experts < 1:
                raise ValueError("low_rank and num_experts must be >= 1")
            E, r = self.num_experts, self.low_rank

            def experts(rows: int, cols: int) -> nn.ParameterList:
                # Xavier-normal over the whole (E, rows, cols) tensor, as FuxiCTR's and
                # DeepCTR-Torch's CrossNetMix: torch's fans of a 3-D tensor are rows·cols and E·cols.
                return nn.ParameterList(nn.Parameter(nn.init.xavier_normal_(torch.empty(E, rows, cols)))
                                        for _ in range(self.num_layers))

            self.U = experts(d, r)
            self.V = experts(d, r)
            self.C = experts(r, r)
            self.bias = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(self.num_layers))
            # one row per expert, each initialised like FuxiCTR's per-expert Linear(d, 1)
            self.gate = nn.Linear(d, E, bias=False)
            nn.init.normal_(self.gate.weight, std=(2.0 / (d + 1)) ** 0.5)
        self.input_dim = self.output_dim = d

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        if self.low_rank is None:
            for layer in self.cross:
                x = x0 * layer(x) + x
            return x
        for l in range(self.num_layers):
            v = torch.tanh(torch.einsum("bd,edr->ber", x, self.V[l]))      # V_eᵀ x_l
            v = torch.tanh(torch.einsum("ber,esr->bes", v, self.C[l]))     # C_e v
            u = torch.einsum("ber,edr->bed", v, self.U[l])                 # U_e v   (B, E, d)
            experts = x0.unsqueeze(1) * (u + self.bias[l])                 # (B, E, d)
            g = torch.softmax(self.gate(x), dim=-1)                         # (B, E)
            x = torch.einsum("be,bed->bd", g, experts) + x
        return x

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, num_layers={self.num_layers}, "
                f"low_rank={self.low_rank}, num_experts={self.num_experts}")


class CrossNet(nn.Module):
    """DCN (v1) cross network on ``x0 ∈ R^d`` (``(B, d)`` → ``(B, d)``):
    ``x_{l+1} = x0 · (w_lᵀ x_l) + b_l + x_l`` with ``w_l, b_l ∈ R^d`` (``2d`` parameters per layer).

    ``w_lᵀ x_l`` is a scalar per sample that rescales ``x0`` (not ``x0 ⊙ w_l``); the bias is added
    outside the product. ``w_l`` is a bias-free ``Linear(d, 1)`` (Xavier-normal), ``b_l`` starts at 0,
    as in FuxiCTR. ``num_layers=0`` is the identity.
    """

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        d, self.num_layers = int(input_dim), int(num_layers)
        self.w = nn.ModuleList(init_linear(nn.Linear(d, 1, bias=False)) for _ in range(self.num_layers))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(d)) for _ in range(self.num_layers))
        self.input_dim = self.output_dim = d

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.w, self.b):
            x = x0 * w(x) + b + x
        return x

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, num_layers={self.num_layers}"


class CIN(nn.Module):
    """xDeepFM compressed interaction network: ``(B, F, D)`` embeddings → ``(B, Σ_k H_k)``.

    ``X⁰ = E``; layer k has ``H_k`` feature maps
    ``X^k_h = Σ_i Σ_j W^{k,h}_{ij} (X^{k−1}_i ⊙ X⁰_j) + b^k_h`` (i < H_{k−1}, j < F, H_0 = F),
    computed as the outer product ``(B, H_{k−1}·F, D)`` (channel ``i·F + j``) followed by a 1×1
    ``Conv1d(H_{k−1}·F, H_k)``; each layer is sum-pooled over the embedding axis,
    ``p^k = Σ_D X^k ∈ R^{H_k}``, and the output is ``[p¹; …; p^K]``. Conv weights Xavier-normal,
    biases 0. Parameters: ``Σ_k (H_k·H_{k−1}·F + H_k)``. The final ``wᵀ[p¹;…;p^K]`` lives in the model.

    Defaults as FuxiCTR: no activation, no split-half. The xDeepFM paper's (and DeepCTR's) options:
    ``activation`` (a name, e.g. ``"relu"``) is applied to every map ``X^k``; with ``split_half``
    the first ``H_k/2`` maps of each layer but the last feed the next layer and only the other
    ``H_k/2`` are pooled into the output (``H_k`` must be even), so the output has
    ``Σ_{k<K} H_k/2 + H_K`` entries.
    """

    def __init__(self, num_fields: int, hidden_units: list[int], activation: str | None = None,
                 split_half: bool = False):
        super().__init__()
        self.num_fields = int(num_fields)
        self.hidden_units = [int(h) for h in hidden_units]
        self.split_half = bool(split_half)
        if not self.hidden_units or min(self.hidden_units) < 1:
            raise ValueError(f"CIN needs at least one layer of >= 1 maps, got {hidden_units}")
        if self.split_half and any(h % 2 for h in self.hidden_units[:-1]):
            raise ValueError(f"CIN split_half needs an even number of maps in every layer but the last, "
                             f"got {self.hidden_units}")
        convs, prev, self._kept = [], self.num_fields, []
        for k, h in enumerate(self.hidden_units):
            conv = nn.Conv1d(prev * self.num_fields, h, kernel_size=1)
            nn.init.xavier_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
            convs.append(conv)
            last = k == len(self.hidden_units) - 1
            self._kept.append(h // 2 if self.split_half and not last else h)  # maps fed to layer k+1
            prev = self._kept[-1]
        self.convs = nn.ModuleList(convs)
        self.activation = get_activation(activation)
        self.output_dim = sum(h - kept for h, kept in zip(self.hidden_units[:-1], self._kept)) \
            + self.hidden_units[-1] if self.split_half else sum(self.hidden_units)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        B, F, D = emb.shape
        x, pooled = emb, []
        for k, conv in enumerate(self.convs):
            z = torch.einsum("bid,bjd->bijd", x, emb).reshape(B, -1, D)  # X^{k-1}_i ⊙ X⁰_j
            x = self.activation(conv(z))                                  # (B, H_k, D)
            if self.split_half and k < len(self.convs) - 1:
                x, direct = x[:, :self._kept[k]], x[:, self._kept[k]:]
            else:
                direct = x
            pooled.append(direct.sum(dim=-1))                             # sum over D
        return torch.cat(pooled, dim=-1)

    def extra_repr(self) -> str:
        return (f"num_fields={self.num_fields}, hidden_units={self.hidden_units}, "
                f"split_half={self.split_half}")
