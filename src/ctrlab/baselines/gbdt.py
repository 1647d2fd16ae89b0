"""Gradient-boosted trees as baselines: LightGBM (native categorical splits) and XGBoost (CPU ``hist``
with categorical columns), trained on the run's encoded splits (:mod:`ctrlab.baselines.tabular`).

Both boost a binary log-loss objective for up to ``num_boost_round`` rounds and, when the dataset has a
validation split, stop once the monitored validation metric (the run's ``trainer.monitor``: ``AUC`` or
``logloss``) has not improved for ``early_stopping_rounds`` rounds, keeping the trees of the best round.
Training is deterministic for a seed and thread count (LightGBM ``deterministic`` with row-wise
histograms; XGBoost's CPU ``hist`` is deterministic). The model is saved in the library's own format
(LightGBM's text model, XGBoost's JSON model; never pickle) beside ``estimator.json``, which records the
columns it reads and the rounds. ``count_parameters`` is the number of tree nodes (split and leaf nodes
of the kept trees): the GBDT's size, not comparable one to one with a network's weights.

The libraries are imported when a model is trained or loaded (``pip install 'ctrlab[baselines]'``).
"""
from __future__ import annotations

import importlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import ConfigError
from ..data.errors import DataError
from .base import MONITORS, TabularEstimator
from .tabular import TabularSplit

ESTIMATOR_FILE = "estimator.json"
"""What every estimator run folder holds: the estimator, its library, columns and rounds."""


def _library(module: str, estimator: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{estimator} needs the Python package {package!r}, which cannot be imported ({exc}); "
                          "install it: pip install 'ctrlab[baselines]'") from None


def _safe_names(names: list[str]) -> list[str]:
    """Column names the libraries accept (LightGBM refuses JSON punctuation, XGBoost ``[ ] <``):
    other characters become ``_``; a clash gets the column index appended."""
    out: list[str] = []
    for i, n in enumerate(names):
        s = re.sub(r"[^0-9A-Za-z_.\-]", "_", n) or f"f{i}"
        out.append(f"{s}_{i}" if s in out else s)
    return out


class _RoundRecords:
    """Per-round validation records, ``{"epoch": round, "round": round, "valid_AUC", "valid_logloss",
    "monitor", "improved", "best_metric", "best_epoch", "seconds"}``: the history a run writes and
    ``on_round`` receives (the results store and the tuner's pruner read them as epochs)."""

    def __init__(self, monitor: str, on_round: Callable[[dict[str, Any]], None] | None):
        self.monitor, self.on_round = monitor, on_round
        self.larger_better = MONITORS[monitor]
        self.records: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_round: int | None = None
        self.t = time.perf_counter()

    def add(self, rnd: int, metrics: dict[str, float]) -> None:
        value = metrics[self.monitor]
        improved = self.best is None or (value > self.best if self.larger_better else value < self.best)
        if improved:
            self.best, self.best_round = value, rnd
        now = time.perf_counter()
        record = {"epoch": rnd, "round": rnd, **{f"valid_{k}": float(v) for k, v in metrics.items()},
                  "monitor": float(value), "improved": improved, "best_metric": float(self.best),
                  "best_epoch": self.best_round, "seconds": now - self.t}
        self.t = now
        self.records.append(record)
        if self.on_round is not None:
            self.on_round(record)


@dataclass
class BoostingParams:
    """The boosting schedule both GBDT baselines share."""

    learning_rate: float = 0.05
    """Shrinkage of every tree's contribution (XGBoost's ``eta``)."""
    num_boost_round: int = 2000
    """Most boosting rounds (trees); early stopping on the validation split usually ends far sooner."""
    early_stopping_rounds: int = 50
    """Patience: stop when the monitored validation metric has not improved for this many rounds
    (the best round's trees are kept)."""

    def check_rounds(self, where: str) -> None:
        for key in ("num_boost_round", "early_stopping_rounds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"{where}.learning_rate: must be > 0, got {self.learning_rate}")


@dataclass
class LightGBMParams(BoostingParams):
    """LightGBM's hyperparameters in ctrlab (names as in LightGBM's documentation)."""

    num_leaves: int = 31
    """Most leaves per tree (LightGBM grows trees leaf-wise)."""
    max_depth: int = -1
    """Most depth per tree; -1: no limit besides ``num_leaves``."""
    min_data_in_leaf: int = 20
    """Fewest training rows in a leaf (sklearn API: ``min_child_samples``)."""
    lambda_l2: float = 1.0
    """L2 penalty on the leaf values (LightGBM's default is 0; a little helps on sparse ids)."""
    feature_fraction: float = 1.0
    """Share of columns each tree may use."""
    bagging_fraction: float = 1.0
    """Share of rows each bagging round draws (with ``bagging_freq`` > 0)."""
    bagging_freq: int = 0
    """Draw new bagging rows every this many rounds; 0: no bagging."""
    max_bin: int = 255
    """Most histogram bins per numeric column."""
    max_cat_to_onehot: int = 4
    """A categorical column with at most this many values splits one-vs-rest; larger ones use
    LightGBM's sorted-gradient many-vs-many split."""
    cat_smooth: float = 10.0
    """Smoothing of the per-category gradient statistics (fewer overfitted rare categories)."""
    cat_l2: float = 10.0
    """L2 penalty in categorical splits."""
    min_data_per_group: int = 100
    """Fewest rows per category group of a categorical split."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other ``lightgbm.train`` parameters, passed as they are (LightGBM checks them); not those above
    nor ``objective``, ``metric``, ``seed``, ``num_threads``, ``deterministic``."""

    def validate(self, where: str) -> None:
        self.check_rounds(where)
        reserved = {"objective", "metric", "seed", "num_threads", "deterministic", "num_iterations",
                    "early_stopping_round", *vars(self)} & set(self.extra)
        if reserved:
            raise ConfigError(f"{where}.extra: {sorted(reserved)} are set by ctrlab (or are options of their own: "
                              "set them directly in model_params)")


@dataclass
class XGBoostParams(BoostingParams):
    """XGBoost's hyperparameters in ctrlab (names as in XGBoost's documentation)."""

    max_depth: int = 6
    """Most depth per tree (XGBoost grows trees depth-wise)."""
    min_child_weight: float = 1.0
    """Fewest hessian (for log loss: p·(1-p) summed over rows) in a child."""
    reg_lambda: float = 1.0
    """L2 penalty on the leaf values (``lambda``)."""
    reg_alpha: float = 0.0
    """L1 penalty on the leaf values (``alpha``)."""
    subsample: float = 1.0
    """Share of rows each tree draws."""
    colsample_bytree: float = 1.0
    """Share of columns each tree may use."""
    max_bin: int = 256
    """Most histogram bins per numeric column."""
    max_cat_to_onehot: int = 4
    """A categorical column with fewer values than this splits one-vs-rest; larger ones partition
    the categories by their gradient statistics."""
    max_cat_threshold: int = 64
    """Most categories on one side of a partition split."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other ``xgboost.train`` parameters, passed as they are (XGBoost checks them); not those above
    nor ``objective``, ``eval_metric``, ``seed``, ``nthread``, ``tree_method``."""

    def validate(self, where: str) -> None:
        self.check_rounds(where)
        reserved = {"objective", "eval_metric", "seed", "nthread", "tree_method", "eta", "lambda", "alpha",
                    *vars(self)} & set(self.extra)
        if reserved:
            raise ConfigError(f"{where}.extra: {sorted(reserved)} are set by ctrlab (or are options of their own: "
                              "set them directly in model_params)")


class _GBDT(TabularEstimator):
    """What LightGBM and XGBoost share: the columns, the rounds, ``estimator.json``."""

    parameters_unit = "tree nodes"
    calibration_fix = ("monitor logloss for early stopping (trainer.monitor=logloss), lower "
                       "model_params.learning_rate, or regularise the trees more (model_params.min_data_in_leaf / "
                       "min_child_weight, lambda_l2 / reg_lambda)")
    library: str = ""
    package: str = ""
    model_file: str = ""

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.booster = None
        self.feature_names: list[str] = []
        self.categorical: list[int] = []
        self.rounds = 0
        self.best_round = 0
        self.threads = 1

    def _lib(self):
        return _library(self.library, self.name, self.package)

    def _start(self, train: TabularSplit, valid: TabularSplit | None, threads: int) -> None:
        self.check_monitor()
        if train.y is None:
            raise DataError(f"{self.name}: the train split has no labels",
                            fix="give the dataset's train file its label column")
        if valid is not None and valid.y is None:
            raise DataError(f"{self.name}: the valid split has no labels", fix="give the valid file its label column")
        self.feature_names, self.categorical = list(train.feature_names), list(train.categorical)
        self.threads = max(1, int(threads))

    def _check_columns(self, split: TabularSplit) -> None:
        if list(split.feature_names) != self.feature_names:
            raise DataError(f"{self.name} was trained on the columns {self.feature_names}, the rows given have "
                            f"{list(split.feature_names)}", fix="encode the rows with the run's own feature_map.json")

    def _summary(self, log, records: _RoundRecords | None, valid: TabularSplit | None) -> dict[str, Any]:
        p = self.params
        if valid is None:
            log(f"[ctrlab] {self.name}: no validation split: all {self.rounds} rounds kept (no early stopping)")
        else:
            stopped = self.rounds < p.num_boost_round
            log(f"[ctrlab] {self.name}: {'early stop' if stopped else 'round cap'} after {self.rounds} rounds; best "
                f"valid {self.monitor} {records.best:.6f} at round {self.best_round} (kept)")
        return {"rounds": self.rounds, "best_round": self.best_round,
                "history": records.records if records is not None else []}

    def _meta(self) -> dict[str, Any]:
        lib = self._lib()
        return {"estimator": self.name, "library": self.library, "library_version": lib.__version__,
                "model_file": self.model_file, "feature_names": self.feature_names, "categorical": self.categorical,
                "rounds": self.rounds, "best_round": self.best_round, "monitor": self.monitor}

    def save(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        self._save_model(run_dir / self.model_file)
        (run_dir / ESTIMATOR_FILE).write_text(json.dumps(self._meta(), indent=1))

    @classmethod
    def load(cls, run_dir: Path, params: dict[str, Any]) -> "_GBDT":
        run_dir = Path(run_dir)
        meta_file, model_file = run_dir / ESTIMATOR_FILE, run_dir / cls.model_file
        for f in (meta_file, model_file):
            if not f.is_file():
                raise FileNotFoundError(f"{f} does not exist: {run_dir} is not a finished {cls.name} run "
                                        "(train it: ctrlab train --model " + cls.name + " --output RUN)")
        meta = json.loads(meta_file.read_text())
        if meta.get("estimator") != cls.name:
            raise DataError(f"{meta_file} holds a {meta.get('estimator')!r} model, not {cls.name}",
                            fix="load the run with the estimator its run_config.yaml names")
        est = cls(**params)
        est.feature_names, est.categorical = list(meta["feature_names"]), list(meta["categorical"])
        est.rounds, est.best_round, est.monitor = int(meta["rounds"]), int(meta["best_round"]), meta["monitor"]
        est._load_model(model_file)
        return est

    def _save_model(self, path: Path) -> None:
        raise NotImplementedError

    def _load_model(self, path: Path) -> None:
        raise NotImplementedError


def _register(name: str):
    from . import register_estimator

    return register_estimator(name)


@_register("LightGBM")
class LightGBM(_GBDT):
    """LightGBM (``lightgbm.train``, objective ``binary``): categorical columns as LightGBM categorical
    features (many-vs-many splits on gradient-sorted categories), early stopping on the validation split."""

    Params = LightGBMParams
    library, package, model_file = "lightgbm", "lightgbm", "estimator_lightgbm.txt"
    model_files = (model_file,)

    def _train_params(self, seed: int) -> dict[str, Any]:
        p = self.params
        metric = {"AUC": "auc", "logloss": "binary_logloss"}
        return {"objective": "binary", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
                "max_depth": p.max_depth, "min_data_in_leaf": p.min_data_in_leaf, "lambda_l2": p.lambda_l2,
                "feature_fraction": p.feature_fraction, "bagging_fraction": p.bagging_fraction,
                "bagging_freq": p.bagging_freq, "max_bin": p.max_bin, "max_cat_to_onehot": p.max_cat_to_onehot,
                "cat_smooth": p.cat_smooth, "cat_l2": p.cat_l2, "min_data_per_group": p.min_data_per_group,
                # the monitored metric first: early stopping reads only it (first_metric_only)
                "metric": [metric[self.monitor], *(m for k, m in metric.items() if k != self.monitor)],
                "seed": seed, "num_threads": self.threads, "deterministic": True, "force_row_wise": True,
                "verbosity": -1, **p.extra}

    def fit(self, train: TabularSplit, valid: TabularSplit | None, seed: int, threads: int, log) -> dict[str, Any]:
        lgb = self._lib()
        self._start(train, valid, threads)
        p = self.params
        names = _safe_names(self.feature_names)
        dtrain = lgb.Dataset(train.X, label=train.y, feature_name=names, categorical_feature=self.categorical,
                             free_raw_data=True)
        callbacks, valid_sets, records = [], [], None
        if valid is not None:
            self._check_columns(valid)
            valid_sets = [lgb.Dataset(valid.X, label=valid.y, reference=dtrain)]
            records = _RoundRecords(self.monitor, self.on_round)
            names_of = {"auc": "AUC", "binary_logloss": "logloss"}

            def record(env) -> None:
                records.add(env.iteration + 1, {names_of[r[1]]: float(r[2]) for r in env.evaluation_result_list})

            callbacks = [record, lgb.early_stopping(p.early_stopping_rounds, first_metric_only=True, verbose=False)]
        try:
            booster = lgb.train(self._train_params(seed), dtrain, num_boost_round=p.num_boost_round,
                                valid_sets=valid_sets, valid_names=["valid"][:len(valid_sets)], callbacks=callbacks)
        except lgb.basic.LightGBMError as exc:
            raise ConfigError(f"{self.name}: LightGBM refused the training parameters: {exc}") from None
        self.rounds = len(records.records) if records is not None else booster.current_iteration()
        # lgb.train returns the booster cut at the best iteration (its best_iteration) after early stopping
        self.best_round = booster.best_iteration if valid is not None and booster.best_iteration else self.rounds
        self.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_round))
        return self._summary(log, records, valid)

    def predict_proba(self, split: TabularSplit) -> np.ndarray:
        self._check_columns(split)
        return np.asarray(self.booster.predict(split.X, num_threads=self.threads), dtype=np.float64)

    def count_parameters(self) -> int:
        return int(sum(2 * t["num_leaves"] - 1 for t in self.booster.dump_model()["tree_info"]))

    def _save_model(self, path: Path) -> None:
        self.booster.save_model(str(path))

    def _load_model(self, path: Path) -> None:
        self.booster = self._lib().Booster(model_file=str(path))


@_register("XGBoost")
class XGBoost(_GBDT):
    """XGBoost (``xgboost.train``, objective ``binary:logistic``, ``tree_method: hist`` on CPU): categorical
    columns typed ``c`` (partition splits), early stopping on the validation split."""

    Params = XGBoostParams
    library, package, model_file = "xgboost", "xgboost-cpu", "estimator_xgboost.json"
    model_files = (model_file,)

    def _train_params(self, seed: int) -> dict[str, Any]:
        p = self.params
        return {"objective": "binary:logistic", "tree_method": "hist", "eta": p.learning_rate,
                "max_depth": p.max_depth, "min_child_weight": p.min_child_weight, "lambda": p.reg_lambda,
                "alpha": p.reg_alpha, "subsample": p.subsample, "colsample_bytree": p.colsample_bytree,
                "max_bin": p.max_bin, "max_cat_to_onehot": p.max_cat_to_onehot,
                "max_cat_threshold": p.max_cat_threshold, "eval_metric": ["logloss", "auc"], "seed": seed,
                "nthread": self.threads, **p.extra}

    def _matrix(self, split: TabularSplit, with_label: bool = True):
        xgb = self._lib()
        cat = set(self.categorical)
        return xgb.DMatrix(split.X, label=split.y if with_label else None,
                           feature_names=_safe_names(self.feature_names), feature_types=["c" if j in cat else "q" for j in range(len(self.feature_names))],
                           enable_categorical=True, nthread=self.threads)

    def fit(self, train: TabularSplit, valid: TabularSplit | None, seed: int, threads: int, log) -> dict[str, Any]:
        xgb = self._lib()
        self._start(train, valid, threads)
        p = self.params
        dtrain = self._matrix(train)
        callbacks, evals, records = [], [], None
        if valid is not None:
            self._check_columns(valid)
            evals = [(self._matrix(valid), "valid")]
            records = _RoundRecords(self.monitor, self.on_round)

            class Record(xgb.callback.TrainingCallback):
                def after_iteration(self, model, epoch, evals_log) -> bool:
                    logs = evals_log["valid"]
                    records.add(epoch + 1, {"AUC": logs["auc"][-1], "logloss": logs["logloss"][-1]})
                    return False

            callbacks = [Record(), xgb.callback.EarlyStopping(
                rounds=p.early_stopping_rounds, metric_name={"AUC": "auc", "logloss": "logloss"}[self.monitor],
                data_name="valid", maximize=MONITORS[self.monitor], save_best=False)]
        try:
            booster = xgb.train(self._train_params(seed), dtrain, num_boost_round=p.num_boost_round, evals=evals,
                                callbacks=callbacks, verbose_eval=False)
        except xgb.core.XGBoostError as exc:
            raise ConfigError(f"{self.name}: XGBoost refused the training parameters: {exc}") from None
        self.rounds = booster.num_boosted_rounds()
        self.best_round = booster.best_iteration + 1 if valid is not None else self.rounds  # best_iteration: 0-based
        self.booster = booster[: self.best_round]  # the kept trees only
        return self._summary(log, records, valid)

    def predict_proba(self, split: TabularSplit) -> np.ndarray:
        self._check_columns(split)
        self.booster.set_param({"nthread": self.threads})
        return np.asarray(self.booster.predict(self._matrix(split, with_label=False)), dtype=np.float64)

    def count_parameters(self) -> int:
        trees = json.loads(self.booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
        return int(sum(int(t["tree_param"]["num_nodes"]) - int(t["tree_param"].get("num_deleted", 0)) for t in trees))

    def _save_model(self, path: Path) -> None:
        self.booster.save_model(str(path))

    def _load_model(self, path: Path) -> None:
        self.booster = self._lib().Booster()
        self.booster.load_model(str(path))
