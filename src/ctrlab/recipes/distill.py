"""Online distillation (SUAN paper, ``docs/models/SUAN.md`` "LightSUAN and online distillation"), for
any teacher and any student of the zoo: both train together on the same batches, and only the student
is served.

Losses, per training batch::

    teacher: L_t = teacher.loss(batch)                        its own BCE + its own regularizers
    student: L_s = student.loss(batch) + weight * D(z_s, stop_grad(z_t))
    trained: L_t + L_s   (the teacher's parameters see only L_t, the student's only L_s)

with logits ``z``. The distillation term ``D`` (``loss``):

* ``bce`` (default): ``T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T))``, the binary form of Hinton et
  al.'s soft-target cross entropy: the student's probability against the teacher's (detached)
  probability as a soft label; its gradient in ``z_s`` is ``T * (sigmoid(z_s/T) - sigmoid(z_t/T))``,
  and the ``T^2`` keeps it comparable across temperatures (``temperature`` T, default 1: the plain
  probabilities). Its value is not 0 at ``z_s = z_t`` (it is the teacher's entropy), its gradient is.
* ``mse``: ``mean((z_s - z_t)^2)`` on the logits (no temperature).

The paper does not give ``D`` or ``weight``; ``weight`` (lambda) defaults to 1.

**How it trains.** :class:`DistillPair` (a :class:`~ctrlab.models.base.CTRModel` that is not
registered in the zoo) holds both models and is what :class:`~ctrlab.train.Trainer` trains: one
optimizer over both (Adam is per parameter, so this is two optimizers), the gradient norm clipped per
model (:meth:`DistillPair.clip_groups`), the teacher's batch-norm statistics and dropout its own. In
eval mode its forward is the student's alone, so validation, early stopping, the learning-rate decay
and the best checkpoint all follow the **student's** validation metric; the teacher's weights kept are
those of the student's best epoch.

**Random streams, so that weight 0 is an independent student run, bit for bit.** The student is built
right after ``seed_everything(trainer.seed)`` exactly as ``ctrlab train`` builds it; the teacher is
built afterwards with the global RNG states saved and restored around it, from its own seed
(:func:`teacher_seed`), so the student's weights and every random number drawn after them are the
same as in a run without a teacher. During training the teacher's forward draws its dropout from its
own stream, seeded per step from ``(teacher seed, step)`` with the global states saved and restored
around it (``teacher_steps`` is a buffer, saved in every checkpoint, so resume continues the stream
exactly). The data order comes from the loader's ``(seed, epoch)`` shuffle, the same for both. With
``weight: 0`` the student therefore gets the same batches, dropout masks, gradients (clipped over its
own parameters only) and updates as when trained alone (fp32 / bf16; with fp16 the shared loss scaler
skips a step whenever either model overflows).

**The run folder** is the student's, a normal run (``model``/``model_params`` name the student;
``model.safetensors`` holds its weights; evaluate, predict, export and serve take it as any run), with
``distill:`` in ``run_config.yaml`` (teacher, its resolved hyperparameters, weight, loss, temperature)
and, in ``metrics.json``, a ``distill`` record with the teacher's valid/test metrics. The teacher is a
run folder of its own in ``RUN/teacher`` (``ctrlab evaluate RUN/teacher`` works on it).
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, from_dict
from ..models.base import CTRModel

TEACHER_DIR = "teacher"
"""The teacher's run folder inside the student's (listed in :data:`ctrlab.run_folder.RUN_FILES`)."""
LOSSES = ("bce", "mse")
_PREFIX = "teacher:"  # the teacher's outputs inside the pair's output dict


@dataclass
class DistillOptions:
    """The ``distill:`` section of a run config (``ctrlab distill`` writes it): the student is the run's
    own ``model``; these settings add the teacher. Empty section: no distillation."""

    teacher: str = ""
    """A registered model name (``ctrlab models``): the teacher, trained beside the student."""
    teacher_params: dict[str, Any] = field(default_factory=dict)
    """The teacher's hyperparameters, over its preset (``preset: auto`` picks the teacher's own BARS
    preset for the dataset) and its class defaults; a run folder saves them resolved."""
    weight: float = 1.0
    """lambda, the distillation term's weight in the student's loss; 0: the student trains exactly as it
    would alone (the teacher beside it, unused)."""
    loss: str = "bce"
    """``bce``: T^2 * BCE of the student's tempered probability against the teacher's; ``mse``: mean squared
    difference of the logits."""
    temperature: float = 1.0
    """T of ``bce`` (logits divided by T before the sigmoid); must be 1 with ``mse``."""

    def validate(self, where: str = "distill") -> None:
        """Raise :class:`~ctrlab.config.ConfigError` naming the first bad field and what it accepts."""
        from ..models import get_model_class

        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError(f"{where}.teacher: name the teacher model (a registered model, see `ctrlab models`), "
                              "e.g. --teacher FinalMLP")
        try:
            get_model_class(self.teacher)
        except ValueError as exc:
            raise ConfigError(f"{where}.teacher: {exc}") from None
        if not isinstance(self.teacher_params, Mapping):
            raise ConfigError(f"{where}.teacher_params: must be a mapping of the teacher's hyperparameters, "
                              f"got {self.teacher_params!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{where}.weight: must be a finite number >= 0 (lambda, the distillation term's "
                              f"weight; 0 = no distillation), got {w!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"{where}.loss: {self.loss!r} is not one of {list(LOSSES)}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"{where}.temperature: must be a finite number > 0, got {t!r}")
        if self.loss == "mse" and t != 1:
            raise ConfigError(f"{where}.temperature: {t} has no effect with loss mse (on logits); use loss bce "
                              "or temperature 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "distill") -> "DistillOptions":
        opts = from_dict(cls, dict(data or {}), where)
        opts.validate(where)
        return opts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_seed(seed: int) -> int:
    """The teacher's seed (initial weights and dropout stream), derived from the run's ``trainer.seed`` so
    that it differs from the student's: ``SeedSequence([seed, 1])``'s first 31-bit word."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def isolated_rng(seed: int, devices: list[int] | None = None) -> Iterator[None]:
    """Python's, numpy's and torch's (CPU and the given CUDA devices') global random states seeded with
    ``seed`` inside the block and restored as they were after it: what runs inside draws from its own
    stream and the caller's stream goes on as if the block had not run."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices or []):
            random.seed(seed)
            np.random.seed(seed % (2**32))
            torch.random.default_generator.manual_seed(seed)
            for d in devices or []:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def distill_term(student_logit: torch.Tensor, teacher_logit: torch.Tensor, loss: str = "bce",
                 temperature: float = 1.0) -> torch.Tensor:
    """``D(z_s, stop_grad(z_t))`` (the module docstring gives both forms); the teacher's logit is
    detached here, so no gradient of this term can reach the teacher."""
    z_t = teacher_logit.detach().float()
    z_s = student_logit.float()
    if loss == "mse":
        return F.mse_loss(z_s, z_t)
    if loss == "bce":
        t = float(temperature)
        return (t * t) * F.binary_cross_entropy_with_logits(z_s / t, torch.sigmoid(z_t / t))
    raise ValueError(f"unknown distillation loss {loss!r}; choose one of {list(LOSSES)}")


class DistillPair(CTRModel):
    """A teacher and a student trained together (not a zoo model: it is never registered or served).

    ``forward`` in train mode runs both (the teacher on its own dropout stream) and returns the student's
    outputs with the teacher's under ``"teacher:<key>"``; in eval mode, the student's alone, so the
    trainer validates and early-stops on the student. ``loss`` = student's loss + teacher's loss +
    ``weight * distill_term(student logit, detached teacher logit)``.
    """

    def __init__(self, student: CTRModel, teacher: CTRModel, weight: float = 1.0, loss: str = "bce",
                 temperature: float = 1.0, seed: int = 0):
        super().__init__(student.feature_map)
        self.student = student
        self.teacher = teacher
        self.weight = float(weight)
        self.distill_loss = loss
        self.temperature = float(temperature)
        self.seed = int(seed)
        # the teacher's dropout stream position: a buffer, so checkpoints (and resume) carry it
        self.register_buffer("teacher_steps", torch.zeros((), dtype=torch.int64))
        # for the trainer's sparse_embeddings check (an L2 over whole tables has a dense gradient)
        self.embedding_regularizer = max(student.embedding_regularizer, teacher.embedding_regularizer)
        self.embedding_l1 = max(student.embedding_l1, teacher.embedding_l1)

    def _teacher_forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.teacher_steps.device
        step_seed = int(np.random.SeedSequence([self.seed, int(self.teacher_steps)]).generate_state(1)[0])
        with isolated_rng(step_seed, [device.index or 0] if device.type == "cuda" else None):
            out = self.teacher(batch)
        self.teacher_steps += 1
        return out

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.student(batch)
        if not self.training:
            return out
        teacher = self._teacher_forward(batch)
        return {**out, **{_PREFIX + k: v for k, v in teacher.items()}}

    @staticmethod
    def split_outputs(outputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(student's outputs, teacher's outputs) of a train-mode forward."""
        student = {k: v for k, v in outputs.items() if not k.startswith(_PREFIX)}
        teacher = {k[len(_PREFIX):]: v for k, v in outputs.items() if k.startswith(_PREFIX)}
        return student, teacher

    def losses(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
        """The three terms: ``student`` (its loss), ``teacher`` (its loss), ``distill`` (unweighted)."""
        s_out, t_out = self.split_outputs(outputs)
        if "logit" not in t_out:
            raise ValueError("DistillPair.loss needs a train-mode forward's outputs (the teacher's are missing)")
        return {"student": self.student.loss(batch, s_out), "teacher": self.teacher.loss(batch, t_out),
                "distill": distill_term(s_out["logit"], t_out["logit"], self.distill_loss, self.temperature)}

    def loss(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = self.losses(batch, outputs)
        total = parts["student"] + parts["teacher"]
        if self.weight:
            total = total + self.weight * parts["distill"]
        return total

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Both models' own optimizer groups (e.g. OptInter's architecture logits), names prefixed."""
        return [{**g, "name": f"{who}.{g.get('name', 'group')}"}
                for who, m in (("student", self.student), ("teacher", self.teacher)) for g in m.optimizer_groups()]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The trainer clips each model's gradient norm on its own (one joint norm would let the
        teacher's gradients shrink the student's steps)."""
        return [[p for p in m.parameters() if p.requires_grad] for m in (self.student, self.teacher)]

    def count_parameters(self) -> int:
        """Parameters trained (both models); the served student's are ``student.count_parameters()``."""
        return self.student.count_parameters() + self.teacher.count_parameters()


def attach(student: CTRModel, teacher: CTRModel, options: DistillOptions, seed: int) -> DistillPair:
    """The pair the trainer trains; ``seed`` is the teacher's (:func:`teacher_seed`)."""
    return DistillPair(student, teacher, options.weight, options.loss, options.temperature, seed)
