"""Base class of every ctrlab model: forward returns outputs, the model owns its loss."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..data.feature_map import FeatureMap


class CTRModel(nn.Module):
    """A CTR model maps a batch (dict of tensors, see :mod:`ctrlab.data.feature_map`) to outputs.

    ``forward(batch)`` returns a dict with at least ``"logit"`` of shape ``(B,)`` (the main task).
    ``loss(batch, outputs)`` returns the scalar training loss: BCE on the first label plus the
    L2 regularizers, following FuxiCTR's rule ``(lambda / 2) * ||param||_2^2`` over whole
    embedding tables (``embedding_regularizer``) and over every other parameter
    (``net_regularizer``). Models with special losses (multi-task, Tri-BCE, distillation)
    override :meth:`task_loss` and keep the regularizer.
    """

    def __init__(self, feature_map: FeatureMap, embedding_regularizer: float = 0.0, net_regularizer: float = 0.0):
        super().__init__()
        self.feature_map = feature_map
        self.embedding_regularizer = float(embedding_regularizer)
        self.net_regularizer = float(net_regularizer)

    # ---- parameters ------------------------------------------------------------------------
    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of embedding tables (every nn.Embedding inside the model)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]

    def net_parameters(self) -> list[nn.Parameter]:
        emb = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in emb]

    def regularization(self) -> torch.Tensor:
        reg = torch.zeros((), device=self._device())
        if self.embedding_regularizer > 0:
            for p in self.embedding_parameters():
                reg = reg + (self.embedding_regularizer / 2) * p.pow(2).sum()
        if self.net_regularizer > 0:
            for p in self.net_parameters():
                reg = reg + (self.net_regularizer / 2) * p.pow(2).sum()
        return reg

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ---- loss -------------------------------------------------------------------------------
    def task_loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean BCE of the main logit against the first label."""
        return F.binary_cross_entropy_with_logits(outputs["logit"], batch["label"][:, 0])

    def loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task_loss(batch, outputs) + self.regularization()

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def predict_proba(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch)["logit"])
