"""FCN (first published as DCNv3): an Exponential and a Linear Cross Network with Self-Mask, fused and
trained with Tri-BCE; plus the single-stream ECN and LCN."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, init_linear
from ..layers.exponential_cross import ExponentialCrossNetwork, LinearCrossNetwork, multi_head_half_split
from .base import CTRModel
from .registry import register


def tri_bce(logit: torch.Tensor, logit_deep: torch.Tensor, logit_shallow: torch.Tensor, y: torch.Tensor,
            detach_weights: bool = False) -> torch.Tensor:
    """``L + w_D·L_D + w_S·L_S`` with batch-mean BCEs ``L = BCE(σ(z))``, ``L_D = BCE(σ(z_D))``,
    ``L_S = BCE(σ(z_S))`` and ``w_· = max(0, L_· − L)``. ``detach_weights`` stops gradients
    through ``w`` (the official code does not)."""
    loss = F.binary_cross_entropy_with_logits(logit, y)
    total = loss
    for z in (logit_deep, logit_shallow):
        sub = F.binary_cross_entropy_with_logits(z, y)
        w = torch.clamp(sub - loss, min=0.0)
        total = total + (w.detach() if detach_weights else w) * sub
    return total


class _CrossStreams(CTRModel):
    """Shared embedding: ``X0 = multi_head_half_split(E)`` of shape (B, H, d), d = F·D, from one
    table of width D·H; a stream's logit is ``mean_h Linear(d, 1)(net(X0))_h``."""

    def __init__(self, feature_map: FeatureMap, embedding_dim: int, num_heads: int,
                 embedding_regularizer: float | str | None, net_regularizer: float | str | None):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        self.num_heads = int(num_heads)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim * self.num_heads)
        self.input_dim = self.embedding.num_fields * int(embedding_dim)

    def x0(self, batch) -> torch.Tensor:
        return multi_head_half_split(self.embedding(batch), self.num_heads)

    @staticmethod
    def stream_logit(net: nn.Module, fc: nn.Linear, x0: torch.Tensor) -> torch.Tensor:
        return fc(net(x0)).mean(dim=1).squeeze(-1)


@register
class FCN(_CrossStreams):
    """``X0 = multi_head_half_split(E)``; ECN ("deep") and LCN ("shallow") on X0, where layer l is
    ``c = W_l x_l`` (W_l: d → d/2), ``c̃ = [c ; c ⊙ ReLU(LN(c))]`` (Self-Mask) and
    ``x_{l+1} = x_l ⊙ (c̃ + b_l) + x_l`` (ECN) or ``x0 ⊙ (c̃ + b_l) + x_l`` (LCN);
    ``z_D = mean_heads fc_D(x_L^ECN)``, ``z_S = mean_heads fc_S(x_L^LCN)``,
    ``logit = (z_D + z_S) / 2``. ``forward`` returns ``logit``, ``logit_deep`` (z_D) and
    ``logit_shallow`` (z_S).

    Loss (Tri-BCE, :func:`tri_bce`): ``L + w_D·L_D + w_S·L_S``, ``w = max(0, L_stream − L)``,
    batch-mean BCEs, plus the L2 regularizers. The weights are NOT detached
    (``detach_loss_weights=False``), as in the official code (``salmon1802/FCN``
    ``DCNv3.add_loss``), because every published FCN number was trained that way;
    ``detach_loss_weights=True`` gives ``dL + w_D·dL_D + w_S·dL_S`` (how the two differ, and
    the polynomial degrees: docs/models.md, FCN).

    Hyperparameters (official ``DCNv3`` class defaults): ``embedding_dim=10`` (D per head, even),
    ``num_deep_cross_layers=4`` (ECN), ``num_shallow_cross_layers=4`` (LCN),
    ``deep_net_dropout=0.1``, ``shallow_net_dropout=0.3``, ``layer_norm=True`` (inside the mask),
    ``batch_norm=False`` (BatchNorm1d over heads on ``c``), ``num_heads=1``,
    ``detach_loss_weights=False``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    Tuned (official ``config/model_config.yaml``): Criteo_x4 D 16, ECN 3, LCN 4, dropout
    0.1/0.2, embedding_regularizer 1e-5; Avazu_x4 D 16, ECN 4, LCN 5, no dropout,
    batch_norm, 4 heads.
    Deviations: BCE on logits (the official code applies BCE to sigmoid outputs; equal up to
    float clamping).
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10,
                 num_deep_cross_layers: int = 4, num_shallow_cross_layers: int = 4,
                 deep_net_dropout: float = 0.1, shallow_net_dropout: float = 0.3,
                 layer_norm: bool = True, batch_norm: bool = False, num_heads: int = 1,
                 detach_loss_weights: bool = False,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_dim, num_heads, embedding_regularizer, net_regularizer)
        d = self.input_dim
        self.ecn = ExponentialCrossNetwork(d, num_deep_cross_layers, deep_net_dropout, layer_norm,
                                           batch_norm, self.num_heads)
        self.lcn = LinearCrossNetwork(d, num_shallow_cross_layers, shallow_net_dropout, layer_norm,
                                      batch_norm, self.num_heads)
        self.fc_deep = init_linear(nn.Linear(d, 1))
        self.fc_shallow = init_linear(nn.Linear(d, 1))
        self.detach_loss_weights = bool(detach_loss_weights)

    def forward(self, batch):
        x0 = self.x0(batch)
        z_d = self.stream_logit(self.ecn, self.fc_deep, x0)
        z_s = self.stream_logit(self.lcn, self.fc_shallow, x0)
        return {"logit": (z_d + z_s) / 2, "logit_deep": z_d, "logit_shallow": z_s}

    def task_loss(self, batch, outputs):
        return tri_bce(outputs["logit"], outputs["logit_deep"], outputs["logit_shallow"],
                       batch["label"][:, 0], self.detach_loss_weights)


@register
class DCNv3(FCN):
    __doc__ = ("Alias of :class:`FCN` under its first name (official configs say ``model: DCNv3``).\n\n    "
               + FCN.__doc__)


@register
class ECN(_CrossStreams):
    """FCN's deep stream alone: ``logit = mean_heads fc(ECN(X0))`` with the ECN layer of
    :class:`FCN` (``x_{l+1} = x_l ⊙ (c̃ + b_l) + x_l``, degree 2^L); plain BCE.

    Hyperparameters (official ``src/ECN.py`` class defaults, except ``embedding_dim``: 16 there,
    10 here as in every ctrlab model): ``embedding_dim=10``, ``num_cross_layers=3``,
    ``net_dropout=0.``, ``layer_norm=True``, ``batch_norm=False``, ``num_heads=1``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``. Tuned (official config): Criteo_x4
    D 16, 4 layers, dropout 0.1, embedding_regularizer 1e-5; Avazu_x4 D 16, 4 layers, batch_norm,
    3 heads.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, num_cross_layers: int = 3,
                 net_dropout: float = 0.0, layer_norm: bool = True, batch_norm: bool = False,
                 num_heads: int = 1, embedding_regularizer: float | str | None = 0.0,
                 net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_dim, num_heads, embedding_regularizer, net_regularizer)
        self.ecn = ExponentialCrossNetwork(self.input_dim, num_cross_layers, net_dropout, layer_norm,
                                           batch_norm, self.num_heads)
        self.fc = init_linear(nn.Linear(self.input_dim, 1))

    def forward(self, batch):
        return {"logit": self.stream_logit(self.ecn, self.fc, self.x0(batch))}


@register
class LCN(_CrossStreams):
    """FCN's shallow stream alone (an ablation; no official class): ``logit = mean_heads
    fc(LCN(X0))`` with ``x_{l+1} = x0 ⊙ (c̃ + b_l) + x_l`` (degree L + 1); plain BCE.

    Hyperparameters (FCN's shallow-stream defaults): ``embedding_dim=10``, ``num_cross_layers=4``,
    ``net_dropout=0.3``, ``layer_norm=True``, ``batch_norm=False``, ``num_heads=1``,
    ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, num_cross_layers: int = 4,
                 net_dropout: float = 0.3, layer_norm: bool = True, batch_norm: bool = False,
                 num_heads: int = 1, embedding_regularizer: float | str | None = 0.0,
                 net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_dim, num_heads, embedding_regularizer, net_regularizer)
        self.lcn = LinearCrossNetwork(self.input_dim, num_cross_layers, net_dropout, layer_norm,
                                      batch_norm, self.num_heads)
        self.fc = init_linear(nn.Linear(self.input_dim, 1))

    def forward(self, batch):
        return {"logit": self.stream_logit(self.lcn, self.fc, self.x0(batch))}
