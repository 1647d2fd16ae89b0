"""Multi-task models: several binary labels per row (e.g. click and conversion), one logit per task.

The protocol the trainer reads (see :class:`MultiTaskModel`): ``task_names`` (main task first),
``forward`` -> ``{"logit": main task (B,), "task_logits": (B, T)}``, and
``task_targets(batch)`` -> each task's label and the rows it is evaluated on. The trainer then
reports every task's metrics as ``<task>_<metric>`` (the main task's also plainly, ``AUC``) and
can early-stop on any of them (``trainer.monitor: cvr_AUC``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.feature_map import FeatureMap
from .base import CTRModel


class MultiTaskModel(CTRModel):
    """Base of the models with one tower per label: task ``t`` predicts label column ``tasks[t]``
    on every row, and the loss is ``Σ_t w_t · BCE(logit_t, y_t)``.

    ``tasks``: label names (``feature_map.labels``) in task order, main task first; None = every
    label in the dataset's order. ``task_weights``: one weight per task (None = all 1).
    Subclasses build their towers and return :meth:`outputs` of the ``(B, T)`` logits.
    """

    task_names: list[str]

    def __init__(self, feature_map: FeatureMap, tasks: Sequence[str] | None = None,
                 task_weights: Sequence[float] | None = None,
                 embedding_regularizer: float | str | None = 0.0, net_regularizer: float | str | None = 0.0):
        super().__init__(feature_map, embedding_regularizer, net_regularizer)
        labels = list(feature_map.labels)
        names = [tasks] if isinstance(tasks, str) else list(tasks) if tasks else labels
        unknown = [t for t in names if t not in labels]
        if unknown or len(set(names)) != len(names) or not names:
            raise ValueError(f"{type(self).__name__}: tasks must be distinct label columns of the dataset {labels}, "
                             f"got {names}" + (f" ({unknown} are not labels; list them under the dataset's labels)"
                                               if unknown else ""))
        weights = [1.0] * len(names) if task_weights is None else [float(w) for w in task_weights]
        if len(weights) != len(names) or any(w < 0 for w in weights):
            raise ValueError(f"{type(self).__name__}: task_weights must give one weight >= 0 per task {names}, "
                             f"got {list(task_weights or [])}")
        self.task_names = names
        self.task_weights = weights
        self.register_buffer("label_columns", torch.tensor([labels.index(t) for t in names]), persistent=False)
        self.main_label_column = labels.index(names[0])

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def task_targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels (B, T), rows (B, T) bool)``: each task's label; every row counts."""
        y = batch["label"].index_select(1, self.label_columns.to(batch["label"].device))
        return y, torch.ones_like(y, dtype=torch.bool)

    def outputs(self, task_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit": task_logits[:, 0], "task_logits": task_logits}

    def task_loss(self, batch, outputs):
        y, _ = self.task_targets(batch)
        losses = F.binary_cross_entropy_with_logits(outputs["task_logits"], y, reduction="none").mean(0)
        return sum(w * loss for w, loss in zip(self.task_weights, losses))
