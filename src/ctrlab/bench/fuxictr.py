"""Rerun a FuxiCTR / BARS experiment in ctrlab: a FuxiCTR config + experiment id -> a BenchPlan.

    ctrlab bench --from-fuxictr DCNv2_frappe_x1_tuner_config_03 --expid DCNv2_frappe_x1_007_c207b717 \\
        [--dataset-config F] [--dataset NAME] [--seeds 2021 2022] [--db F] [--jobs N]

FuxiCTR (1.x and 2.x, as used by the BARS benchmark) keeps an experiment in two YAML files:

* ``model_config.yaml``: a ``Base:`` section plus one section per experiment id; the experiment's
  keys override Base's (a shallow ``dict.update``, FuxiCTR's ``load_model_config``). The config
  argument may also be FuxiCTR's ``--config`` folder holding ``model_config.yaml`` (or
  ``model_config/*.yaml``) and ``dataset_config.yaml`` (or ``dataset_config/*.yaml``).
* ``dataset_config.yaml``: one section per ``dataset_id`` (data files, ``feature_cols``,
  ``label_col``, ``min_categr_count``). Default: beside the model config.

Key mapping (every key of the merged experiment must land in exactly one row, or be rejected):

================================  ===========================================================
FuxiCTR key                       ctrlab
================================  ===========================================================
``model``                         the grid's model (a registered ctrlab model; ``PNN`` with
                                  ``product_type: inner`` is ``IPNN``)
model hyperparameters             ``model_params`` by name (``default_hparams(model)``), renamed
                                  per model by ``MODEL_RENAMES`` (e.g. DCN's
                                  ``dnn_hidden_units`` -> ``hidden_units``)
``embedding_dim``                 ``model_params.embedding_dim``
``embedding_regularizer``,        ``model_params`` (a number, ``null`` = 0, or ``"l2(x)"`` = x;
``net_regularizer``               ctrlab has only L2 penalties, so ``l1(...)`` is an error)
``learning_rate``                 ``trainer.lr``
``batch_size``, ``epochs``        ``trainer.batch_size``, ``trainer.epochs``
``early_stop_patience``           ``trainer.patience`` (FuxiCTR 1.x calls it ``patience``)
``monitor``, ``monitor_mode``     ``trainer.monitor`` (name or ``{AUC: 1, logloss: -1}``),
                                  ``trainer.monitor_mode`` (left ``auto`` where ctrlab infers
                                  the same direction, so the run key matches a native run)
``optimizer``                     ``trainer.optimizer`` (adam, adamw, sgd; any case)
``metrics``                       ``trainer.metrics``: those ctrlab computes (AUC, logloss,
                                  gAUC; ``binary_crossentropy`` = logloss), in ctrlab's order;
                                  others are dropped with a warning
``reduce_lr_on_plateau``          ``trainer.reduce_lr_on_plateau``
``max_gradient_norm``             ``trainer.max_grad_norm``
``save_best_only``                ``trainer.restore_best`` (FuxiCTR reloads the checkpoint it
                                  kept: the best epoch's, or the last one's)
``seed``                          the grid's seeds when ``seeds`` is not given
``loss``, ``task``                checked: ``binary_crossentropy``, ``binary_classification``
``dataset_id``                    the dataset (below), unless ``dataset`` is given
================================  ===========================================================

Ignored, whatever their value (``RUNTIME_KEYS``: where FuxiCTR writes, logs and on which
device, none of which changes the experiment): ``model_root``, ``model_id``, ``num_workers``,
``workers``, ``verbose``, ``pickle_feature_encoder``, ``use_hdf5``, ``debug_mode``, ``debug``,
``gpu``, ``data_root``, ``rebuild_dataset``.

Ignored only at the value ctrlab implements (``NEUTRAL_KEYS``; another value is an error,
because ctrlab would silently run a different experiment): ``shuffle: true`` (ctrlab always
shuffles the train split), ``eval_steps: null`` / ``eval_interval: 1`` / ``every_x_epochs: 1``
(validate once per epoch), ``group_id``, ``use_features``, ``feature_specs``,
``feature_config``, ``ordered_features``: ``null``.

Any other key raises :class:`~ctrlab.config.ConfigError` naming the file, the experiment and
every such key. Keys the config omits take ctrlab's defaults (which follow FuxiCTR's config
templates); BARS configs spell every key out.

Model hyperparameters that the model's structure does not use are dropped (DCNv2: the tower
widths of the tower its ``model_structure`` lacks, ``low_rank`` / ``num_experts`` without
``use_low_rank_mixture``; one used tower width becomes ``hidden_units``), so an imported BARS
config resolves to the same ``model_params`` -- and so the same run key in the results store --
as ctrlab's shipped preset holding the same values.

Dataset: ``dataset`` (a ctrlab dataset name or YAML) wins. Otherwise the experiment's
``dataset_id`` section is read: a BARS x1 split (``dataset_id`` starting with ``frappe_x1``,
``movielenslatest_x1``, ``criteo_x1`` or ``avazu_x1``, or files in a ``Frappe_x1`` /
``MovielensLatest_x1`` / ``Criteo_x1`` / ``Avazu_x1`` folder) whose features are the published
ones maps to ctrlab's registered dataset of that name (its files are found and checksummed by
ctrlab, wherever the config says they are). Any other dataset is written as a ctrlab dataset
YAML, ``<db folder>/fuxictr_datasets/<dataset_id>.yaml``, derived from ``feature_cols``,
``label_col``, ``min_categr_count`` and the data paths (relative paths resolve against the
current directory, as in FuxiCTR).

The plan: ``fuxictr-<expid>``, one grid: that dataset, the model, the seeds, protocol ``bars``,
one hyperparameter set named after the experiment with ``preset: none`` (nothing comes from
ctrlab's presets: every value is the config's or a class default), and the mapped trainer keys.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, load_yaml
from .plan import BenchPlan, Grid, HparamSet

__all__ = ["plan_from_fuxictr", "parse_regularizer", "RUNTIME_KEYS", "NEUTRAL_KEYS", "TRAINER_KEYS",
           "MODEL_RENAMES", "MODEL_ALIASES", "BARS_SPLITS"]

RUNTIME_KEYS: frozenset[str] = frozenset({
    "model_root", "model_id", "num_workers", "workers", "verbose", "pickle_feature_encoder",
    "use_hdf5", "debug_mode", "debug", "gpu", "data_root", "rebuild_dataset",
})
"""Keys that only say where FuxiCTR writes or logs and on which device: ignored."""

NEUTRAL_KEYS: dict[str, tuple[Any, ...]] = {
    "shuffle": (True,),
    "eval_steps": (None,),
    "eval_interval": (1,),
    "every_x_epochs": (1,),
    "group_id": (None,),
    "use_features": (None,),
    "feature_specs": (None,),
    "feature_config": (None,),
    "ordered_features": (None,),
}
"""Keys ignored at these values (what ctrlab does); any other value is an error."""

TRAINER_KEYS: dict[str, str] = {
    "learning_rate": "lr",
    "batch_size": "batch_size",
    "epochs": "epochs",
    "early_stop_patience": "patience",
    "patience": "patience",  # FuxiCTR 1.x name (e.g. BARS' DCNv2_frappe_x1 config)
    "monitor": "monitor",
    "monitor_mode": "monitor_mode",
    "optimizer": "optimizer",
    "metrics": "metrics",
    "reduce_lr_on_plateau": "reduce_lr_on_plateau",
    "max_gradient_norm": "max_grad_norm",
    "save_best_only": "restore_best",
}
"""FuxiCTR training keys -> :class:`~ctrlab.train.TrainerConfig` fields."""

_DNN = {"dnn_hidden_units": "hidden_units", "dnn_activations": "hidden_activations"}
MODEL_RENAMES: dict[str, dict[str, str | tuple[str, ...]]] = {
    "DCN": dict(_DNN),
    "DCNv2": {"dnn_activations": "hidden_activations"},  # its towers keep FuxiCTR's names
    "xDeepFM": dict(_DNN),
    "AutoInt": dict(_DNN),
    "AutoIntPlus": dict(_DNN),
    # FuxiCTR's LR and FM take one `regularizer` for both their embeddings and weights
    "LR": {"regularizer": ("embedding_regularizer", "net_regularizer")},
    "FM": {"regularizer": ("embedding_regularizer", "net_regularizer")},
}
"""Per ctrlab model: FuxiCTR hyperparameter name -> ctrlab name(s) where they differ. Models
not listed (DNN, DeepFM, WideDeep, IPNN, FinalMLP, FGCNN, DIN, DCNv3/FCN, ...) use FuxiCTR's
names."""

MODEL_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "PNN": ("IPNN", {"product_type": "inner"}),
}
"""FuxiCTR model name -> (ctrlab model, keys that must have these values and are consumed)."""

_BARS_FEATURES: dict[str, list[dict[str, Any]]] = {
    "frappe_x1": [{"name": f, "kind": "categorical", "min_count": 1}
                  for f in ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost",
                            "weather", "country", "city"]],
    "movielenslatest_x1": [{"name": f, "kind": "categorical", "min_count": 1}
                           for f in ["user_id", "item_id", "tag_id"]],
    "criteo_x1": [{"name": f"I{i}", "kind": "numeric", "normalizer": "none", "fill_value": 0.0}
                  for i in range(1, 14)]
                 + [{"name": f"C{i}", "kind": "categorical", "min_count": 1} for i in range(1, 27)],
    "avazu_x1": [{"name": f"feat_{i}", "kind": "categorical", "min_count": 1} for i in range(1, 23)],
}
BARS_SPLITS: dict[str, str] = {
    "frappe_x1": "Frappe_x1",
    "movielenslatest_x1": "MovielensLatest_x1",
    "criteo_x1": "Criteo_x1",
    "avazu_x1": "Avazu_x1",
}
"""ctrlab's registered BARS split -> reczoo's folder name for it."""

_DATASET_KEYS = {"data_format", "train_data", "valid_data", "test_data", "min_categr_count",
                 "feature_cols", "label_col", "dataset_id"}
_FEATURE_KEYS = {"name", "active", "dtype", "type", "source", "min_categr_count", "embedding_dim",
                 "fill_na", "normalizer", "splitter", "max_len", "padding", "share_embedding",
                 "feature_encoder", "category_processor", "num_buckets", "remap"}
_NORMALIZERS = {None: "none", "none": "none", "StandardScaler": "standard", "MinMaxScaler": "minmax"}
_MASKED_MEAN = {None, "null", "None", "none", "layers.MaskedAveragePooling()"}
_METRIC_ALIASES = {"binary_crossentropy": "logloss"}
_FIX = "remove it from the config, or add a mapping in ctrlab/bench/fuxictr.py"


# ---- reading FuxiCTR's files ---------------------------------------------------------------
def _config_files(source: Path, stem: str) -> list[Path]:
    """FuxiCTR's lookup in a --config folder: ``<stem>.yaml``, else ``<stem>/*.yaml``."""
    if (source / f"{stem}.yaml").is_file():
        return [source / f"{stem}.yaml"]
    return sorted((source / stem).glob("*.yaml"))


def _read_sections(path: Path) -> dict[str, Any]:
    data = load_yaml(path)
    for name, section in data.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping, got {section!r}")
    return data


def _load_experiment(model_config: Path, expid: str) -> tuple[dict[str, Any], Path]:
    """Base merged with the experiment's section (its keys win), and the file it came from."""
    files = _config_files(model_config, "model_config") if model_config.is_dir() else [model_config]
    if not files:
        raise ConfigError(f"{model_config}: no model_config.yaml (or model_config/*.yaml) in this folder")
    base: dict[str, Any] | None = None
    available: list[str] = []
    for path in files:
        sections = _read_sections(path)
        if base is None and "Base" in sections:
            base = sections["Base"]
        if expid in sections:
            # FuxiCTR takes Base from the same file set; prefer the experiment's own file
            base = sections.get("Base", base) or {}
            return {**base, **sections[expid]}, path
        available += [k for k in sections if k != "Base"]
    where = files[0] if len(files) == 1 else model_config
    raise ConfigError(f"{where}: no experiment {expid!r}; available experiment ids: {available}")


def _load_dataset_section(dataset_config: Path, dataset_id: str) -> dict[str, Any]:
    """The ``dataset_id`` section of a dataset_config.yaml, or of the dataset config files in a folder
    (a FuxiCTR --config folder, or its ``dataset_config/`` folder)."""
    if dataset_config.is_dir():
        files = _config_files(dataset_config, "dataset_config")
        if not files and dataset_config.name == "dataset_config":
            files = sorted(dataset_config.glob("*.yaml"))
    else:
        files = [dataset_config] if dataset_config.is_file() else []
    if not files:
        raise ConfigError(f"no FuxiCTR dataset config at {dataset_config} (dataset_config.yaml); pass "
                          "--dataset-config, or --dataset to run on a ctrlab dataset")
    available: list[str] = []
    for path in files:
        sections = _read_sections(path)
        if dataset_id in sections:
            return sections[dataset_id]
        available += list(sections)
    raise ConfigError(f"{dataset_config}: no dataset_id {dataset_id!r}; available: {available}")


# ---- values --------------------------------------------------------------------------------
def parse_regularizer(value: Any, where: str) -> float:
    """FuxiCTR regularizer -> ctrlab's L2 weight: a number, ``null`` (0) or ``"l2(x)"``."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"l2\((.*)\)", text, flags=re.IGNORECASE)
        try:
            return float(m.group(1) if m else text)
        except ValueError:
            pass
    raise ConfigError(f"{where}: regularizer {value!r} cannot be mapped; ctrlab implements only L2 "
                      "penalties: use a number or 'l2(x)' (l1 and l1_l2 are not supported)")


def _metrics(value: Any, where: str) -> list[str]:
    from ..train.metrics import METRIC_NAMES

    names = [value] if isinstance(value, str) else list(value or [])
    wanted = {_METRIC_ALIASES.get(str(n), str(n)) for n in names}
    dropped = sorted(wanted - set(METRIC_NAMES))
    if dropped:
        warnings.warn(f"{where}: metrics {dropped} are not computed by ctrlab and are dropped "
                      f"(ctrlab has {list(METRIC_NAMES)})", stacklevel=3)
    kept = [m for m in METRIC_NAMES if m in wanted]
    return kept or ["AUC", "logloss"]


def _trainer_value(key: str, value: Any, where: str) -> Any:
    if key == "lr":
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: learning_rate {value!r} is not a number") from None
    if key == "optimizer":
        name = str(value).lower()
        if name not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"{where}: optimizer {value!r} is not available in ctrlab; use adam, adamw or sgd")
        return name
    if key == "metrics":
        return _metrics(value, where)
    if key == "monitor":
        from ..train.trainer import parse_monitor

        parse_monitor(value)  # a clear error now rather than when the first run starts
        return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else str(value)
    return value


# ---- models ---------------------------------------------------------------------------------
def _resolve_model(name: Any, config: dict[str, Any], where: str) -> tuple[str, set[str]]:
    """(registered ctrlab model name, config keys the alias consumed)."""
    from ..models import get_model_class, list_models

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'model' is missing; name a model ctrlab has: {list_models()}")
    if name in MODEL_ALIASES:
        target, required = MODEL_ALIASES[name]
        for key, want in required.items():
            if config.get(key, want) != want:
                raise ConfigError(f"{where}: FuxiCTR {name} with {key}={config[key]!r} has no ctrlab model; "
                                  f"ctrlab's {target} is {name} with {key}={want!r}")
        return target, set(required)
    try:
        return get_model_class(name).__name__, set()
    except ValueError:
        raise ConfigError(f"{where}: model {name!r} is not a ctrlab model; known models: {list_models()}") from None


def _canonical_dcnv2(params: dict[str, Any]) -> dict[str, Any]:
    """Drop what DCNv2's structure ignores; a single used tower width becomes ``hidden_units``."""
    p = dict(params)
    structure = p.get("model_structure", "parallel")
    if not p.get("use_low_rank_mixture", False):
        p.pop("low_rank", None)
        p.pop("num_experts", None)
    towers = {"stacked_dnn_hidden_units": "stacked" in structure,
              "parallel_dnn_hidden_units": "parallel" in structure}
    if not any(k in p for k in towers):
        return p  # ctrlab-style config (hidden_units): nothing to fold
    used = []
    for key, is_used in towers.items():
        units = p.pop(key, None)
        if is_used:
            used.append((key, [] if units is None else list(units)))  # FuxiCTR's class default is []
    if used and all(units == used[0][1] for _, units in used):
        p["hidden_units"] = used[0][1]
    else:
        p.update(dict(used))
    return p


_CANONICAL = {"DCNv2": _canonical_dcnv2}


# ---- datasets -------------------------------------------------------------------------------
def _feature_specs(section: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], str | None]:
    """FuxiCTR ``feature_cols`` -> ctrlab feature specs (and the group field from a ``meta`` column)."""
    default_min = int(section.get("min_categr_count", 1) or 1)
    features: list[dict[str, Any]] = []
    group_field = None
    for i, col in enumerate(section.get("feature_cols") or []):
        if not isinstance(col, dict) or "name" not in col:
            raise ConfigError(f"{where}: feature_cols[{i}] must be a mapping with a 'name', got {col!r}")
        unknown = sorted(set(col) - _FEATURE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: feature_cols[{i}] ({col['name']}): cannot map key(s) {unknown}; {_FIX}")
        if col.get("active", True) is False:
            continue
        if col.get("remap", True) is not True:
            raise ConfigError(f"{where}: feature_cols[{i}]: remap: false is not supported")
        kind = col.get("type")
        names = col["name"] if isinstance(col["name"], list) else [col["name"]]
        for name in names:
            spec: dict[str, Any] = {"name": str(name)}
            if col.get("embedding_dim") is not None:
                spec["embedding_dim"] = int(col["embedding_dim"])
            if kind == "categorical":
                processor = col.get("category_processor")
                if processor is None:
                    spec.update(kind="categorical", min_count=int(col.get("min_categr_count", default_min)))
                elif processor == "hash_bucket":
                    spec.update(kind="categorical", hash_buckets=int(col.get("num_buckets", 10)))
                elif processor == "quantile_bucket":
                    spec.update(kind="numeric", n_buckets=int(col.get("num_buckets", 10)))
                else:
                    raise ConfigError(f"{where}: feature {name}: category_processor {processor!r} is not supported")
            elif kind == "numeric":
                norm = col.get("normalizer")
                if norm not in _NORMALIZERS:
                    raise ConfigError(f"{where}: feature {name}: normalizer {norm!r} has no ctrlab equivalent; "
                                      f"use one of {[k for k in _NORMALIZERS if k]}")
                spec.update(kind="numeric", normalizer=_NORMALIZERS[norm], fill_value=float(col.get("fill_na", 0.0)))
            elif kind == "sequence":
                if col.get("feature_encoder", None) not in _MASKED_MEAN:
                    raise ConfigError(f"{where}: feature {name}: feature_encoder {col['feature_encoder']!r} is not "
                                      "supported (ctrlab mean-pools sequences, FuxiCTR's MaskedAveragePooling)")
                if not col.get("max_len"):
                    raise ConfigError(f"{where}: feature {name}: set max_len (FuxiCTR's 0 = the longest "
                                      "sequence has no ctrlab equivalent)")
                padding = col.get("padding", "post")  # FuxiCTR pads and cuts at the same end
                spec.update(kind="sequence", splitter=str(col.get("splitter", "^")), max_len=int(col["max_len"]),
                            padding=padding, truncating=padding,
                            min_count=int(col.get("min_categr_count", default_min)))
                if col.get("share_embedding"):
                    spec["share_vocab_with"] = str(col["share_embedding"])
            elif kind == "meta":
                if group_field is not None:
                    raise ConfigError(f"{where}: more than one meta column ({group_field}, {name})")
                group_field = str(name)
                continue
            else:
                raise ConfigError(f"{where}: feature {name}: type {kind!r} cannot be mapped; ctrlab reads "
                                  "categorical, numeric, sequence and meta columns")
            if kind != "sequence" and col.get("share_embedding"):
                raise ConfigError(f"{where}: feature {name}: share_embedding is supported for sequences only")
            features.append(spec)
    if not features:
        raise ConfigError(f"{where}: no active feature_cols")
    return features, group_field


def _labels(section: dict[str, Any], where: str) -> list[str]:
    cols = section.get("label_col")
    cols = cols if isinstance(cols, list) else [cols]
    if not all(isinstance(c, dict) and "name" in c for c in cols):
        raise ConfigError(f"{where}: label_col must be {{name: ..., dtype: ...}} (or a list of them)")
    return [str(c["name"]) for c in cols]


def _bars_split(dataset_id: str, section: dict[str, Any]) -> str | None:
    """The registered BARS split this dataset looks like, by id prefix or data folder."""
    folders = {Path(str(section[k])).parent.name.lower() for k in ("train_data", "valid_data", "test_data")
               if section.get(k)}
    for name, folder in BARS_SPLITS.items():
        if re.match(rf"{name}(_|$)", dataset_id, flags=re.IGNORECASE) or folder.lower() in folders:
            return name
    return None


def _map_dataset(dataset_id: str, section: dict[str, Any], where: str, out_dir: Path) -> str:
    """A registered BARS split name, or the path of a ctrlab dataset YAML written for this dataset."""
    unknown = sorted(set(section) - _DATASET_KEYS - RUNTIME_KEYS)
    if unknown:
        raise ConfigError(f"{where}: cannot map dataset key(s) {unknown}; {_FIX}")
    features, group_field = _feature_specs(section, where)
    labels = _labels(section, where)
    fmt = str(section.get("data_format", "csv"))
    split = _bars_split(dataset_id, section)
    if split and features == _BARS_FEATURES[split] and labels == ["label"] and fmt == "csv" and group_field is None:
        return split
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"{where}: data_format {fmt!r} is not supported; FuxiCTR's csv or parquet only")
    files = {}
    for split_name in ("train", "valid", "test"):
        raw = section.get(f"{split_name}_data")
        if raw:
            files[split_name] = str(Path(str(raw)).expanduser().resolve())  # cwd-relative, as in FuxiCTR
    if "train" not in files or "valid" not in files:
        raise ConfigError(f"{where}: train_data and valid_data are required")
    config: dict[str, Any] = {"name": dataset_id, "format": fmt, "files": files, "header": True,
                              "labels": labels, "features": features}
    if group_field is not None:
        config["group_field"] = group_field
    from ..data.schema import load_dataset_config

    load_dataset_config(dict(config))  # validate before writing
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dataset_id}.yaml"
    path.write_text(f"# Derived by ctrlab from the FuxiCTR dataset config {where}\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _check_dataset_name(dataset: str) -> None:
    from ..data.datasets import list_datasets

    path = Path(dataset).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        return
    if dataset not in list_datasets():
        raise ConfigError(f"--dataset {dataset!r} is neither a registered dataset nor a dataset YAML; "
                          f"registered: {list_datasets()}")


# ---- the plan -------------------------------------------------------------------------------
def plan_from_fuxictr(
    model_config: str | Path,
    expid: str,
    dataset_config: str | Path | None = None,
    dataset: str | None = None,
    seeds: list[int] | None = None,
    db: str | None = None,
    jobs: int | None = None,
) -> BenchPlan:
    """A one-grid BenchPlan that reruns FuxiCTR experiment ``expid`` of ``model_config`` in ctrlab.

    ``model_config``: a FuxiCTR model_config.yaml or its ``--config`` folder. ``dataset_config``:
    default beside it. ``dataset``: a ctrlab dataset (name or YAML) to run on instead of the
    config's ``dataset_id``. ``seeds``: default the config's ``seed``. ``db``, ``jobs``: the
    plan's results store and workers (BenchPlan's defaults otherwise). See the module docstring
    for the key mapping; unmappable keys raise :class:`~ctrlab.config.ConfigError`.
    """
    from ..models import hyperparameters
    from ..train.trainer import TrainerConfig

    if not expid:
        raise ConfigError("--expid is required with --from-fuxictr (an experiment id in the model config)")
    model_config = Path(model_config).expanduser()
    if not model_config.exists():
        raise ConfigError(f"FuxiCTR model config {model_config} does not exist")
    config, source = _load_experiment(model_config, expid)
    where = f"{source}: experiment {expid!r}"

    model, consumed = _resolve_model(config.get("model"), config, where)
    if config.get("loss", "binary_crossentropy") != "binary_crossentropy":
        raise ConfigError(f"{where}: loss {config['loss']!r} is not supported; ctrlab trains with binary_crossentropy")
    if config.get("task", "binary_classification") != "binary_classification":
        raise ConfigError(f"{where}: task {config['task']!r} is not supported; ctrlab does binary_classification")
    consumed |= {"model", "loss", "task", "seed", "dataset_id"}

    allowed = hyperparameters(model).names
    renames = MODEL_RENAMES.get(model, {})
    params: dict[str, Any] = {}
    trainer: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, value in config.items():
        if key in consumed or key in RUNTIME_KEYS:
            continue
        if key in NEUTRAL_KEYS:
            if value not in NEUTRAL_KEYS[key]:
                raise ConfigError(f"{where}: {key}: {value!r} is not supported by ctrlab (only "
                                  f"{NEUTRAL_KEYS[key][0]!r}); remove it or set it to that")
            continue
        if key in TRAINER_KEYS:
            trainer[TRAINER_KEYS[key]] = _trainer_value(TRAINER_KEYS[key], value, f"{where}: {key}")
            continue
        targets = renames.get(key, key)
        targets = (targets,) if isinstance(targets, str) else targets
        if not all(t in allowed for t in targets):
            unmapped.append(key)
            continue
        for t in targets:
            params[t] = parse_regularizer(value, f"{where}: {key}") if t.endswith("_regularizer") else value
    if unmapped:
        raise ConfigError(
            f"{where}: cannot map FuxiCTR key(s) {unmapped} onto ctrlab's {model} (hyperparameters: "
            f"{sorted(allowed)}) or its trainer. Fix: {_FIX} (MODEL_RENAMES, TRAINER_KEYS or RUNTIME_KEYS)")
    params = _CANONICAL.get(model, lambda p: p)(params)
    # fail now, with the config's name, rather than in the first run (a bad lr, patience, ...)
    from ..config import from_dict

    from_dict(TrainerConfig, dict(trainer), where=f"{where} (trainer)")
    if "monitor_mode" in trainer:
        # FuxiCTR always spells the direction out; where ctrlab's `auto` infers the same one, keep
        # auto, so the run has the same resolved config (run key) as a native ctrlab run
        inferred = from_dict(TrainerConfig, {k: v for k, v in trainer.items() if k != "monitor_mode"})
        if inferred.resolved_monitor_mode() == trainer["monitor_mode"]:
            del trainer["monitor_mode"]

    if seeds:
        seed_list = [int(s) for s in seeds]
    else:
        seed_list = [int(config.get("seed", TrainerConfig().seed))]
    plan = BenchPlan(name=f"fuxictr-{expid}")
    if db:
        plan.db = str(db)
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        plan.jobs = int(jobs)

    if dataset:
        _check_dataset_name(dataset)
        ds = str(dataset)
    else:
        dataset_id = config.get("dataset_id")
        if not dataset_id:
            raise ConfigError(f"{where}: no dataset_id; pass --dataset to run on a ctrlab dataset")
        # FuxiCTR's layout: dataset_config.yaml (or dataset_config/*.yaml) beside the model config
        dcfg = (Path(dataset_config).expanduser() if dataset_config
                else model_config if model_config.is_dir() else source.parent)
        section = _load_dataset_section(dcfg, str(dataset_id))
        ds = _map_dataset(str(dataset_id), section, f"{dcfg}: dataset {dataset_id!r}",
                          Path(plan.db).parent / "fuxictr_datasets")

    plan.grids = [Grid(datasets=[ds], models=[model], seeds=seed_list, protocols=["bars"],
                       hparam_sets=[HparamSet(name=expid, preset="none", params=params)], trainer=trainer)]
    return plan
