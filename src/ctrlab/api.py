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
    metrics.json           validation and test metrics, parameters, timing
    train.log, checkpoints/  per-epoch log and resumable checkpoints
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from .config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from .data.datasets import get_dataset
from .data.loader import BatchLoader
from .data.pipeline import PreparedData, encode_frame, prepare
from .data.readers import read_split
from .data.schema import DatasetConfig, column_of, load_dataset_config
from .models import check_hparams, create, default_hparams, get_model_class
from .train import Trainer, TrainerConfig, seed_everything
from .train.distributed import SINGLE, DistContext
from .train.distributed import setup as setup_distributed
from .train.distributed import teardown as teardown_distributed


@dataclass
class RunConfig:
    """One training run: which data, which model with which hyperparameters, how to train."""

    dataset: str = "frappe_x1_subset"
    """A registered dataset name (``ctrlab datasets``) or a path to a dataset YAML."""
    dataset_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of a registered dataset (e.g. ``rows`` and ``seed`` of ``synthetic``)."""
    model: str = "FinalMLP"
    """A registered model name (``ctrlab models``)."""
    preset: str | None = "auto"
    """Hyperparameter preset: ``auto`` uses the BARS-tuned values for this model on this
    dataset's benchmark family when ctrlab ships them (``configs/presets/<family>/<model>.yaml``),
    ``none`` uses the model's class defaults, or a path to a preset YAML."""
    model_params: dict[str, Any] = field(default_factory=dict)
    """Model hyperparameters; they override the preset."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation and protocol settings (BARS defaults)."""
    output: str | None = None
    """Run folder; default ``runs/<dataset>/<model>-<time>-s<seed>``."""
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
        return load_dataset_config(path)
    return get_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, **cfg.dataset_params)


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
            name = f"{get_model_class(cfg.model).__name__}.yaml"
            ref = resources.files("ctrlab") / "configs" / "presets" / _preset_family(Path(cfg.dataset).stem) / name
            if ref.is_file():
                params = yaml.safe_load(ref.read_text()) or {}
                source = str(ref)
        else:
            params = load_yaml(preset)
            source = str(preset)
    params.update(cfg.model_params)
    try:
        check_hparams(cfg.model, params)  # unknown names, and required ones (no default) not given
    except ValueError as exc:
        raise ConfigError(f"model_params: {exc}") from None
    return params, source


def resolved_config(cfg: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """The run config as a run folder saves it (``run_config.yaml``): self-contained, with the
    preset merged into ``model_params``, so the run can be resumed or evaluated even if presets
    change later. Two runs with equal resolved configs are the same experiment."""
    params, _ = resolve_model_params(cfg)
    return {**to_dict(cfg), "output": str(run_dir), "model_params": params, "preset": "none"}


def _default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / Path(cfg.dataset).stem / f"{get_model_class(cfg.model).__name__}-{stamp}-s{cfg.trainer.seed}"


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
    **kwargs,
) -> RunResult:
    """Train and evaluate one model on one dataset; returns the run folder and metrics.

    With ``resume=True`` and an existing ``output`` folder, continues that run from its last
    checkpoint, with the run's saved config (the final numbers equal an uninterrupted run's).
    ``callbacks`` are passed to the :class:`~ctrlab.train.Trainer` (``cb(trainer, record)`` after
    every epoch; the results store and Optuna's pruning use them).
    ``distributed``: data-parallel over the ranks torchrun started (None: whenever this process was
    started by torchrun; True: require it; False: never); see :mod:`ctrlab.train.distributed`.
    """
    if isinstance(config, RunConfig):
        cfg = config
    else:
        cfg = load_run_config(config, overrides, **kwargs)
    ctx = setup_distributed(distributed, cfg.trainer.device)
    try:
        return _train(cfg, resume, log if ctx.is_main else (lambda *a, **k: None), callbacks, ctx)
    finally:
        teardown_distributed(ctx)


def _train(cfg: RunConfig, resume: bool, log, callbacks, ctx: DistContext) -> RunResult:
    run_dir = Path(cfg.output) if cfg.output else _default_run_dir(cfg)
    if ctx.active and not cfg.output:
        raise ConfigError("distributed training needs an explicit output folder (--output): every rank "
                          "must name the same run folder")
    if resume:
        saved = run_dir / "run_config.yaml"
        if not saved.exists():
            raise FileNotFoundError(f"cannot resume: {saved} does not exist (pass the run folder as --output)")
        cfg = load_run_config(saved)
        cfg.output = str(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.trainer.seed)
    dcfg = dataset_config(cfg)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 encodes (or finds) the cache first; the others then read it
    data = prepare(dcfg, cache_dir=cfg.cache_dir, mmap=cfg.mmap, log=log, streaming=cfg.streaming,
                   block_rows=cfg.stream_block_rows)
    if ctx.is_main:
        ctx.barrier()
    params, preset_source = resolve_model_params(cfg)
    seed_everything(cfg.trainer.seed)  # model init does not depend on whether the cache existed
    model = create(cfg.model, data.feature_map, **params)

    saved_cfg = resolved_config(cfg, run_dir)
    if ctx.is_main:
        (run_dir / "run_config.yaml").write_text(
            f"# Resolved run config (preset {preset_source or 'none'} merged into model_params).\n"
            + yaml.safe_dump(saved_cfg, sort_keys=False)
        )
        (run_dir / "dataset_config.json").write_text(json.dumps(dcfg.to_dict(), indent=1))
        data.feature_map.save(run_dir / "feature_map.json")

    loaders = _loaders(data, cfg.trainer, ctx)
    trainer = Trainer(model, cfg.trainer, run_dir, callbacks=callbacks, dist=ctx)
    log(
        f"[ctrlab] {get_model_class(cfg.model).__name__} on {dcfg.name}: {model.count_parameters():,} parameters, "
        f"train {loaders['train'].num_rows:,} rows" + (f", preset {preset_source}" if preset_source else "")
        + (f", data-parallel over {ctx.world_size} ranks ({ctx.backend})" if ctx.active else "")
    )
    t0 = time.time()
    history = trainer.fit(loaders["train"], loaders.get("valid"), resume=resume)
    train_seconds = time.time() - t0
    metrics: dict[str, Any] = {}
    for split in ("valid", "test"):
        if split in loaders:
            metrics[split] = trainer.evaluate(loaders[split])
    epochs_run = len(history)
    summary = {
        "dataset": dcfg.name,
        "model": get_model_class(cfg.model).__name__,
        "seed": cfg.trainer.seed,
        "parameters": model.count_parameters(),
        "model_params": {**default_hparams(cfg.model), **params},
        "preset": preset_source,
        "epochs": epochs_run,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(epochs_run, 1), 3),
        "cache": str(data.path),
        **({"world_size": ctx.world_size} if ctx.active else {}),
        **metrics,
    }
    if ctx.is_main:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(run_dir / "model.safetensors"))
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
        (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    return RunResult(run_dir, summary, history)


# ---- using a finished run -------------------------------------------------------------------
def load_run(run_dir: str | Path):
    """(model, feature_map, dataset_config, run_config) of a finished run, weights loaded."""
    from .serve.artifact import load_trained_run

    run_dir = Path(run_dir)
    if not (run_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{run_dir} is not a finished ctrlab run (no model.safetensors)")
    model, fmap, dcfg, _, _ = load_trained_run(run_dir)
    return model, fmap, dcfg, load_run_config(run_dir / "run_config.yaml")


def evaluate(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, dict[str, float]]:
    """Re-evaluate a finished run on its dataset's splits."""
    model, fmap, dcfg, cfg = load_run(run_dir)
    data = prepare(dcfg, cache_dir=cfg.cache_dir, mmap=cfg.mmap, log=lambda *_: None, streaming=cfg.streaming,
                   block_rows=cfg.stream_block_rows)
    trainer = Trainer(model, cfg.trainer, Path(run_dir))
    loaders = _loaders(data, cfg.trainer)
    return {s: trainer.evaluate(loaders[s]) for s in splits if s in loaders}


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path | None = None,
    input_format: str | None = None,
    batch_size: int = 65536,
) -> np.ndarray:
    """Score a raw file (same columns/format as the training data; labels not needed).

    Raw values go through the run's saved feature map, so unseen categories map to OOV and
    missing numerics to their fill value exactly as in training. Writes a CSV with one
    ``probability`` column (one row per input row) when ``output_path`` is given.
    """
    model, fmap, dcfg, cfg = load_run(run_dir)
    if input_format:
        dcfg.format = input_format
    cols = list(dict.fromkeys(column_of(f) for f in dcfg.features))
    df = read_split(dcfg, Path(input_path), cols)
    enc = encode_frame(df, fmap, Path(input_path), with_labels=False)
    trainer = Trainer(model, cfg.trainer, Path(run_dir))
    probs = trainer.predict(BatchLoader(enc, batch_size, shuffle=False))
    if output_path is not None:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"probability": probs.astype(np.float64)}).write_csv(output_path)
    return probs
