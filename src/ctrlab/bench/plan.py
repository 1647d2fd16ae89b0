"""Bench plans: grids of datasets x models x seeds x protocols x hyperparameter sets, in YAML.

    name: zoo                          # label of the runs in the results store
    db: runs/bench/results.sqlite      # the results store (SQLite)
    runs_dir: runs/bench               # run folders: <runs_dir>/<dataset>/<protocol>/<Model>[-<set>]-s<seed>
    jobs: 2                            # parallel worker processes (1 torch thread each)
    grids:
      - datasets: [frappe_x1_subset]
        models: [DNN, DeepFM, FinalMLP]
        seeds: [2021, 2022, 2023]
        protocols: [bars]              # bars (default) | robust
        hparam_sets:                   # default: one set "preset" = the shipped preset as is
          - {name: preset}
          - {name: drop02, models: [DNN], params: {net_dropout: 0.2}}

Every job is one :class:`~ctrlab.api.RunConfig`; its identity (the results store's ``key``) is
the hash of its resolved config (presets merged), so two plans asking for the same experiment
share one run, and a finished run is never trained twice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict, load_yaml

# Named protocols: trainer overrides on top of TrainerConfig's BARS defaults.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # BARS as FuxiCTR implements it: early stop on valid AUC, patience 2, LR x0.1 per plateau epoch.
    "bars": {},
    # ctrlab's documented fix for BARS' fragility on small data (see TrainerConfig): exact BatchNorm
    # statistics after every epoch and no early stop before epoch 10.
    "robust": {"bn_recalibration_batches": 64, "min_epochs": 10},
}


@dataclass
class HparamSet:
    """One hyperparameter setting of a grid."""

    name: str = "preset"
    """Label in the store, the run folder name (unless ``preset``) and the report."""
    models: list[str] | None = None
    """Models this set applies to; None = every model of the grid."""
    params: dict[str, Any] = field(default_factory=dict)
    """``model_params`` overrides on top of the model's preset."""
    preset: str = "auto"
    """``auto`` (the shipped BARS-tuned preset when there is one), ``none`` (class defaults) or a YAML path."""


@dataclass
class Grid:
    """The cross product of its lists; a plan is a list of grids."""

    name: str = ""
    """Optional label of the grid (renderers such as benchmarks/zoo_results.py select grids by it)."""
    datasets: list[str] = field(default_factory=lambda: ["frappe_x1_subset"])
    """Registered dataset names or dataset YAML paths."""
    models: list[str] = field(default_factory=lambda: ["DNN"])
    """Registered model names."""
    seeds: list[int] = field(default_factory=lambda: [2021, 2022, 2023])
    """One run per seed (BARS reports single runs; ctrlab reports mean ± std over these)."""
    protocols: list[str] = field(default_factory=lambda: ["bars"])
    """Named protocols (``bars``, ``robust``; see ``PROTOCOLS``)."""
    hparam_sets: list[HparamSet] = field(default_factory=lambda: [HparamSet()])
    """Hyperparameter sets; each applies to the models it names (all by default)."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Trainer overrides for every run of this grid (e.g. ``epochs: 5``), applied after the protocol's."""
    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Parameters per dataset name (e.g. ``synthetic: {rows: 100000}``)."""


@dataclass
class BenchPlan:
    """A named list of grids and where their results go."""

    name: str = "bench"
    """Label of every run of this plan in the store (a run shared with another plan keeps the first label)."""
    db: str = "runs/bench/results.sqlite"
    """The SQLite results store (created if missing)."""
    runs_dir: str = "runs/bench"
    """Root of the run folders (checkpoints, weights, logs)."""
    jobs: int = 1
    """Parallel worker processes; each trains one run at a time with ``threads_per_job`` torch threads."""
    threads_per_job: int = 1
    """torch threads per run (``trainer.num_threads``); jobs x threads should not exceed the cores."""
    grids: list[Grid] = field(default_factory=lambda: [Grid()])
    """The grids; their jobs run in order, duplicates once."""


@dataclass
class Job:
    """One run of a plan."""

    key: str
    plan: str
    dataset: str
    model: str
    seed: int
    protocol: str
    hparam_set: str
    run_dir: str
    config: dict[str, Any]
    """The RunConfig as a dict, ready for :func:`ctrlab.api.load_run_config`."""
    resolved: dict[str, Any]
    """The resolved config (presets merged) as the run folder saves it."""


def load_plan(source: str | Path | dict, **overrides: Any) -> BenchPlan:
    """A BenchPlan from a YAML path or dict; keyword overrides (``jobs=2``, ``db=...``) when not None."""
    data = load_yaml(source) if isinstance(source, (str, Path)) else dict(source)
    data.update({k: v for k, v in overrides.items() if v is not None})
    where = str(source) if isinstance(source, (str, Path)) else "plan"
    plan = from_dict(BenchPlan, data, where=where)
    if plan.jobs < 1 or plan.threads_per_job < 1:
        raise ConfigError(f"{where}: jobs and threads_per_job must be >= 1")
    for i, g in enumerate(plan.grids):
        unknown = sorted(set(g.protocols) - set(PROTOCOLS))
        if unknown:
            raise ConfigError(f"{where}: grids[{i}].protocols: unknown {unknown}; known: {sorted(PROTOCOLS)}")
        for s in g.hparam_sets:
            if s.models is not None and not set(s.models) & set(g.models):
                raise ConfigError(f"{where}: grids[{i}] hparam set {s.name!r} names models {s.models}, "
                                  f"none of which is in the grid's models {g.models}")
    return plan


LATER_OPTIONS: dict[str, dict[str, Any]] = {
    "trainer": {"precision": "fp32", "sparse_embeddings": False, "shuffle_block_rows": None}}
"""Options added after the results store's first runs, with their defaults. At its default such an
option is left out of a run's identity, so adding an option never renames (and retrains) the runs
recorded before it existed; any other value is part of the identity. Append new options here."""


LATER_TOP_LEVEL: dict[str, Any] = {"streaming": False, "stream_block_rows": 1 << 18, "measure_cost": True}
"""Top-level run options added later (how data is prepared, or what is measured after training: not what
is learned), with their defaults; left out of a run's identity at their defaults, like :data:`LATER_OPTIONS`."""


def run_key(resolved: dict[str, Any]) -> str:
    """Identity of a run: sha256 of its resolved config without the output folder (and without
    :data:`LATER_OPTIONS` and :data:`LATER_TOP_LEVEL` at their defaults)."""
    body = {k: v for k, v in resolved.items()
            if k != "output" and not (k in LATER_TOP_LEVEL and v == LATER_TOP_LEVEL[k])}
    for section, defaults in LATER_OPTIONS.items():
        if isinstance(body.get(section), dict):
            body[section] = {k: v for k, v in body[section].items() if not (k in defaults and v == defaults[k])}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:20]


def make_job(plan: str, runs_dir: str, dataset: str, model: str, seed: int, protocol: str = "bars",
             hparam_set: HparamSet | None = None, trainer: dict[str, Any] | None = None,
             dataset_params: dict[str, Any] | None = None, threads: int = 1) -> Job:
    """One run: its config, resolved config (presets merged), identity and run folder."""
    from ..api import load_run_config, resolved_config
    from ..baselines import get_estimator, is_estimator
    from ..models import get_model_class

    hset = hparam_set or HparamSet()
    name = get_estimator(model).name if is_estimator(model) else get_model_class(model).__name__
    folder = name if hset.name == "preset" else f"{name}-{hset.name}"
    run_dir = str(Path(runs_dir) / Path(dataset).stem / protocol / f"{folder}-s{seed}")
    trainer = {**PROTOCOLS[protocol], **(trainer or {}), "seed": seed, "num_threads": threads, "progress": False}
    config = {"dataset": dataset, "model": name, "preset": hset.preset, "model_params": dict(hset.params),
              "trainer": trainer, "output": run_dir}
    if dataset_params:
        config["dataset_params"] = dict(dataset_params)
    resolved = resolved_config(load_run_config(config), run_dir)
    return Job(run_key(resolved), plan, Path(dataset).stem, name, seed, protocol, hset.name, run_dir, config, resolved)


def expand(plan: BenchPlan) -> list[Job]:
    """The plan's jobs in order (grid by grid; dataset, protocol, set, model, seed), duplicates once."""
    jobs: dict[str, Job] = {}
    for g in plan.grids:
        for dataset in g.datasets:
            for protocol in g.protocols:
                for hset in g.hparam_sets:
                    for model in g.models:
                        if hset.models is not None and model not in hset.models:
                            continue
                        for seed in g.seeds:
                            job = make_job(plan.name, plan.runs_dir, dataset, model, seed, protocol, hset, g.trainer,
                                           g.dataset_params.get(dataset), plan.threads_per_job)
                            jobs.setdefault(job.key, job)
    return list(jobs.values())
