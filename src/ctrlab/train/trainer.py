"""Epoch-based training with the BARS / FuxiCTR protocol, exact resume and atomic checkpoints.

Protocol (FuxiCTR ``BaseModel.fit`` with ``eval_steps=None``), one epoch at a time:

1. ``train_loader.set_epoch(epoch)``; train over its (shuffled) batches with
   ``loss = model.loss(batch, model(batch))``, gradient norm clipped to ``max_grad_norm``.
2. Evaluate on the validation loader; the monitored value is ``sum(w * metric)`` over the
   ``monitor`` terms (``"AUC"`` = ``{"AUC": 1}``, ``"AUC-logloss"`` = ``{"AUC": 1, "logloss": -1}``).
3. If it did not improve on the best value by at least ``min_delta`` (in ``monitor_mode``
   direction; FuxiCTR's ``value < best + min_delta`` test for max): ``stopping_steps += 1`` and, with ``reduce_lr_on_plateau``, every param group's
   lr becomes ``max(lr * lr_decay_factor, min_lr)``. Otherwise ``stopping_steps = 0``, the best
   value is recorded and the weights are saved as the best checkpoint.
4. Stop when ``stopping_steps >= patience`` (and, a non-BARS option, at least ``min_epochs``
   epochs ran), or after ``epochs`` epochs. Finally the best weights are loaded back.

The model owns its loss (including L2 regularizers); the trainer never looks inside a model.
Evaluation uses ``torch.sigmoid(outputs["logit"])`` (in float64) against ``batch["label"][:, 0]``, with
``batch["group"]`` as group ids for gAUC when present.

Checkpoints (``run_dir/checkpoints/``) are written atomically after every epoch; their files and the
commit protocol are described in :mod:`ctrlab.train.checkpoint`.

``fit(..., resume=True)`` restores weights, optimizer, counters, history and RNG states and goes
on with the next epoch; because the loader's order depends only on ``(seed, epoch)`` a resumed
run ends with bit-identical weights and metrics to an uninterrupted one (on the same device and
thread count).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError, from_dict, to_dict
from ..layers.embedding import enable_sparse_gradients
from .checkpoint import CheckpointDir, CheckpointError, file_epoch, optimizer_payload, rng_state, set_rng_state
from .distributed import (
    SINGLE,
    DistContext,
    all_gather_bytes,
    all_gather_ints,
    all_mean,
    all_sum,
    broadcast_buffers,
    check_device,
    gather_rows,
    rank_device,
)
from .metrics import (GROUP_METRICS, LOWER_IS_BETTER, METRIC_NAMES, evaluate_metrics, final_metric_names, reliability,
                      task_metric)
from .optim import OPTIMIZERS, clip_grad_norm, make_optimizer

__all__ = [
    "TrainerConfig",
    "Trainer",
    "EarlyStopping",
    "CheckpointError",
    "seed_everything",
    "parse_monitor",
    "TIMING_KEYS",
]

logger = logging.getLogger("ctrlab.train")

TIMING_KEYS = ("train_seconds", "eval_seconds", "seconds", "samples_per_s")
"""History keys that hold wall-clock measurements (everything else in a record is deterministic)."""

# ---------------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and all CUDA devices).

    Call it before building the model so initial weights are reproducible. With
    ``deterministic=True`` also ask torch for deterministic kernels
    (``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic, and
    ``CUBLAS_WORKSPACE_CONFIG`` when unset); CPU training repeats bit for bit without it.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
_MONITOR_RE = re.compile(r"\s*([+-]?)\s*([A-Za-z][A-Za-z0-9_@]*)\s*")  # names such as nDCG@10


def parse_monitor(monitor: str | Mapping[str, float]) -> dict[str, float]:
    """Monitor spec -> ``{metric: weight}``.

    ``"AUC"`` -> ``{"AUC": 1.0}``; ``"AUC-logloss"`` -> ``{"AUC": 1.0, "logloss": -1.0}``
    (FuxiCTR's ``{"AUC": 1, "logloss": -1}``); a mapping is taken as the weights themselves.
    """
    weights: dict[str, float] = {}
    if isinstance(monitor, Mapping):
        items = [(str(k), float(v)) for k, v in monitor.items()]
    elif isinstance(monitor, str):
        items = []
        pos = 0
        text = monitor.strip()
        while pos < len(text):
            m = _MONITOR_RE.match(text, pos)
            if not m or m.end() == pos or (items and not m.group(1)):
                raise ConfigError(
                    f"monitor {monitor!r} is not understood; use a metric name ('AUC'), a signed "
                    "combination ('AUC-logloss') or a mapping {'AUC': 1, 'logloss': -1}"
                )
            items.append((m.group(2), -1.0 if m.group(1) == "-" else 1.0))
            pos = m.end()
    else:
        raise ConfigError(f"monitor must be a string or a mapping, got {monitor!r}")
    if not items:
        raise ConfigError("monitor is empty; use e.g. 'AUC'")
    for name, w in items:
        try:
            metric = task_metric(name)[1]  # a metric, or <task>_<metric> of a multi-task model (checked by Trainer)
        except ValueError:
            raise ConfigError(f"monitor uses unknown metric {name!r}; choose from {list(METRIC_NAMES)} "
                              "(a multi-task model's: <task>_<metric>, e.g. cvr_AUC)") from None
        if metric == "calibration":
            raise ConfigError(f"monitor uses {name!r}, which is best at 1 (neither larger nor smaller is better) "
                              "and cannot be monitored; monitor ECE or NE (lower is better) for calibration")
        if not math.isfinite(w):
            raise ConfigError(f"monitor weight of {name} must be finite, got {w}")
        weights[name] = weights.get(name, 0.0) + w
    return weights


@dataclass
class TrainerConfig:
    """Training settings (the ``trainer:`` section of an experiment config).

    Defaults follow the BARS benchmark protocol as implemented by FuxiCTR.
    """

    epochs: int = 100
    """Maximum number of training epochs (early stopping usually ends training sooner)."""
    batch_size: int = 4096
    """Rows per training step; with data parallelism (DDP) the global batch, split evenly over the ranks."""
    eval_batch_size: int | None = None
    """Rows per evaluation / prediction batch; None = ``batch_size``."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimizer: torch's Adam, AdamW (torch default weight_decay 0.01) or plain SGD, all with default options."""
    lr: float = 1e-3
    """Initial learning rate."""
    monitor: str | dict[str, float] = "AUC"
    """Validation value to track: a metric name, a signed combination like ``"AUC-logloss"``, or weights ``{"AUC": 1, "logloss": -1}``. Any metric but ``calibration`` (best at 1, neither direction)."""
    monitor_mode: Literal["auto", "max", "min"] = "auto"
    """Whether larger (max) or smaller (min) monitor values are better; auto = min for a monitor of lower-is-better metrics only (``logloss``, ``NE``, ``ECE``), max otherwise."""
    patience: int = 2
    """Stop after this many consecutive epochs without improvement (FuxiCTR ``early_stop_patience``)."""
    reduce_lr_on_plateau: bool = True
    """Multiply the learning rate by ``lr_decay_factor`` after every epoch without improvement."""
    lr_decay_factor: float = 0.1
    """Factor applied to the learning rate on a plateau."""
    min_lr: float = 1e-6
    """The learning rate never decays below this."""
    min_delta: float = 1e-6
    """An epoch improves only if it beats the best monitor value by at least this (FuxiCTR's rule)."""
    max_grad_norm: float | None = 10.0
    """Clip the global gradient norm to this value before each step; None = no clipping. A model with a
    ``clip_groups()`` method (a distillation pair) has each group's norm clipped on its own."""
    seed: int = 2021
    """Seed of the run: Python, numpy and torch are seeded with it before the model is built (initial
    weights), and the training loader's shuffle uses it."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    num_threads: int | None = None
    """torch intra-op CPU threads (``torch.set_num_threads``, process-wide); None = leave torch's setting."""
    restore_best: bool = True
    """Load the best epoch's weights back into the model when training ends."""
    metrics: list[str] = field(default_factory=lambda: ["AUC", "logloss"])
    """Metrics computed on validation data every epoch and listed first in the final valid / test evaluation, which adds ``NE``, ``calibration``, ``ECE`` and, when the dataset has a ``group_field``, ``gAUC``, ``gAUC_mean``, ``MRR``, ``nDCG@5``, ``nDCG@10`` (any of these may be listed here too; docs/training.md, "Metrics")."""
    progress: bool = True
    """Show progress: on a terminal, tqdm bars (samples/s, on stderr) during training and
    evaluation; when stdout or stderr is not a terminal (a log file, a pipe), one plain line per
    epoch on stdout (train loss, validation metrics, time), and no bars where they would leave
    carriage returns in a file. False: neither."""
    min_epochs: int = 0
    """Not BARS: never stop early before this many epochs (lr still decays on plateaus); 0 = BARS protocol exactly."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Non-BARS speed option. ``bf16``: forward passes run under ``torch.autocast`` with bfloat16
    (matmuls on AMX units / tensor cores); the loss, regularizers, gradients' accumulation into the
    weights, the optimizer state and the weights stay float32. ``fp16``: the same with float16 and
    dynamic loss scaling (``torch.amp.GradScaler``), for GPUs without bfloat16; the scaler's state
    is checkpointed. ``fp32`` (default): float32 throughout."""
    sparse_embeddings: bool = False
    """Non-BARS speed option for large vocabularies. The fused embedding tables get sparse
    gradients (only the rows a batch looked up) and ``torch.optim.SparseAdam`` ("lazy Adam": a
    row's moments move only when the row is in the batch) while every other parameter keeps
    ``Adam``; with ``sgd`` the update is exactly the dense one. Dense Adam reads and writes every
    table row at every step, so its cost grows with the vocabulary, SparseAdam's with the batch.
    Needs ``optimizer`` adam or sgd and ``embedding_regularizer: 0`` (an L2 term over whole
    tables has a dense gradient). Gradient clipping still uses the global norm over all parameters."""
    shuffle_block_rows: int | None = None
    """Non-BARS option for memory-mapped data larger than memory: a bounded shuffle (blocks of this many
    consecutive rows in a seeded random order, rows shuffled inside windows of 8 blocks), so that
    batches read a few regions of the file at a time; None (default) = a full shuffle each epoch."""
    validate_start: bool = False
    """Non-BARS option. Validate the starting weights before the first epoch (saved as
    ``checkpoints/start.safetensors``); when training ends and no epoch beat them on the monitored
    metric (by ``min_delta``), ``restore_best`` brings them back instead of the best epoch. Early
    stopping and LR decay still compare epochs with each other only. Meant for a warm-started model
    (``linear_warm_start``), whose start is already a fitted logistic regression: the run then never
    ends worse on validation than where it started."""
    bn_recalibration_batches: int = 0
    """Non-BARS option (0 = off, the BARS protocol). After each training epoch, re-estimate every
    BatchNorm layer's running mean/variance as an exact average over this many training batches
    (forward passes only, no weight update) before validating. With few batches per epoch the
    default exponential running statistics lag far behind the weights, so validation sees badly
    calibrated activations (high logloss, unstable AUC, premature early stops on small data)."""

    # ---- derived values ------------------------------------------------------------------
    def monitor_weights(self) -> dict[str, float]:
        return parse_monitor(self.monitor)

    def resolved_monitor_mode(self) -> str:
        if self.monitor_mode in ("max", "min"):
            return self.monitor_mode
        directions = {
            (w > 0) != (task_metric(name)[1] in LOWER_IS_BETTER)  # True: a larger monitor value is better
            for name, w in self.monitor_weights().items()
            if w != 0
        }
        if directions == {False}:
            return "min"
        if directions == {True}:
            return "max"
        raise ConfigError(
            f"monitor {self.monitor!r} mixes terms that improve in opposite directions; "
            "set monitor_mode to max or min explicitly"
        )

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size if self.eval_batch_size is not None else self.batch_size

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def eval_metric_names(self) -> list[str]:
        """Metrics computed on validation data: ``metrics`` plus any the monitor needs."""
        names = list(self.metrics)
        names += [n for n in self.monitor_weights() if n not in names]
        return names

    def make_train_loader(self, split: Any, shard: tuple[int, int] = (0, 1)):
        """A shuffled :class:`~ctrlab.data.loader.BatchLoader` over ``split`` (seeded by ``seed``).
        ``shard=(rank, world_size)``: this rank's share; ``batch_size`` stays the global batch, so
        each rank takes ``batch_size / world_size`` rows of every step. The shards are padded (the
        epoch's first rows repeated, as ``DistributedSampler`` does) so that every rank runs the same
        number of steps."""
        from ..data.loader import BatchLoader

        rank, world = shard
        if self.batch_size % world:
            raise ConfigError(f"trainer.batch_size ({self.batch_size}) is the global batch and must be divisible "
                              f"by the {world} ranks; choose a multiple of {world}")
        return BatchLoader(split, batch_size=self.batch_size // world, shuffle=True, seed=self.seed, shard=shard,
                           pad_shards=True, shuffle_block_rows=self.shuffle_block_rows)

    def make_eval_loader(self, split: Any, shard: tuple[int, int] = (0, 1)):
        """An ordered :class:`~ctrlab.data.loader.BatchLoader` with ``eval_batch_size`` rows per batch
        (shared out over ``shard``'s ranks)."""
        from ..data.loader import BatchLoader

        return BatchLoader(split, batch_size=-(-self.resolved_eval_batch_size // shard[1]), shuffle=False,
                           seed=self.seed, shard=shard)

    # ---- validation --------------------------------------------------------------------------
    def validate(self, where: str = "trainer") -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"{where}.{key}: {msg}")

        def need_int(key: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, key)
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise bad(key, f"must be an integer >= {lo}, got {v!r}")

        def need_num(key: str, lo: float, strict: bool, hi: float | None = None, allow_none: bool = False) -> None:
            v = getattr(self, key)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if strict else v >= lo) and (hi is None or v <= hi)
            if not ok:
                rng = f"{'>' if strict else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
                raise bad(key, f"must be a number {rng}, got {v!r}")

        need_int("epochs", 1)
        need_int("batch_size", 1)
        need_int("eval_batch_size", 1, allow_none=True)
        need_int("patience", 1)
        need_int("seed", 0)
        need_int("num_threads", 1, allow_none=True)
        need_int("min_epochs", 0)
        need_int("bn_recalibration_batches", 0)
        need_int("shuffle_block_rows", 1, allow_none=True)
        need_num("lr", 0.0, strict=True)
        need_num("lr_decay_factor", 0.0, strict=True, hi=1.0)
        need_num("min_lr", 0.0, strict=False)
        need_num("min_delta", 0.0, strict=False)
        need_num("max_grad_norm", 0.0, strict=True, allow_none=True)
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"{self.optimizer!r} is not allowed; choose one of {list(OPTIMIZERS)}")
        for key in ("sparse_embeddings", "restore_best", "progress", "reduce_lr_on_plateau"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, f"must be true or false, got {getattr(self, key)!r}")
        if self.sparse_embeddings and self.optimizer == "adamw":
            raise bad("sparse_embeddings", "works with optimizer adam (SparseAdam for the tables) or sgd, "
                      "not adamw; set trainer.optimizer=adam or trainer.sparse_embeddings=false")
        if self.monitor_mode not in ("auto", "max", "min"):
            raise bad("monitor_mode", f"{self.monitor_mode!r} is not allowed; choose one of ['auto', 'max', 'min']")
        if not isinstance(self.metrics, (list, tuple)) or not self.metrics:
            raise bad("metrics", f"must be a non-empty list drawn from {list(METRIC_NAMES)}, got {self.metrics!r}")
        for m in self.metrics:
            if m not in METRIC_NAMES:
                raise bad("metrics", f"unknown metric {m!r}; choose from {list(METRIC_NAMES)}")
        if len(set(self.metrics)) != len(self.metrics):
            raise bad("metrics", f"lists a metric twice: {self.metrics!r}")
        try:
            self.monitor_weights()
            self.resolved_monitor_mode()
        except ConfigError as exc:
            raise bad("monitor", str(exc)) from None
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise bad("device", f"{self.device!r} is not a torch device ({exc}); use auto, cpu, cuda or cuda:N") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "trainer") -> "TrainerConfig":
        return from_dict(cls, dict(data or {}), where)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _fmt(v: float) -> str:
    return f"{v:.6f}"


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


# ---------------------------------------------------------------------------------------------
# Early stopping
# ---------------------------------------------------------------------------------------------
@dataclass
class EarlyStopping:
    """The early-stopping state of the BARS protocol: the best monitor value and its (1-based)
    epoch, the plateau counter (FuxiCTR's ``stopping_steps``) and whether training stopped."""

    mode: Literal["max", "min"]
    min_delta: float
    patience: int
    min_epochs: int = 0
    best_metric: float = math.nan
    best_epoch: int | None = None
    stopping_steps: int = 0
    stopped: bool = False

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.best_metric = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = None
        self.stopping_steps = 0
        self.stopped = False

    def improves(self, value: float) -> bool:
        # FuxiCTR's rule: a plateau is ``value < best + min_delta`` (max mode), so reaching
        # ``best + min_delta`` exactly counts as an improvement (with min_delta=0, a tie does).
        if self.mode == "max":
            return value >= self.best_metric + self.min_delta
        return value <= self.best_metric - self.min_delta

    def beats(self, value: float, other: float) -> bool:
        """Whether ``value`` is better than ``other`` by at least ``min_delta``."""
        if self.mode == "max":
            return value >= other + self.min_delta and value > other
        return value <= other - self.min_delta and value < other

    def update(self, value: float, epoch: int) -> bool:
        """Record the monitor ``value`` of (1-based) ``epoch``; True when it improved."""
        improved = self.improves(value)
        if improved:
            self.stopping_steps = 0
            self.best_metric = value
            self.best_epoch = epoch
        else:
            self.stopping_steps += 1
        if self.stopping_steps >= self.patience and epoch >= self.min_epochs:
            self.stopped = True
        return improved


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
Callback = Callable[["Trainer", dict], None]


class Trainer:
    """Train, evaluate and predict with any CTR model (``forward(batch) -> {"logit"}``, ``loss``).

    Args:
        model: a :class:`~ctrlab.models.base.CTRModel` (anything with that interface). It is
            moved to the configured device; build it after :func:`seed_everything`.
        config: a :class:`TrainerConfig`, a plain mapping for it, or None for defaults.
        run_dir: folder for ``train.log`` and ``checkpoints/``.
        callbacks: called as ``cb(trainer, record)`` after every epoch, once that epoch's
            checkpoint is on disk (an exception raised there interrupts training resumably).
        dist: this process's place in a data-parallel job (:mod:`ctrlab.train.distributed`). With
            more than one rank the model trains inside DistributedDataParallel, loaders are
            expected to be sharded (``BatchLoader(shard=dist.shard)``), predictions of sharded
            loaders are gathered before metrics, and only rank 0 writes logs, checkpoints and
            calls the callbacks.

    Attributes after / during :meth:`fit`: ``history`` (one dict per epoch), ``best_metric``,
    ``best_epoch`` (1-based), ``stopping_steps``, ``epochs_done``, ``stopped_early``; with
    ``validate_start``: ``start_metric`` and ``kept_start`` (no epoch beat the starting weights,
    which were loaded back).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        run_dir: str | os.PathLike = "runs/default",
        callbacks: Iterable[Callback] = (),
        dist: DistContext = SINGLE,
    ):
        if config is None:
            config = TrainerConfig()
        elif isinstance(config, Mapping):
            config = TrainerConfig.from_dict(config)
        elif isinstance(config, TrainerConfig):
            config.validate("trainer")
        else:
            raise TypeError(f"config must be a TrainerConfig or a mapping, got {type(config).__name__}")
        self.config: TrainerConfig = config
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.checkpoint = CheckpointDir(self.ckpt_dir)
        self.log_path = self.run_dir / "train.log"
        self.callbacks: list[Callback] = list(callbacks)
        self.dist = dist
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        check_device(config.device)
        self.device = torch.device(rank_device(dist, config.resolved_device()))
        if dist.active and self.device.type == "cuda":
            # batch statistics over the global batch, as in one process (SyncBatchNorm is GPU-only in
            # PyTorch; on CPU each rank normalises with its own share of the batch)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        named = list(self.model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters to train")
        self._param_names = [n for n, _ in named]
        self._params = [p for _, p in named]
        clip = getattr(self.model, "clip_groups", None)  # e.g. a distillation pair: each model's norm on its own
        self._clip_groups = [list(g) for g in clip()] if callable(clip) else [self._params]
        self._sparse_tables: list[nn.Parameter] = []
        if config.sparse_embeddings:
            if max(getattr(self.model, "embedding_regularizer", 0.0), getattr(self.model, "embedding_l1", 0.0)) > 0:
                raise ConfigError(
                    "trainer.sparse_embeddings: the model's embedding_regularizer "
                    f"({self.model.embedding_regularizer}) is an L2 term over whole tables, whose gradient "
                    "is dense; set model_params.embedding_regularizer=0 or trainer.sparse_embeddings=false"
                )
            self._sparse_tables = enable_sparse_gradients(self.model)
            if not self._sparse_tables:
                self._log("trainer.sparse_embeddings: the model has no embedding tables; nothing to make sparse",
                          level=logging.WARNING)
        groups = getattr(self.model, "optimizer_groups", None)
        self._extra_groups = list(groups()) if callable(groups) else []  # e.g. OptEmbed's thresholds (SGD)
        self.optimizer = self._make_optimizer()
        self._scaler = None
        if config.precision == "fp16":
            if self._sparse_tables:
                raise ConfigError("trainer.precision=fp16 with trainer.sparse_embeddings is not supported "
                                  "(loss scaling of sparse gradients); use precision bf16, or dense embeddings")
            self._scaler = torch.amp.GradScaler(self.device.type)
        self._train_module: nn.Module = self.model
        if dist.active:
            if self._sparse_tables and self.device.type == "cuda":
                raise ConfigError("trainer.sparse_embeddings with distributed training needs the gloo backend "
                                  "(NCCL cannot all-reduce sparse gradients); set trainer.sparse_embeddings=false")
            from torch.nn.parallel import DistributedDataParallel

            # Gradients are averaged over ranks in backward; parameters start equal (rank 0's are broadcast).
            self._train_module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.monitor = config.monitor_weights()
        self.task_names = list(getattr(self.model, "task_names", ()) or ())
        for name in self.monitor:
            task = task_metric(name)[0]
            if task is not None and task not in self.task_names:
                raise ConfigError(
                    f"trainer.monitor uses {name!r}, a metric of task {task!r}; "
                    + (f"{type(self.model).__name__}'s tasks are {self.task_names}" if self.task_names
                       else f"{type(self.model).__name__} has one task: monitor plain metrics such as 'AUC'"))
        self.monitor_mode = config.resolved_monitor_mode()
        self.early_stopping = EarlyStopping(self.monitor_mode, config.min_delta, config.patience, config.min_epochs)
        self._reset_state()

    # early-stopping state, read as trainer attributes
    @property
    def best_metric(self) -> float:
        return self.early_stopping.best_metric

    @property
    def best_epoch(self) -> int | None:
        return self.early_stopping.best_epoch

    @property
    def stopping_steps(self) -> int:
        return self.early_stopping.stopping_steps

    @property
    def stopped_early(self) -> bool:
        return self.early_stopping.stopped

    # ---- public API ----------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, valid_loader: Iterable | None, resume: bool = False) -> list[dict]:
        """Train with early stopping on ``valid_loader``; returns the per-epoch history.

        ``valid_loader=None`` (a dataset with ``valid_fraction: 0``): every one of ``epochs`` is
        trained (no early stopping, no learning-rate decay on plateau), no best checkpoint is kept,
        and the last epoch's weights are the result.

        ``resume=True`` continues from ``run_dir/checkpoints`` when a checkpoint exists (and
        starts fresh, saying so in the log, when none does); a finished run is not trained
        further unless ``epochs`` was raised (an early stop stays final). A fresh start trains
        the model's current weights with a new optimizer and deletes old checkpoints in ``run_dir``.
        """
        cfg = self.config
        if hasattr(train_loader, "row_index") and any(getattr(m, "needs_row_index", False) for m in self.model.modules()):
            train_loader.row_index = True  # batch["row_index"]: TabR leaves each train row out of its own context
        if self.dist.is_main:
            self.checkpoint.check_writable()  # a read-only or misplaced folder fails now, not after an epoch
            if resume and self.checkpoint.roll_forward():
                self._log("completed an interrupted checkpoint commit")
        self.dist.barrier()  # rank 0 has finished (or dropped) an interrupted commit before anyone reads
        if resume and self.checkpoint.exists():
            self._load_checkpoint()
            self._log(
                f"resumed from {self.ckpt_dir} after epoch {self.epochs_done} "
                f"(best {self._monitor_name()}={self._fmt_best()} at epoch {self.best_epoch}, "
                f"stopping_steps={self.stopping_steps}, lr={self._current_lr():.3g})"
            )
        else:
            if resume:
                self._log(f"resume requested but {self.ckpt_dir} holds no checkpoint; starting fresh")
            # fresh optimizer (no moments from an earlier fit) and counters; weights are the model's
            self.optimizer = self._make_optimizer()
            self._reset_state()
            if self.dist.active:
                self._seed_rank()
            if self.dist.is_main:
                self.checkpoint.remove()
            n_params = sum(p.numel() for p in self._params if p.requires_grad)
            self._log(
                f"start training {type(self.model).__name__} ({n_params:,} trainable parameters) on "
                f"{self.device}; {self._batches(train_loader)} batches/epoch; config {json.dumps(cfg.to_dict())}"
            )
        eval_names = cfg.eval_metric_names()
        if valid_loader is None:
            self._log(f"no validation split: training all {cfg.epochs} epochs without early stopping; "
                      "the last epoch's weights are kept (no best checkpoint)")
        if self.dist.active:
            self._check_equal_steps(train_loader)
        if cfg.validate_start and valid_loader is not None and self.epochs_done == 0 and self.start_metric is None:
            self._validate_start(valid_loader, eval_names)
        while not self.stopped_early and self.epochs_done < cfg.epochs:
            epoch = self.epochs_done  # 0-based index of the epoch about to run
            lr = self._current_lr()
            t0 = time.perf_counter()
            train_loss, rows = self._train_epoch(train_loader, epoch)
            if cfg.bn_recalibration_batches:
                self._recalibrate_batch_norm(train_loader, cfg.bn_recalibration_batches)
            # each rank's last steps updated its buffers (BatchNorm statistics) from its own share of
            # the batch; validate everywhere with rank 0's, which are the ones saved
            broadcast_buffers(self.dist, self.model)
            t1 = time.perf_counter()
            logs = {} if valid_loader is None else self._evaluate_names(valid_loader, eval_names,
                                                                         desc=f"valid {epoch + 1}")
            t2 = time.perf_counter()
            value = sum(w * logs[k] for k, w in self.monitor.items()) if logs else None
            improved = bool(logs) and self.early_stopping.update(value, epoch + 1)
            if logs and not improved and cfg.reduce_lr_on_plateau:
                self._decay_lr()
            self.epochs_done = epoch + 1
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
            record.update({f"valid_{k}": v for k, v in logs.items()})
            record.update(
                {
                    "monitor": value,
                    "improved": improved,
                    "best_metric": self.best_metric,
                    "best_epoch": self.best_epoch,
                    "stopping_steps": self.stopping_steps,
                    "lr": lr,
                    "next_lr": self._current_lr(),
                    "train_seconds": t1 - t0,
                    "eval_seconds": t2 - t1,
                    "seconds": t2 - t0,
                    "samples_per_s": rows / max(t1 - t0, 1e-12),
                }
            )
            self.history.append(record)
            self._save_checkpoint(save_best=improved)  # every rank sends its RNG state; rank 0 writes
            self._log_epoch(record, logs)
            if self.stopped_early:
                self._log(f"early stop after epoch {self.epochs_done} (patience {cfg.patience})")
            if self.dist.is_main:
                for cb in self.callbacks:
                    cb(self, record)
        self._log(
            f"training finished after {self.epochs_done} epochs; best {self._monitor_name()}="
            f"{self._fmt_best()} at epoch {self.best_epoch}" if valid_loader is not None
            else f"training finished after {self.epochs_done} epochs (no validation split: last epoch's weights)"
        )
        if cfg.restore_best and valid_loader is not None:
            self.dist.barrier()  # rank 0 has written the best checkpoint
            self.restore_best()
            if self.start_metric is not None and (self.best_epoch is None or self.early_stopping.beats(
                    self.start_metric, self.best_metric)):
                self.checkpoint.load_weights(self.model, self.checkpoint.start_path)
                self.kept_start = True
                self._log(f"no epoch beat the starting weights on validation ({self._monitor_name()} "
                          f"{_fmt(self.start_metric)} vs the best epoch's {self._fmt_best()}): loaded "
                          f"{self.checkpoint.start_path} back", level=logging.WARNING)
        return [dict(r) for r in self.history]

    def _validate_start(self, valid_loader: Iterable, eval_names: list[str]) -> None:
        """``validate_start``: the monitored metric of the untrained weights, which are saved
        (evaluation draws no random numbers, so the epochs that follow are the same as without it)."""
        logs = self._evaluate_names(valid_loader, eval_names, desc="valid 0")
        self.start_metric = sum(w * logs[k] for k, w in self.monitor.items())
        if self.dist.is_main:
            self.checkpoint.write_start(self.model)
        valid = " ".join(f"{k} {_fmt(v)}" for k, v in logs.items())
        line = (f"start (validate_start) | valid {valid} | {self._monitor_name()}={_fmt(self.start_metric)}: "
                f"kept at the end unless an epoch beats it; saved {self.checkpoint.start_path.name}")
        self._log(line)
        if self._progress()[1]:
            print(f"[ctrlab] {line}", flush=True)

    def train_epoch(self, loader: Iterable, epoch: int = 0) -> tuple[float, int]:
        """One pass of the training step over ``loader`` (no validation, checkpoint or early
        stopping): ``(mean loss, rows)``. For benchmarks and custom loops; :meth:`fit` uses it."""
        return self._train_epoch(loader, epoch)

    def evaluate(self, loader: Iterable, metrics: Sequence[str] | None = None,
                 split: str | None = None) -> dict[str, float]:
        """Metrics (default ``config.metrics``) of the current model on ``loader``; ``split`` (e.g.
        ``"test"``) labels the ``[metrics]`` line in ``train.log``."""
        names = list(metrics) if metrics is not None else list(self.config.metrics)
        logs = self._evaluate_names(loader, names, desc=split or "evaluate")
        self._log(f"[metrics{' ' + split if split else ''}] " + " - ".join(f"{k}: {_fmt(v)}" for k, v in logs.items()))
        return logs

    def evaluate_final(self, loader: Iterable, split: str | None = None,
                       transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[dict[str, float], dict | None]:
        """A run's final evaluation of a split, from one inference pass: ``(metrics, reliability)``.

        ``metrics``: :func:`~ctrlab.train.metrics.final_metric_names` of ``config.metrics`` (those
        first; then NE, calibration and ECE; then the group metrics when the loader's batches carry
        ``group``), for a multi-task model also per task as ``<task>_<metric>``. A metric beyond
        ``config.metrics`` that the split leaves undefined (e.g. no group with a positive) is NaN,
        with a warning in the log. ``reliability``: :func:`~ctrlab.train.metrics.reliability` of the
        (main task's) probabilities, None when the main task has no row on this split.
        ``transform``: applied to a single-task model's probabilities first (a post-hoc calibration)."""
        desc = split or "evaluate"
        inference = self._run_inference(loader, desc)
        if transform is not None:
            return self.final_metrics(transform(inference[0]), inference[1], inference[2], split)
        return self._final_of(inference, split)

    def predict_with_labels(self, loader: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(probability, label, group)`` per row of a labelled loader, one inference pass: the main
        probability (float64), the first label column, and the group ids (None when the batches carry
        none). For :meth:`final_metrics` of transformed probabilities."""
        prob, y, group, _ = self._run_inference(loader, "predict")
        return prob, y, group

    def final_metrics(self, prob: np.ndarray, y: np.ndarray, group: np.ndarray | None = None,
                      split: str | None = None) -> tuple[dict[str, float], dict | None]:
        """:meth:`evaluate_final` of given probabilities of a single-task model (e.g. calibrated ones)
        with their labels and group ids; ``split`` labels the ``[metrics]`` line in ``train.log``."""
        if self.task_names:
            raise ValueError(f"final_metrics takes one probability per row; {type(self.model).__name__} has tasks "
                             f"{self.task_names}: use evaluate_final")
        return self._final_of((np.asarray(prob, dtype=np.float64), y, group, None), split)

    def _final_of(self, inference: tuple, split: str | None) -> tuple[dict[str, float], dict | None]:
        desc = split or "evaluate"
        prob, y, group, tasks = inference
        names = final_metric_names(self.config.metrics, group is not None)
        logs = self._metrics_of(inference, names, desc, lenient=set(names) - set(self.config.metrics))
        if tasks is not None:  # the main task on its own rows, as its plain metrics
            rows = tasks["rows"][:, 0]
            y, prob = tasks["label"][rows, 0], tasks["prob"][rows, 0]
        curve = reliability(y, prob) if len(y) else None
        self._log(f"[metrics{' ' + split if split else ''}] " + " - ".join(f"{k}: {_fmt(v)}" for k, v in logs.items()))
        return logs, curve

    def predict(self, loader: Iterable) -> np.ndarray:
        """Predicted click probabilities ``sigmoid(logit)`` (float64, loader order)."""
        prob, _, _, _ = self._run_inference(loader, desc="predict", need_labels=False)
        return prob

    def predict_tasks(self, loader: Iterable) -> dict[str, np.ndarray]:
        """Every task's predicted probability (float64, loader order) by task name, main task first; a
        single-task model's one probability is named ``"probability"`` (as the server names it)."""
        prob, _, _, tasks = self._run_inference(loader, desc="predict", need_labels=False)
        if tasks is None:
            return {"probability": prob}
        return {t: tasks["prob"][:, i] for i, t in enumerate(self.task_names)}

    def restore_best(self) -> bool:
        """Load ``checkpoints/best.safetensors`` into the model; False when there is none."""
        path = self.checkpoint.best_path
        if not path.exists():
            self._log(f"no best checkpoint at {path}; keeping the current weights", level=logging.WARNING)
            return False
        epoch = file_epoch(path)
        self.checkpoint.load_weights(self.model, path)  # copied into the device params
        self._log(f"loaded best weights (epoch {epoch}) from {path}")
        return True

    # ---- one epoch -------------------------------------------------------------------------------
    def _train_epoch(self, loader: Iterable, epoch: int) -> tuple[float, int]:
        cfg = self.config
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n_batches = 0
        rows = 0
        bar = self._bar(loader, f"train {epoch + 1}/{cfg.epochs}")
        try:
            for batch in loader:
                n = int(batch["label"].shape[0])
                batch = self._to_device(batch)
                self.optimizer.zero_grad(set_to_none=True)
                outputs = self._forward(batch, self._train_module)
                loss = self.model.loss(batch, outputs)
                if self._scaler is None:
                    loss.backward()
                    if cfg.max_grad_norm is not None:
                        self._clip(cfg.max_grad_norm)
                    self.optimizer.step()
                else:  # fp16: scaled loss; unscale before clipping; a step with inf/nan gradients is skipped
                    self._scaler.scale(loss).backward()
                    if cfg.max_grad_norm is not None:
                        self._scaler.unscale_(self.optimizer)
                        self._clip(cfg.max_grad_norm)
                    self._scaler.step(self.optimizer)
                    self._scaler.update()
                total += loss.detach().to(torch.float64)
                n_batches += 1
                rows += n
                if bar is not None:
                    bar.update(n)
        finally:
            if bar is not None:
                bar.close()
        if n_batches == 0:
            raise ValueError("the training loader produced no batches")
        train_loss = float(all_mean(self.dist, total / n_batches).item())
        rows = int(all_sum(self.dist, torch.tensor(rows)).item())  # every rank's rows
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch + 1}; lower the learning rate or "
                f"check the inputs (checkpoint of epoch {self.epochs_done} is kept in {self.ckpt_dir})"
            )
        return train_loss, rows

    def _clip(self, max_norm: float) -> None:
        """Clip the gradient norm to ``max_norm``: over all parameters together, or per group when the
        model names groups (``clip_groups()``: lists of its parameters, e.g. a teacher's and a student's)."""
        for group in self._clip_groups:
            clip_grad_norm(group, max_norm)

    @torch.no_grad()
    def _recalibrate_batch_norm(self, loader: Iterable, max_batches: int) -> None:
        """Replace BatchNorm running statistics by their exact average over training batches
        (PreciseBN, Wu & Johnson 2021), using the epoch's own batch order."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = exact mean over the batches seen
        self.model.train()
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            self._forward(self._to_device(batch))
        for m, momentum in zip(bns, saved):
            m.momentum = momentum

    @torch.no_grad()
    def _run_inference(
        self, loader: Iterable, desc: str, need_labels: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray] | None]:
        """``(prob, label, group, tasks)``: the main logit's probabilities and the first label per
        row; for a multi-task model also ``tasks`` = ``{"prob", "label", "rows"}`` ``(N, T)`` in
        :attr:`task_names` order (``rows``: where each task is evaluated, from the model's
        ``task_targets``), else None."""
        self.model.eval()
        probs: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        groups: list[torch.Tensor] = []
        task_probs: list[torch.Tensor] = []
        task_labels: list[torch.Tensor] = []
        task_rows: list[torch.Tensor] = []
        bar = self._bar(loader, desc)
        try:
            for batch in loader:
                if "label" in batch:
                    labels.append(batch["label"][:, 0].reshape(-1))
                    if self.task_names:
                        y, rows = self.model.task_targets(batch)
                        task_labels.append(y)
                        task_rows.append(rows)
                elif need_labels:
                    raise KeyError("evaluation batches need a 'label' tensor")
                if "group" in batch:
                    groups.append(batch["group"].reshape(-1))
                outputs = self._forward(self._to_device(batch))
                # float64: a float32 sigmoid rounds to exactly 1.0 from logit ~17 on, and logloss
                # would then charge the clipping constant instead of the row's real loss
                p = torch.sigmoid(outputs["logit"].double()).reshape(-1)
                probs.append(p)
                if self.task_names:
                    task_probs.append(torch.sigmoid(outputs["task_logits"].double()))
                if bar is not None:
                    bar.update(int(p.shape[0]))
        finally:
            if bar is not None:
                bar.close()
        if not probs:
            raise ValueError(f"{desc}: the loader produced no batches")
        prob = torch.cat(probs).cpu().numpy()
        y = torch.cat(labels).cpu().numpy().astype(np.float64) if labels else None
        g = torch.cat(groups).cpu().numpy() if groups and len(groups) == len(probs) else None
        tasks = None
        if self.task_names:
            tasks = {"prob": torch.cat(task_probs).cpu().numpy()}
            if task_labels:
                tasks["label"] = torch.cat(task_labels).cpu().numpy().astype(np.float64)
                tasks["rows"] = torch.cat(task_rows).cpu().numpy().astype(bool)
        if getattr(loader, "world_size", 1) > 1:  # a shard of the rows: gather all of them, in order
            prob = gather_rows(self.dist, prob)
            y = gather_rows(self.dist, y) if y is not None else None
            g = gather_rows(self.dist, g) if g is not None else None
            if tasks is not None:
                tasks = {k: gather_rows(self.dist, v) for k, v in tasks.items()}
        return prob, y, g, tasks

    def _evaluate_names(self, loader: Iterable, names: Sequence[str], desc: str) -> dict[str, float]:
        return self._metrics_of(self._run_inference(loader, desc), names, desc)

    def _metrics_of(self, inference: tuple, names: Sequence[str], desc: str, lenient: set[str] = frozenset()):
        """``names`` of one :meth:`_run_inference` result; the ``lenient`` ones are NaN (with a warning)
        where the split leaves them undefined, the others raise ValueError."""
        prob, y, group, tasks = inference
        parsed = [(n, *task_metric(n)) for n in names]
        needs_group = [metric for _, _, metric in parsed if metric in GROUP_METRICS]
        if needs_group and group is None:
            raise ValueError(f"{needs_group[0]} needs a 'group' tensor in every batch (set the dataset's group_field)")
        plain = [n for n, task, _ in parsed if task is None]
        if tasks is None:
            out = evaluate_metrics(y, prob, [n for n in plain if n not in lenient], group)
            out.update(self._defined_metrics(y, prob, [n for n in plain if n in lenient], group, desc))
            return {n: out[n] for n in plain}
        out: dict[str, float] = {}
        for i, task in enumerate(self.task_names):  # every task on its own rows (e.g. CVR: clicked ones)
            want = list(dict.fromkeys(plain + [m for _, t, m in parsed if t == task]))
            rows = tasks["rows"][:, i]
            values = self._task_metrics(task, tasks["label"][rows, i], tasks["prob"][rows, i], want,
                                        None if group is None else group[rows], desc)
            if i == 0:  # the main task under the plain names too (monitor, bench and reports read those)
                out.update({m: values[m] for m in plain})
            out.update({f"{task}_{m}": v for m, v in values.items()})
        return {k: out[k] for k in [n for n in names if n in out] + [k for k in out if k not in names]}

    def _task_metrics(self, task: str, y: np.ndarray, prob: np.ndarray, names: list[str], group, desc: str):
        """A task's metrics on its rows. Where a split holds one class of that task only (a rare
        conversion label on a small validation split) the ranking metrics are NaN, with a warning in
        the log, instead of failing the run (logloss and ECE are still defined; with no rows at all,
        NaN too); a monitored NaN never counts as an improvement."""
        return self._defined_metrics(y, prob, names, group, desc, f"task {task!r} has {len(y)} rows with "
                                     f"{int(y.sum())} positives: its")

    def _defined_metrics(self, y: np.ndarray, prob: np.ndarray, names: list[str], group, desc: str,
                         whose: str = "the") -> dict[str, float]:
        """``names`` on these rows, NaN (with one warning in the log) for those the rows leave undefined."""
        try:
            return evaluate_metrics(y, prob, names, group)  # all at once: the group metrics share one sort
        except ValueError:
            pass
        out: dict[str, float] = {}
        why: dict[str, str] = {}
        for m in names:
            try:
                out[m] = evaluate_metrics(y, prob, [m], group)[m]
            except ValueError as exc:
                out[m], why[m] = float("nan"), str(exc)
        if why:
            self._log(f"{desc}: {whose} metrics {list(why)} are NaN (" + "; ".join(dict.fromkeys(why.values())) + ")",
                      level=logging.WARNING)
        return out

    # ---- protocol pieces ---------------------------------------------------------------------
    def _seed_rank(self, *extra: int) -> None:
        """Data parallel: give this rank its own RNG streams, derived from ``(seed, rank)``, so that
        ranks draw different dropout masks (the weights are equal anyway: DDP broadcasts rank 0's)."""
        seed = np.random.SeedSequence([self.config.seed, self.dist.rank, *extra]).generate_state(1)[0]
        seed_everything(int(seed))

    def _check_equal_steps(self, loader: Iterable) -> None:
        """Every rank must run the same number of steps per epoch, or the gradient all-reduce of the
        rank with more batches waits forever."""
        try:
            n = len(loader)  # type: ignore[arg-type]
        except TypeError:
            n = -1
        counts = all_gather_ints(self.dist, n)
        if -1 not in counts and len(set(counts)) > 1:
            raise ValueError(
                f"the training loaders give the ranks {counts} batches per epoch; every rank must run the same "
                "number of steps (data-parallel training would hang): build them with "
                "TrainerConfig.make_train_loader(split, shard), which pads the shards"
            )

    def _make_optimizer(self):
        return make_optimizer(self.config.optimizer, self._params, self.config.lr, self._sparse_tables,
                              self._extra_groups)

    def _reset_state(self) -> None:
        self.history: list[dict] = []
        self.start_metric: float | None = None
        self.kept_start = False
        self.early_stopping.reset()
        self.epochs_done = 0
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", self.config.lr)  # a model's own groups start at their own lr

    def _decay_lr(self) -> None:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = max(group["lr"] * cfg.lr_decay_factor, min(cfg.min_lr, group["lr"]))  # never raised

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _forward(self, batch: Mapping[str, torch.Tensor], module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The model's forward pass (through ``module``: the DDP wrapper when training distributed)
        in the configured precision; floating outputs come back as float32, so losses and metrics
        are computed in full precision."""
        module = module if module is not None else self.model
        if self.config.precision == "fp32":
            return module(batch)
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            outputs = module(batch)
        return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return dict(batch)
        if self.device.type == "cuda":  # page-locked host memory: the copy to the GPU runs asynchronously
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _progress(self) -> tuple[bool, bool]:
        """(tqdm bars on stderr, one plain line per epoch on stdout). Bars only on a terminal: in a
        file or pipe they leave a carriage return per refresh. The epoch lines replace them where
        stdout (or stderr) is not a terminal, so that a log of the output shows each epoch."""
        if not self.config.progress or not self.dist.is_main:
            return False, False
        bars = _is_terminal(sys.stderr)
        return bars, not (bars and _is_terminal(sys.stdout))

    def _bar(self, loader: Iterable, desc: str):
        if not self._progress()[0]:
            return None
        return tqdm(
            total=getattr(loader, "num_rows", None),
            desc=desc,
            unit="sample",
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5,
            file=sys.stderr,
        )

    @staticmethod
    def _batches(loader: Iterable) -> str:
        try:
            return str(len(loader))  # type: ignore[arg-type]
        except TypeError:
            return "?"

    # ---- logging ---------------------------------------------------------------------------------
    def _monitor_name(self) -> str:
        if len(self.monitor) == 1 and next(iter(self.monitor.values())) == 1.0:
            return next(iter(self.monitor))
        return "+".join(f"{w:g}*{k}" for k, w in self.monitor.items()).replace("+-", "-")

    def _fmt_best(self) -> str:
        return _fmt(self.best_metric) if math.isfinite(self.best_metric) else "n/a"

    def log(self, msg: str, level: int = logging.INFO) -> None:
        """Append ``msg`` to ``train.log`` (with a time stamp) and the ``ctrlab.train`` logger."""
        self._log(msg, level)

    def _log(self, msg: str, level: int = logging.INFO) -> None:
        if not self.dist.is_main:
            return
        logger.log(level, msg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        prefix = "" if level == logging.INFO else f"{logging.getLevelName(level)}: "
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {prefix}{msg}\n")

    def _log_epoch(self, r: dict, logs: Mapping[str, float]) -> None:
        cfg = self.config
        valid = " ".join(f"{k} {_fmt(v)}" for k, v in logs.items()) or "-"
        if not logs:
            status = "no validation"
        elif r["improved"]:
            status = f"improved -> best {self._monitor_name()}={_fmt(r['monitor'])}, saved best"
        else:
            status = f"no improvement ({r['stopping_steps']}/{cfg.patience})"
            if cfg.reduce_lr_on_plateau:
                status += f", lr -> {r['next_lr']:.3g}"
        line = (f"epoch {r['epoch']}/{cfg.epochs} | lr {r['lr']:.3g} | train_loss {_fmt(r['train_loss'])} | "
                f"valid {valid} | {status} | {r['seconds']:.1f} s, {r['samples_per_s']:,.0f} samples/s")
        self._log(line)
        if self._progress()[1]:
            print(f"[ctrlab] {line}", flush=True)

    # ---- checkpoints -----------------------------------------------------------------------------
    def _save_checkpoint(self, save_best: bool) -> None:
        """Called on every rank (it gathers the ranks' RNG states); only rank 0 writes."""
        rng = rng_state()
        rng_per_rank = None
        if self.dist.active:
            rng_per_rank = [json.loads(b) for b in all_gather_bytes(self.dist, json.dumps(rng).encode())]
        if not self.dist.is_main:
            return
        opt_tensors, opt_payload = optimizer_payload(self.optimizer, self._param_names)
        state = {
            "epoch": self.epochs_done,
            "stopped_early": self.stopped_early,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "start_metric": self.start_metric,
            "stopping_steps": self.stopping_steps,
            "lr": [float(g["lr"]) for g in self.optimizer.param_groups],
            "monitor": self.monitor,
            "monitor_mode": self.monitor_mode,
            "history": self.history,
            "optimizer": opt_payload,
            "rng": rng,
            **({"rng_per_rank": rng_per_rank} if rng_per_rank else {}),
            "grad_scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "config": self.config.to_dict(),
            "model_class": type(self.model).__name__,
            "saved_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        self.checkpoint.write(self.model, self.epochs_done, opt_tensors, state, save_best)

    def _load_checkpoint(self) -> None:
        state = self.checkpoint.read_state()
        if state.get("monitor") != self.monitor or state.get("monitor_mode") != self.monitor_mode:
            raise CheckpointError(
                f"checkpoint monitors {state.get('monitor')} ({state.get('monitor_mode')}), the config "
                f"{self.monitor} ({self.monitor_mode}); resume with the same monitor"
            )
        ignore = {"epochs", "progress", "device", "num_threads", "restore_best", "eval_batch_size", "min_epochs"}
        old_cfg, new_cfg = state.get("config", {}), self.config.to_dict()
        changed = sorted(k for k in new_cfg if k not in ignore and old_cfg.get(k) != new_cfg[k])
        if changed:
            self._log(
                "resuming with a changed config ("
                + ", ".join(f"{k}: {old_cfg.get(k)!r} -> {new_cfg[k]!r}" for k in changed)
                + "); the run will not match an uninterrupted one",
                level=logging.WARNING,
            )
        self.checkpoint.load_last(self.model, self.optimizer, self._param_names, state)
        for group, lr in zip(self.optimizer.param_groups, state["lr"]):
            group["lr"] = lr
        self.history = list(state["history"])
        stop = self.early_stopping
        stop.best_metric = float(state["best_metric"])
        stop.best_epoch = state["best_epoch"]
        stop.stopping_steps = int(state["stopping_steps"])
        stop.stopped = bool(state["stopped_early"])
        self.start_metric = state.get("start_metric")
        self.kept_start = False
        self.epochs_done = int(state["epoch"])
        self._restore_rng(state)
        if self._scaler is not None and state.get("grad_scaler"):
            self._scaler.load_state_dict(state["grad_scaler"])

    def _restore_rng(self, state: Mapping[str, Any]) -> None:
        """Each rank gets back its own RNG state (``rng_per_rank``, written by data-parallel runs)."""
        per_rank = state.get("rng_per_rank")
        saved_ranks = len(per_rank) if per_rank else 1
        if saved_ranks == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank] if per_rank else state["rng"])
            return
        self._log(
            f"the checkpoint holds the RNG states of {saved_ranks} rank(s), this job has {self.dist.world_size}: "
            "the ranks' random streams (dropout) cannot continue as saved, so the run will not match an "
            "uninterrupted one",
            level=logging.WARNING,
        )
        set_rng_state(state["rng"])
        if self.dist.active:
            self._seed_rank(self.epochs_done)
