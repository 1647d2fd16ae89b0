"""Raw JSON records -> validated columns -> the run's encoders -> the exported model -> probabilities.

A :class:`Predictor` wraps a loaded artifact. Its work per request is column-wise: a record list is
turned into one Python list per raw column (or the request sends columns already), each list's element types are checked with one
``set(map(type, ...))`` (C speed), and the columns go through the same fitted encoders as
training (:func:`ctrlab.data.pipeline.encode_frame`, vectorised in Polars). Every problem is a
:class:`RequestError` that names the record and the field: the server turns it into a 4xx.

Accepted JSON per raw column (the artifact's ``manifest.json`` lists them under ``schema``):

* categorical: string or integer (``123`` and ``"123"`` are the same token, as in a CSV);
  ``null`` is a missing cell (the same token as an empty CSV cell); unseen values map to OOV;
* numeric: number; ``null`` is missing and takes the feature's ``fill_value``;
* sequence: a string with the feature's splitter (as in the source file) or an array of
  strings / integers; ``null`` is an empty history;
* dense vector: an array of ``dim`` numbers, or a string of them with the splitter; an item-vector
  feature (``key``, :mod:`ctrlab.data.item_vectors`) takes the item id instead, as a categorical
  cell, and looks its vector up in the table the artifact's feature map holds (zeros for an item
  without one);
* timestamp (features with ``derive``; the column is listed once, the derived features are not):
  an epoch number (integer or number, in the features' ``time_unit``), or a string in their
  ``time_format``; ``null`` is missing. The hour, weekday, ... are derived here as in training
  (:mod:`ctrlab.data.derive`).
"""
from __future__ import annotations

from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from ..data.errors import DataError
from ..data.encoders import sequence_tokens, vector_values
from ..data.pipeline import encode_frame, load_encoders
from ..data.unseen import UnseenCheck
from .artifact import Artifact, as_model_arrays, chunk_rows, example_arrays, load_artifact, model_batch
from .unseen import Scores


class RequestError(ValueError):
    """Bad request content. ``status`` is the HTTP status to answer with; ``field`` and ``row`` say where."""

    def __init__(self, message: str, status: int = 422, field: str | None = None, row: int | None = None):
        self.message = message
        self.status = status
        self.field = field
        self.row = row
        where = []
        if row is not None:
            where.append(f"records[{row}]")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__((", ".join(where) + ": " if where else "") + message)

    def detail(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field, "row": self.row}


class _Absent:
    """Marks a field a record does not have (``null`` is a value; an absent key is an error)."""


ABSENT = _Absent()
_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "array": (list,), "null": (type(None),)}
_TYPE_NAMES = {str: "string", int: "integer", float: "number", list: "array", dict: "object", bool: "boolean",
               type(None): "null", _Absent: "absent"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _ONNXBackend:
    def __init__(self, artifact: Artifact, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between runs: ORT's pool threads otherwise keep the cores busy after each call,
        # taking them from the event loop (request parsing, answers) and the other requests' work.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(artifact.path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        # the exporter drops inputs the model never reads (e.g. a numseq: sequence a model ignores)
        self.names = frozenset(i.name for i in self.session.get_inputs())
        # a calibrated artifact is calibrated from the logit (Predictor._calibrated)
        self.output = "task_probabilities" if artifact.tasks else "logit" if artifact.calibration else "probability"

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self.names.issuperset(feeds):
            feeds = {k: v for k, v in feeds.items() if k in self.names}
        return self.session.run([self.output], feeds)[0]


class _TorchBackend:
    """The model rebuilt from ctrlab's registry with the safetensors weights (eager PyTorch)."""

    def __init__(self, artifact: Artifact, threads: int | None):
        import torch
        from safetensors.torch import load_file

        from ..layers.low_rank import apply_low_rank
        from ..layers.opt_embed import apply_opt_embed
        from ..models import create, get_model_class

        if threads:
            torch.set_num_threads(threads)
        spec = artifact.manifest["model"]
        if spec.get("plugin"):
            try:
                get_model_class(spec["name"])
            except ValueError:
                raise ValueError(
                    f"{artifact.path}: model {spec['name']} comes from the plugin {spec['plugin']!r}, which is not "
                    f"imported here: serve with `ctrlab --import {spec['plugin']} serve ...` (or CTRLAB_PLUGINS), "
                    f"or export to ONNX, which needs no model code") from None
        self.model = apply_low_rank(create(spec["name"], artifact.feature_map, **spec["params"]),
                                    spec.get("low_rank") or {})
        apply_opt_embed(self.model, spec.get("opt_embed") or {})  # a searched run's masks (ctrlab optembed)
        self.model.load_state_dict(load_file(str(artifact.path / "model.safetensors")))
        self.model.eval()
        self.inputs = artifact.inputs
        self.tasks = artifact.tasks
        self.logits = artifact.calibration is not None  # calibrated from the logit (Predictor._calibrated)
        self.torch = torch

    def batch(self, feeds: dict[str, np.ndarray]) -> dict:
        return model_batch(self.inputs, [self.torch.from_numpy(feeds[s.name]) for s in self.inputs])

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(self.batch(feeds))
            if self.logits:
                return out["logit"].float().numpy()
            return torch.sigmoid(out["task_logits"] if self.tasks else out["logit"]).float().numpy()

    def encode_user(self, feeds: dict[str, np.ndarray]) -> Any:
        with self.torch.inference_mode():
            return self.model.encode_user(self.batch(feeds))

    def score_with_user(self, state: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            logit = self.model.score_with_user(state, self.batch(feeds))
            return (logit if self.logits else torch.sigmoid(logit)).float().numpy()


BACKENDS = ("auto", "onnx", "torch", "none")


class Predictor:
    """Score raw records with an exported run.

    Args:
        artifact: an artifact folder (``ctrlab export``) or a loaded :class:`Artifact`.
        backend: ``onnx`` (ONNX Runtime), ``torch`` (eager PyTorch from the safetensors weights),
            ``auto`` (ONNX when the artifact has a graph) or ``none`` (no model: only the request checks,
            for the server's parse worker; scoring raises).
        threads: intra-op threads of the backend (default: the runtime's own choice).
    """

    def __init__(self, artifact: str | Path | Artifact, backend: str = "auto", threads: int | None = None):
        self.artifact = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        # by the manifest's (checked) format: a model.onnx the manifest does not list is never loaded
        if backend == "auto":
            backend = "onnx" if self.artifact.format == "onnx" else "torch"
        if backend == "onnx" and self.artifact.format != "onnx":
            raise ValueError(f"{self.artifact.path} has no model.onnx (format {self.artifact.format}); use backend torch")
        self.backend_name = backend
        self.fmap = self.artifact.feature_map
        self._chunk = chunk_rows(self.fmap)
        self.unseen = UnseenCheck(self.fmap)
        """The fields whose values can be unseen (:mod:`ctrlab.data.unseen`), for each answer's counts."""
        if backend == "none":
            self.backend = self.encoders = None
        else:
            self.backend = (_ONNXBackend(self.artifact, threads) if backend == "onnx"
                            else _TorchBackend(self.artifact, threads))
            self.encoders = load_encoders(self.fmap)
        self.inputs = self.artifact.inputs
        self.tasks = self.artifact.tasks
        """A multi-task model's task names: :meth:`run` then gives ``(N, T)`` probabilities in this order."""
        self.schema = self.artifact.manifest["schema"]
        self.columns = [c["name"] for c in self.schema]
        self._allowed = {c["name"]: tuple(chain.from_iterable(_JSON_TYPES[t] for t in c["accepts"])) for c in self.schema}
        self._kinds = {c["name"]: {_read_as(f) for f in c["features"]} for c in self.schema}
        self._column_set = frozenset(self.columns)
        self._accepts_text = {c["name"]: _or_list(c["accepts"]) for c in self.schema}
        self._splitters = {c["name"]: next((f["splitter"] for f in c["features"] if "splitter" in f), " ")
                           for c in self.schema}

    # ---- validation + encoding -------------------------------------------------------------------
    def records_to_frame(self, records: Any) -> pl.DataFrame:
        """A list of JSON objects -> a frame of raw columns, or a :class:`RequestError` naming the
        record and field at fault."""
        if not isinstance(records, list):
            raise RequestError(f"'records' must be an array of objects, got {_type_name(records)}", field="records")
        if not records:
            raise RequestError("empty; send at least one record", field="records")
        if set(map(type, records)) != {dict}:
            row = next(i for i, r in enumerate(records) if type(r) is not dict)
            raise RequestError(f"each record must be an object, got {_type_name(records[row])}", row=row)
        keys = set().union(*records)
        extra = keys - self._column_set
        if extra:
            name = sorted(map(str, extra))[0]
            row = next(i for i, r in enumerate(records) if name in r)
            raise RequestError(f"unknown field; the model takes {self.columns}", field=name, row=row)
        try:  # transpose records -> columns in C (itemgetter + zip); a missing key raises KeyError
            rows = map(itemgetter(*self.columns), records)
            table = list(zip(*rows)) if len(self.columns) > 1 else [tuple(rows)]
        except KeyError:
            table = [[r.get(name, ABSENT) for r in records] for name in self.columns]  # to name the record
        return pl.DataFrame([self._column(name, list(values)) for name, values in zip(self.columns, table)])

    def columns_to_frame(self, columns: Any) -> pl.DataFrame:
        """An object of one array per raw column (all of one length) -> a frame of raw columns."""
        if not isinstance(columns, dict):
            raise RequestError(f"'columns' must be an object of arrays, got {_type_name(columns)}", field="columns")
        extra = sorted(set(columns) - self._column_set)
        if extra:
            raise RequestError(f"unknown field; the model takes {self.columns}", field=str(extra[0]))
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise RequestError("missing field (send null cells for missing values)", field=missing[0])
        for name in self.columns:
            if type(columns[name]) is not list:
                raise RequestError(f"must be an array of cells, got {_type_name(columns[name])}", field=name)
        rows = len(columns[self.columns[0]])
        if not rows:
            raise RequestError("empty; send at least one row", field=self.columns[0])
        for name in self.columns:
            if len(columns[name]) != rows:
                raise RequestError(f"has {len(columns[name])} cells, {self.columns[0]!r} has {rows}: "
                                   "every column needs one cell per row", field=name)
        return pl.DataFrame([self._column(name, columns[name]) for name in self.columns])

    def _column(self, name: str, values: list) -> pl.Series:
        allowed = self._allowed[name]
        types = set(map(type, values))
        if not types.issubset(allowed):
            row = next(i for i, v in enumerate(values) if type(v) not in allowed)
            if values[row] is ABSENT:
                raise RequestError("missing field (send null for a missing value)", field=name, row=row)
            raise RequestError(f"expected {self._accepts_text[name]}, got {_type_name(values[row])} "
                               f"{_short(values[row])}", field=name, row=row)
        kinds = self._kinds[name]
        if kinds & {"sequence", "dense_vector", "number_sequence"}:
            return self._list_column(name, values, types, numbers=bool(kinds & {"dense_vector", "number_sequence"}))
        # The dtype follows the column's kind, never the values (a column of nulls included), so that
        # every request's frame has the same schema and micro-batched requests concatenate.
        if "categorical" in kinds:
            # Integers become tokens ("123", as a CSV cell reads); a column that also feeds a numeric
            # feature is text in training too, and the numeric encoder parses it.
            return pl.Series(name, values, dtype=pl.String, strict=types <= {str, type(None)})
        series = pl.Series(name, values, dtype=pl.Float64, strict=False)
        bad = ~series.is_finite().fill_null(True)
        if bad.any():
            row = int(bad.arg_max())
            raise RequestError(f"number {_short(values[row])} is out of range (must be finite)", field=name, row=row)
        return series

    def _list_column(self, name: str, values: list, types: set, numbers: bool) -> pl.Series:
        """Sequence / dense-vector cells -> lists of tokens / of Float64, split and cleaned by the
        encoders' own functions, so that every request's column has the same type and requests can
        be encoded together."""
        splitter = self._splitters[name]
        if list not in types:
            series = pl.Series(name, values, dtype=pl.String)
        else:
            element_ok = (int, float) if numbers else (str, int)
            arrays = [v if type(v) is list else None for v in values] if str in types else values
            if not set(map(type, chain.from_iterable(v for v in arrays if v is not None))).issubset(element_ok):
                row, bad = next((i, x) for i, v in enumerate(arrays) if v is not None
                                for x in v if type(x) not in element_ok)
                want = "numbers" if numbers else "strings or integers"
                raise RequestError(f"array elements must be {want}, got {_type_name(bad)} {_short(bad)}",
                                   field=name, row=row)
            series = pl.Series(name, arrays, dtype=pl.List(pl.Float64 if numbers else pl.String), strict=False)
            if str in types:  # some cells are text: split those like the encoder splits a file's cells
                text = pl.Series(name, [v if type(v) is str else None for v in values], dtype=pl.String)
                parse = vector_values if numbers else sequence_tokens
                series = parse(text, splitter).zip_with(text.is_not_null(), series)
        if not numbers:
            return sequence_tokens(series, splitter)
        series = vector_values(series, splitter)
        bad = series.list.eval(~pl.element().is_finite().fill_null(True)).list.any().fill_null(False)
        if bad.any():
            row = int(bad.arg_max())
            what = "vector" if "dense_vector" in self._kinds[name] else "number sequence"
            raise RequestError(f"{what} holds a value that is not a finite number", field=name, row=row)
        return series

    def encode(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Raw frame -> the model's input arrays (the fitted encoders of the run)."""
        return as_model_arrays(self._encoded(frame), self.inputs)

    def _encoded(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Raw frame -> the encoded arrays (``cat``, ``seq:<name>``, ...), or a RequestError."""
        try:
            return encode_frame(frame, self.fmap, None, with_labels=False, encoders=self.encoders).arrays
        except DataError as exc:  # e.g. a vector with the wrong length, text in a numeric column
            row = exc.line - 1 if exc.line is not None else None
            raise RequestError(exc.problem + (f"; {exc.fix}" if exc.fix else ""), field=exc.column, row=row) from None

    def encode_records(self, records: Any) -> dict[str, np.ndarray]:
        return self.encode(self.records_to_frame(records))

    def score_frames(self, frames: list[pl.DataFrame]) -> list[Scores | RequestError]:
        """Score several requests' frames with one encode and one model call (micro-batching): each
        gets its :class:`~ctrlab.serve.unseen.Scores` (probabilities and unseen-field counts per row).

        A request whose rows the encoders reject (e.g. a vector of the wrong length) gets its own
        :class:`RequestError`, with the row number inside that request; the others are scored."""
        results: list[Scores | RequestError | None] = [None] * len(frames)
        live = list(range(len(frames)))
        while live:
            offsets = np.cumsum([0] + [frames[i].height for i in live])
            try:
                frame = frames[live[0]] if len(live) == 1 else pl.concat([frames[i] for i in live], how="vertical")
            except pl.exceptions.PolarsError:  # frames that do not concatenate: score them one by one
                for i in live:
                    results[i] = self.score_frames([frames[i]])[0]
                break
            try:
                arrays = self._encoded(frame)
                probs = self._score(arrays)
            except RequestError as exc:
                if exc.row is None:
                    for i in live:
                        results[i] = exc
                    break
                k = int(np.searchsorted(offsets, exc.row, side="right")) - 1
                results[live[k]] = RequestError(exc.message, exc.status, exc.field, exc.row - int(offsets[k]))
                del live[k]
                continue
            for i, scores in zip(live, Scores.split(probs, self.unseen.mask(frame, arrays), offsets)):
                results[i] = scores
            break
        return results  # type: ignore[return-value]

    # ---- scoring ------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Model input arrays (any number of rows) -> probabilities, float32 ``(N,)`` (a multi-task
        model's: ``(N, T)``, :attr:`tasks` order, main task first); in calls of at most
        :func:`~ctrlab.serve.artifact.chunk_rows` rows (fewer for long sequences, whose attention grows
        with rows·L²)."""
        rows = len(next(iter(feeds.values()))) if feeds else 0
        if rows <= self._chunk:
            return self._calibrated(self.backend(feeds))
        return self._calibrated(np.concatenate([self.backend({k: v[lo:lo + self._chunk] for k, v in feeds.items()})
                                                for lo in range(0, rows, self._chunk)]))

    def _calibrated(self, out: np.ndarray) -> np.ndarray:
        """The backend's probabilities; with a post-hoc calibration (``calibration.json``) the backend
        gave logits, calibrated here (float32, as the probabilities)."""
        cal = self.artifact.calibration
        return out if cal is None else cal.apply_logit(out).astype(np.float32)

    def _score(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities of encoded ``arrays``, or a RequestError for the first row whose probability
        is not a number: a numeric input so far outside the training data (e.g. 1e38 where train held
        single digits) that the model's arithmetic overflows. The error names the numeric field
        furthest from zero in that row."""
        probs = self.run(as_model_arrays(arrays, self.inputs))
        bad = ~np.isfinite(probs)
        if bad.ndim == 2:  # a multi-task model: a row is bad when any task's probability is
            bad = bad.any(axis=1)
        if not bad.any():
            return probs
        row = int(np.argmax(bad))
        num = arrays.get("num")
        field, value = None, None
        if num is not None and num.size:
            j = int(np.argmax(np.abs(num[row])))
            field, value = self.fmap.numeric[j].name, float(num[row, j])
        detail = f": {field} is {value:.3g} after its normalizer" if field is not None else ""
        raise RequestError(f"the model's output is not a number for this row; a numeric input is far outside the "
                           f"training data{detail}", field=field, row=row)

    # ---- two-stage scoring: a user's state once, then candidates ------------------------------------
    @property
    def user_columns(self) -> list[str]:
        """The raw columns of the behaviour sequences the model's per-user state stands for (its
        ``user_state_fields``): sent once per user to :meth:`encode_user`, left out of the candidates of
        :meth:`score_user`. Other sequences (e.g. an item's genres) stay candidate columns."""
        if not self.supports_users:
            return []
        fields = set(self.backend.model.user_state_fields())
        return [c["name"] for c in self.schema if any(f["name"] in fields for f in c["features"])]

    @property
    def supports_users(self) -> bool:
        """Whether this artifact can score candidates against a stored per-user state: the torch
        backend and a model with ``supports_user_state`` (SDIM, SUAN, LightSUAN)."""
        return isinstance(self.backend, _TorchBackend) and bool(getattr(self.backend.model, "supports_user_state",
                                                                        False))

    def _check_users(self) -> None:
        if self.supports_users:
            return
        if isinstance(self.backend, _TorchBackend):
            raise RequestError(f"model {self.metadata_model} has no per-user state (two-stage scoring is for SDIM, "
                               "SUAN and LightSUAN); send whole rows to /predict", status=404)
        raise RequestError("per-user state needs the torch backend (the ONNX graph takes whole rows); serve with "
                           "--backend torch", status=404)

    def encode_user(self, record: Any) -> Any:
        """One user's raw record -> the model's per-user state. It must hold the behaviour-sequence
        columns (:attr:`user_columns`); send the user's profile columns too (SUAN's history tokens attend
        to them, and its candidates are scored as rows with that profile); columns left out are null.
        Returns the state (SDIM: the SimHash bucket tables, BSE; SUAN: the history's
        cached tokens), for :meth:`score_user`."""
        self._check_users()
        if not isinstance(record, dict):
            raise RequestError(f"'record' must be an object, got {_type_name(record)}", field="record")
        missing = [c for c in self.user_columns if c not in record]
        if missing:
            raise RequestError(f"missing behaviour-sequence column; a user's record holds {self.user_columns}",
                               field=missing[0])
        full = {c: record.get(c) for c in self.columns}
        full.update((k, v) for k, v in record.items() if k not in full)  # unknown keys: named by records_to_frame
        return self.backend.encode_user(self.encode(self.records_to_frame([full])))

    def score_user(self, state: Any, records: Any) -> np.ndarray:
        """Probabilities of candidate records (every column but the behaviour sequences, which the
        stored ``state`` of :meth:`encode_user` stands for) of one user."""
        self._check_users()
        if isinstance(records, list):
            for i, r in enumerate(records):
                seq = next((c for c in self.user_columns if isinstance(r, dict) and c in r), None)
                if seq is not None:
                    raise RequestError("a candidate carries a behaviour-sequence column; the stored user state "
                                       "stands for it (leave it out, or PUT the user again)", field=seq, row=i)
            records = [{**dict.fromkeys(self.user_columns), **r} if isinstance(r, dict) else r for r in records]
        probs = self._calibrated(self.backend.score_with_user(state, self.encode(self.records_to_frame(records))))
        if not np.isfinite(probs).all():
            raise RequestError("the model's output is not a number for a candidate", row=int(np.argmax(~np.isfinite(probs))))
        return probs

    def predict_records(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probabilities for raw JSON-like records (see the module docstring for accepted values); a
        multi-task model's main task (all of them: :meth:`predict_tasks`)."""
        return main_task(self._score(self._encoded(self.records_to_frame(list(records)))))

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """Probabilities for a raw frame read like the training files (e.g. with :func:`read_split`)."""
        return main_task(self._score(self._encoded(self._checked_frame(frame))))

    def predict_tasks(self, records: Sequence[dict[str, Any]] | pl.DataFrame) -> dict[str, np.ndarray]:
        """Every task's probabilities by task name (records or a raw frame); a single-task model's
        one task is named ``"probability"``."""
        frame = self._checked_frame(records) if isinstance(records, pl.DataFrame) else self.records_to_frame(list(records))
        return task_columns(self._score(self._encoded(frame)), self.tasks)

    def _checked_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise RequestError(f"the frame lacks columns {missing}", field=missing[0])
        return frame

    @property
    def metadata_model(self) -> str:
        return self.artifact.manifest["model"]["name"]

    def warm_up(self) -> None:
        """One small model call, so that the first request does not pay the runtime's lazy setup."""
        self.run(as_model_arrays(example_arrays(self.fmap, 2), self.inputs))

    def metadata(self) -> dict[str, Any]:
        m = self.artifact.manifest
        return {
            "model": m["model"]["name"],
            "dataset": m["dataset"],
            "format": m["format"],
            "backend": self.backend_name,
            "schema": self.schema,
            "metrics": m.get("metrics", {}),
            **({"calibration": m["calibration"]} if m.get("calibration") else {}),
            **({"tasks": self.tasks} if self.tasks else {}),
            "versions": m.get("versions", {}),
            "created": m.get("created"),
            "files": m.get("files", {}),
        }


def main_task(probs: np.ndarray) -> np.ndarray:
    """``(N,)`` probabilities of the main task (the first column of a multi-task model's ``(N, T)``)."""
    return np.ascontiguousarray(probs[:, 0]) if probs.ndim == 2 else probs


def task_columns(probs: np.ndarray, tasks: list[str]) -> dict[str, np.ndarray]:
    """``(N, T)`` -> ``{task: (N,)}``; ``(N,)`` -> ``{"probability": (N,)}``."""
    if probs.ndim == 1:
        return {"probability": probs}
    return {t: np.ascontiguousarray(probs[:, i]) for i, t in enumerate(tasks)}


def _read_as(feature: dict[str, Any]) -> str:
    """How a request's cells for a feature become a column: by its kind, except that a timestamp
    (``derive``) is read as numbers (epoch) or text (``time_format``), as the derivation expects."""
    if feature.get("derive"):
        return "categorical" if feature.get("time_format") else "numeric"
    if feature["kind"] == "sequence" and feature.get("values") == "numbers":
        return "number_sequence"  # a numeric (value) sequence: "^"-joined text or an array of numbers
    if feature.get("lookup"):
        return "categorical"  # item vectors: the cell is the item id, looked up in the fitted table
    return feature["kind"]


def _or_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
