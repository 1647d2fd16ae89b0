"""Hyperparameter search with Optuna, stored in the bench's results database.

    name: finalmlp-frappe              # the Optuna study name (and the runs' plan label: tune:<name>)
    db: runs/bench/results.sqlite      # results store; Optuna's tables go into the same file
    runs_dir: runs/tune
    dataset: frappe_x1_subset
    model: FinalMLP
    seeds: [2021]                      # every trial trains once per seed
    trials: 20                         # budget: finished trials in the study, across resumptions
    minutes: null                      # and/or wall-clock minutes for this invocation
    trainer: {epochs: 30}
    space:
      mlp1_dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
      embedding_regularizer: {type: float, low: 0.001, high: 0.1, log: true}
      mlp1_hidden_units: {type: categorical, choices: [[400], [400, 400]]}

Sampler: TPE (seeded). Pruner: median of the earlier trials' validation AUC at the same epoch,
reported after every epoch of a trial's first seed (for a GBDT baseline, :mod:`ctrlab.baselines`:
after every boosting round, so ``pruner.n_warmup_steps`` counts rounds). Selection rule (printed): the best trial is
the completed one with the highest mean validation AUC over its seeds; test AUC is reported
but never used to choose.

Resuming: rerun the same command. The study continues where it stopped; a trial that was running
when the process died is retried with the same parameters, and its run resumes from its last
checkpoint (runs are identified by their config, see :mod:`ctrlab.bench.plan`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from ..config import ConfigError, from_dict, load_yaml
from .plan import PROTOCOLS, HparamSet, make_job
from .runner import RunPruned, run_job
from .store import ResultsStore

SELECTION_RULE = ("best trial = the completed trial with the highest mean validation AUC over its seeds "
                  "(pruned and failed trials excluded); test AUC is shown, never used to choose")


@dataclass
class ParamSpace:
    """The search range of one model hyperparameter."""

    type: Literal["float", "int", "categorical"] = "float"
    """``float`` / ``int`` ranges or a ``categorical`` list of choices."""
    low: float | None = None
    """Lower bound (float, int)."""
    high: float | None = None
    """Upper bound, inclusive (float, int)."""
    log: bool = False
    """Sample on a log scale (float, int; low must be > 0)."""
    step: float | None = None
    """Grid step (float, int); None = continuous floats / step 1 for ints."""
    choices: list[Any] | None = None
    """The values of a categorical parameter (lists allowed, e.g. hidden units)."""


@dataclass
class PrunerConfig:
    """Optuna's MedianPruner settings."""

    enabled: bool = True
    """Prune at all."""
    n_startup_trials: int = 5
    """No pruning until this many trials have finished."""
    n_warmup_steps: int = 3
    """No pruning in a trial's first epochs."""


@dataclass
class TuneConfig:
    """A search: one model on one dataset, a space, a budget."""

    name: str = "tune"
    """Optuna study name; the runs are labelled ``tune:<name>`` in the results store."""
    db: str = "runs/bench/results.sqlite"
    """Results store (Optuna's tables live in the same SQLite file)."""
    runs_dir: str = "runs/tune"
    """Root of the trials' run folders."""
    dataset: str = "frappe_x1_subset"
    """Registered dataset name or dataset YAML."""
    dataset_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of a registered dataset."""
    model: str = "FinalMLP"
    """Registered model name."""
    preset: str = "auto"
    """Values of the hyperparameters outside the space: ``auto`` (shipped preset), ``none`` or a YAML."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Model hyperparameters fixed for every trial (override the preset)."""
    space: dict[str, ParamSpace] = field(default_factory=dict)
    """The searched hyperparameters."""
    seeds: list[int] = field(default_factory=lambda: [2021])
    """Every trial trains once per seed; its value is the mean validation AUC over them."""
    protocol: str = "bars"
    """Named protocol (``bars``, ``robust``)."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Trainer overrides for every trial."""
    trials: int | None = 20
    """Budget: finished (complete or pruned) trials in the study, counting earlier invocations."""
    minutes: float | None = None
    """Budget: wall-clock minutes for this invocation (the trial in progress is finished)."""
    sampler_seed: int = 0
    """Seed of the TPE sampler."""
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    """Median pruning on the validation AUC per epoch."""
    threads: int = 1
    """torch threads per run."""


def load_tune_config(source: str | Path | dict, **overrides: Any) -> TuneConfig:
    data = load_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    data.update({k: v for k, v in overrides.items() if v is not None})
    where = str(source) if isinstance(source, (str, Path)) else "tune"
    cfg = from_dict(TuneConfig, data, where=where)
    if not cfg.space:
        raise ConfigError(f"{where}: space is empty: name at least one hyperparameter to search")
    if cfg.trials is None and cfg.minutes is None:
        raise ConfigError(f"{where}: give a budget: trials and/or minutes")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"{where}: protocol {cfg.protocol!r} unknown; known: {sorted(PROTOCOLS)}")
    from ..baselines import estimator_defaults, is_estimator
    from ..models import hyperparameters

    if is_estimator(cfg.model):  # a GBDT: its Params (docs/baselines.md)
        allowed, open_ = sorted(estimator_defaults(cfg.model)), False
    else:
        model = hyperparameters(cfg.model)
        allowed, open_ = model.names, model.open
    for name, spec in cfg.space.items():
        w = f"{where}: space.{name}"
        if name not in allowed and not open_:
            raise ConfigError(f"{w}: {cfg.model} has no hyperparameter {name!r}; allowed: {allowed}")
        if spec.type == "categorical":
            if not spec.choices:
                raise ConfigError(f"{w}: a categorical parameter needs a non-empty choices list")
        elif spec.low is None or spec.high is None or spec.low > spec.high:
            raise ConfigError(f"{w}: a {spec.type} parameter needs low <= high")
        elif spec.log and spec.low <= 0:
            raise ConfigError(f"{w}: log scale needs low > 0")
    return cfg


def _suggest(trial, name: str, spec: ParamSpace) -> Any:
    if spec.type == "categorical":
        # Optuna stores choices as plain scalars: encode lists (e.g. hidden units) by index
        labels = [str(c) for c in spec.choices]
        return spec.choices[labels.index(trial.suggest_categorical(name, labels))]
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    value = trial.suggest_float(name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)
    # Optuna's stepped floats carry binary noise (0.30000000000000004): round it off, so configs,
    # run keys and folder contents read as written
    return round(value, 12) if spec.step else value


def _decode(cfg: TuneConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored parameters back to model hyperparameter values (categorical labels -> choices)."""
    out = dict(params)
    for name, spec in cfg.space.items():
        if spec.type == "categorical" and name in out:
            out[name] = spec.choices[[str(c) for c in spec.choices].index(out[name])]
    return out


@dataclass
class TuneResult:
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    best_test_auc: float | None
    trials: list[dict[str, Any]]


def _require_validation_split(cfg: TuneConfig) -> None:
    """The search ranks trials by validation AUC: a dataset without a validation split is refused
    before any trial runs (not with a KeyError after the first epoch)."""
    from ..api import RunConfig, dataset_config

    dcfg = dataset_config(RunConfig(dataset=cfg.dataset, dataset_params=dict(cfg.dataset_params)))
    if "valid" not in dcfg.files and dcfg.carved_valid_fraction == 0:
        raise ConfigError(f"tune: dataset {cfg.dataset!r} has no validation split (no valid file and "
                          "valid_fraction: 0), and trials are ranked by validation AUC; give it a valid file "
                          "or a valid_fraction above 0")


def tune(cfg: TuneConfig, log: Callable[[str], None] = print) -> TuneResult:
    """Run (or continue) the search of ``cfg``; returns the best trial by the selection rule."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _require_validation_split(cfg)
    store = ResultsStore(cfg.db)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner.n_startup_trials,
                                          n_warmup_steps=cfg.pruner.n_warmup_steps)
              if cfg.pruner.enabled else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=cfg.name, storage=store.url, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed), pruner=pruner)
    # Trials left RUNNING by a killed process: mark them failed and retry their parameters first
    # (their runs resume from their checkpoints).
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"[tune] trial {t.number} was interrupted: retrying it with the same parameters")
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = None if cfg.trials is None else max(cfg.trials - finished, 0)
    log(f"[tune] study {cfg.name!r} in {cfg.db}: {finished} trials done, "
        f"{'no trial limit' if remaining is None else f'{remaining} to go'}"
        + (f", at most {cfg.minutes} min" if cfg.minutes else ""))
    log(f"[tune] selection rule: {SELECTION_RULE}")

    def objective(trial) -> float:
        params = {**cfg.fixed, **{n: _suggest(trial, n, s) for n, s in cfg.space.items()}}
        hset = HparamSet(name=f"trial{trial.number}", params=params, preset=cfg.preset)
        values, tests = [], []
        for i, seed in enumerate(cfg.seeds):
            job = make_job(f"tune:{cfg.name}", cfg.runs_dir, cfg.dataset, cfg.model, seed, cfg.protocol, hset,
                           cfg.trainer, cfg.dataset_params, cfg.threads)
            callbacks = []
            if i == 0:
                def report(trainer, record):
                    trial.report(record["valid_AUC"], step=record["epoch"])
                    if trial.should_prune():
                        raise RunPruned(f"pruned by the median rule at epoch {record['epoch']}")
                callbacks.append(report)
            outcome = run_job(job, cfg.db, callbacks=callbacks)
            trial.set_user_attr(f"run_key_s{seed}", job.key)
            if outcome.how == "pruned":
                raise optuna.TrialPruned(outcome.error)
            if outcome.how in ("failed", "busy"):
                raise RuntimeError(f"trial {trial.number} seed {seed}: run {outcome.how}: {outcome.error}")
            row = store.get(job.key)
            values.append(row["valid_auc"])
            tests.append(row["test_auc"])
        value = statistics.mean(values)
        trial.set_user_attr("test_auc_mean", statistics.mean(tests) if None not in tests else None)
        log(f"[tune] trial {trial.number}: mean valid AUC {value:.6f} over {len(values)} seed(s); {params}")
        return value

    if remaining != 0:
        study.optimize(objective, n_trials=remaining, timeout=None if cfg.minutes is None else cfg.minutes * 60,
                       catch=(RuntimeError,), gc_after_trial=True)
    trials = [{"number": t.number, "state": t.state.name, "value": t.value, "params": _decode(cfg, t.params),
               "test_auc": t.user_attrs.get("test_auc_mean")} for t in study.get_trials(deepcopy=False)]
    store.close()
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None and not math.isnan(t["value"])]
    if not complete:
        raise ValueError(f"study {cfg.name!r}: no completed trial yet (see the failed/pruned runs in {cfg.db}); "
                         "rerun with a larger budget")
    best = max(complete, key=lambda t: t["value"])
    log(f"[tune] best: trial {best['number']} mean valid AUC {best['value']:.6f}"
        + (f" (test AUC {best['test_auc']:.6f}, not used for selection)" if best["test_auc"] is not None else "")
        + f"; params {best['params']}")
    counts = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    log(f"[tune] trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed")
    return TuneResult(cfg.name, best["params"], best["value"], best["test_auc"], trials)

