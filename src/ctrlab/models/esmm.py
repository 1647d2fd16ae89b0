"""ESMM (Ma et al., SIGIR 2018): post-click conversion rate learned over the entire impression
space, ``pCTCVR = pCTR × pCVR``, so the CVR tower never trains on the clicked rows alone."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.feature_map import FeatureMap
from ..layers import FeatureEmbedding, MLPBlock
from .base import CTRModel
from .registry import register

@register
class ESMM(CTRModel):
    """Embeddings ``e = flatten(E)`` shared by two towers with their own weights:
    ``a = MLP_ctr(e)``, ``b = MLP_cvr(e)``; ``pCTR = σ(a)``, ``pCVR = σ(b)``,
    ``pCTCVR = pCTR·pCVR``, as the logit of the product in closed form:
    ``logit(σ(a)σ(b)) = −log(e^{−a} + e^{−b} + e^{−a−b})`` (a log-sum-exp: no underflow of the
    product in the tails, no ``1 − p`` cancellation, and ONNX-exportable).

    Loss over ALL impressions (click ``y``, conversion ``z``): ``w_ctr·BCE(y, pCTR) +
    w_ctcvr·BCE(y·z, pCTCVR)`` (BCE with logits on that logit), no term on pCVR (the CTCVR term reaches the CVR tower through the
    product; with ``ctcvr_weight=0`` the CVR tower gets no gradient). The CTCVR label is ``y·z``:
    a conversion on an unclicked row (inconsistent data) counts as none.

    Tasks (``task_names``, the trainer's ``<task>_<metric>``): ``ctr`` (label y, all rows, the
    main task: ``logit`` = a), ``cvr`` (label z, **clicked rows only**, logit b) and ``ctcvr``
    (label y·z, all rows, logit of pCTCVR).

    Hyperparameters (the paper's towers; embedding_dim as the other ctrlab models):
    ``embedding_dim=10``, ``click_label=None`` (label column of clicks; None = the dataset's first
    label), ``conversion_label=None`` (None = the second label), ``tower_hidden_units=(360, 200, 80)``,
    ``hidden_activations="relu"``, ``net_dropout=0.``, ``batch_norm=False``, ``ctr_weight=1.``,
    ``ctcvr_weight=1.``, ``embedding_regularizer=0.``, ``net_regularizer=0.``.
    """

    task_names = ["ctr", "cvr", "ctcvr"]
    derived_tasks = ["ctcvr"]
    min_labels = 2

    def __init__(self, feature_map: FeatureMap, embedding_dim: int = 10, click_label: str | None = None,
                 conversion_label: str | None = None, tower_hidden_units: Sequence[int] = (360, 200, 80),
                 hidden_activations: str = "relu", net_dropout: float = 0.0, batch_norm: bool = False,
                 ctr_weight: float = 1.0, ctcvr_weight: float = 1.0,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        labels = list(feature_map.labels)
        click = labels[0] if click_label is None else click_label
        conversion = (labels[1] if len(labels) > 1 else None) if conversion_label is None else conversion_label
        if conversion is None or click not in labels or conversion not in labels or click == conversion:
            raise ValueError(f"ESMM needs a click and a conversion label column (the dataset's labels: {labels}); "
                             f"got click_label={click!r}, conversion_label={conversion!r}: list both under the "
                             "dataset's labels, clicks first, or name them with model_params click_label / "
                             "conversion_label")
        if min(ctr_weight, ctcvr_weight) < 0:
            raise ValueError(f"ESMM: ctr_weight and ctcvr_weight must be >= 0, got {ctr_weight}, {ctcvr_weight}")
        self.click_column, self.conversion_column = labels.index(click), labels.index(conversion)
        self.main_label_column = self.click_column  # the CTR task, on every row
        self.ctr_weight, self.ctcvr_weight = float(ctr_weight), float(ctcvr_weight)
        self.embedding = FeatureEmbedding(feature_map, embedding_dim)
        width = self.embedding.num_fields * embedding_dim

        def tower():
            return MLPBlock(width, tower_hidden_units, activation=hidden_activations, dropout=net_dropout,
                            batch_norm=batch_norm, output_dim=1)

        self.ctr_tower, self.cvr_tower = tower(), tower()

    def forward(self, batch):
        e = self.embedding(batch).flatten(start_dim=1)
        a, b = self.ctr_tower(e).squeeze(-1), self.cvr_tower(e).squeeze(-1)
        ctcvr_logit = -torch.logsumexp(torch.stack([-a, -b, -a - b], dim=-1), dim=-1)  # of the product, not of a + b
        return {"logit": a, "task_logits": torch.stack([a, b, ctcvr_logit], dim=1)}

    def task_targets(self, batch):
        y, z = batch["label"][:, self.click_column], batch["label"][:, self.conversion_column]
        labels = torch.stack([y, z, y * z], dim=1)
        rows = torch.stack([torch.ones_like(y, dtype=torch.bool), y > 0.5, torch.ones_like(y, dtype=torch.bool)], 1)
        return labels, rows

    def task_loss(self, batch, outputs):
        labels, _ = self.task_targets(batch)  # the CTCVR label y·z defined once, there
        ctr = F.binary_cross_entropy_with_logits(outputs["logit"], labels[:, 0])
        ctcvr = F.binary_cross_entropy_with_logits(outputs["task_logits"][:, 2], labels[:, 2])
        return self.ctr_weight * ctr + self.ctcvr_weight * ctcvr
