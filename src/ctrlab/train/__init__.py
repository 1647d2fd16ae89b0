"""Training and evaluation: BARS/FuxiCTR protocol trainer, exact resume, CTR metrics."""
from .metrics import METRIC_NAMES, auc, evaluate_metrics, gauc, logloss
from .trainer import (
    TIMING_KEYS,
    CheckpointError,
    Trainer,
    TrainerConfig,
    parse_monitor,
    seed_everything,
)

__all__ = [
    "METRIC_NAMES",
    "auc",
    "logloss",
    "gauc",
    "evaluate_metrics",
    "TIMING_KEYS",
    "CheckpointError",
    "Trainer",
    "TrainerConfig",
    "parse_monitor",
    "seed_everything",
]
