"""One estimator run in a run folder: fit on the prepared splits, evaluate, check, measure, save.

:func:`ctrlab.api.train` calls :func:`fit_run` when the run's ``model`` is a registered estimator, after
it has claimed the run folder and written ``run_config.yaml`` and ``dataset_config.json`` as for a torch
run; this module writes the rest: ``feature_map.json``, the estimator's model files and
``estimator.json``, ``metrics.json`` (the schema of a torch run's), ``history.json`` (one record per
boosting round) and ``train.log``.

Of the run's ``trainer`` settings an estimator uses ``seed``, ``num_threads`` (default 1), ``metrics``
(the final evaluation) and ``monitor`` (early stopping: ``AUC`` or ``logloss``; any other monitor falls
back to validation AUC, and the log says so). The epoch, batch and optimiser settings are a torch
model's and are not read. ``callbacks`` (``cb(estimator, record)``) are called after every boosting
round with that round's record, as a torch run calls them after every epoch: the bench's results store
records the rounds as epochs and the tuner's median pruner prunes on them.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.feature_map import FeatureMap
from ..data.loader import EncodedSplit
from ..train import metrics as metrics_module
from ..train.run_checks import (RunWarning, base_rate, high_oov_rate, likely_label_leak, logloss_above_base_rate,
                                report_warnings)
from ..train.trainer import parse_monitor
from . import check_estimator_params, get_estimator
from .base import MONITORS, TabularEstimator
from .tabular import TabularSplit, tabular_split

LATENCY_ROWS = (1, 4096)
"""Batch sizes whose prediction latency ``metrics.json["cost"]`` reports."""
LATENCY_REPEATS = {1: 7, 4096: 3}
"""Timed repeats per batch size (after one untimed warm-up call); the median is reported."""


def early_stopping_monitor(monitor: str | Mapping[str, float], log: Callable[[str], None]) -> str:
    """The estimator's early-stopping metric for a run's ``trainer.monitor``: ``AUC`` or ``logloss``
    when the monitor is that one metric, else ``AUC`` (logged)."""
    weights = parse_monitor(monitor)
    if len(weights) == 1:
        (name, weight), = weights.items()
        if name in MONITORS and weight > 0:
            return name
    log(f"[ctrlab] trainer.monitor {monitor!r} is not one of {sorted(MONITORS)}: the estimator early-stops on "
        "the validation AUC")
    return "AUC"


class RunLog:
    """``log`` to the console and, time-stamped, to the run's ``train.log``."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.path, self.console = Path(run_dir) / "train.log", log

    def file(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def __call__(self, line: str) -> None:
        self.console(line)
        self.file(line)


def split_metrics(est: TabularEstimator, split: TabularSplit, configured: Sequence[str]) -> tuple[dict, np.ndarray]:
    """(final metrics of ``est`` on a labelled split, its predicted probabilities)."""
    p = est.predict_proba(split)
    names = metrics_module.final_metric_names(list(configured), split.group is not None)
    return metrics_module.evaluate_metrics(split.y, p, names, split.group), p


def measure_latency(est: TabularEstimator, rows: TabularSplit) -> dict[str, float]:
    """Milliseconds of ``predict_proba`` on 1 and on 4096 rows of ``rows`` (repeated when fewer): the median
    of :data:`LATENCY_REPEATS` timed calls after one warm-up call."""
    out = {}
    for n in LATENCY_ROWS:
        batch = rows.take(np.resize(np.arange(len(rows)), n))
        est.predict_proba(batch)  # warm-up
        times = []
        for _ in range(LATENCY_REPEATS[n]):
            t0 = time.perf_counter()
            est.predict_proba(batch)
            times.append((time.perf_counter() - t0) * 1000.0)
        out[f"latency_ms_{n}_row" + ("s" if n > 1 else "")] = round(statistics.median(times), 4)
    return out


def round_cap_while_improving(history: Sequence[Mapping[str, Any]], cap: int, run_dir: str) -> list[RunWarning]:
    """The boosting used all ``cap`` rounds and its last round still improved the monitored metric."""
    if not history or len(history) < cap or not history[-1].get("improved"):
        return []
    return [RunWarning(
        "epoch_cap_while_improving",
        f"boosting stopped at the round cap (model_params.num_boost_round={cap}) while the validation metric was "
        "still improving in the last round: the model is likely undertrained",
        f"raise model_params.num_boost_round (e.g. to {2 * cap}) or model_params.learning_rate, and train the run "
        f"again (ctrlab train ... --output {run_dir} --overwrite)",
    )]


def fit_run(cfg, data, params: dict[str, Any], run_dir: Path, log: Callable[[str], None],
            callbacks: Sequence[Callable] = (), preset: str | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Train, evaluate and save the estimator ``cfg.model`` (a RunConfig) with hyperparameters ``params``
    on ``data`` (the prepared splits) into ``run_dir``; returns (metrics.json's content, history)."""
    run_dir = Path(run_dir)
    log = RunLog(run_dir, log)
    fmap: FeatureMap = data.feature_map
    fmap.save(run_dir / "feature_map.json")
    cls = get_estimator(cfg.model)
    est = cls(**params)
    est.monitor = early_stopping_monitor(cfg.trainer.monitor, log)
    threads = int(cfg.trainer.num_threads or 1)
    est.on_round = lambda record: [cb(est, record) for cb in callbacks]
    tables = {s: tabular_split(fmap, enc) for s, enc in data.splits.items()}
    train = tables["train"]
    log(f"[ctrlab] {cls.name} on {data.config.name}: train {len(train):,} rows x {train.X.shape[1]} columns "
        f"({len(train.categorical)} categorical), {threads} thread(s)" + (f", preset {preset}" if preset else ""))
    t0 = time.time()
    fitted = est.fit(train, tables.get("valid"), seed=cfg.trainer.seed, threads=threads, log=log)
    train_seconds = time.time() - t0
    history = [dict(r) for r in fitted["history"]]
    metrics: dict[str, dict[str, float]] = {}
    probs: dict[str, np.ndarray] = {}
    for s in ("valid", "test"):
        if s in tables and tables[s].y is not None:
            metrics[s], probs[s] = split_metrics(est, tables[s], cfg.trainer.metrics)
            log.file(f"[metrics {s}] " + " ".join(f"{k} {v:.6f}" for k, v in metrics[s].items()))
    warnings = _checks(fmap, data, metrics, history, est, run_dir)
    report_warnings(warnings, log)
    summary: dict[str, Any] = {
        "dataset": data.config.name, "model": cls.name, "seed": cfg.trainer.seed,
        "parameters": est.count_parameters(),
        "model_params": {**cls.defaults(), **check_estimator_params(cls.name, params)}, "preset": preset,
        "auto_settings": dict(cfg.auto_settings), "epochs": fitted["rounds"], "best_epoch": fitted["best_round"],
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(fitted["rounds"], 1), 4),
        "cache": str(data.path),
        "estimator": {"rounds": fitted["rounds"], "best_round": fitted["best_round"], "monitor": est.monitor,
                      "columns": train.feature_names, "categorical_columns": [train.feature_names[j] for j in
                                                                            train.categorical],
                      "parameters_unit": est.parameters_unit},
        **metrics,
        "warnings": [w.to_dict() for w in warnings],
    }
    summary["reliability"] = {s: metrics_module.reliability(tables[s].y, p) for s, p in probs.items()}
    if cfg.measure_cost:
        rows = next(tables[s] for s in ("test", "valid", "train") if s in tables and len(tables[s]))
        est.threads = threads
        summary["cost"] = {"parameters": summary["parameters"], "flops_per_row": None, **measure_latency(est, rows),
                           "threads": threads}
    est.save(run_dir)
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    log(f"[ctrlab] {cls.name}: {fitted['rounds']} rounds (best {fitted['best_round']}), {summary['parameters']:,} "
        f"{est.parameters_unit}" + "".join(f"; {s} AUC {m['AUC']:.5f}" for s, m in metrics.items() if "AUC" in m))
    return summary, history


def _checks(fmap: FeatureMap, data, metrics: Mapping[str, Mapping[str, float]], history: list[dict],
            est: TabularEstimator, run_dir: Path) -> list[RunWarning]:
    """The run checks of :mod:`ctrlab.train.run_checks` that apply to an estimator (not the optimiser's
    steps per epoch): logloss above the base rate, the round cap reached while improving, high OOV
    rates, a likely label leak."""
    splits: Mapping[str, EncodedSplit] = data.splits
    train_labels = splits["train"].arrays["label"]
    split_logloss = {s: m["logloss"] for s, m in metrics.items() if "logloss" in m}
    labels = {s: np.asarray(splits[s].arrays["label"][:, 0], dtype=np.float64) for s in split_logloss}
    rate = base_rate(train_labels[:, 0])
    fix = est.calibration_fix[0].upper() + est.calibration_fix[1:]
    out = [RunWarning(w.code, w.message, fix)  # the torch fix names trainer settings: say what changes here
           for w in logloss_above_base_rate(split_logloss, rate, labels, est.monitor == "logloss")]
    cap = getattr(getattr(est, "params", None), "num_boost_round", None)
    if cap is not None:
        out += round_cap_while_improving(history, cap, str(run_dir))
    out += high_oov_rate(data.oov_rates)
    if "valid" in splits and "label" in splits["valid"].arrays and math.isfinite(rate):
        out += likely_label_leak(fmap, splits["train"], splits["valid"])
    return out


# ---- a finished run ------------------------------------------------------------------------------
def load_estimator(run_dir: Path, model: str, params: dict[str, Any], threads: int | None = None) -> TabularEstimator:
    """The fitted estimator of a finished run (``model`` and ``params`` from its run_config.yaml)."""
    est = get_estimator(model).load(Path(run_dir), dict(params))
    est.threads = int(threads or 1)
    return est


def evaluate_split(est: TabularEstimator, fmap: FeatureMap, enc: EncodedSplit, configured: Sequence[str],
                   transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Final metrics of a finished run's estimator on an encoded, labelled split; ``transform`` maps its
    probabilities first (a post-hoc calibration)."""
    if transform is None:
        return split_metrics(est, tabular_split(fmap, enc), configured)[0]
    split = tabular_split(fmap, enc)
    names = metrics_module.final_metric_names(list(configured), split.group is not None)
    return metrics_module.evaluate_metrics(split.y, transform(est.predict_proba(split)), names, split.group)


def predict_encoded(est: TabularEstimator, fmap: FeatureMap, enc: EncodedSplit) -> np.ndarray:
    """Probabilities of a finished run's estimator on encoded (possibly unlabeled) rows."""
    return est.predict_proba(tabular_split(fmap, enc))
