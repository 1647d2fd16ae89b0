import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctrlab.train.metrics import auc, evaluate_metrics, gauc, logloss


def _cases():
    rng = np.random.default_rng(2021)
    n = 3000
    yield "continuous", rng.random(n) < 0.3, rng.random(n)
    yield "heavy ties", rng.random(n) < 0.5, rng.integers(0, 4, n).astype(np.float64)
    yield "float32 with ties", rng.random(n) < 0.4, np.round(rng.random(n), 2).astype(np.float32)
    yield "imbalanced", rng.random(20000) < 0.01, rng.normal(size=20000)
    yield "all scores tied", np.array([0, 1, 1, 0, 1]), np.full(5, 0.25)
    yield "two rows", np.array([1.0, 0.0]), np.array([0.1, 0.9])
    y = rng.random(n) < 0.2
    yield "informative int labels", y.astype(np.int64), y * 0.3 + rng.random(n)


@pytest.mark.parametrize("name,y,s", list(_cases()), ids=[c[0] for c in _cases()])
def test_auc_equals_sklearn(name, y, s):
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9, rel=0)


def test_auc_rejects_single_class_bad_labels_and_nan():
    with pytest.raises(ValueError, match="only one class"):
        auc(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match="binary labels"):
        auc(np.array([0, 1, 2]), np.arange(3.0))
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="values"):
        auc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))


def test_logloss_equals_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.3).astype(np.float32)
    p = np.clip(rng.random(5000), 1e-4, 1 - 1e-4)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12, rel=0)
    p32 = p.astype(np.float32)
    assert logloss(y, p32) == pytest.approx(log_loss(y, p32.astype(np.float64)), abs=1e-12, rel=0)


def test_logloss_clips_at_eps():
    # a confident wrong prediction costs -log(eps), not infinity, with eps the float64 epsilon
    # (row 1: -log(eps); row 2, right: -log(1 - eps))
    eps = np.finfo(np.float64).eps
    assert logloss([1, 0], [0.0, 0.0]) == pytest.approx(-(np.log(eps) + np.log1p(-eps)) / 2, rel=1e-12)
    assert logloss([1, 0], [1.0, 1.0], eps=1e-3) == pytest.approx(-(np.log1p(-1e-3) + np.log(1e-3)) / 2, rel=1e-12)


def test_logloss_of_saturated_probabilities_equals_sklearn():
    """issue 14.8: clipping at 1e-7 gave 4.112 here; sklearn (and FuxiCTR) clip at the float64 eps: 9.093."""
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 1.0, 1.0])
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12, rel=0)
    assert logloss(y, p) == pytest.approx(9.093, abs=1e-3)
    # float32 probabilities are clipped in float64 too (sklearn would clip them at the float32 eps)
    assert logloss(y, p.astype(np.float32)) == pytest.approx(log_loss(y, p), abs=1e-6, rel=0)


def test_gauc_hand_computed():
    group = np.array(["A"] * 3 + ["B"] * 4 + ["C"] * 2 + ["D"] * 2)
    y = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
    s = np.array([0.9, 0.5, 0.95, 0.8, 0.3, 0.4, 0.2, 0.1, 0.7, 0.5, 0.5])
    # A: the positive beats 0.5, loses to 0.95 -> 0.5 (3 rows)
    # B: 0.8 beats both negatives, 0.3 beats 0.2 only -> 3/4 (4 rows)
    # C: positives only -> skipped; D: a tie -> 0.5 (2 rows)
    expected = (0.5 * 3 + 0.75 * 4 + 0.5 * 2) / 9
    assert gauc(y, s, group) == pytest.approx(expected, abs=1e-15)
    int_group = np.unique(group, return_inverse=True)[1]
    assert gauc(y, s, int_group) == pytest.approx(expected, abs=1e-15)


def test_gauc_matches_per_group_sklearn():
    rng = np.random.default_rng(5)
    n = 4000
    g = rng.integers(0, 150, n)
    y = rng.random(n) < 0.3
    s = rng.integers(0, 6, n) / 5.0  # many ties inside groups
    num = den = 0.0
    for k in np.unique(g):
        m = g == k
        if 0 < y[m].sum() < m.sum():
            num += roc_auc_score(y[m], s[m]) * m.sum()
            den += m.sum()
    assert gauc(y, s, g) == pytest.approx(num / den, abs=1e-12)


def test_gauc_without_any_two_class_group():
    with pytest.raises(ValueError, match="no group"):
        gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2])


def test_evaluate_metrics_names_and_order():
    y = np.array([0, 1, 1, 0, 1, 0])
    p = np.array([0.2, 0.7, 0.4, 0.5, 0.9, 0.1])
    g = np.array([1, 1, 1, 2, 2, 2])
    out = evaluate_metrics(y, p, ["logloss", "gAUC", "AUC"], group=g)
    assert list(out) == ["logloss", "gAUC", "AUC"]
    assert out["AUC"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert out["logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert out["gAUC"] == pytest.approx(gauc(y, p, g))
    with pytest.raises(ValueError, match="group"):
        evaluate_metrics(y, p, ["gAUC"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_metrics(y, p, ["accuracy"])


def test_calibration_metrics_against_hand_computations():
    from ctrlab.train.metrics import calibration_ratio, expected_calibration_error, normalized_entropy

    y = np.array([1, 0, 0, 1, 0, 0, 0, 0], dtype=float)  # rate 0.25
    p = np.array([0.9, 0.2, 0.1, 0.6, 0.3, 0.05, 0.15, 0.5])
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    base = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert normalized_entropy(y, p) == pytest.approx(ll / base, rel=1e-12)
    assert normalized_entropy(y, np.full(8, 0.25)) == pytest.approx(1.0)  # the base rate itself: NE 1
    assert calibration_ratio(y, p) == pytest.approx(p.mean() / 0.25)
    # bins of width 0.1: [0.05] [0.1, 0.15] [0.2] [0.3] [0.5] [0.6] [0.9]
    gaps = [(1, abs(0.05 - 0)), (2, abs(0.125 - 0)), (1, 0.2), (1, 0.3), (1, 0.5), (1, abs(0.6 - 1)), (1, abs(0.9 - 1))]
    assert expected_calibration_error(y, p) == pytest.approx(sum(n * g for n, g in gaps) / 8)
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(p.mean() - 0.25))
    assert expected_calibration_error([0, 1], [1.0, 1.0], bins=4) == pytest.approx(0.5)  # p = 1 is in the last bin
    with pytest.raises(ValueError, match="both classes"):
        normalized_entropy([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="positive"):
        calibration_ratio([0, 0], [0.1, 0.2])
