"""The Python API: train, evaluate and predict in a few lines.

    import ctrlab
    result = ctrlab.train(dataset="frappe_x1_subset", model="FinalMLP")
    print(result.metrics["test"], result.run_dir)
    ctrlab.predict(result.run_dir, "raw.csv", "scores.csv")

A run folder holds everything needed to evaluate, predict or resume::

    run_config.yaml        the resolved RunConfig (dataset, model hyperparameters, trainer)
    dataset_config.json    how raw files are parsed
    feature_map.json       fitted vocabularies / statistics (the one preprocessing artefact)
    model.safetensors      best weights (restored after early stopping)
    metrics.json           validation and test metrics (the final set: calibration, group metrics), reliability, parameters, timing
    train.log, checkpoints/  per-epoch log and resumable checkpoints
    linear_warm_start.json what the first-order fit chose, with ``linear_warm_start``
    calibration.json       a post-hoc calibration (``ctrlab calibrate``), applied by predict, evaluate, export
    .ctrlab.lock           held by the process training in the folder (see :mod:`ctrlab.run_folder`)

Evaluation, prediction and resume all encode raw data with the run's own ``feature_map.json``,
never with a map re-fitted on the current train file.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .baselines import check_estimator_params, get_estimator, is_estimator
from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .data.cache import write_atomic
from .data.datasets import get_dataset
from .data.feature_map import FeatureMap
from .data.loader import BatchLoader, to_batch
from .data.pipeline import PreparedData, encode_frame, prepare
from .data.schema import (CategoricalSpec, CrossesConfig, DatasetConfig, SequenceSpec, column_of, cross_specs,
                          load_dataset_config, read_features)
from .layers.low_rank import LowRankLinear, apply_low_rank
from .layers.opt_embed import apply_opt_embed, initial_weights_digest, opt_embed_summary
from .models import check_hparams, create, default_hparams, get_model_class
from .run_folder import RunFolderError, RunFolderLock, check_free_space, claim, create_unique_folder
from .serve.calibration import CALIBRATION_FILE, fit_calibration, load_calibration
from .train import Trainer, TrainerConfig, seed_everything
from .train import auto as auto_rules
from .train.distributed import SINGLE, DistContext
from .train.distributed import setup as setup_distributed
from .train.distributed import teardown as teardown_distributed
from .train.linear_init import C_GRID, HEAD_STD, MAX_ROWS, first_order_module, fit_first_order, quiet_output_heads
from .train.run_checks import report_warnings, run_checks


@dataclass
class RunConfig:
    """One training run: which data, which model with which hyperparameters, how to train."""

    dataset: str = "frappe_x1_subset"
    """A registered dataset name (``ctrlab datasets``) or a path to a dataset YAML."""
    dataset_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of a registered dataset (e.g. ``rows`` and ``seed`` of ``synthetic``)."""
    model: str = "FinalMLP"
    """A registered model name (``ctrlab models``): a torch model, or a non-torch baseline (``LightGBM``,
    ``XGBoost``: docs/baselines.md), trained on the same encoded splits into the same kind of run folder."""
    preset: str | None = "auto"
    """Hyperparameter preset: ``auto`` uses the BARS-tuned values for this model on this
    dataset's benchmark family when ctrlab ships them (``configs/presets/<family>/<model>.yaml``)
    and, for a dataset outside the BARS families, derives training settings from the data
    (:mod:`ctrlab.train.auto`: batch size, early stopping, ``min_count``, ``init_output_bias``;
    settings given explicitly are kept); ``none`` uses the model's class defaults and the trainer's
    BARS defaults, or a path to a preset YAML."""
    model_params: dict[str, Any] = field(default_factory=dict)
    """Model hyperparameters; they override the preset."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation and protocol settings (BARS defaults)."""
    output: str | None = None
    """Run folder; default ``runs/<dataset>/<model>-<time>-s<seed>-<6 random hex digits>``."""
    data_dir: str | None = None
    """Where raw datasets live; default ``CTRLAB_DATA_DIR``."""
    download: bool = False
    """Fetch a registered public dataset from its published source (checksums verified) when it
    is not found locally."""
    cache_dir: str | None = None
    """Where encoded splits are cached; default ``CTRLAB_CACHE_DIR`` or ``~/.cache/ctrlab``."""
    mmap: bool = False
    """Memory-map the encoded arrays instead of loading them into RAM."""
    streaming: bool = False
    """Preprocess csv/tsv/parquet files in blocks of ``stream_block_rows`` rows, in two passes, with
    memory bounded by a block and the vocabularies instead of the whole file; the encoded splits
    are then memory-mapped. Same cache and same arrays as the default in-memory preprocessing."""
    stream_block_rows: int = 1 << 18
    """Rows per block when ``streaming``."""
    min_count: int | None = None
    """Raise the ``min_count`` of every categorical feature and own-vocabulary sequence (not hashed)
    to at least this: train values seen fewer times share the OOV id. None: the dataset config's."""
    crosses: CrossesConfig | None = None
    """Add cross-product features of every pair of some categorical features to the dataset
    (``{fields: all, min_count: 1, embedding_dim: null}``, :class:`~ctrlab.data.schema.CrossesConfig`;
    OptInter memorizes pairs through them). None: the dataset config's own crosses, if any."""
    init_output_bias: bool = False
    """Start the model's output bias at the train base rate's log-odds, so that the untrained model
    predicts the base rate (:meth:`~ctrlab.models.base.CTRModel.init_output_bias`); not BARS."""
    small_numeric_init: bool = False
    """Start each numeric field's embedding vector at the embedding rows' scale (standard deviation
    1e-4, divided by the field's root mean square train value when above 1) instead of Xavier's, so
    numeric inputs do not dominate the untrained model's logits
    (:meth:`~ctrlab.models.base.CTRModel.shrink_numeric_init`); not BARS."""
    linear_warm_start: bool = False
    """Start the model's first-order term (the ``LR(x)`` of DeepFM, FM, Wide&Deep, ...) at an L2
    logistic regression fitted on train by L-BFGS, its ``C`` picked on the trainer's monitored
    validation metric, and scale down the other terms' output heads where they would add noise to
    it (:mod:`ctrlab.train.linear_init`); models without one first-order term are left alone; not
    BARS. Pair it with ``trainer.validate_start``."""
    low_rank: dict[str, int] = field(default_factory=dict)
    """Layer name -> rank: these ``nn.Linear`` layers of the model are ``LowRankLinear`` ones (a run
    written by ``ctrlab compress``; training from such a config trains the low-rank architecture)."""
    opt_embed: dict[str, Any] = field(default_factory=dict)
    """OptEmbed masks on the model's embedding tables (:mod:`ctrlab.layers.opt_embed`; a run written by
    ``ctrlab optembed``): ``{mode: fixed, tables: {name: {widths, keep, rows}}}`` trains, evaluates and
    serves the searched model (per-field widths, the kept features' packed mask), ``{mode: supernet,
    alpha, threshold_lr}`` the recipe's supernet; empty (default): off. Not with ``low_rank``."""
    distill: dict[str, Any] = field(default_factory=dict)
    """Online distillation (:mod:`ctrlab.recipes.distill`; a run written by ``ctrlab distill``): ``{teacher,
    teacher_params, weight, loss, temperature}`` trains a teacher model beside this run's model (the
    student) on the same batches, the student's loss adding ``weight`` times a distillation term against the
    teacher's detached predictions; the run's weights are the student's, the teacher's run goes to
    ``<output>/teacher``. Empty (default): off. Not with ``low_rank`` or ``opt_embed``."""
    auto_settings: dict[str, Any] = field(default_factory=dict)
    """What ``preset: auto`` derived from the data, ``{setting: {value, reason}}``: filled in by
    :func:`train` and saved with the run (the values themselves are in their own fields)."""
    measure_cost: bool = True
    """After the test evaluation, measure what the trained model costs to serve and write it to
    ``metrics.json["cost"]`` (:mod:`ctrlab.train.cost`: parameters, matmul FLOPs per row, median latency
    of 1 row and of 4096 rows on the run's device and threads; about 0.2 s for a small model). False: no
    ``cost`` record (e.g. many tiny runs where the time matters). Does not change what is learned."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


# ---- config resolution ------------------------------------------------------------------------
def load_run_config(source: str | Path | dict | None = None, overrides: list[str] | None = None, **kwargs) -> RunConfig:
    """Build a RunConfig from a YAML path / dict, keyword arguments and ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        data = load_yaml(source)
    elif isinstance(source, dict):
        data = dict(source)
    for k, v in kwargs.items():
        if v is not None:
            data[k] = v
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def dataset_config(cfg: RunConfig) -> DatasetConfig:
    path = Path(cfg.dataset).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        dcfg = load_dataset_config(path)
    else:
        dcfg = get_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, **cfg.dataset_params)
    if cfg.min_count is not None:  # part of the dataset config, so of the cache key and the feature map
        for spec in dcfg.features:
            if isinstance(spec, (CategoricalSpec, SequenceSpec)) and getattr(spec, "hash_buckets", None) is None \
                    and getattr(spec, "share_vocab_with", None) is None \
                    and getattr(spec, "values", "ids") == "ids":  # a number sequence has no vocabulary
                spec.min_count = max(spec.min_count, cfg.min_count)
    if cfg.crosses is not None:  # after min_count: the crosses' own min_count applies to them
        dcfg.crosses = cfg.crosses
        dcfg.features = dcfg.features + cross_specs(dcfg.features, cfg.crosses, "crosses")
    return dcfg


def _preset_family(dataset: str) -> str:
    """Benchmark family whose tuned hyperparameters apply (``frappe_x1_subset`` -> ``frappe_x1``)."""
    return dataset.removesuffix("_subset")


def resolve_model_params(cfg: RunConfig) -> tuple[dict[str, Any], str | None]:
    """Preset values overlaid with ``model_params``; returns (params, preset path or None)."""
    params: dict[str, Any] = {}
    source = None
    preset = cfg.preset
    if preset not in (None, "none"):
        if preset == "auto":
            name = f"{_model_name(cfg.model)}.yaml"
            ref = resources.files("ctrlab") / "configs" / "presets" / _preset_family(Path(cfg.dataset).stem) / name
            if ref.is_file():
                params = yaml.safe_load(ref.read_text()) or {}
                source = str(ref)
        else:
            params = load_yaml(preset)
            source = str(preset)
    params.update(cfg.model_params)
    if is_estimator(cfg.model):  # a GBDT's (non-torch) hyperparameters: unknown names and types, named
        check_estimator_params(cfg.model, params)
        return params, source
    try:
        check_hparams(cfg.model, params)  # unknown names, required ones (no default) not given, types
    except ConfigError:
        raise  # names the key already
    except ValueError as exc:
        raise ConfigError(f"model_params: {exc}") from None
    return params, source


def _model_name(name: str) -> str:
    """The registered spelling of a torch model's or an estimator's (:mod:`ctrlab.baselines`) name."""
    return get_estimator(name).name if is_estimator(name) else get_model_class(name).__name__


def resolved_config(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """The run config as a run folder saves it (``run_config.yaml``): self-contained, with the
    preset merged into ``model_params``, so the run can be resumed or evaluated even if presets
    change later. Two runs with equal resolved configs are the same experiment."""
    params, _ = resolve_model_params(cfg)
    saved = {**to_dict(cfg), "output": str(run_dir), "model_params": params, "preset": "none"}
    if cfg.distill:
        opts, teacher_params = _distill_settings(cfg)
        saved["distill"] = {**opts.to_dict(), "teacher": get_model_class(opts.teacher).__name__,
                            "teacher_params": teacher_params}
    return saved


def _distill_settings(cfg: RunConfig):
    """(:class:`~ctrlab.recipes.distill.DistillOptions` of ``cfg.distill``, the teacher's hyperparameters
    resolved as a run of the teacher would resolve them: preset, then ``teacher_params``); the settings
    distillation cannot be combined with refused."""
    from .recipes.distill import DistillOptions

    opts = DistillOptions.from_dict(cfg.distill)
    if cfg.low_rank or cfg.opt_embed:
        raise ConfigError("distill: not with " + ("low_rank" if cfg.low_rank else "opt_embed") + " (the recipe "
                          "trains a plain student beside its teacher); drop it, or distill first and then run "
                          "ctrlab compress / optembed on the student's config")
    try:
        teacher_params, _ = resolve_model_params(dataclasses.replace(cfg, model=opts.teacher,
                                                                     model_params=dict(opts.teacher_params)))
    except ConfigError as exc:
        raise ConfigError(f"distill.teacher_params: {exc}") from None
    return opts, teacher_params


def _default_run_dir(cfg: RunConfig) -> Path:
    """A new, unique folder ``runs/<dataset>/<model>-<time>-s<seed>-<6 hex>`` (created atomically)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / Path(cfg.dataset).stem / f"{_model_name(cfg.model)}-{stamp}-s{cfg.trainer.seed}"
    return create_unique_folder(base)


# ---- resume: the saved config, with only the overrides that cannot change the run's result ----
RESUME_SAFE = ("trainer.epochs", "trainer.progress", "trainer.device", "trainer.num_threads",
               "trainer.eval_batch_size", "data_dir", "cache_dir", "download", "mmap", "streaming",
               "stream_block_rows", "measure_cost")
"""Settings a resumed run may change: the epoch budget, where and how it runs, where data and caches
live. Everything else (dataset, model, hyperparameters, seed, lr, batch size, ...) is the run."""
_NESTED = ("trainer", "model_params", "dataset_params")


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """``{"trainer": {"lr": 1}}`` -> ``{"trainer.lr": 1}`` (one level, for the nested sections)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _NESTED and isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    """A config's settings, flat, with the model's effective hyperparameters (defaults, preset,
    overrides) in ``model_params.*`` and its canonical model name."""
    params, _ = resolve_model_params(cfg)
    d = {**to_dict(cfg), "model": get_model_class(cfg.model).__name__,
         "model_params": {**default_hparams(cfg.model), **params}}
    d.pop("preset")
    return _flat(d)


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s settings over ``base``'s (the nested sections merged key by key)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = {**out[k], **v} if k in _NESTED and isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resume_config(explicit: dict[str, Any], run_dir: Path) -> tuple[RunConfig, str | None]:
    """The run's saved config, with the explicitly given settings that a resume may change applied,
    and a note saying which (None: none). A given setting that differs from the saved run and is not
    in :data:`RESUME_SAFE` is refused."""
    saved_file = run_dir / "run_config.yaml"
    if not saved_file.exists():
        raise FileNotFoundError(f"cannot resume: {saved_file} does not exist (pass the run folder as --output)")
    saved = load_run_config(saved_file)
    if is_estimator(saved.model):
        raise ConfigError(f"cannot resume {run_dir}: it is a {_model_name(saved.model)} run, which has no checkpoints "
                          "(boosting is not resumable here); train it again with --overwrite")
    given = {k: v for k, v in explicit.items() if k != "output"}
    requested = load_run_config(_overlay(to_dict(saved), given))
    if get_model_class(requested.model) is not get_model_class(saved.model):
        changed = ["model"]
        old, new = {"model": saved.model}, {"model": requested.model}
    else:
        old, new = _comparable(saved), _comparable(requested)
        changed = sorted(k for k in set(old) | set(new) if k != "output" and old.get(k) != new.get(k))
    conflicts = [k for k in changed if k not in RESUME_SAFE]
    if conflicts:
        raise ConfigError(
            f"cannot resume {run_dir} with a different " + ", ".join(
                f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in conflicts)
            + ": a resumed run keeps its saved config (run_config.yaml). Drop these settings to resume it, or "
            "train a new run (another --output, or --overwrite to replace this one). A resume may change only "
            + ", ".join(RESUME_SAFE))
    requested.output = str(run_dir)
    note = "resume: applying " + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    return requested, note if changed else None


def _explicit_settings(source, overrides, kwargs) -> dict[str, Any]:
    """What the caller set (config file or dict, keyword arguments, overrides), nothing defaulted."""
    if isinstance(source, RunConfig):
        return to_dict(source)
    data: dict[str, Any] = load_yaml(source) if isinstance(source, (str, Path)) else dict(source or {})
    data.update({k: v for k, v in kwargs.items() if v is not None})
    return apply_overrides(data, overrides or [])


def _given_settings(source, overrides, kwargs) -> set[str]:
    """Flat names (``trainer.batch_size``) of the settings the caller gave; for a ready
    :class:`RunConfig`, those that differ from the defaults."""
    if isinstance(source, RunConfig):
        base, mine = _flat(to_dict(RunConfig())), _flat(to_dict(source))
        return {k for k, v in mine.items() if base.get(k, object()) != v}
    return set(_flat(_explicit_settings(source, overrides, kwargs)))


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _apply_auto(cfg: RunConfig, given: set[str], log) -> RunConfig:
    """``preset: auto`` on a dataset outside the BARS families: the settings
    :func:`ctrlab.train.auto.derive` finds for the training data, except those in ``given``, applied
    to a copy of ``cfg`` (recorded in ``auto_settings``) and logged with their reasons."""
    if is_estimator(cfg.model):  # the derived settings (batch size, early stopping, ...) are a torch model's
        return cfg
    family = _preset_family(Path(cfg.dataset).stem)
    preset_params, preset_source = resolve_model_params(cfg)
    if auto_rules.keeps_bars_protocol(family, preset_source is not None, bool(cfg.dataset_params)):
        return cfg
    data = prepare(dataset_config(cfg), cache_dir=cfg.cache_dir, mmap=True, log=lambda *a: None,
                   streaming=cfg.streaming, block_rows=cfg.stream_block_rows)  # training prepares (and logs) again
    stats = auto_rules.data_stats(data.splits, [f.name for f in data.feature_map.categorical],
                                  [f.name for f in data.feature_map.numeric])
    given = given | {f"model_params.{k}" for k in preset_params}  # a preset's values are the user's choice too
    hparams = default_hparams(cfg.model)
    has_first_order = (stats.train_rows < auto_rules.SMALL_DATA_ROWS  # only small data warm-starts
                       and first_order_module(_build(cfg.model, data.feature_map, preset_params)) is not None)
    settings = [s for s in auto_rules.derive(stats, given, has_first_order)
                if not s.key.startswith("model_params.") or s.key.split(".", 1)[1] in hparams]
    d = to_dict(cfg)
    for s in settings:
        section, _, key = s.key.rpartition(".")
        (d[section] if section else d)[key] = s.value
        log(f"[ctrlab] auto: {key} {s.value} ({s.reason})")
    d["auto_settings"] = auto_rules.describe(settings)
    return from_dict(RunConfig, d)


def _on_rank0(ctx: DistContext, fn):
    """``fn()`` on rank 0 only; when it fails every rank raises (a rank never waits in a collective
    that rank 0 will not join)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if ctx.active:
        import torch

        from .train.distributed import all_sum

        if all_sum(ctx, torch.tensor(float(error is not None))).item() > 0 and error is None:
            raise RunFolderError("rank 0 stopped before training (its error names the cause)")
    if error is not None:
        raise error
    return result


def _prepare_run_data(dcfg: DatasetConfig, cfg: RunConfig, feature_map: FeatureMap | None = None,
                      log=lambda *_: None) -> PreparedData:
    """The run's encoded splits, with the run's cache, memory-map and streaming settings (and its own
    feature map when given: a finished run is never re-encoded with a map re-fitted on today's files)."""
    return prepare(dcfg, cache_dir=cfg.cache_dir, mmap=cfg.mmap, log=log, streaming=cfg.streaming,
                   block_rows=cfg.stream_block_rows, feature_map=feature_map)


def _loaders(data: PreparedData, tcfg: TrainerConfig, ctx: DistContext = SINGLE) -> dict[str, BatchLoader]:
    """Shuffled (seeded) loader for train, ordered loaders for the other splits. In a data-parallel
    job each rank gets its shard of every split, and ``batch_size`` stays the global batch."""
    return {
        split: tcfg.make_train_loader(enc, ctx.shard) if split == "train" else tcfg.make_eval_loader(enc, ctx.shard)
        for split, enc in data.splits.items()
    }


# ---- train ----------------------------------------------------------------------------------
def train(
    config: str | Path | dict | RunConfig | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    log=print,
    callbacks=(),
    distributed: bool | None = None,
    overwrite: bool = False,
    **kwargs,
) -> RunResult:
    """Train and evaluate one model on one dataset; returns the run folder and metrics.

    The run folder is locked while the run trains (a second run on it fails at once, naming the
    holder's pid), and a folder that already holds a run is refused (see :mod:`ctrlab.run_folder`)
    unless ``resume`` or ``overwrite``.
    With ``resume=True`` and an existing ``output`` folder, continues that run from its last
    checkpoint, with the run's saved config and feature map (the final numbers equal an
    uninterrupted run's). Settings given with a resume must match the saved run, except those in
    :data:`RESUME_SAFE` (e.g. a larger ``trainer.epochs``), which are applied and logged.
    ``overwrite=True`` deletes the run in ``output`` and trains anew.
    ``callbacks`` are passed to the :class:`~ctrlab.train.Trainer` (``cb(trainer, record)`` after
    every epoch; the results store and Optuna's pruning use them).
    ``distributed``: data-parallel over the ranks torchrun started (None: whenever this process was
    started by torchrun; True: require it; False: never); see :mod:`ctrlab.train.distributed`.
    """
    if isinstance(config, RunConfig):
        cfg = config
    else:
        cfg = load_run_config(config, overrides, **kwargs)
    explicit = _explicit_settings(config, overrides, kwargs) if resume else {}
    if not resume and cfg.preset == "auto":
        cfg = _apply_auto(cfg, _given_settings(config, overrides, kwargs), log if _is_main() else (lambda *a, **k: None))
    ctx = setup_distributed(distributed, cfg.trainer.device)
    try:
        result = _train(cfg, resume, overwrite, explicit, log if ctx.is_main else (lambda *a, **k: None),
                        callbacks, ctx)
    except BaseException:
        teardown_distributed(ctx, finished=False)
        raise
    teardown_distributed(ctx)
    return result


def _train(cfg: RunConfig, resume: bool, overwrite: bool, explicit: dict[str, Any], log, callbacks,
           ctx: DistContext) -> RunResult:
    if ctx.active and not cfg.output:
        raise ConfigError("distributed training needs an explicit output folder (--output): every rank "
                          "must name the same run folder")
    if resume and not cfg.output:
        raise ConfigError("--resume needs the run folder to continue (--output RUN)")
    resume_note = None
    if resume:
        cfg, resume_note = _resume_config(explicit, Path(cfg.output))
        if resume_note:
            log(f"[ctrlab] {resume_note}")
    # everything that can be checked without data, before a folder is created or locked
    params, preset_source = resolve_model_params(cfg)
    if is_estimator(cfg.model):
        _check_estimator_run(cfg, ctx)
    if cfg.distill:
        _distill_settings(cfg)
        if ctx.active:
            raise ConfigError("distill: a distilled run trains in one process (the teacher's dropout stream is "
                              "not shared out over ranks); run it without torchrun")
    dcfg = dataset_config(cfg)

    def take_folder():
        run_dir = Path(cfg.output) if cfg.output else _default_run_dir(cfg)
        lock = claim(run_dir, resume=resume, overwrite=overwrite, log=log)
        try:  # the config first: a read-only or full disk fails here, not after an epoch
            saved_cfg = resolved_config(cfg, run_dir)
            (run_dir / "run_config.yaml").write_text(
                f"# Resolved run config (preset {preset_source or 'none'} merged into model_params).\n"
                + yaml.safe_dump(saved_cfg, sort_keys=False)
            )
            (run_dir / "dataset_config.json").write_text(json.dumps(dcfg.to_dict(), indent=1))
            if resume_note:  # in the run's own log too, beside the trainer's lines
                with open(run_dir / "train.log", "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {resume_note}\n")
        except BaseException:
            lock.release()
            raise
        return run_dir, lock

    run_dir, lock = _on_rank0(ctx, take_folder) or (Path(cfg.output), None)
    try:
        if is_estimator(cfg.model):
            return _fit_estimator(cfg, dcfg, params, preset_source, run_dir, log, callbacks)
        return _fit_and_evaluate(cfg, dcfg, params, preset_source, run_dir, resume, log, callbacks, ctx)
    finally:
        if lock is not None:
            lock.release()


def _fit_and_evaluate(cfg: RunConfig, dcfg: DatasetConfig, params: dict[str, Any], preset_source: str | None,
                      run_dir: Path, resume: bool, log, callbacks, ctx: DistContext) -> RunResult:
    # a resumed run encodes with its own feature map, whatever the train file holds now
    saved_map = run_dir / "feature_map.json"
    run_map = FeatureMap.load(saved_map) if resume and saved_map.exists() else None
    seed_everything(cfg.trainer.seed)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 encodes (or finds) the cache first; the others then read it
    data = _prepare_run_data(dcfg, cfg, feature_map=run_map, log=log)
    if ctx.is_main:
        ctx.barrier()
    seed_everything(cfg.trainer.seed)  # model init does not depend on whether the cache existed
    if cfg.trainer.num_threads is not None:  # before the warm start's L-BFGS too: sums depend on it
        import torch

        torch.set_num_threads(cfg.trainer.num_threads)
    model = apply_low_rank(_build(cfg.model, data.feature_map, params), cfg.low_rank)
    opt_tables = _apply_opt_embed(model, cfg, ctx)
    model.attach_training_data(data.splits["train"].arrays, seed=cfg.trainer.seed)  # TabR's candidates; else a no-op
    # what OptEmbed's retraining checks: it starts from the supernet's initial (seeded, random) weights;
    # the warm starts below are then fitted through each run's own masks
    initial_digest = initial_weights_digest(model) if opt_tables else None
    if cfg.small_numeric_init and not resume:  # a resumed run restores its weights anyway
        num = np.asarray(data.splits["train"].arrays.get("num", np.zeros((0, 0))), dtype=np.float64)
        if num.size:
            model.shrink_numeric_init(np.sqrt((num ** 2).mean(axis=0)).tolist())
    warm_file = run_dir / "linear_warm_start.json"  # what the fit chose, for metrics.json
    if cfg.linear_warm_start and not resume:
        fit = _linear_warm_start(model, data, cfg.trainer, log)
        if fit is not None:
            _on_rank0(ctx, lambda: warm_file.write_text(json.dumps(dataclasses.asdict(fit), indent=1)))
    if cfg.init_output_bias and not resume:
        _init_output_bias(model, data, log)
    served = model  # what the run folder keeps; with distill, `model` becomes the teacher-student pair
    distill_info: dict[str, Any] = {}
    if cfg.distill:
        model, distill_info = _attach_teacher(model, cfg, data, resume, log)

    def write_map():
        data.feature_map.save(saved_map)
        check_free_space(run_dir, model.count_parameters())
        (run_dir / CALIBRATION_FILE).unlink(missing_ok=True)  # fitted to the weights this training replaces

    _on_rank0(ctx, write_map)

    loaders = _loaders(data, cfg.trainer, ctx)
    trainer = Trainer(model, cfg.trainer, run_dir, callbacks=callbacks, dist=ctx)
    log(
        f"[ctrlab] {get_model_class(cfg.model).__name__} on {dcfg.name}: {served.count_parameters():,} parameters, "
        f"train {loaders['train'].num_rows:,} rows" + (f", preset {preset_source}" if preset_source else "")
        + (f", data-parallel over {ctx.world_size} ranks ({ctx.backend})" if ctx.active else "")
        + (f"; distilled from teacher {distill_info['teacher']} ({distill_info['teacher_parameters']:,} parameters, "
           f"{distill_info['loss']} weight {distill_info['weight']:g}) trained beside it" if distill_info else "")
    )
    t0 = time.time()
    history = trainer.fit(loaders["train"], loaders.get("valid"), resume=resume)  # damaged checkpoint: CheckpointError
    train_seconds = time.time() - t0
    metrics, curves = _final_evaluation(trainer, loaders)
    run_warnings = []  # checks that catch a bad run (docs/training.md, "Warnings"); rank 0 reports
    if ctx.is_main:
        run_warnings = run_checks(fmap=data.feature_map, splits=data.splits, metrics=metrics, history=history,
                              epochs=cfg.trainer.epochs, stopped_early=trainer.stopped_early,
                              steps_per_epoch=len(loaders["train"]), batch_size=cfg.trainer.batch_size,
                              oov_rates=data.oov_rates, monitor=trainer.monitor, run_dir=str(run_dir),
                              main_label=getattr(model, "main_label_column", 0))
        report_warnings(run_warnings, log, trainer.log)
    cost = _measure_cost(served, data, cfg, log) if ctx.is_main and cfg.measure_cost else None
    if distill_info:  # the teacher as of the student's best epoch (the pair's restored checkpoint)
        teacher_trainer = Trainer(model.teacher, cfg.trainer, run_dir / distill_info["teacher_run"])
        teacher_metrics, teacher_curves = _final_evaluation(teacher_trainer, loaders)
        distill_info.update(teacher_metrics)
        log("[ctrlab] distill: teacher " + distill_info["teacher"] + "".join(
            f"; {s} AUC {distill_info[s].get('AUC', float('nan')):.5f}" for s in ("valid", "test") if s in distill_info)
            + " | student " + get_model_class(cfg.model).__name__ + "".join(
            f"; {s} AUC {metrics[s].get('AUC', float('nan')):.5f}" for s in ("valid", "test") if s in metrics))
    epochs_run = len(history)
    summary = {
        "dataset": dcfg.name,
        "model": get_model_class(cfg.model).__name__,
        "seed": cfg.trainer.seed,
        "parameters": served.count_parameters(),
        "model_params": {**default_hparams(cfg.model), **params},
        "preset": preset_source,
        "auto_settings": cfg.auto_settings,
        "epochs": epochs_run,
        "best_epoch": 0 if trainer.kept_start else trainer.best_epoch,
        **({"linear_warm_start": json.loads(warm_file.read_text())} if warm_file.exists() else {}),
        **({"opt_embed": opt_embed_summary(opt_tables, initial_digest)} if opt_tables else {}),
        **({"distill": distill_info} if distill_info else {}),
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 3),
        "cache": str(data.path),
        **({"world_size": ctx.world_size} if ctx.active else {}),
        **metrics,
        **({"cost": cost} if cost is not None else {}),
        "reliability": curves,
        "warnings": [w.to_dict() for w in run_warnings],
    }
    if ctx.is_main:
        from safetensors.torch import save_file

        if distill_info:  # before the student's finished files, which are written last
            _write_teacher_run(cfg, dcfg, data.feature_map, model.teacher, distill_info, run_dir, teacher_curves)
        save_file({k: v.detach().cpu().contiguous() for k, v in served.state_dict().items()},
                  str(run_dir / "model.safetensors"))
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    return RunResult(run_dir, summary, history)


def _measure_cost(model, data: PreparedData, cfg: RunConfig, log) -> dict[str, Any]:
    """``metrics.json["cost"]`` of the trained model (:func:`ctrlab.train.cost.measure_run`) with the
    trainer's threads, on the test split's rows."""
    from .train.cost import measure_run

    return measure_run(model, data.splits, data.feature_map, cfg.trainer.num_threads, log)


# ---- non-torch baselines (ctrlab.baselines) ----------------------------------------------------------------
_TORCH_ONLY = ("low_rank", "opt_embed", "distill", "init_output_bias", "small_numeric_init", "linear_warm_start")
"""Run settings that change a torch model: refused for an estimator."""


def _check_estimator_run(cfg: RunConfig, ctx: DistContext) -> None:
    name = _model_name(cfg.model)
    given = [k for k in _TORCH_ONLY if getattr(cfg, k)]
    if given:
        raise ConfigError(f"{given} {'is a setting' if len(given) == 1 else 'are settings'} of torch models; "
                          f"{name} is a non-torch baseline (ctrlab.baselines): remove {given[0]}")
    if ctx.active:
        raise ConfigError(f"{name} trains in one process (its library's own threads: trainer.num_threads); "
                          "run it without torchrun")


def _fit_estimator(cfg: RunConfig, dcfg: DatasetConfig, params: dict[str, Any], preset_source: str | None,
                   run_dir: Path, log, callbacks) -> RunResult:
    """A run of a non-torch estimator (:func:`ctrlab.baselines.run.fit_run`) on the same encoded splits
    (cache) a torch run of the dataset reads; ``callbacks`` are called after every boosting round."""
    from .baselines.run import fit_run

    data = _prepare_run_data(dcfg, cfg, log=log)
    summary, history = fit_run(cfg, data, params, run_dir, log, callbacks, preset_source)
    return RunResult(run_dir, summary, history)


def _is_estimator_run(run_dir: Path) -> bool:
    """Whether ``run_dir``'s run_config.yaml names a non-torch estimator."""
    saved = run_dir / "run_config.yaml"
    return saved.is_file() and is_estimator((yaml.safe_load(saved.read_text()) or {}).get("model"))


def _estimator_run(run_dir: Path):
    """(estimator, feature map, dataset config, run config) of a finished estimator run, or None when
    ``run_dir`` holds a torch run."""
    from .baselines.run import load_estimator
    from .data.schema import load_dataset_config

    if not _is_estimator_run(run_dir):
        return None
    cfg = load_run_config(run_dir / "run_config.yaml")
    est = load_estimator(run_dir, cfg.model, cfg.model_params, cfg.trainer.num_threads)
    fmap = FeatureMap.load(run_dir / "feature_map.json")
    dcfg = load_dataset_config(json.loads((run_dir / "dataset_config.json").read_text()))
    return est, fmap, dcfg, cfg


def _final_evaluation(trainer: Trainer, loaders: dict[str, BatchLoader]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({split: metrics}, {split: reliability})`` of the valid and test splits: every run's final
    metric set (:func:`~ctrlab.train.metrics.final_metric_names`), one inference pass per split."""
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for split in ("valid", "test"):
        if split in loaders:
            metrics[split], curves[split] = trainer.evaluate_final(loaders[split], split=split)
    return metrics, curves


def _attach_teacher(student, cfg: RunConfig, data: PreparedData, resume: bool, log):
    """(the teacher-student pair the trainer trains, the ``distill`` record for metrics.json) of a run
    with ``distill`` (:mod:`ctrlab.recipes.distill`). The teacher is built, and warm-started as the run
    says, inside its own random stream, so that the student's stream is the one it has without a teacher."""
    from .recipes.distill import TEACHER_DIR, attach, isolated_rng, teacher_seed

    opts, teacher_params = _distill_settings(cfg)
    seed = teacher_seed(cfg.trainer.seed)
    with isolated_rng(seed):
        try:
            teacher = _build(opts.teacher, data.feature_map, teacher_params)
        except ConfigError as exc:
            raise ConfigError(f"distill.teacher_params: {str(exc).removeprefix('model_params: ')}") from exc
        teacher.attach_training_data(data.splits["train"].arrays, seed=cfg.trainer.seed)  # a TabR teacher's candidates
        if not resume:  # a resumed run restores the teacher's weights from the pair's checkpoint
            if cfg.small_numeric_init:
                num = np.asarray(data.splits["train"].arrays.get("num", np.zeros((0, 0))), dtype=np.float64)
                if num.size:
                    teacher.shrink_numeric_init(np.sqrt((num ** 2).mean(axis=0)).tolist())
            if cfg.linear_warm_start:
                _linear_warm_start(teacher, data, cfg.trainer, log)
            if cfg.init_output_bias:
                _init_output_bias(teacher, data, log)
    info = {"teacher": get_model_class(opts.teacher).__name__, "teacher_params": teacher_params,
            "weight": opts.weight, "loss": opts.loss, "temperature": opts.temperature, "teacher_seed": seed,
            "teacher_parameters": teacher.count_parameters(), "teacher_run": TEACHER_DIR}
    return attach(student, teacher, opts, seed), info


def _write_teacher_run(cfg: RunConfig, dcfg: DatasetConfig, fmap: FeatureMap, teacher, info: dict[str, Any],
                       run_dir: Path, curves: dict[str, Any]) -> None:
    """The teacher of a distilled run as a run folder of its own (``RUN/teacher``): evaluate, predict and
    export take it as any run."""
    from safetensors.torch import save_file

    folder = run_dir / info["teacher_run"]
    folder.mkdir(parents=True, exist_ok=True)
    saved = {**to_dict(cfg), "output": str(folder), "model": info["teacher"], "model_params": info["teacher_params"],
             "preset": "none", "distill": {}}
    (folder / "run_config.yaml").write_text(
        f"# Teacher of the distilled run {run_dir} (trained beside its student; the weights of the student's best "
        "epoch).\n" + yaml.safe_dump(saved, sort_keys=False))
    (folder / "dataset_config.json").write_text(json.dumps(dcfg.to_dict(), indent=1))
    fmap.save(folder / "feature_map.json")
    save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "metrics.json").write_text(json.dumps(
        {"dataset": dcfg.name, "model": info["teacher"], "seed": info["teacher_seed"],
         "parameters": info["teacher_parameters"], "model_params": info["teacher_params"],
         "distilled_into": str(run_dir), **{s: info[s] for s in ("valid", "test") if s in info},
         "reliability": curves}, indent=1))


def _linear_warm_start(model, data: PreparedData, tcfg: TrainerConfig, log):
    """The model's first-order term at the L2 logistic regression on (a prefix of) train, with ``C``
    picked on the valid split (:func:`ctrlab.train.linear_init.fit_first_order`), and the other
    terms' loud output heads scaled down (:func:`~ctrlab.train.linear_init.quiet_output_heads`); the
    :class:`~ctrlab.train.linear_init.LinearFit`, or None for a model without one first-order term."""
    train = data.splits["train"]
    valid = data.splits.get("valid")
    fit = fit_first_order(model, to_batch(train.take(slice(0, MAX_ROWS)).arrays),
                          to_batch(valid.take(slice(0, MAX_ROWS)).arrays) if valid is not None else None,
                          monitor=tcfg.monitor_weights(), mode=tcfg.resolved_monitor_mode())
    if fit is None:
        log(f"[ctrlab] linear_warm_start: {type(model).__name__} has no single first-order term; nothing set")
        return None
    heads = quiet_output_heads(model, fit.module, to_batch(train.take(slice(0, 8192)).arrays))
    picked = (f"C {fit.C:g} of {list(C_GRID)} by valid {tcfg.monitor} {fit.valid_score:.5f}" if valid is not None
              else f"C {fit.C:g}: no valid split to pick it on")
    log(f"[ctrlab] linear_warm_start: {fit.module} set to the L2 logistic regression on {fit.train_rows:,} train rows "
        f"({picked})"
        + "".join(f"; {name} scaled by {f:.3g} (its output std to {HEAD_STD:g})" for name, f in heads.items()))
    return fit


def _init_output_bias(model, data: PreparedData, log) -> None:
    """The model's output bias at the train base rate's log-odds, matched on the first 8192 (fewer for long sequences) train
    rows (file order, so no random state is used)."""
    train = data.splits["train"]
    base_rate = float(np.asarray(train.arrays["label"])[:, 0].mean())
    if not 0.0 < base_rate < 1.0:
        raise ConfigError(f"init_output_bias: the train split's base rate is {base_rate}; it needs both classes "
                          "(set init_output_bias=false)")
    rows = data.feature_map.rows_per_call(8192)  # fewer for long sequences (attention grows as rows·L²)
    batch = to_batch(train.take(slice(0, rows)).arrays)
    tasks = list(getattr(model, "task_names", ()) or ())
    if not tasks:
        names = model.init_output_bias(batch, base_rate)
        log(f"[ctrlab] output bias ({', '.join(names)}) set for the train base rate {base_rate:.4g}")
        return
    labels, on = model.task_targets(batch)  # each task's own tower at its own base rate (on its rows)
    for t, task in enumerate(tasks):
        if task in model.derived_tasks:  # ESMM's CTCVR: set by the towers it multiplies
            continue
        rate = float(labels[on[:, t], t].double().mean()) if on[:, t].any() else float("nan")
        if not 0.0 < rate < 1.0:
            log(f"[ctrlab] task {task!r}: base rate {rate:.4g} on the first {len(labels):,} train rows; its output "
                "bias is left as initialised")
            continue
        names = model.init_output_bias(batch, rate, task=t)
        log(f"[ctrlab] task {task!r}: output bias ({', '.join(names)}) set for its train base rate {rate:.4g}")


def _apply_opt_embed(model, cfg: RunConfig, ctx: DistContext = SINGLE) -> dict:
    """The run's OptEmbed tables (``cfg.opt_embed``) swapped into ``model``, or ``{}``; the settings it
    cannot be combined with refused, naming the field."""
    if not cfg.opt_embed:
        return {}
    if cfg.low_rank:
        raise ConfigError("opt_embed: not with low_rank (a compressed run's tables and layers are not "
                          "OptEmbed's); train OptEmbed on the uncompressed model, or drop one of the two")
    if cfg.trainer.sparse_embeddings:
        raise ConfigError("opt_embed: trainer.sparse_embeddings is not supported (the masks multiply the rows "
                          "after the lookup); set trainer.sparse_embeddings=false")
    if ctx.active and cfg.opt_embed.get("mode") == "supernet":
        raise ConfigError("opt_embed: the supernet (mode supernet) trains in one process, not data-parallel "
                          "(every rank would draw its own widths); run ctrlab optembed without torchrun")
    try:
        return apply_opt_embed(model, cfg.opt_embed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _build(model: str, fmap: FeatureMap, params: dict[str, Any]):
    """``create`` with an error that names the model and its hyperparameters when they do not fit."""
    if is_estimator(model):
        raise ConfigError(f"{_model_name(model)} is a non-torch baseline (ctrlab.baselines): this recipe needs a "
                          "torch model (see ctrlab models)")
    try:
        return create(model, fmap, **params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model_params: {get_model_class(model).__name__} cannot be built with {params}: "
                          f"{type(exc).__name__}: {exc}") from exc


# ---- using a finished run -------------------------------------------------------------------
def load_run(run_dir: str | Path):
    """(model, feature_map, dataset_config, run_config) of a finished run, weights loaded."""
    from .serve.artifact import load_trained_run

    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").exists() and _is_estimator_run(run_dir):
        raise ConfigError(f"{run_dir} is a run of a non-torch baseline (ctrlab.baselines), not of a torch model: "
                          "ctrlab evaluate and ctrlab predict take it; the torch recipes and export do not")
    if not (run_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{run_dir} is not a finished ctrlab run (no model.safetensors)")
    model, fmap, dcfg, _, _ = load_trained_run(run_dir)
    return model, fmap, dcfg, load_run_config(run_dir / "run_config.yaml")


def evaluate(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test"),
             calibrated: bool = True) -> dict[str, dict[str, float]]:
    """Re-evaluate a finished run on its dataset's splits, encoded with the run's feature map:
    ``{split: metrics}`` with every run's final metric set (:func:`~ctrlab.train.metrics.final_metric_names`:
    the run's ``trainer.metrics``, NE, calibration, ECE, and the group metrics when the dataset has a
    ``group_field``). A run calibrated with :func:`calibrate` is evaluated on its calibrated
    probabilities (what :func:`predict` returns) unless ``calibrated`` is False."""
    baseline = _estimator_run(Path(run_dir))
    if baseline is not None:
        from .baselines.run import evaluate_split

        est, fmap, dcfg, cfg = baseline
        data = _prepare_run_data(dcfg, cfg, feature_map=fmap)
        cal = load_calibration(run_dir) if calibrated else None
        return {s: evaluate_split(est, fmap, data.splits[s], cfg.trainer.metrics, transform=cal.apply if cal else None)
                for s in splits if s in data.splits}
    trainer, loaders = _run_loaders(run_dir)
    cal = load_calibration(run_dir) if calibrated else None
    return {s: trainer.evaluate_final(loaders[s], split=s, transform=cal.apply if cal else None)[0]
            for s in splits if s in loaders}


def _run_loaders(run_dir: str | Path) -> tuple[Trainer, dict[str, BatchLoader]]:
    """A trainer holding a finished run's model, and its dataset's loaders encoded with the run's map."""
    model, fmap, dcfg, cfg = load_run(run_dir)
    # the run's own feature map, as predict uses it: never one re-fitted on today's train file
    data = _prepare_run_data(dcfg, cfg, feature_map=fmap)
    return Trainer(model, cfg.trainer, Path(run_dir)), _loaders(data, cfg.trainer)


def calibrate(run_dir: str | Path, method: str = "platt", log=print) -> dict[str, Any]:
    """Post-hoc calibration of a finished run: ``platt`` (``sigmoid(a·logit(p) + b)``) or ``isotonic``,
    fitted on the run's **validation** predictions only (:mod:`ctrlab.serve.calibration`).

    Writes ``calibration.json`` into the run folder (plain JSON: the method and its fitted parameters),
    which :func:`predict`, :func:`evaluate`, ``ctrlab export`` and the server then apply, and adds to
    ``metrics.json`` a ``"calibration"`` record: ``method``, ``fitted_on``, ``before`` and ``after``
    (``{split: metrics}``, the full final metric set of the uncalibrated and calibrated probabilities)
    and ``reliability_after``. Calibrating again replaces it (always fitted on the model's own
    probabilities, never on an earlier calibration's). Single-task runs. Returns the record."""
    run_dir = Path(run_dir)
    if _is_estimator_run(run_dir):
        return _calibrate_estimator(run_dir, method, log)
    trainer, loaders = _run_loaders(run_dir)
    if trainer.task_names:
        raise ValueError(f"{run_dir}: ctrlab calibrate calibrates one probability per row; "
                         f"{type(trainer.model).__name__} predicts tasks {trainer.task_names}")
    if "valid" not in loaders:
        raise ValueError(f"{run_dir}: calibration is fitted on the validation split, and the run's dataset has none; "
                         "give the dataset a valid file")
    preds = {s: trainer.predict_with_labels(loaders[s]) for s in ("valid", "test") if s in loaders}
    cal = fit_calibration(method, preds["valid"][1], preds["valid"][0], "valid")
    before, after, curves = {}, {}, {}
    for split, (prob, y, group) in preds.items():
        before[split] = trainer.final_metrics(prob, y, group, f"{split} uncalibrated")[0]
        after[split], curves[split] = trainer.final_metrics(cal.apply(prob), y, group, f"{split} {method}")
    return _write_calibration(run_dir, method, cal, before, after, curves, log)


def _calibrate_estimator(run_dir: Path, method: str, log) -> dict[str, Any]:
    """:func:`calibrate` of a non-torch estimator's run: the same fit on its validation probabilities."""
    from .baselines.run import split_metrics
    from .baselines.tabular import tabular_split
    from .train.metrics import evaluate_metrics, final_metric_names, reliability

    est, fmap, dcfg, cfg = _estimator_run(run_dir)
    data = _prepare_run_data(dcfg, cfg, feature_map=fmap)
    if "valid" not in data.splits:
        raise ValueError(f"{run_dir}: calibration is fitted on the validation split, and the run's dataset has none; "
                         "give the dataset a valid file")
    tables = {s: tabular_split(fmap, data.splits[s]) for s in ("valid", "test") if s in data.splits}
    before, probs = {}, {}
    for split, table in tables.items():
        before[split], probs[split] = split_metrics(est, table, cfg.trainer.metrics)
    cal = fit_calibration(method, tables["valid"].y, probs["valid"], "valid")
    after, curves = {}, {}
    for split, table in tables.items():
        calibrated = cal.apply(probs[split])
        names = final_metric_names(cfg.trainer.metrics, table.group is not None)
        after[split] = evaluate_metrics(table.y, calibrated, names, table.group)
        curves[split] = reliability(table.y, calibrated)
    return _write_calibration(run_dir, method, cal, before, after, curves, log)


def _write_calibration(run_dir: Path, method: str, cal, before: dict, after: dict, curves: dict, log) -> dict[str, Any]:
    """``calibration.json`` and ``metrics.json["calibration"]`` of :func:`calibrate`; returns the record."""
    record = {"method": method, "fitted_on": cal.fitted_on, "file": CALIBRATION_FILE, "before": before,
              "after": after, "reliability_after": curves}
    with RunFolderLock(run_dir):  # not while a training run writes the folder
        metrics_file = run_dir / "metrics.json"
        summary = json.loads(metrics_file.read_text())
        summary["calibration"] = record
        write_atomic(run_dir / CALIBRATION_FILE, json.dumps(cal.to_dict(), indent=1))
        write_atomic(metrics_file, json.dumps(summary, indent=1))
    log(f"[ctrlab] calibrate {run_dir} ({method}, fitted on {cal.fitted_on['rows']:,} valid rows): " + "; ".join(
        f"{s} logloss {before[s]['logloss']:.5f} -> {after[s]['logloss']:.5f}, ECE {before[s]['ECE']:.5f} -> "
        f"{after[s]['ECE']:.5f}" for s in before))
    return record


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path | None = None,
    input_format: str | None = None,
    batch_size: int = 65536,
    keep_columns: list[str] | None = None,
    log=print,
) -> np.ndarray:
    """Score a raw file (same columns/format as the training data; labels not needed).

    Raw values go through the run's saved feature map, so unseen categories map to OOV and
    missing numerics to their fill value exactly as in training; a field mostly unseen in the file
    is warned about (``log`` and a :class:`~ctrlab.data.errors.DataWarning`). Writes a CSV with the
    ``keep_columns`` of the input (e.g. ids), then a ``probability`` column (a multi-task model's
    main task, followed by a ``probability_<task>`` column per task), one row per input row, when
    ``output_path`` is given.
    """
    from .data.predict_io import read_with_kept, warn_unseen, write_scores

    baseline = _estimator_run(Path(run_dir))
    model, fmap, dcfg, cfg = (None, *baseline[1:]) if baseline is not None else load_run(run_dir)
    if input_format:
        dcfg.format = input_format
    cols = list(dict.fromkeys(column_of(f) for f in read_features(dcfg.features)))  # crosses are derived
    df, keep = read_with_kept(dcfg, Path(input_path), cols, keep_columns)
    enc = encode_frame(df, fmap, Path(input_path), with_labels=False)
    warn_unseen(fmap, df, enc.arrays, Path(input_path), log)
    if baseline is not None:
        from .baselines.run import predict_encoded

        probs = predict_encoded(baseline[0], fmap, enc)
        cal = load_calibration(run_dir)
        if cal is not None:
            probs = cal.apply(probs)
        if output_path is not None:
            write_scores(df.select(keep), probs, Path(output_path), None)
        return probs
    trainer = Trainer(model, cfg.trainer, Path(run_dir))
    loader = BatchLoader(enc, batch_size, shuffle=False)
    tasks = trainer.predict_tasks(loader) if trainer.task_names else None
    probs = tasks[trainer.task_names[0]] if tasks else trainer.predict(loader)
    cal = load_calibration(run_dir)
    if cal is not None:  # the run's post-hoc calibration (ctrlab calibrate)
        if tasks:
            raise ValueError(f"{run_dir / CALIBRATION_FILE} calibrates one probability, but the run predicts tasks "
                             f"{list(tasks)}; delete the file")
        probs = cal.apply(probs)
    if output_path is not None:
        write_scores(df.select(keep), probs, Path(output_path), tasks)
    return probs


# ---- compression (issue 16) ------------------------------------------------------------------
def compress(run_dir: str | Path, output: str | Path, method: str = "afm", rank: int | None = None,
             keep: float | None = None, layers: list[str] | None = None, rows: int = 100_000,
             embedding_rank: int | float | None = None, finetune_epochs: int = 0, finetune_lr: float | None = None,
             overwrite: bool = False, log=print) -> RunResult:
    """Write a compressed copy of a finished run into ``output``: its linear layers replaced by
    low-rank ones (:mod:`ctrlab.recipes.compress`, ``method`` ``afm`` or ``svd``), evaluated on the
    valid and test splits, and loadable, exportable and servable like any run.

    ``rank``: one rank for every compressed layer; or ``keep`` (``afm`` only): per layer the smallest
    rank that keeps this share of its output variance. ``layers``: names of ``nn.Linear`` layers
    (default: every one with more than one output whose rank would save parameters). ``rows``: the
    first rows of the train split (file order) that ``afm``'s statistics are collected on.
    ``embedding_rank``: also store every FeatureEmbedding's fused table at this rank
    (:func:`~ctrlab.recipes.compress.compress_embedding`; afm weights rows by their train lookups);
    a float in (0, 1) (afm only) is the share of each field block's lookup-weighted variance to keep.
    ``finetune_epochs``: then train the compressed model for up to this many epochs with the run's
    trainer settings (learning rate ``finetune_lr``, default a tenth of the run's ``trainer.lr``, as the
    weights are trained already: on Frappe, DeepFM fine-tuned at the full lr lost test AUC; early stopping
    on the valid split as configured), the compressed weights validated first and kept when no epoch
    beats them (``trainer.validate_start``), so fine-tuning never ends worse on valid than the
    rewrite. The AFM paper fine-tunes; 0 (default) is the pure rewrite.
    ``metrics.json`` records each layer's rank, parameters before and after, and (afm) the expected
    squared error, the dropped eigenvalues' sum."""
    from safetensors.torch import save_file

    from .recipes.compress import compress_embedding, compress_linear, embedding_tables, linear_layers

    if (rank is None) == (keep is None) and not (rank is None and keep is None and embedding_rank is not None):
        raise ConfigError("compress: give either rank (an integer) or keep (a share of variance in (0, 1]), "
                          "and/or embedding_rank")
    if (keep is not None or isinstance(embedding_rank, float)) and method != "afm":
        raise ConfigError("compress: keep (a share of output variance) needs method afm; svd takes a rank")
    if isinstance(embedding_rank, float) and not 0.0 < embedding_rank < 1.0:
        raise ConfigError(f"compress: embedding_rank {embedding_rank} is neither a rank (an integer) nor a share "
                          "of variance in (0, 1)")
    if finetune_epochs < 0 or (finetune_lr is not None and not finetune_lr > 0):
        raise ConfigError(f"compress: finetune_epochs must be >= 0 and finetune_lr > 0, got {finetune_epochs}, "
                          f"{finetune_lr}")
    source = Path(run_dir)
    model, fmap, dcfg, cfg = load_run(source)
    if cfg.opt_embed:
        raise ConfigError(f"compress: {source} is an OptEmbed run (opt_embed masks on its tables); compress the "
                          "model's uncompressed run instead (the two are not combined)")
    inside_low_rank = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, LowRankLinear)
                       for c in ("down", "up")}
    candidates = {n: m for n, m in linear_layers(model).items() if n not in inside_low_rank and m.out_features > 1}
    if layers is not None:
        unknown = [n for n in layers if n not in candidates]
        if unknown:
            raise ConfigError(f"compress: {unknown} are not compressible nn.Linear layers of {cfg.model}; "
                              f"candidates: {sorted(candidates)}")
    chosen = [] if rank is None and keep is None else list(layers if layers is not None else candidates)
    data = prepare(dcfg, cache_dir=cfg.cache_dir, mmap=True, log=lambda *_: None, streaming=cfg.streaming,
                   block_rows=cfg.stream_block_rows, feature_map=fmap)
    sample = data.splits["train"].take(slice(0, min(rows, len(data.splits["train"]))))  # afm's statistics rows
    before = model.count_parameters()
    # the default layers, and any layer whose `keep` share lands on a rank that saves nothing, keep
    # their full weight when the rank would not make them smaller; a rank given for named layers must
    reports = compress_linear(model, {n: keep if keep is not None else rank for n in chosen}, method,
                              BatchLoader(sample, 4096, shuffle=False) if method == "afm" else None,
                              skip_unprofitable=layers is None or keep is not None) if chosen else []
    for n in sorted(set(chosen) - {r.name for r in reports}):
        log(f"[ctrlab] compress: {n} keeps its full weight (its rank would save nothing)")
    if chosen and not reports and embedding_rank is None:
        raise ConfigError(f"compress: no layer of {cfg.model} saves parameters at rank {rank if keep is None else keep}; "
                          f"candidates (in x out): {[(n, m.in_features, m.out_features) for n, m in candidates.items()]}")
    tables = []
    if embedding_rank is not None:
        tables = [compress_embedding(model, name, embedding_rank, method, sample.arrays)
                  for name, layer in embedding_tables(model).items()
                  if isinstance(embedding_rank, float) or embedding_rank < layer.embedding_dim]
        if not tables:  # (a first-order term's table has width 1: no rank below it)
            raise ConfigError(f"compress: {cfg.model} has no embedding table wider than embedding_rank "
                              f"{embedding_rank}: {[(n, m.embedding_dim) for n, m in embedding_tables(model).items()]}")
    out = Path(output)
    lock = claim(out, overwrite=overwrite, log=log)
    try:
        saved = {**yaml.safe_load((source / "run_config.yaml").read_text()), "output": str(out),
                 "low_rank": {**cfg.low_rank, **{r.name: r.rank for r in [*reports, *tables]}}}
        (out / "run_config.yaml").write_text(f"# ctrlab compress of {source} ({method}).\n"
                                             + yaml.safe_dump(saved, sort_keys=False))
        (out / "dataset_config.json").write_text((source / "dataset_config.json").read_text())
        fmap.save(out / "feature_map.json")
        loaders = _loaders(data, cfg.trainer)
        history: list[dict] = []
        tuned: dict[str, Any] = {}
        if finetune_epochs:
            tcfg = dataclasses.replace(cfg.trainer, epochs=finetune_epochs, lr=finetune_lr or cfg.trainer.lr / 10,
                                       validate_start="valid" in loaders)
            trainer = Trainer(model, tcfg, out)
            log(f"[ctrlab] compress: fine-tuning up to {finetune_epochs} epochs at lr {tcfg.lr:g}")
            history = trainer.fit(loaders["train"], loaders.get("valid"))
            tuned = {"finetune_epochs": finetune_epochs, "finetune_lr": tcfg.lr, "epochs": len(history),
                     "best_epoch": 0 if trainer.kept_start else trainer.best_epoch,
                     "valid_before": trainer.start_metric}
        else:
            trainer = Trainer(model, cfg.trainer, out)
        metrics, curves = _final_evaluation(trainer, loaders)
        cost, cost_before = {}, {}
        if cfg.measure_cost:  # the source model measured beside it, in this process: the latency gained
            cost = _measure_cost(model, data, cfg, log)
            source_model = load_run(source)[0].to(next(model.parameters()).device)
            cost_before = _measure_cost(source_model, data, cfg, lambda *a: None)
            del source_model
        summary = {
            "dataset": dcfg.name, "model": cfg.model, "parameters": model.count_parameters(),
            "compression": {"method": method, "source_run": str(source.resolve()), "parameters_before": before,
                            "statistics_rows": len(sample) if method == "afm" else 0,
                            "layers": [dataclasses.asdict(r) for r in reports],
                            "tables": [dataclasses.asdict(t) for t in tables],
                            **({"finetune": tuned} if tuned else {}),
                            **({"cost_before": cost_before} if cost_before else {})},
            **metrics,
            **({"cost": cost} if cost else {}),
            "reliability": curves,
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / "model.safetensors"))
        (out / "history.json").write_text(json.dumps(history, indent=1))
        (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    finally:
        lock.release()
    log(f"[ctrlab] compressed {cfg.model} ({method}): {before:,} -> {summary['parameters']:,} parameters; "
        + ", ".join(f"{r.name} rank {r.rank}" for r in [*reports, *tables]) + "; "
        + " ".join(f"{s} AUC {m.get('AUC', float('nan')):.5f}" for s, m in metrics.items())
        + (f"; 4096-row latency {cost_before['latency_ms_4096_rows']:.3g} -> {cost['latency_ms_4096_rows']:.3g} ms"
           if cost else "") + f" -> {out}")
    return RunResult(out, summary, [])


# ---- OptInter (issue 16) ---------------------------------------------------------------------
def opt_inter(config: str | Path | dict | RunConfig | None = None, overrides: list[str] | None = None,
              output: str | Path | None = None, search_epochs: int | None = 1, overwrite: bool = False,
              log=print, **kwargs) -> RunResult:
    """OptInter's search and retrain (:mod:`ctrlab.recipes.opt_inter`): the model (``OptInter`` unless
    the config names another OptInter model) searched with ``pair_methods="search"`` for
    ``search_epochs`` epochs (default 1: a single pass, so α's one-level gradient always comes from rows
    the network has not trained on yet; None: the run's ``trainer.epochs`` with early stopping) into
    ``output/search``, the argmax method per pair retrained from scratch into ``output``, a normal run
    folder. Cross features come from ``crosses`` (default when the config has none: every pair of
    categorical fields, :class:`~ctrlab.data.schema.CrossesConfig`). ``metrics.json`` holds, under
    ``optinter``, the method chosen per pair and the parameter counts beside all-memorize and
    all-factorize."""
    from .recipes.opt_inter import run

    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides, **kwargs)
    if not isinstance(config, RunConfig) and "model" not in _explicit_settings(config, overrides, kwargs):
        cfg = dataclasses.replace(cfg, model="OptInter")
    output = output or cfg.output
    if not output:
        raise ConfigError("optinter: give the output folder (output=... / --output) for the retrained run")
    return run(cfg, output, train, load_run, search_epochs=search_epochs, overwrite=overwrite, log=log)


# ---- OptEmbed (issue 16) ----------------------------------------------------------------------
def opt_embed(config: str | Path | dict | RunConfig | None = None, output: str | Path | None = None,
              options: "OptEmbedOptions | dict | None" = None, overrides: list[str] | None = None,
              overwrite: bool = False, log=print, **kwargs) -> RunResult:
    """OptEmbed on the run a config describes (the same arguments as :func:`train`): a supernet with
    learnable feature thresholds and sampled per-field widths, an evolutionary search for the widths,
    and the model retrained with both masks fixed (:mod:`ctrlab.recipes.opt_embed`; ``options``: an
    :class:`~ctrlab.recipes.opt_embed.OptEmbedOptions` or a dict of its fields). The final run in
    ``output`` is a normal run folder (evaluate, predict, export, serve); the supernet's is
    ``<output>-supernet``. Its ``metrics.json`` ``opt_embed`` record: per table and field the width and
    kept features, the kept embedding parameters, the sparsity, the search's record."""
    from .recipes.opt_embed import OptEmbedOptions, run_opt_embed, summary_line, valid_batches
    from .layers.opt_embed import prunable_tables

    opts = options if isinstance(options, OptEmbedOptions) else from_dict(OptEmbedOptions, dict(options or {}),
                                                                             "optembed")
    opts.validate()
    cfg = config if isinstance(config, RunConfig) else load_run_config(config, overrides, output=output and str(output),
                                                                          **kwargs)
    if output is not None:
        cfg = dataclasses.replace(cfg, output=str(output))
    if not cfg.output:
        raise ConfigError("optembed needs the folder of the final run (--output RUN); the supernet goes to RUN-supernet")
    if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("optembed runs in one process (its search and the supernet's sampled widths are not "
                          "data-parallel); run it without torchrun")
    if cfg.low_rank:
        raise ConfigError("optembed: the config has low_rank (a compressed model); OptEmbed prunes an uncompressed "
                          "model's tables: start from the model's own config")
    if cfg.opt_embed:
        raise ConfigError("optembed: the config already has opt_embed masks (a searched run); start from the "
                          "model's own config, or train this one with ctrlab train")
    if cfg.preset == "auto":
        cfg = _apply_auto(cfg, _given_settings(config, overrides, kwargs), log)
    params, _ = resolve_model_params(cfg)
    data = prepare(dataset_config(cfg), cache_dir=cfg.cache_dir, mmap=True, log=lambda *a: None,
                   streaming=cfg.streaming, block_rows=cfg.stream_block_rows)
    if "valid" not in data.splits:
        raise ConfigError(f"optembed: the dataset {cfg.dataset} has no valid split, which the search scores "
                          "widths on; give the dataset a validation split")
    if not prunable_tables(_build(cfg.model, data.feature_map, params)):
        raise ConfigError(f"optembed: {get_model_class(cfg.model).__name__} has no embedding table to prune "
                          "(OptEmbed needs a FeatureEmbedding table wider than 1; LR has only its width-1 "
                          "first-order weights); choose another model")

    def train_run(d: dict[str, Any]) -> dict[str, Any]:
        return train(from_dict(RunConfig, d), overwrite=overwrite, log=log, distributed=False).metrics

    def load_supernet(run_dir: Path, rows: int | None):
        model, fmap, dcfg, rcfg = load_run(run_dir)
        enc = prepare(dcfg, cache_dir=rcfg.cache_dir, mmap=True, log=lambda *a: None, streaming=rcfg.streaming,
                      block_rows=rcfg.stream_block_rows, feature_map=fmap).splits["valid"]
        return model, valid_batches(rcfg.trainer.make_eval_loader(enc), rows)

    out = Path(cfg.output)
    metrics = run_opt_embed(resolved_config(cfg, out), out, opts, train_run, load_supernet, log)
    log(f"[ctrlab] optembed {get_model_class(cfg.model).__name__}: {summary_line(metrics)} -> {out}")
    return RunResult(out, metrics, json.loads((out / "history.json").read_text()))


# ---- online distillation ---------------------------------------------------------------------
def distill(config: str | Path | dict | RunConfig | None = None, teacher: str | None = None,
            teacher_params: dict[str, Any] | None = None, weight: float | None = None, loss: str | None = None,
            temperature: float | None = None, output: str | Path | None = None, overrides: list[str] | None = None,
            resume: bool = False, overwrite: bool = False, log=print, **kwargs) -> RunResult:
    """Online distillation (:mod:`ctrlab.recipes.distill`): the run a config describes (the same arguments
    as :func:`train`; its ``model`` is the student) trained beside a ``teacher`` model on the same batches,
    the student's loss adding ``weight`` (lambda, default 1) times the distillation term ``loss`` (``bce``,
    default: the student's probability against the teacher's detached one, at ``temperature``; ``mse``: of
    the logits). ``teacher_params``: the teacher's hyperparameters over its preset. The settings given here
    override the config's ``distill:`` section.

    ``output`` is a normal run folder of the student (evaluate, predict, export, serve), with the teacher's
    run in ``output/teacher`` and the teacher's metrics under ``distill`` in ``metrics.json``.
    ``resume=True`` continues an interrupted distilled run exactly (the checkpoints hold both models); the
    distillation settings given with it must equal the run's."""
    given = {k: v for k, v in {"teacher": teacher, "teacher_params": teacher_params, "weight": weight,
                               "loss": loss, "temperature": temperature}.items() if v is not None}
    if output is not None:
        kwargs["output"] = str(output)
    if kwargs.get("model"):
        try:
            get_model_class(kwargs["model"])
        except ValueError as exc:
            raise ConfigError(f"distill: the student (model): {exc}") from None
    if resume:
        run_dir = kwargs.get("output") or (config.output if isinstance(config, RunConfig) else None)
        if not run_dir:
            raise ConfigError("distill --resume needs the run folder to continue (--output RUN)")
        _check_resumed_distill(Path(run_dir), given)
        return train(config, overrides, resume=True, log=log, overwrite=overwrite, **kwargs)
    if isinstance(config, RunConfig):
        base = dict(config.distill)
    elif config is not None:
        base = dict(_explicit_settings(config, [], {}).get("distill") or {})
    else:
        base = {}
    spec = {**base, **given}
    if not spec.get("teacher") and not any(o.startswith("distill.teacher=") for o in overrides or []):
        raise ConfigError("distill: name the teacher model (teacher=... / --teacher MODEL, a registered model: "
                          "see `ctrlab models`)")
    if isinstance(config, RunConfig):  # as train(RunConfig): the config is the run (output aside)
        out = {"output": kwargs["output"]} if kwargs.get("output") else {}
        return train(dataclasses.replace(config, distill=spec, **out), overwrite=overwrite, log=log)
    return train(config, overrides, overwrite=overwrite, log=log, distill=spec, **kwargs)


def _check_resumed_distill(run_dir: Path, given: dict[str, Any]) -> None:
    """The distillation settings given with a resume must be the run's own (saved in run_config.yaml)."""
    saved_file = run_dir / "run_config.yaml"
    if not saved_file.exists():
        raise FileNotFoundError(f"cannot resume: {saved_file} does not exist (pass the run folder as --output)")
    saved = (yaml.safe_load(saved_file.read_text()) or {}).get("distill") or {}
    if not saved:
        raise ConfigError(f"cannot resume {run_dir} with distill: it is not a distilled run (its run_config.yaml "
                          "has no distill section); resume it with ctrlab train --resume")
    conflicts = []
    for key, value in given.items():
        if key == "teacher":
            if get_model_class(value) is not get_model_class(saved["teacher"]):
                conflicts.append(f"teacher ({saved['teacher']!r} -> {value!r})")
        elif key == "teacher_params":
            conflicts += [f"teacher_params.{k} ({saved['teacher_params'].get(k)!r} -> {v!r})"
                          for k, v in value.items() if saved["teacher_params"].get(k) != v]
        elif saved.get(key) != value:
            conflicts.append(f"{key} ({saved.get(key)!r} -> {value!r})")
    if conflicts:
        raise ConfigError(f"cannot resume {run_dir} with a different distill " + ", ".join(conflicts)
                          + ": a resumed run keeps its saved distillation settings; drop them to resume, or train "
                          "a new run (another --output, or --overwrite)")


# Importing this module imports the subpackage ctrlab.train, which binds the name `train` on the
# package to that module: the module is made callable as the API's train() (see ctrlab/__init__.py),
# so that `ctrlab.train(...)` works on every call whichever of `import ctrlab` or `import ctrlab.api`
# came first, and `import ctrlab.train.<module>` keeps working.
def _bind_package_names() -> None:
    import sys

    package = sys.modules[__package__]
    for name in package._API:
        if name != "train":
            setattr(package, name, globals()[name])
    subpackage = sys.modules[f"{__package__}.train"]
    subpackage.__class__ = package._CallableTrainPackage
    package.train = subpackage


_bind_package_names()
