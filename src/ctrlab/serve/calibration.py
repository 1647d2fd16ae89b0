"""Post-hoc calibration of a trained run's probabilities (``ctrlab calibrate RUN --method platt|isotonic``).

A :class:`Calibration` maps the model's probability ``p`` to a calibrated one, fitted on the run's
validation predictions only (the test split stays untouched for reporting):

* ``platt``: ``sigmoid(a·logit(p) + b)``, a one-feature logistic regression on the logit
  (``sklearn.linear_model.LogisticRegression``, unpenalized). Monotone: ranking metrics are unchanged.
* ``isotonic``: the non-decreasing step-wise linear map of ``sklearn.isotonic.IsotonicRegression``
  (``out_of_bounds="clip"``), applied as ``np.interp`` over its stored thresholds (equal to sklearn's
  ``predict``). Non-decreasing, not strictly: rows in one flat step tie, which can move ranking metrics.

It is plain JSON (``calibration.json`` in the run folder and in an exported artifact; no pickle) and
applying it needs numpy only, so the server applies it without scikit-learn or PyTorch. Lives in
``serve`` so that the predictor can use it; :func:`ctrlab.api.calibrate` fits it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "Calibration", "CalibrationError", "fit_calibration", "load_calibration", "CALIBRATION_FILE"]

METHODS = ("platt", "isotonic")
CALIBRATION_FILE = "calibration.json"
_EPS = float(np.finfo(np.float64).eps)


class CalibrationError(ValueError):
    """A calibration that cannot be fitted, or a ``calibration.json`` that cannot be read."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # without overflow for large |z|


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)  # finite at p = 0 or 1
    return np.log(p) - np.log1p(-p)


@dataclass
class Calibration:
    """A fitted probability map: ``method`` and its ``params`` (platt: ``a``, ``b``; isotonic: ``x``,
    ``y``, the thresholds), plus what it was fitted on (``fitted_on``: split, rows, positives)."""

    method: str
    params: dict[str, Any]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def apply(self, prob) -> np.ndarray:
        """Calibrated probabilities (float64) of probabilities ``prob``, any shape."""
        p = np.asarray(prob, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.params["a"] * _logit(p) + self.params["b"])
        return np.interp(p, self.params["x"], self.params["y"])  # clipped to the end values outside

    def apply_logit(self, logit) -> np.ndarray:
        """Calibrated probabilities (float64) of the model's logits: the same map as :meth:`apply` of
        ``sigmoid(logit)``, but exact where a float32 probability would have rounded (a logit of 15
        is a probability 1 - 3e-7, which float32 holds to 2 digits): what the predictor uses."""
        z = np.asarray(logit, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.params["a"] * z + self.params["b"])
        return np.interp(_sigmoid(z), self.params["x"], self.params["y"])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: Any, where: str = CALIBRATION_FILE) -> "Calibration":
        """Checked: a known method with finite parameters (isotonic: equal-length, non-decreasing
        thresholds in [0, 1]); CalibrationError naming ``where`` otherwise."""
        def bad(why: str) -> CalibrationError:
            return CalibrationError(f"{where}: {why}; fit it again with ctrlab calibrate RUN --method platt|isotonic")

        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            raise bad("not a calibration (an object with 'method' and 'params')")
        method, params = data.get("method"), data["params"]
        if method not in METHODS:
            raise bad(f"unknown method {method!r} (known: {list(METHODS)})")
        try:
            if method == "platt":
                params = {"a": float(params["a"]), "b": float(params["b"])}
                if not all(np.isfinite(list(params.values()))):
                    raise bad("platt parameters a and b must be finite")
            else:
                x, y = np.asarray(params["x"], dtype=np.float64), np.asarray(params["y"], dtype=np.float64)
                if x.ndim != 1 or x.shape != y.shape or len(x) < 1:
                    raise bad("isotonic thresholds x and y must be two lists of the same non-zero length")
                if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.diff(x) >= 0)
                        and np.all(np.diff(y) >= 0) and y.min() >= 0 and y.max() <= 1):
                    raise bad("isotonic thresholds must be finite and non-decreasing, y within [0, 1]")
                params = {"x": x.tolist(), "y": y.tolist()}
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise bad(f"bad {method} parameters ({type(exc).__name__}: {exc})") from None
        return cls(method, params, dict(data.get("fitted_on") or {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))


def load_calibration(path: str | Path) -> Calibration | None:
    """The calibration stored at ``path`` (a file, or a folder holding ``calibration.json``); None when
    there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path} is not valid JSON ({exc}); fit it again with ctrlab calibrate") from None
    return Calibration.from_dict(data, str(path))


def fit_calibration(method: str, y_true, y_prob, split: str = "valid") -> Calibration:
    """Fit ``method`` (``platt`` or ``isotonic``) on labels ``y_true`` and the model's probabilities
    ``y_prob`` of the ``split`` it is fitted on (the validation split: never the test split)."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {list(METHODS)}")
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if len(y) != len(p):
        raise CalibrationError(f"{len(y)} labels but {len(p)} probabilities")
    if not np.all((y == 0) | (y == 1)):
        raise CalibrationError("calibration needs binary 0/1 labels")
    positives = int(y.sum())
    if not 0 < positives < len(y):
        raise CalibrationError(f"the {split} split has {positives} positives among {len(y)} rows: calibration needs "
                               "both classes")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise CalibrationError(f"the model's {split} probabilities must be finite and within [0, 1]")
    fitted_on = {"split": split, "rows": int(len(y)), "positives": positives}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000, tol=1e-10)  # no penalty: a plain fit
        lr.fit(_logit(p)[:, None], y.astype(np.int64))
        return Calibration("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}, fitted_on)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    return Calibration("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}, fitted_on)
