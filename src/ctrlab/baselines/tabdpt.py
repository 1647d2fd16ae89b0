"""TabDPT: the published tabular foundation model, run through its own package (``tabdpt``).

TabDPT does not train: ``fit`` keeps a context of labelled training rows and ``predict_proba``
lets the pretrained transformer read that context next to the rows to score (in-context
learning). This adapter

* loads the checkpoint only from a local file (``weights``, else ``CTRLAB_TABDPT_WEIGHTS``, else
  the local Hugging Face cache) and always hands the package that path: ``TabDPTClassifier`` only
  downloads when ``model_weight_path`` is unset, so nothing is ever fetched at run time; with no
  local file, :class:`TabDPTWeightsError` names the file to fetch and where to point ctrlab;
* keeps at most ``max_context_rows`` training rows, drawn once with the run's seed and stratified
  by label (each class keeps its share, and at least one row), so that the few clicks of a CTR
  split stay in the context and the model sees the true click rate;
* turns categorical ids into label-free frequency codes ``log(1 + count in the training split)``
  (TabDPT reads every column as a number; hashed ids in their raw order mean nothing), or passes
  them through unchanged with ``categorical_encoding: ordinal``;
* stores in the run folder the context rows and the checkpoint's path and SHA-256, never the
  weights; :meth:`TabDPT.load` refuses a missing or different checkpoint.

Everything the package does itself (mean imputation, scaling, PCA over more than the model's
feature count, ensembling over feature and class permutations) is left to it, with its defaults.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from ..config import ConfigError
from . import register_estimator
from .base import TabularEstimator
from .tabular import TabularSplit

WEIGHTS_ENV = "CTRLAB_TABDPT_WEIGHTS"
"""Environment variable holding the local path of the TabDPT checkpoint."""
CONTEXT_FILE = "estimator_tabdpt_context.npz"  # estimator*: a run file (ctrlab.run_folder)
STATE_FILE = "estimator_tabdpt.json"


class TabDPTWeightsError(FileNotFoundError):
    """The TabDPT checkpoint is not on this machine (or is not the one a saved run used)."""


@dataclass
class TabDPTParams:
    """TabDPT's ``model_params``: where the checkpoint is, how the context is drawn, and the
    ``tabdpt`` package's own prediction options (with the package's defaults)."""

    weights: str | None = None
    """Local path of the published checkpoint (``tabdpt1_3.safetensors`` of the Hugging Face repository ``Layer6/TabDPT`` for tabdpt 1.3). Unset: the environment variable ``CTRLAB_TABDPT_WEIGHTS``, then the local Hugging Face cache. Never downloaded."""
    max_context_rows: int = 2048
    """At most this many training rows form the context; a larger training split is subsampled once (seeded, stratified by label, every class kept). The package sets no hard limit; its README reports the published results with context size 2048."""
    categorical_encoding: Literal["frequency", "ordinal"] = "frequency"
    """How categorical id columns reach the numeric model: ``frequency`` = log(1 + the id's count in the training split), 0 for unseen ids (label-free); ``ordinal`` = the ids as numbers, unchanged."""
    n_ensembles: int = 8
    """Ensemble members (feature and class permutations) averaged in logit space (``ensemble_predict_proba``)."""
    temperature: float = 1.0
    """Softmax temperature applied to the averaged logits."""
    context_size: int | None = None
    """The package's own per-prediction cap on context rows (reduced by ``context_reduction``); None = the whole stored context."""
    context_reduction: Literal["subsample", "subsample-balanced", "retrieval"] = "subsample"
    """How the package cuts the context to ``context_size``: a random subset, a class-balanced subset, or per-row nearest neighbours (FAISS)."""
    permute_classes: bool = True
    """Permute the class labels across ensemble members."""
    normalizer: Literal["standard", "minmax", "robust", "power", "quantile-uniform", "quantile-normal", "log1p"] | None = "standard"
    """The package's feature scaling before the model (the model normalises again inside)."""
    missing_indicators: bool = False
    """Add a 0/1 column per feature with missing values."""
    clip_sigma: float = 8.0
    """Outlier clipping at this many standard deviations (inside the model)."""
    feature_reduction: Literal["pca", "subsample"] = "pca"
    """How more columns than the checkpoint reads are reduced."""
    batch_size: int | None = None
    """Rows scored per forward pass; None = the package's default (4096 on CPU, 131072 on GPU)."""
    device: str = "auto"
    """Torch device; ``auto`` = ``cuda`` when available, else ``cpu``."""
    use_flash: bool = True
    """Flash attention in bf16/fp16 (the package uses it on CUDA only)."""
    compile: bool = True
    """``torch.compile`` the model (the package does so on CUDA only)."""

    def validate(self, where: str) -> None:
        if self.max_context_rows < 2:
            raise ConfigError(f"{where}.max_context_rows: {self.max_context_rows} is too small; the context needs "
                              "at least one row of each class (2 or more)")
        if self.n_ensembles < 1:
            raise ConfigError(f"{where}.n_ensembles: {self.n_ensembles} must be at least 1")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: {self.temperature} must be positive")
        for name in ("context_size", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{where}.{name}: {value} must be at least 1 (or null)")


# ---- the checkpoint ------------------------------------------------------------------------------
def published_checkpoint() -> tuple[str, str]:
    """(Hugging Face repository, file name) of the checkpoint the installed ``tabdpt`` loads."""
    from tabdpt import estimator

    return estimator._HF_REPO_ID, estimator._MODEL_NAME


def _hf_cached(repo: str, name: str) -> str | None:
    """The checkpoint's path in the local Hugging Face cache, if there (reads the disk only)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - tabdpt depends on huggingface_hub
        return None
    found = try_to_load_from_cache(repo_id=repo, filename=name)
    return found if isinstance(found, str) and Path(found).is_file() else None


def _fetch_hint(repo: str, name: str) -> str:
    return (f"Fetch the published checkpoint {name!r} of the Hugging Face repository {repo!r} (the file the "
            f"installed tabdpt package loads) once, e.g. `hf download {repo} {name} --local-dir DIR` or from "
            f"https://huggingface.co/{repo}, then set model_params.weights: DIR/{name} or the environment "
            f"variable {WEIGHTS_ENV}. ctrlab never downloads it at run time.")


def resolve_weights(weights: str | None) -> Path:
    """The local checkpoint file: ``weights``, else ``$CTRLAB_TABDPT_WEIGHTS``, else the local
    Hugging Face cache; :class:`TabDPTWeightsError` (naming the file to fetch) when none exists."""
    repo, name = published_checkpoint()
    if weights:
        where = f"model_params.weights ({weights})"
    elif os.environ.get(WEIGHTS_ENV):
        weights, where = os.environ[WEIGHTS_ENV], f"{WEIGHTS_ENV} ({os.environ[WEIGHTS_ENV]})"
    else:
        cached = _hf_cached(repo, name)
        if cached is None:
            raise TabDPTWeightsError(f"TabDPT: no checkpoint given (model_params.weights and {WEIGHTS_ENV} are unset) "
                                     f"and none in the local Hugging Face cache. {_fetch_hint(repo, name)}")
        weights, where = cached, f"the Hugging Face cache ({cached})"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TabDPTWeightsError(f"TabDPT: {where} is not a file. {_fetch_hint(repo, name)}")
    return path.resolve()


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The model config stored in a TabDPT checkpoint (safetensors metadata ``cfg``); a clear
    error when ``path`` is not a TabDPT checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise TabDPTWeightsError(f"TabDPT: {path} is not a safetensors file ({exc}). "
                                 f"{_fetch_hint(*published_checkpoint())}") from None
    if "cfg" not in meta:
        raise TabDPTWeightsError(f"TabDPT: {path} has no 'cfg' metadata entry, so it is not a TabDPT checkpoint. "
                                 f"{_fetch_hint(*published_checkpoint())}")
    return json.loads(meta["cfg"])


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---- context and encoding ------------------------------------------------------------------------
def stratified_subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` rows of ``y`` drawn without replacement, each class keeping its share
    of ``n`` (largest remainders get the leftover rows) and at least one row."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if n >= len(y):
        return np.arange(len(y))
    if n < len(classes):
        raise ValueError(f"cannot keep {len(classes)} classes in a context of {n} rows")
    exact = counts * n / len(y)
    quota = np.minimum(np.maximum(np.floor(exact).astype(np.int64), 1), counts)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while quota.sum() < n:  # leftover rows, to the largest remainders first
        for c in order:
            if quota.sum() < n and quota[c] < counts[c]:
                quota[c] += 1
    while quota.sum() > n:  # the at-least-one rule overshot: take from the largest class
        quota[np.argmax(quota)] -= 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(inverse == c), size=q, replace=False) for c, q in enumerate(quota)]
    return np.sort(np.concatenate(picked))


def frequency_tables(X: np.ndarray, columns: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per categorical column: its sorted distinct ids and their counts (NaN left out)."""
    tables = {}
    for j in columns:
        col = X[:, j]
        values, counts = np.unique(col[~np.isnan(col)], return_counts=True)
        tables[j] = (values, counts)
    return tables


def frequency_encode(X: np.ndarray, tables: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``X`` with each categorical column replaced by log(1 + its id's training count); ids unseen
    in training get 0, missing values stay NaN (the package imputes them)."""
    out = np.array(X, dtype=np.float32, copy=True)
    for j, (values, counts) in tables.items():
        col = out[:, j]
        if len(values) == 0:
            out[:, j] = np.where(np.isnan(col), np.nan, 0.0)
            continue
        pos = np.clip(np.searchsorted(values, col), 0, len(values) - 1)
        seen = values[pos] == col
        out[:, j] = np.where(np.isnan(col), np.nan, np.where(seen, np.log1p(counts[pos]), 0.0))
    return out


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---- the estimator -------------------------------------------------------------------------------
@register_estimator("TabDPT")
class TabDPT(TabularEstimator):
    """The ``tabdpt`` package's ``TabDPTClassifier`` on a stored, stratified context of training rows.
    Nothing is trained, so there are no rounds: ``monitor`` and ``on_round`` are ignored."""

    Params = TabDPTParams
    model_files = (CONTEXT_FILE, STATE_FILE)

    def __init__(self, **params):
        super().__init__(**params)
        self._clf = None
        self._weights: Path | None = None
        self._context_X: np.ndarray | None = None
        self._context_y: np.ndarray | None = None
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._categorical: list[int] = []
        self._feature_names: list[str] = []
        self._seed = 0
        self._threads: int | None = None
        self._train_rows = 0

    # -- helpers --
    def _encode(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self._feature_names):
            raise ValueError(f"TabDPT: expected rows of {len(self._feature_names)} features "
                             f"({self._feature_names}), got an array of shape {X.shape}")
        if self.params.categorical_encoding == "frequency":
            return frequency_encode(X, self._tables)
        return X

    def _device(self) -> str:
        if self.params.device != "auto":
            return self.params.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _build(self) -> None:
        """The package's classifier on the stored context, loaded from the local checkpoint."""
        from tabdpt import TabDPTClassifier

        p = self.params
        with _torch_threads(self._threads):
            clf = TabDPTClassifier(
                normalizer=p.normalizer, missing_indicators=p.missing_indicators, clip_sigma=p.clip_sigma,
                feature_reduction=p.feature_reduction, context_reduction=p.context_reduction, device=self._device(),
                use_flash=p.use_flash, compile=p.compile, model_weight_path=str(self._weights), verbose=False)
            clf.fit(self._context_X, self._context_y)
        self._clf = clf

    # -- protocol --
    def fit(self, train: TabularSplit, valid: TabularSplit | None, seed: int, threads: int,
            log: Callable[[str], None] = print) -> dict:
        self._weights = resolve_weights(self.params.weights)
        cfg = checkpoint_config(self._weights)
        if train.y is None:
            raise ValueError("TabDPT: the training split has no labels; the context needs labelled rows")
        labels = np.unique(np.asarray(train.y, dtype=np.float64))
        if not set(labels.tolist()) <= {0.0, 1.0} or len(labels) < 2:
            raise ValueError(f"TabDPT: the training labels must hold both 0 and 1 (and nothing else), got the "
                             f"values {labels.tolist()[:10]}")
        y = np.asarray(train.y).astype(np.int64).ravel()
        X = np.asarray(train.X, dtype=np.float32)
        self._feature_names = list(train.feature_names)
        self._categorical = [int(j) for j in train.categorical]
        self._seed, self._threads, self._train_rows = int(seed), int(threads) if threads else None, len(y)
        self._tables = (frequency_tables(X, self._categorical)
                        if self.params.categorical_encoding == "frequency" else {})
        keep = stratified_subsample(y, self.params.max_context_rows, self._seed)
        self._context_X, self._context_y = self._encode(X[keep]), y[keep]
        max_ctx = (cfg.get("model") or {}).get("max_eval_context")
        log(f"TabDPT: checkpoint {self._weights}; context of {len(keep)} of {len(y)} training rows "
            f"({int(self._context_y.sum())} positives), {X.shape[1]} features "
            f"({len(self._categorical)} categorical, {self.params.categorical_encoding} encoded)"
            + (f"; the checkpoint was trained on contexts up to {max_ctx} rows" if max_ctx else ""))
        self._build()
        return {"rounds": 0, "best_round": 0, "history": [], "context_rows": int(len(keep)),
                "context_positives": int(self._context_y.sum())}

    def predict_proba(self, split: TabularSplit) -> np.ndarray:
        if self._clf is None:
            raise RuntimeError("TabDPT: predict_proba before fit (or load)")
        p = self.params
        X = self._encode(split.X)
        if len(X) == 0:
            return np.zeros(0, dtype=np.float64)
        with _torch_threads(self._threads):
            proba = self._clf.ensemble_predict_proba(
                X, n_ensembles=p.n_ensembles, temperature=p.temperature, context_size=p.context_size,
                batch_size=p.batch_size, permute_classes=p.permute_classes, seed=self._seed)
        return np.asarray(proba[:, 1], dtype=np.float64)

    def count_parameters(self) -> int:
        if self._clf is None:
            raise RuntimeError("TabDPT: count_parameters before fit (or load)")
        return int(sum(t.numel() for t in self._clf.model.parameters()))

    def save(self, run_dir: Path) -> None:
        if self._clf is None:
            raise RuntimeError("TabDPT: save before fit")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        arrays = {"X": self._context_X, "y": self._context_y.astype(np.int8)}
        for j, (values, counts) in self._tables.items():
            arrays[f"ids_{j}"], arrays[f"counts_{j}"] = values, counts
        np.savez_compressed(run_dir / CONTEXT_FILE, **arrays)
        from importlib.metadata import version

        state = {"weights": str(self._weights), "weights_sha256": file_sha256(self._weights),
                 "weights_bytes": self._weights.stat().st_size, "tabdpt_version": version("tabdpt"),
                 "params": asdict(self.params), "seed": self._seed, "threads": self._threads,
                 "train_rows": self._train_rows, "feature_names": self._feature_names,
                 "categorical": self._categorical, "context_rows": int(len(self._context_y))}
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, run_dir: Path, params: dict) -> "TabDPT":
        """The fitted estimator of ``run_dir``. The checkpoint is ``params['weights']``, else
        ``$CTRLAB_TABDPT_WEIGHTS``, else the path the run used; it must exist and have the SHA-256
        the run recorded."""
        run_dir = Path(run_dir)
        state_path = run_dir / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"TabDPT: {state_path} is missing; {run_dir} holds no fitted TabDPT run")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        # the stored context fixes how it was drawn and encoded; the prediction options may change
        merged = {**state["params"], **dict(params or {}),
                  **{k: state["params"][k] for k in ("max_context_rows", "categorical_encoding")}}
        if not (params or {}).get("weights"):
            merged["weights"] = os.environ.get(WEIGHTS_ENV) or state["weights"]
        self = cls(**merged)
        try:
            self._weights = resolve_weights(self.params.weights)
        except TabDPTWeightsError as exc:
            raise TabDPTWeightsError(f"{exc} The run in {run_dir} was fitted with {state['weights']} "
                                     f"(sha256 {state['weights_sha256']}).") from None
        digest = file_sha256(self._weights)
        if digest != state["weights_sha256"]:
            raise TabDPTWeightsError(f"TabDPT: {self._weights} (sha256 {digest}) is not the checkpoint the run in "
                                     f"{run_dir} was fitted with ({state['weights']}, sha256 "
                                     f"{state['weights_sha256']}); point model_params.weights or {WEIGHTS_ENV} at "
                                     "that file")
        with np.load(run_dir / CONTEXT_FILE) as z:
            self._context_X, self._context_y = z["X"], z["y"].astype(np.int64)
            self._categorical = [int(j) for j in state["categorical"]]
            if self.params.categorical_encoding == "frequency":
                self._tables = {j: (z[f"ids_{j}"], z[f"counts_{j}"]) for j in self._categorical}
        self._feature_names = list(state["feature_names"])
        self._seed, self._threads, self._train_rows = state["seed"], state["threads"], state["train_rows"]
        self._build()
        return self
