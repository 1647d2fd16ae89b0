"""Post-hoc calibration maps (ctrlab.serve.calibration): Platt and isotonic against scikit-learn, a
mis-scaled model repaired, monotonicity, the JSON form and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from ctrlab.serve.calibration import Calibration, CalibrationError, fit_calibration, load_calibration
from ctrlab.train.metrics import expected_calibration_error, logloss


def _overconfident(seed: int, n: int = 20000):
    """Labels drawn with P(y=1) = sigmoid(z); a model that predicts sigmoid(3z + 1) (too sharp, shifted)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return y, 1 / (1 + np.exp(-(3 * z + 1)))


def test_platt_repairs_a_mis_scaled_model_on_held_out_rows():
    y_valid, p_valid = _overconfident(0)
    y_test, p_test = _overconfident(1)
    cal = fit_calibration("platt", y_valid, p_valid)
    # the inverse of the distortion: a = 1/3, b = -1/3 (up to the valid sample's noise)
    assert cal.params["a"] == pytest.approx(1 / 3, abs=0.02) and cal.params["b"] == pytest.approx(-1 / 3, abs=0.05)
    fixed = cal.apply(p_test)
    assert logloss(y_test, fixed) < logloss(y_test, p_test) - 0.1
    assert expected_calibration_error(y_test, fixed) < 0.02 < expected_calibration_error(y_test, p_test)
    assert cal.fitted_on == {"split": "valid", "rows": 20000, "positives": int(y_valid.sum())}


def test_platt_equals_sklearn_logistic_regression_on_the_logit():
    y, p = _overconfident(2, 3000)
    cal = fit_calibration("platt", y, p)
    logit = np.log(p / (1 - p))[:, None]
    ref = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-10).fit(logit, y).predict_proba(logit)[:, 1]
    np.testing.assert_allclose(cal.apply(p), ref, atol=1e-9)
    # p = 0 and 1 stay finite (the logit is clipped at the float64 epsilon)
    assert np.all(np.isfinite(cal.apply(np.array([0.0, 1.0]))))


def test_isotonic_equals_sklearn_and_is_monotone():
    y, p = _overconfident(3, 5000)
    p = np.round(p, 3)  # ties in the fitted probabilities
    cal = fit_calibration("isotonic", y, p)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    grid = np.concatenate([np.linspace(0, 1, 2001), [-0.5, 1.5, p.min() / 2]])  # outside the fitted range: clipped
    np.testing.assert_allclose(cal.apply(grid), iso.predict(grid), atol=1e-12)
    out = cal.apply(np.linspace(0, 1, 2001))
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert len(set(np.round(out, 9))) > 10  # a real map, not a constant


def test_json_round_trip_and_bad_files(tmp_path):
    y, p = _overconfident(4, 2000)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(method, y, p)
        cal.save(tmp_path / "calibration.json")
        back = load_calibration(tmp_path)
        assert back == cal
        np.testing.assert_array_equal(back.apply(p), cal.apply(p))
    assert load_calibration(tmp_path / "nowhere") is None
    bad = {
        "unknown method": {"method": "beta", "params": {}},
        "must be finite": {"method": "platt", "params": {"a": float("nan"), "b": 0}},
        "non-decreasing": {"method": "isotonic", "params": {"x": [0.1, 0.2], "y": [0.5, 0.3]}},
        "same non-zero length": {"method": "isotonic", "params": {"x": [0.1, 0.2], "y": [0.5]}},
        "bad platt parameters": {"method": "platt", "params": {"a": 1}},
    }
    for why, data in bad.items():
        (tmp_path / "calibration.json").write_text(json.dumps(data))
        with pytest.raises(CalibrationError, match=why):
            load_calibration(tmp_path)
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(tmp_path)
    identity = Calibration.from_dict({"method": "platt", "params": {"a": 1, "b": 0}})
    np.testing.assert_allclose(identity.apply(p), p, atol=1e-12)  # a = 1, b = 0 leaves p as it is


def test_fit_errors():
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        fit_calibration("beta", [0, 1], [0.2, 0.8])
    with pytest.raises(CalibrationError, match="both classes"):
        fit_calibration("platt", [0, 0, 0], [0.2, 0.8, 0.5])
    with pytest.raises(CalibrationError, match="2 labels but 3"):
        fit_calibration("platt", [0, 1], [0.2, 0.8, 0.5])
    with pytest.raises(CalibrationError, match=r"within \[0, 1\]"):
        fit_calibration("isotonic", [0, 1], [0.2, 1.8])


def test_apply_logit_is_apply_of_the_sigmoid_without_float32_rounding():
    """The predictor calibrates the model's logit: the same map as apply(sigmoid(logit)) in float64, where
    a float32 probability near 1 would have lost the logit (z = 15: p = 1 - 3e-7, kept to about 1e-7)."""
    y, p = _overconfident(5, 3000)
    z = np.linspace(-20, 20, 401)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(method, y, p)
        np.testing.assert_allclose(cal.apply_logit(z), cal.apply(1 / (1 + np.exp(-z))), atol=1e-12)
    platt = fit_calibration("platt", y, p)
    exact = 1 / (1 + np.exp(-(platt.params["a"] * 15.0 + platt.params["b"])))
    assert platt.apply_logit(np.float32(15.0)) == pytest.approx(exact, abs=1e-12)
    via_float32 = platt.apply(np.float32(1 / (1 + np.exp(-15.0))))
    assert abs(via_float32 - exact) > 5e-5  # why the predictor does not calibrate its float32 probabilities
