"""Export a trained run into a self-contained, pickle-free artifact folder, and load it back.

    ctrlab export runs/demo/FinalMLP-frappe_x1_subset --format onnx --output artifacts/finalmlp

An artifact folder holds everything needed to score raw records, and nothing that runs code on load::

    manifest.json          schema of the raw input, model name + hyperparameters, metrics of the run,
                           library versions, the model's tensor inputs/outputs, sha256 of every file
    model.onnx             the model graph (format ``onnx``): ids / values in, probabilities out
    model.safetensors      the weights (always; format ``torch`` rebuilds the model from ctrlab's registry)
    feature_map.json       fitted preprocessing: vocabularies, normaliser statistics, bucket edges,
                           sequence settings (the same file the run trained with)
    dataset_config.json    how the raw columns are parsed (splitters, sources, labels)
    calibration.json       the run's post-hoc calibration, when it has one (``ctrlab calibrate``): the
                           predictor applies it to the model's probabilities

Formats: ``onnx`` (default; served by ONNX Runtime, no PyTorch needed to score) and ``torch``
(safetensors weights, the model rebuilt by name: for a model ONNX cannot express). Neither uses
pickle: ONNX is protobuf, safetensors is a flat tensor file, the rest is JSON, and loading
verifies every file's checksum first.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import stat
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..data.cache import temp_name
from .calibration import CALIBRATION_FILE, Calibration, CalibrationError, load_calibration
from ..layers.low_rank import apply_low_rank
from ..layers.opt_embed import apply_opt_embed
from ..data.feature_map import FeatureMap
from ..data.schema import (
    CategoricalSpec,
    DatasetConfig,
    DenseVectorSpec,
    NumericSpec,
    SequenceSpec,
    column_of,
    read_features,
    load_dataset_config,
)

ARTIFACT_VERSION = 1
FORMATS = ("onnx", "torch")
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-5
"""Largest absolute difference of probabilities between ONNX Runtime and PyTorch that export accepts."""


class ArtifactError(ValueError):
    """A run that cannot be exported, or an artifact folder that is incomplete or was altered."""


# ---- the model's tensor interface -------------------------------------------------------------
@dataclass
class TensorSpec:
    """One model input: the batch key the model reads, the graph input name, dtype and width."""

    key: str
    """Batch key (``cat``, ``num``, ``seq:<name>``, ``dense:<name>``, ``numseq:<name>``)."""
    name: str
    """Graph input name (``:`` is replaced by ``__``)."""
    dtype: str
    """``int64`` (ids) or ``float32`` (values)."""
    width: int
    """Second dimension; the first is the batch."""


def model_inputs(fmap: FeatureMap) -> list[TensorSpec]:
    """The tensors a model of this feature map reads, in a fixed order. Groups without fields are
    left out (the exported graph has no zero-width inputs)."""
    specs = []
    if fmap.categorical:
        specs.append(TensorSpec("cat", "cat", "int64", len(fmap.categorical)))
    if fmap.numeric:
        specs.append(TensorSpec("num", "num", "float32", len(fmap.numeric)))
    for f in fmap.sequences:
        specs.append(TensorSpec(f"seq:{f.name}", f"seq__{f.name}", "int64", f.max_len))
    for f in fmap.dense:
        specs.append(TensorSpec(f"dense:{f.name}", f"dense__{f.name}", "float32", f.dim))
    for f in getattr(fmap, "numeric_sequences", []):
        specs.append(TensorSpec(f"numseq:{f.name}", f"numseq__{f.name}", "float32", f.max_len))
    return specs


def model_batch(inputs: list[TensorSpec], tensors) -> dict:
    """Tensors in :func:`model_inputs` order -> the batch dict a model reads. Models index
    ``batch["cat"]`` / ``batch["num"]`` even when a group has no fields (and so no graph input)."""
    import torch

    batch = {s.key: t for s, t in zip(inputs, tensors)}
    rows = tensors[0].shape[0]
    batch.setdefault("cat", torch.zeros(rows, 0, dtype=torch.long))
    batch.setdefault("num", torch.zeros(rows, 0, dtype=torch.float32))
    return batch


def as_model_arrays(arrays: dict[str, np.ndarray], inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Encoded arrays (int32 ids) -> the graph's inputs by name, in the dtypes the graph takes."""
    return {s.name: np.ascontiguousarray(arrays[s.key], dtype=s.dtype) for s in inputs}


# ---- the raw input schema --------------------------------------------------------------------
def raw_schema(dcfg: DatasetConfig) -> list[dict[str, Any]]:
    """One entry per raw column a request must carry: the features that read it and the JSON types
    it accepts. A column read by several features accepts what all of them accept. A timestamp
    column appears once, with the features derived from it (``derive``: the server computes them)."""
    accepts_by_kind = {
        CategoricalSpec: {"string", "integer", "null"},
        NumericSpec: {"number", "integer", "null"},
        SequenceSpec: {"string", "array", "null"},
        DenseVectorSpec: {"string", "array"},
    }
    columns: dict[str, dict[str, Any]] = {}
    for spec in read_features(dcfg.features):  # a cross feature is derived from two of these by the server
        col = columns.setdefault(column_of(spec), {"name": column_of(spec), "features": [], "accepts": None})
        entry: dict[str, Any] = {"name": spec.name, "kind": spec.kind}
        if isinstance(spec, SequenceSpec):
            entry.update(splitter=spec.splitter, max_len=spec.max_len)
            if spec.values == "numbers":
                entry.update(values="numbers")
        elif isinstance(spec, DenseVectorSpec) and spec.is_lookup:
            entry.update(dim=spec.dim, lookup="item_vectors")  # the column holds item ids, not vectors
        elif isinstance(spec, DenseVectorSpec):
            entry.update(dim=spec.dim, splitter=spec.splitter)
        kinds = accepts_by_kind[type(spec)]
        if isinstance(spec, DenseVectorSpec) and spec.is_lookup:  # an item id, as a categorical cell
            kinds = accepts_by_kind[CategoricalSpec]
        if getattr(spec, "derive", None):  # the raw timestamp: epoch numbers, or strings in time_format
            entry.update(derive=spec.derive, time_unit=spec.time_unit, time_format=spec.time_format,
                         timezone=spec.timezone)
            kinds = {"string", "null"} if spec.time_format else {"integer", "number", "null"}
        col["features"].append(entry)
        col["accepts"] = kinds if col["accepts"] is None else col["accepts"] & kinds
    for col in columns.values():
        order = ["string", "integer", "number", "array", "null"]
        col["accepts"] = [t for t in order if t in col["accepts"]]
    return list(columns.values())


# ---- export ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("ctrlab", "torch", "numpy", "polars", "onnx", "onnxruntime", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _estimator_name(run_dir: Path) -> str:
    """The estimator a baseline run folder's ``estimator.json`` names (:mod:`ctrlab.baselines`)."""
    try:
        return str(json.loads((run_dir / "estimator.json").read_text()).get("estimator"))
    except (OSError, ValueError, AttributeError):
        return "estimator.json"


def load_trained_run(run_dir: Path):
    """(model with its weights, feature map, dataset config, run config dict, metrics) of a finished
    run folder (``ctrlab.load_run`` and export both read runs through it)."""
    from safetensors.torch import load_file

    from ..models import create

    if (run_dir / "estimator.json").is_file() and not (run_dir / "model.safetensors").exists():
        raise ArtifactError(f"{run_dir} is a run of a non-torch baseline ({_estimator_name(run_dir)}): only torch "
                            "models are exported and served here (ONNX / TorchScript); score files with "
                            f"ctrlab predict {run_dir} FILE")
    missing = [n for n in ("run_config.yaml", "feature_map.json", "dataset_config.json", "model.safetensors")
               if not (run_dir / n).exists()]
    if missing:
        raise ArtifactError(f"{run_dir} is not a finished ctrlab run: {missing} missing "
                            "(train it first: ctrlab train ... --output RUN)")
    cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text()) or {}
    fmap = FeatureMap.load(run_dir / "feature_map.json")
    dcfg = load_dataset_config(json.loads((run_dir / "dataset_config.json").read_text()))
    model = create(cfg["model"], fmap, **(cfg.get("model_params") or {}))
    apply_low_rank(model, cfg.get("low_rank") or {})  # a compressed run (ctrlab compress)
    apply_opt_embed(model, cfg.get("opt_embed") or {})  # a searched run's masks (ctrlab optembed)
    from safetensors import SafetensorError

    try:
        model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    except (SafetensorError, RuntimeError, OSError) as exc:  # corrupt / truncated file, or other tensors
        raise ArtifactError(f"{run_dir / 'model.safetensors'} cannot be loaded into {cfg['model']} "
                            f"({type(exc).__name__}: {str(exc)[:800]}); the file is damaged or from another "
                            "run: train the run again") from None
    model.eval()
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return model, fmap, dcfg, cfg, metrics


def example_arrays(fmap: FeatureMap, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid encoded inputs (ids inside each vocabulary, some padding in sequences):
    what export traces with and checks parity on when no real rows are given."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    if fmap.categorical:
        arrays["cat"] = np.stack([rng.integers(0, f.vocab_size, rows) for f in fmap.categorical], 1).astype(np.int32)
    if fmap.numeric:
        arrays["num"] = rng.normal(size=(rows, len(fmap.numeric))).astype(np.float32)
    for f in fmap.sequences:
        seq = rng.integers(1, f.vocab_size, (rows, f.max_len)).astype(np.int32)
        pad = rng.integers(0, f.max_len + 1, rows)  # 0..max_len leading pads per row
        seq[np.arange(f.max_len)[None, :] < pad[:, None]] = 0
        arrays[f"seq:{f.name}"] = seq
    for f in fmap.dense:
        arrays[f"dense:{f.name}"] = rng.normal(size=(rows, f.dim)).astype(np.float32)
    for f in fmap.numeric_sequences:
        vals = rng.exponential(1000.0, (rows, f.max_len)).astype(np.float32)
        pad = rng.integers(0, f.max_len + 1, rows)
        vals[np.arange(f.max_len)[None, :] < pad[:, None]] = 0
        arrays[f"numseq:{f.name}"] = vals
    return arrays


def export_onnx(model, fmap: FeatureMap, path: Path, opset: int = DEFAULT_OPSET) -> list[TensorSpec]:
    """Write ``model`` as an ONNX graph with inputs :func:`model_inputs` (batch dimension dynamic)
    and outputs ``logit`` and ``probability`` of shape ``(B,)`` (the main task), plus, for a
    multi-task model, ``task_probabilities`` ``(B, T)`` in its ``task_names`` order."""
    import torch

    inputs = model_inputs(fmap)
    if not inputs:
        raise ArtifactError("the feature map has no fields: nothing to export")

    class _Graph(torch.nn.Module):
        """Positional tensors -> the batch dict the model reads -> (logit, probability)."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            out = self.model(model_batch(inputs, tensors))
            if outputs[2:]:
                return out["logit"], torch.sigmoid(out["logit"]), torch.sigmoid(out["task_logits"])
            return out["logit"], torch.sigmoid(out["logit"])

    # 7 rows: odd, and unlike any other dimension, so that tracing cannot confuse it with one.
    example = as_model_arrays(example_arrays(fmap, 7), inputs)
    args = tuple(torch.from_numpy(example[s.name]) for s in inputs)
    names = [s.name for s in inputs]
    outputs = output_names(model)
    dynamic = {n: {0: "batch"} for n in names + outputs}
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the parity check is the real test.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_Graph(), args, str(path), input_names=names, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        except Exception as exc:  # the exporter raises many kinds; report which model and why
            raise ArtifactError(
                f"{type(model).__name__} cannot be exported to ONNX ({type(exc).__name__}: {str(exc)[:300]}); "
                "export it with --format torch (safetensors weights, served by PyTorch)") from exc
    return inputs


def output_names(model) -> list[str]:
    """The graph's outputs: ``logit``, ``probability`` and, for a multi-task model, ``task_probabilities``."""
    return ["logit", "probability"] + (["task_probabilities"] if getattr(model, "task_names", None) else [])


def chunk_rows(fmap: FeatureMap, most: int = 8192) -> int:
    """Rows per model call when scoring many encoded rows at once: :meth:`FeatureMap.rows_per_call`."""
    return fmap.rows_per_call(most)


def torch_probabilities(model, arrays: dict[str, np.ndarray], fmap: FeatureMap, batch_size: int | None = None,
                        tasks: bool = False) -> np.ndarray:
    """Eager PyTorch probabilities for encoded arrays (the reference for parity checks), ``batch_size``
    rows per call (default :func:`chunk_rows`); ``tasks=True``: a multi-task model's ``(N, T)``."""
    import torch

    batch_size = batch_size or chunk_rows(fmap)
    inputs = model_inputs(fmap)
    rows = len(next(iter(arrays.values())))
    out = []
    model.eval()
    with torch.inference_mode():
        for lo in range(0, rows, batch_size):
            # np.array copies: torch must not wrap a read-only memory map
            tensors = [torch.from_numpy(np.array(arrays[s.key][lo:lo + batch_size], dtype=s.dtype)) for s in inputs]
            out.append(torch.sigmoid(model(model_batch(inputs, tensors))["task_logits" if tasks else "logit"]).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.task_names)) if tasks else 0, np.float32)


def export_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    parity_rows: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the finished run in ``run_dir`` to an artifact folder (default ``<run_dir>/export-<format>``).

    For ``onnx`` the graph is checked against eager PyTorch before the folder is written:
    probabilities must agree to :data:`PARITY_TOLERANCE` on ``parity_rows`` (encoded arrays; by
    default the first 4096 rows of the run's encoded test split when its cache is still there,
    else 4096 random valid rows), otherwise export fails. Returns the artifact folder.
    """
    if format not in FORMATS:
        raise ArtifactError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    run_dir = Path(run_dir)
    out = Path(output) if output else run_dir / f"export-{format}"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ArtifactError(f"{out} exists and is not empty; choose another --output or pass --overwrite")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        # --overwrite replaces an artifact, never a run folder (or anything else) given as --output
        raise ArtifactError(f"{out} is not a ctrlab artifact folder (no manifest.json), so --overwrite does not "
                            "replace it; choose another --output")
    model, fmap, dcfg, cfg, metrics = load_trained_run(run_dir)
    # a folder of this export's own (``.tmp`` was shared, and deleted, by two exports to one --output)
    tmp = temp_name(out, "")
    tmp.mkdir(parents=True)
    try:
        _write_artifact(tmp, model, fmap, dcfg, cfg, metrics, run_dir, format, opset, parity_rows)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_artifact(tmp: Path, model, fmap: FeatureMap, dcfg, cfg: dict[str, Any], metrics: dict[str, Any],
                    run_dir: Path, format: str, opset: int, parity_rows) -> None:
    """Every file of the artifact into ``tmp`` (the manifest last, with the others' checksums)."""
    from ..models.registry import plugin_source

    inputs = model_inputs(fmap)
    parity: dict[str, Any] | None = None
    if format == "onnx":
        export_onnx(model, fmap, tmp / "model.onnx", opset)
        check, source = (parity_rows, "given rows") if parity_rows is not None else _parity_rows(fmap, metrics)
        parity = {**check_parity(tmp / "model.onnx", model, fmap, check), "source": source}
        if parity["max_abs_diff"] > PARITY_TOLERANCE:
            raise ArtifactError(
                f"{type(model).__name__}: ONNX Runtime and PyTorch disagree by {parity['max_abs_diff']:.2e} "
                f"(> {PARITY_TOLERANCE}) on {parity['rows']} rows; export it with --format torch")
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    fmap.save(tmp / "feature_map.json")
    (tmp / "dataset_config.json").write_text(json.dumps(dcfg.to_dict(), indent=1))
    calibration = load_calibration(run_dir)  # checked before it is copied
    if calibration is not None:
        if getattr(model, "task_names", None):
            raise ArtifactError(f"{run_dir / CALIBRATION_FILE} calibrates one probability, but {type(model).__name__} "
                                "predicts several tasks; delete the file")
        calibration.save(tmp / CALIBRATION_FILE)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    manifest = {
        "ctrlab_artifact": ARTIFACT_VERSION,
        "format": format,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_run": str(run_dir.resolve()),
        "model": {"name": type(model).__name__, "params": cfg.get("model_params") or {},
                  "low_rank": cfg.get("low_rank") or {},
                  **({"opt_embed": cfg["opt_embed"]} if cfg.get("opt_embed") else {}),
                  "parameters": int(sum(p.numel() for p in model.parameters())),
                  **({"plugin": plugin} if (plugin := plugin_source(type(model))) else {})},
        "dataset": dcfg.name,
        "schema": raw_schema(dcfg),
        "labels": list(dcfg.labels),
        "inputs": [vars(s) for s in inputs],
        "outputs": output_names(model),
        **({"tasks": list(model.task_names)} if getattr(model, "task_names", None) else {}),
        "opset": opset if format == "onnx" else None,
        "parity": parity,
        "metrics": {k: metrics[k] for k in ("valid", "test", "epochs", "seed") if k in metrics},
        **({"calibration": {"method": calibration.method, "file": CALIBRATION_FILE, "fitted_on": calibration.fitted_on,
                            "metrics_after": (metrics.get("calibration") or {}).get("after")}} if calibration else {}),
        "versions": _versions(),
        "files": files,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _parity_rows(fmap: FeatureMap, metrics: dict[str, Any], rows: int = 4096) -> tuple[dict[str, np.ndarray], str]:
    """Real encoded rows from the run's cache (test, else valid split), or random valid rows."""
    from ..data.loader import EncodedSplit

    cache = Path(metrics.get("cache") or "/nonexistent")
    for split in ("test", "valid", "train"):
        try:
            arrays = EncodedSplit.load(cache / split, mmap=True).take(slice(0, rows)).arrays
        except (FileNotFoundError, OSError, ValueError):
            continue
        if all(s.key in arrays for s in model_inputs(fmap)):
            return arrays, f"{split} split ({cache})"
    return example_arrays(fmap, rows, seed=1), "random valid ids (the run's encoded data cache is gone)"


def session_feeds(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds an ONNX Runtime session takes: the exporter drops graph inputs the model never reads
    (e.g. a ``numseq:`` sequence of a model that does not use it), and ORT rejects unknown names."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def check_parity(onnx_path: Path, model, fmap: FeatureMap, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Max |p_onnx - p_torch| over the given encoded rows (ONNX Runtime vs eager PyTorch), over every
    task's probability for a multi-task model."""
    import onnxruntime as ort

    inputs = model_inputs(fmap)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = as_model_arrays(arrays, inputs)
    rows = len(next(iter(feeds.values())))
    feeds = session_feeds(session, feeds)
    step = chunk_rows(fmap)
    tasks = bool(getattr(model, "task_names", None))
    output = "task_probabilities" if tasks else "probability"
    got = np.concatenate([session.run([output], {k: v[lo:lo + step] for k, v in feeds.items()})[0]
                          for lo in range(0, rows, step)])
    ref = torch_probabilities(model, arrays, fmap, tasks=tasks)
    return {"rows": int(rows), "max_abs_diff": float(np.max(np.abs(got - ref))) if rows else 0.0}


# ---- loading ---------------------------------------------------------------------------------
@dataclass
class Artifact:
    """A loaded, verified artifact folder."""

    path: Path
    manifest: dict[str, Any]
    feature_map: FeatureMap
    dataset_config: DatasetConfig
    calibration: Calibration | None = None
    """The run's post-hoc calibration (``calibration.json``), applied to the model's probabilities."""

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**s) for s in self.manifest["inputs"]]

    @property
    def tasks(self) -> list[str]:
        """A multi-task model's task names (main first); empty for one task."""
        return list(self.manifest.get("tasks") or [])


REQUIRED_FILES = {
    "onnx": ("dataset_config.json", "feature_map.json", "model.onnx", "model.safetensors"),
    "torch": ("dataset_config.json", "feature_map.json", "model.safetensors"),
}
"""The files an artifact of each format holds besides ``manifest.json``: fixed by the format, not by
the manifest, so that a manifest with an entry removed (or no ``files`` at all) cannot skip a check."""
OPTIONAL_FILES = (CALIBRATION_FILE,)
"""Files an artifact holds when its run has them, checked like the others; the manifest's
``calibration`` entry and the file must come together (:func:`load_artifact`)."""
MAX_MANIFEST_BYTES = 64 << 20
"""Largest ``manifest.json`` read (it holds the schema and metrics: kilobytes)."""
MAX_FILE_BYTES = 64 << 30
"""Largest artifact file hashed; reads are bounded by it, so that no entry can make loading endless."""


def _artifact_file(folder: Path, name: str, limit: int = MAX_FILE_BYTES) -> tuple[Path, int]:
    """``folder / name`` as a checked path: it exists, resolves (symlinks followed) to a regular file
    inside ``folder``, and is at most ``limit`` bytes. Returns the resolved path and its size."""
    f = folder / name
    try:
        real = f.resolve(strict=True)
    except FileNotFoundError:
        raise ArtifactError(f"{f} is missing from the artifact; copy the whole folder or export again") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission problem
        raise ArtifactError(f"{f} cannot be opened ({exc}); export the run again") from None
    if real.parent != folder.resolve():
        raise ArtifactError(f"{f} points outside the artifact folder (to {real}); an artifact holds its own "
                            "files: copy them in or export again")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{f} is not a regular file; export the run again")
    if st.st_size > limit:
        raise ArtifactError(f"{f} has {st.st_size:,} bytes, more than the {limit:,} an artifact file may have")
    return real, st.st_size


def _read_bounded(path: Path, size: int) -> bytes:
    """Exactly the ``size`` bytes stat reported (a file that grows meanwhile is read no further)."""
    with open(path, "rb") as fh:
        return fh.read(size)


def _sha256_bounded(path: Path, size: int) -> str:
    h = hashlib.sha256()
    left = size
    with open(path, "rb") as fh:
        while left > 0:
            block = fh.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _check_file_list(manifest_file: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest's ``files`` must name exactly the format's required files, each with a sha256."""
    fmt = manifest.get("format")
    if fmt not in REQUIRED_FILES:
        raise ArtifactError(f"{manifest_file}: format {fmt!r} is not one of {list(REQUIRED_FILES)}; export the run again")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_file} has no 'files' object (the sha256 of each file); export the run again")
    required = REQUIRED_FILES[fmt]
    for name in files:
        if not isinstance(name, str) or Path(name).is_absolute() or Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{manifest_file}: 'files' entry {name!r} is not a file name inside the artifact "
                                "folder; export the run again")
        if name not in required and name not in OPTIONAL_FILES:
            raise ArtifactError(f"{manifest_file}: 'files' has an unknown entry {name!r}; a {fmt} artifact holds "
                                f"exactly {list(required)} (and {list(OPTIONAL_FILES)} when it has them); export the "
                                "run again")
    missing = [n for n in required if n not in files]
    if missing:
        raise ArtifactError(f"{manifest_file}: 'files' lacks {missing} (a {fmt} artifact holds exactly "
                            f"{list(required)}, each checked by sha256); export the run again")
    for name, digest in files.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ArtifactError(f"{manifest_file}: the checksum of {name} is not a sha256 hex digest; export the run again")
    return files


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read an artifact folder and check it.

    The files are the ones its format requires (:data:`REQUIRED_FILES`), each a regular file inside the
    folder, each listed in the manifest; with ``verify`` (the default) each one's sha256 must match.
    The manifest's derived parts (raw schema, model inputs) must agree with the verified files.
    The checksums catch damage and edits of single files, not a forged manifest (they are not a signature).
    """
    path = Path(path)
    if not (path / "manifest.json").exists():
        if (path / "estimator.json").is_file():
            raise ArtifactError(f"{path} is a run of a non-torch baseline ({_estimator_name(path)}), which is not "
                                f"exported or served here; score files with ctrlab predict {path} FILE")
        raise ArtifactError(f"{path} is not a ctrlab artifact (no manifest.json); create one with ctrlab export RUN")
    manifest_file = path / "manifest.json"
    real, size = _artifact_file(path, "manifest.json", MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(_read_bounded(real, size))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_file} is not valid JSON ({exc}); export the run again") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_file} is not a JSON object; export the run again")
    if manifest.get("ctrlab_artifact") != ARTIFACT_VERSION:
        raise ArtifactError(f"{manifest_file}: artifact version {manifest.get('ctrlab_artifact')!r}, this ctrlab reads "
                            f"version {ARTIFACT_VERSION}; export the run again with this ctrlab")
    files = _check_file_list(manifest_file, manifest)
    contents: dict[str, bytes] = {}
    for name, digest in files.items():
        real, size = _artifact_file(path, name)
        if name.endswith(".json"):  # parsed from the very bytes that were hashed
            contents[name] = _read_bounded(real, size)
            actual = hashlib.sha256(contents[name]).hexdigest() if verify else digest
        else:
            actual = _sha256_bounded(real, size) if verify else digest
        if actual != digest:
            raise ArtifactError(f"{path / name} does not match its checksum in manifest.json (altered or truncated); "
                                "export the run again")
    try:
        fmap = FeatureMap.from_dict(json.loads(contents["feature_map.json"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"{path / 'feature_map.json'} is not a valid feature map ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); export the run again") from None
    dcfg = load_dataset_config(json.loads(contents["dataset_config.json"]))
    derived = {"schema": raw_schema(dcfg), "inputs": [vars(s) for s in model_inputs(fmap)]}
    for key, expected in derived.items():
        if manifest.get(key) != expected:
            raise ArtifactError(f"{manifest_file}: '{key}' does not match the artifact's "
                                f"{'dataset_config.json' if key == 'schema' else 'feature_map.json'}; export the run again")
    return Artifact(path, manifest, fmap, dcfg, _artifact_calibration(path, manifest, contents))


def _artifact_calibration(path: Path, manifest: dict[str, Any], contents: dict[str, bytes]) -> Calibration | None:
    """The artifact's checked calibration: in the files (hashed) exactly when the manifest names one."""
    named = (manifest.get("calibration") or {}).get("method")
    if CALIBRATION_FILE not in contents:
        if named:
            raise ArtifactError(f"{path / 'manifest.json'} names a {named} calibration but does not list "
                                f"{CALIBRATION_FILE}; export the run again")
        return None
    try:
        calibration = Calibration.from_dict(json.loads(contents[CALIBRATION_FILE]), str(path / CALIBRATION_FILE))
    except (CalibrationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{exc}; export the run again") from None
    if named != calibration.method or manifest.get("tasks"):
        raise ArtifactError(f"{path / CALIBRATION_FILE} ({calibration.method}) does not match the manifest "
                            f"(calibration {named!r}{', a multi-task model' if manifest.get('tasks') else ''}); "
                            "export the run again")
    return calibration
