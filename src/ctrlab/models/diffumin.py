"""DiffuMIN: diffusion-driven multi-interest network (Lai et al., RecSys 2025) for long behaviour sequences."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..data.feature_map import FeatureMap
from ..layers.contrastive import info_nce
from ..layers.diffusion import DiffusionSchedule, InterestDenoiser
from ..layers.embedding import FeatureEmbedding
from ..layers.mlp import MLPBlock
from ..layers.multi_interest import OrthogonalMultiInterest
from ..layers.transformer import TransformerBlock
from .base import CTRModel
from .din import din_pairs
from .registry import register


@register
class DiffuMIN(CTRModel):
    """Target ``t = [e_t1; …; e_tn]`` (the target group's embeddings, width ``d = n·D``) and
    behaviours ``h_j = [e_s1,j; …; e_sn,j]`` (the sequence group's, masked by its first sequence);
    fields as DIN's (:func:`ctrlab.models.din.din_pairs`: one pair, inferred from
    ``share_vocab_with`` when not given).

    * **OMIE** (:class:`~ctrlab.layers.multi_interest.OrthogonalMultiInterest`): orthonormal
      directions ``q_1 … q_K`` = QR of ``reshape(W t, (d, K))`` (diag(R) > 0), ``s_jk = h_j·q_k``,
      each real behaviour routed to ``argmax_k s_jk``, the ``top_k`` largest per channel kept,
      ``r_k = (1/n_k) Σ_j M_jk s_jk h_j`` (n_k: the channel's kept count; the row's real behaviours
      with ``interest_normalize="behaviours"``) → ``r`` (B, K, d).
    * **DMIG** (``use_diffusion``): ``r̄_k = r_k/‖r_k‖``; DDPM (``diffusion_steps`` T, β linear
      ``beta_start → beta_end``) with an x₀-predicting denoiser
      (:class:`~ctrlab.layers.diffusion.InterestDenoiser`: ``n_layers`` blocks, ``num_heads``,
      FFN ``dff_factor·d``, cross-attention to the directions ``q``). Training loss
      ``L_diff = MSE(x̂_0(x_t, t), r̄)`` at a random t ∈ [1, T] per row and channel. Generation, in
      training too: ``x_S = √ᾱ_S r̄ + √(1−ᾱ_S) ε`` with ``S = infer_timesteps``, then the x₀-posterior
      steps S → 0 → ``r̂*`` (unit scale), and ``r*_k = ‖r_k‖ r̂*_k`` (back on r's scale, so that r and
      r* enter the MLP alike); in evaluation ε = 0 and posterior means (deterministic). With
      ``detach_interests`` (default) ``r̄`` and ``‖r‖`` are constants for DMIG and CMIC: the
      gradient through ``r/‖r‖`` is ``1/‖r‖`` times larger than BCE's, and from ctrlab's N(0, 1e-4²)
      embeddings (‖r‖ ~ 1e-2 early on) it drowned BCE's under Adam (planted task: AUC 0.5 after 3
      epochs with it, 0.70 without; docs/models.md).
    * **CMIC** (``use_contrastive``): per channel k, ``L_cl,k = InfoNCE(P_a(r̄_k), P_b(r*_k), τ)``
      over the batch (positive: the same row; negatives: the other rows' ``r*_k``; ``P_a``, ``P_b``:
      MLPs ``d → 4d → d``, ReLU); ``L_cl`` = mean over k (0 for a batch of one row).
    * **short-term** (``short_seq_len`` S' > 0): tokens ``[t; h_(1); …; h_(S')]`` (the candidate and
      the S' most recent real behaviours, newest first) + learned position vectors, ``short_layers``
      :class:`~ctrlab.layers.transformer.TransformerBlock` s (self-attention over the real tokens,
      FFN ``dff_factor·d``); ``e_short`` = the candidate token's output state (B, d).
    * ``logit = MLP([r; r*; E_other; e_short])``, ``E_other`` = every other field's embedding
      (categorical incl. the target, numeric, other sequences mean-pooled, dense, as
      :class:`FeatureEmbedding`; the attended sequences are left out).
    * loss ``BCE + diffusion_weight·L_diff + contrastive_weight·L_cl`` (+ regularizers).

    Ablations: ``use_diffusion=False, use_contrastive=False`` is the OMIE-only model (no ``r*``);
    ``use_contrastive=False`` drops CMIC. ``num_channels`` must be ≤ d.

    Hyperparameters (the official repo's configs; D = 10 like the other ctrlab models, the repo
    uses 8): ``embedding_dim=10``, ``target_field=None``, ``sequence_field=None``,
    ``num_channels=4``, ``top_k=100``, ``interest_normalize="routed"``, ``use_diffusion=True``,
    ``use_contrastive=True``, ``n_layers=2``, ``num_heads=2``, ``dff_factor=3``,
    ``diffusion_steps=1000``, ``infer_timesteps=10``, ``beta_start=1e-4``, ``beta_end=0.02``,
    ``temperature=0.05``, ``diffusion_weight=0.01`` (λ1), ``contrastive_weight=0.001`` (λ2),
    ``detach_interests=True``,
    ``short_seq_len=20`` (0: no short-term summary), ``short_layers=1``,
    ``dnn_hidden_units=(256, 128)``, ``dnn_activations="ReLU"``, ``net_dropout=0.``,
    ``batch_norm=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.

    Deliberate differences from the released TF code (docs/models.md): x₀-prediction with the
    matching posterior mean (the code's sampler reads the output as noise); generation noises to step
    ``infer_timesteps`` (not a random t < T); padding is masked before pooling; the QR sign is fixed
    (diag(R) > 0) and no 1e-8 noise is added; evaluation is deterministic.
    """

    needs_sequence = True

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 target_field: str | Sequence[str | Sequence[str]] | None = None,
                 sequence_field: str | Sequence[str | Sequence[str]] | None = None,
                 num_channels: int = 4, top_k: int = 100, interest_normalize: str = "routed",
                 use_diffusion: bool = True, use_contrastive: bool = True,
                 n_layers: int = 2, num_heads: int = 2, dff_factor: int = 3,
                 diffusion_steps: int = 1000, infer_timesteps: int = 10,
                 beta_start: float = 1e-4, beta_end: float = 0.02, temperature: float = 0.05,
                 diffusion_weight: float = 0.01, contrastive_weight: float = 0.001, detach_interests: bool = True,
                 short_seq_len: int = 20, short_layers: int = 1,
                 dnn_hidden_units: Sequence[int] = (256, 128), dnn_activations: str = "ReLU",
                 net_dropout: float = 0.0, batch_norm: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        pairs = din_pairs(feature_map, target_field, sequence_field)
        if len(pairs) != 1:
            raise ValueError(f"DiffuMIN attends one behaviour sequence (or one group), got {len(pairs)} pairs "
                             f"{[(list(t), list(s)) for t, s in pairs]}; group side sequences with their targets")
        self.targets, self.sequences = pairs[0]
        d = embedding_dim * len(self.targets)
        if num_channels > d:
            raise ValueError(f"num_channels={num_channels} > d={d} (embedding_dim {embedding_dim} x {len(self.targets)} "
                             f"target fields): K orthogonal directions need K <= d; lower num_channels or raise embedding_dim")
        if d % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the behaviour width d={d}")
        if use_contrastive and not use_diffusion:
            raise ValueError("use_contrastive=True contrasts the generated interests, which need use_diffusion=True; "
                             "set use_contrastive: false for the OMIE-only model")
        if not 1 <= infer_timesteps <= diffusion_steps:
            raise ValueError(f"infer_timesteps={infer_timesteps} must be in [1, diffusion_steps={diffusion_steps}]")
        if temperature <= 0 or diffusion_weight < 0 or contrastive_weight < 0 or short_seq_len < 0:
            raise ValueError("DiffuMIN needs temperature > 0 and diffusion_weight, contrastive_weight, short_seq_len >= 0")
        self.use_diffusion, self.use_contrastive = bool(use_diffusion), bool(use_contrastive)
        self.detach_interests = bool(detach_interests)
        self.infer_timesteps, self.temperature = int(infer_timesteps), float(temperature)
        self.diffusion_weight, self.contrastive_weight = float(diffusion_weight), float(contrastive_weight)

        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        other = [i for i, n in enumerate(self.embedding.field_names) if n not in self.sequences]
        self.register_buffer("other_columns", torch.tensor(other, dtype=torch.long), persistent=False)
        self.omie = OrthogonalMultiInterest(d, d, num_channels, top_k, interest_normalize)
        width = num_channels * d + len(other) * embedding_dim
        if self.use_diffusion:
            self.schedule = DiffusionSchedule(diffusion_steps, beta_start, beta_end)
            self.denoiser = InterestDenoiser(d, num_channels, n_layers, num_heads, dff_factor)
            width += num_channels * d
        if self.use_contrastive:
            self.project_extracted = MLPBlock(d, [4 * d], activation="ReLU", output_dim=d)
            self.project_generated = MLPBlock(d, [4 * d], activation="ReLU", output_dim=d)
        self.short_seq_len = min(int(short_seq_len), max(s.max_len for s in feature_map.sequences if s.name in self.sequences))
        if self.short_seq_len > 0:
            self.short_position = nn.Parameter(torch.randn(self.short_seq_len + 1, d) * 0.02)
            self.short_blocks = nn.ModuleList(TransformerBlock(d, num_heads, dff_factor) for _ in range(short_layers))
            width += d
        self.mlp = MLPBlock(width, dnn_hidden_units, activation=dnn_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

    def behaviours(self, batch):
        """``(t (B, d), h (B, L, d), mask (B, L))``: the candidate and behaviour vectors."""
        t = torch.cat([self.embedding.categorical_embedding(batch, n) for n in self.targets], dim=-1)
        seqs = [self.embedding.sequence_embedding(batch, n) for n in self.sequences]
        mask = seqs[0][1]
        return t, torch.cat([e for e, _ in seqs], dim=-1) * mask.unsqueeze(-1).to(t.dtype), mask

    def generate(self, r_bar: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``r*`` (B, K, d): ``r̄`` noised to ``infer_timesteps`` and denoised back (stochastic in training)."""
        return self.schedule.generate(r_bar, lambda x, t: self.denoiser(r_bar, x, t, q), self.infer_timesteps,
                                      stochastic=self.training)

    def diffusion_loss(self, r_bar: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``L_diff``: MSE of the x₀-prediction at a random step per row and channel."""
        t = torch.randint(1, self.schedule.num_steps + 1, r_bar.shape[:2], device=r_bar.device)
        x_t = self.schedule.q_sample(r_bar, t, torch.randn_like(r_bar))
        return F.mse_loss(self.denoiser(r_bar, x_t, t, q), r_bar)

    def contrastive_loss(self, r_bar: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """``L_cl``: InfoNCE per channel over the batch, averaged over channels."""
        a, b = self.project_extracted(r_bar), self.project_generated(generated)
        return torch.stack([info_nce(a[:, k], b[:, k], self.temperature) for k in range(a.shape[1])]).mean()

    def short_term(self, t: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``e_short`` (B, d): the candidate token's state over ``[t; S' most recent real behaviours]``."""
        L = h.shape[1]
        position = torch.arange(L, device=h.device, dtype=h.dtype).expand_as(mask)
        recent = torch.where(mask, position, torch.full_like(position, -1.0)).topk(min(self.short_seq_len, L), dim=1)
        tokens = torch.cat([t.unsqueeze(1), h.gather(1, recent.indices.unsqueeze(-1).expand(-1, -1, h.shape[-1]))], 1)
        keep = torch.cat([torch.ones_like(mask[:, :1]), recent.values >= 0], dim=1)
        x = tokens + self.short_position[:tokens.shape[1]]
        for block in self.short_blocks:
            x = block(x, keep)
        return x[:, 0]

    def forward(self, batch):
        t, h, mask = self.behaviours(batch)
        r, q, _ = self.omie(t, h, mask)
        E = self.embedding(batch).index_select(1, self.other_columns)
        parts, out = [r.flatten(1), E.flatten(1)], {}
        if self.use_diffusion:
            norm = r.norm(dim=-1, keepdim=True)
            r_bar = r / norm.clamp(min=1e-12)
            if self.detach_interests:
                r_bar, norm = r_bar.detach(), norm.detach()
            generated = self.generate(r_bar, q)
            parts.append((generated * norm).flatten(1))  # back on r's scale (see the docstring)
            if self.training and self.diffusion_weight > 0:
                out["diffusion_loss"] = self.diffusion_loss(r_bar, q)
            if self.training and self.use_contrastive and self.contrastive_weight > 0:
                out["contrastive_loss"] = self.contrastive_loss(r_bar, generated)
        if self.short_seq_len > 0:
            parts.append(self.short_term(t, h, mask))
        out["logit"] = self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
        return out

    def task_loss(self, batch, outputs):
        """``BCE + diffusion_weight·L_diff + contrastive_weight·L_cl`` (the extra terms only from
        training-mode outputs)."""
        loss = super().task_loss(batch, outputs)
        if "diffusion_loss" in outputs:
            loss = loss + self.diffusion_weight * outputs["diffusion_loss"]
        if "contrastive_loss" in outputs:
            loss = loss + self.contrastive_weight * outputs["contrastive_loss"]
        return loss
