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


# ---- group ranking metrics (issue 19) -------------------------------------------------------------
def _per_group(g):
    return [np.flatnonzero(g == k) for k in np.unique(g)]


def _random_groups(seed: int, n: int = 3000, groups: int = 200, levels: int | None = None):
    """Random groups of uneven size (some single rows, some without positives); ``levels``: scores on
    that many values, i.e. many ties."""
    rng = np.random.default_rng(seed)
    sizes = rng.geometric(groups / n, groups)  # about n rows; many small groups, a few large
    g = rng.permutation(np.repeat(np.arange(groups) * 7 + 3, sizes))  # ids not 0..G-1, rows interleaved
    n = len(g)
    y = rng.random(n) < 0.15
    s = rng.integers(0, levels, n) / levels if levels else rng.random(n)
    # and three groups of one row: two positive, one negative
    return np.append(y, [True, False, True]), np.append(s, [0.5, 0.5, 0.0]), np.append(g, [1, 2, 5])


def _brute_mrr(y, s, g):
    """Expected reciprocal rank of the first positive over random orders of tied rows, one group at a
    time in plain Python: P(first positive is k-th of its tied block) = C(m-k, p-1) / C(m, p)."""
    from math import comb

    values = []
    for rows in _per_group(g):
        ys, ss = y[rows].astype(int), s[rows]
        if ys.sum() == 0:
            continue
        best = max(float(v) for v, yy in zip(ss, ys) if yy)  # the best-scored positive's tied block
        above = sum(1 for v in ss if v > best)
        m = sum(1 for v in ss if v == best)
        p = sum(1 for v, yy in zip(ss, ys) if v == best and yy)
        values.append(sum(comb(m - k, p - 1) / comb(m, p) / (above + k) for k in range(1, m - p + 2)))
    return sum(values) / len(values)


def test_gauc_mean_hand_computed():
    from ctrlab.train.metrics import gauc_mean

    group = np.array(["A"] * 3 + ["B"] * 4 + ["C"] * 2 + ["D"] * 2)
    y = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
    s = np.array([0.9, 0.5, 0.95, 0.8, 0.3, 0.4, 0.2, 0.1, 0.7, 0.5, 0.5])
    # the AUCs of test_gauc_hand_computed: A 0.5, B 0.75, C skipped (positives only), D 0.5 (a tie);
    # each group counts once: (0.5 + 0.75 + 0.5) / 3, where gAUC weights them 3:4:2
    assert gauc_mean(y, s, group) == pytest.approx((0.5 + 0.75 + 0.5) / 3, abs=1e-15)
    assert gauc(y, s, group) != pytest.approx(gauc_mean(y, s, group))


@pytest.mark.parametrize("levels", [None, 5])
def test_gauc_mean_matches_per_group_sklearn(levels):
    from ctrlab.train.metrics import gauc_mean

    y, s, g = _random_groups(7, levels=levels)
    per_group = [roc_auc_score(y[r], s[r]) for r in _per_group(g) if 0 < y[r].sum() < len(r)]
    assert len(per_group) > 50
    assert gauc_mean(y, s, g) == pytest.approx(np.mean(per_group), abs=1e-12)


def test_mrr_hand_computed():
    from ctrlab.train.metrics import mrr

    g = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 5])
    y = np.array([0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    s = np.array([.9, .8, .7, .95, .5, .6, .7, .2, .1, .3, .4, .4, .4])
    # group 1: ranked .95(+) .9 .8(+) .7 -> first positive at 1 -> 1
    # group 2: no positive -> skipped
    # group 3: both positive -> 1; group 4: one positive row -> 1
    # group 5: three rows tied, one positive: places 1, 2, 3 equally likely -> (1 + 1/2 + 1/3) / 3
    expected = (1 + 1 + 1 + (1 + 1 / 2 + 1 / 3) / 3) / 4
    assert mrr(y, s, g) == pytest.approx(expected, abs=1e-12)
    # a positive ranked third behind two negatives: 1/3
    assert mrr([0, 0, 1], [0.9, 0.8, 0.1], [7, 7, 7]) == pytest.approx(1 / 3)
    # tied block of 4 holding 2 positives behind one negative: E[1/(1+K)], P(K=1)=3/6, P(K=2)=2/6, P(K=3)=1/6
    y2, s2 = [0, 1, 0, 1, 0], [0.9, 0.5, 0.5, 0.5, 0.5]
    assert mrr(y2, s2, np.zeros(5, int)) == pytest.approx(3 / 6 / 2 + 2 / 6 / 3 + 1 / 6 / 4, abs=1e-12)


def test_mrr_ties_equal_the_average_over_every_order():
    """The tie rule by enumeration: the mean of the reciprocal rank over all orders of tied rows."""
    from itertools import permutations

    from ctrlab.train.metrics import mrr

    y = np.array([0, 1, 0, 0, 1, 1, 0])
    s = np.array([0.9, 0.4, 0.4, 0.4, 0.4, 0.1, 0.4])  # one row above, five tied (two positive), one below
    tied = np.flatnonzero(s == 0.4)
    rrs = []
    for perm in permutations(tied):
        ranked = [0] + list(perm) + [5]
        rrs.append(1 / (1 + next(i for i, r in enumerate(ranked) if y[r])))
    assert mrr(y, s, np.zeros(7, int)) == pytest.approx(np.mean(rrs), abs=1e-12)


@pytest.mark.parametrize("levels", [None, 4, 1])
def test_mrr_matches_brute_force(levels):
    from ctrlab.train.metrics import mrr

    y, s, g = _random_groups(11, n=2000, groups=150, levels=levels)
    assert mrr(y, s, g) == pytest.approx(_brute_mrr(y, s, g), abs=1e-12)


def test_mrr_of_one_large_tied_block_is_exact():
    """A constant model on one group of 200,000 rows with 300 positives: the expectation from the
    log-gamma probabilities equals the plain sum of the recurrence P(K=k+1) = P(K=k)(m-p-k+1)/(m-k)."""
    from ctrlab.train.metrics import mrr

    m, p = 200_000, 300
    y = np.zeros(m, bool)
    y[:p] = True
    prob, total = p / m, 0.0
    for k in range(1, m - p + 2):
        total += prob / k
        prob *= (m - p - k + 1) / (m - k) if k < m else 0.0
    assert mrr(y, np.zeros(m), np.zeros(m, int)) == pytest.approx(total, rel=1e-9)


def test_ndcg_hand_computed():
    from ctrlab.train.metrics import ndcg

    d = lambda i: 1 / np.log2(i + 2)  # noqa: E731  discount of 0-based place i
    g = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    y = np.array([0, 1, 0, 1, 0, 0, 1, 0, 1])
    s = np.array([.9, .8, .7, .6, .5, .4, .5, .5, .5])
    # group 1: ranked .9(-) .8(+) .7(-) .6(+): DCG d(1) + d(3), ideal d(0) + d(1)
    # group 2: no positive -> skipped
    # group 3: three tied rows, two positive: each place gets gain 2/3 -> DCG (2/3)(d0 + d1 + d2)
    g1 = (d(1) + d(3)) / (d(0) + d(1))
    g3 = (2 / 3) * (d(0) + d(1) + d(2)) / (d(0) + d(1))
    assert ndcg(y, s, g, k=10) == pytest.approx((g1 + g3) / 2, abs=1e-12)
    # k = 2: group 1 keeps d(1) of DCG (ideal d0 + d1); group 3's tied block straddles the cut: (2/3)(d0 + d1)
    g1_k2 = d(1) / (d(0) + d(1))
    g3_k2 = (2 / 3) * (d(0) + d(1)) / (d(0) + d(1))
    assert ndcg(y, s, g, k=2) == pytest.approx((g1_k2 + g3_k2) / 2, abs=1e-12)
    assert ndcg([1], [0.3], [5], k=5) == 1.0  # one row, positive: perfect


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("levels", [None, 3])
def test_ndcg_matches_per_group_sklearn(k, levels):
    from sklearn.metrics import ndcg_score

    from ctrlab.train.metrics import ndcg

    y, s, g = _random_groups(3, levels=levels)
    per_group = []
    for r in _per_group(g):
        if y[r].sum() == 0:
            continue  # sklearn would count it 0; skipped here
        if len(r) == 1:
            per_group.append(1.0)  # sklearn refuses a one-row query; a lone positive is a perfect ranking
        else:
            per_group.append(ndcg_score(y[r][None, :].astype(float), s[r][None, :], k=k, ignore_ties=False))
    assert len(per_group) > 50 and any(len(r) == 1 and y[r].any() for r in _per_group(g))
    assert ndcg(y, s, g, k=k) == pytest.approx(np.mean(per_group), abs=1e-12)


def test_group_metrics_of_one_group_equal_the_plain_ones():
    from sklearn.metrics import ndcg_score

    from ctrlab.train.metrics import gauc_mean, mrr, ndcg

    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300), 1)
    one = np.full(300, 42)
    assert gauc(y, s, one) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert gauc_mean(y, s, one) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ndcg(y, s, one, k=5) == pytest.approx(ndcg_score(y[None].astype(float), s[None], k=5), abs=1e-12)
    assert mrr(y, s, one) == pytest.approx(_brute_mrr(y, s, one), abs=1e-12)


def test_group_metrics_bad_input():
    from ctrlab.train.metrics import gauc_mean, mrr, ndcg

    y, s, g = np.array([0, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 2, 2])
    for fn in (gauc_mean, mrr, ndcg):
        with pytest.raises(ValueError, match="group has 3 values"):
            fn(y, s, g[:3])
        with pytest.raises(ValueError, match="binary labels"):
            fn(np.array([0, 2, 0, 0]), s, g)
        with pytest.raises(ValueError, match="NaN"):
            fn(y, np.array([0.1, np.nan, 0.3, 0.4]), g)
        with pytest.raises(ValueError, match="empty"):
            fn([], [], [])
        with pytest.raises(ValueError, match="needs group ids"):
            fn(y, s, None)
    with pytest.raises(ValueError, match="no group has a positive"):
        mrr([0, 0, 0], [0.1, 0.2, 0.3], [1, 1, 2])
    with pytest.raises(ValueError, match="no group has a positive"):
        ndcg([0, 0], [0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="no group has both"):
        gauc_mean([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2])
    with pytest.raises(ValueError, match="k must be"):
        ndcg(y, s, g, k=0)


def test_group_metrics_are_vectorized():
    """A million rows in 100,000 groups take one sort, no loop over groups (well under a second each
    on one core; a per-group Python loop takes tens of seconds)."""
    import time

    from ctrlab.train.metrics import gauc_mean, mrr, ndcg

    y, s, g = _random_groups(1, n=1_000_000, groups=100_000, levels=50)
    for fn in (gauc_mean, mrr, ndcg):
        t0 = time.perf_counter()
        assert 0.0 < fn(y, s, g) <= 1.0
        assert time.perf_counter() - t0 < 5.0


def test_reliability_bins_and_ece_agree():
    from ctrlab.train.metrics import expected_calibration_error, reliability

    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.1, 0.6, 0.3, 0.05, 0.15, 0.5])
    r = reliability(y, p, bins=4)  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert r == {"bins": 4, "count": [4, 1, 2, 1],
                 "mean_prediction": [pytest.approx(0.125), pytest.approx(0.3), pytest.approx(0.55), pytest.approx(0.9)],
                 "observed_rate": [0.0, 0.0, 0.5, 1.0]}
    r10 = reliability(y, p)
    assert r10["bins"] == 10 and len(r10["count"]) == 10 and sum(r10["count"]) == 8
    assert r10["mean_prediction"][4] is None and r10["observed_rate"][4] is None  # no p in [0.4, 0.5)
    gap = sum(c * abs(mp - o) for c, mp, o in zip(r10["count"], r10["mean_prediction"], r10["observed_rate"]) if c)
    assert expected_calibration_error(y, p) == pytest.approx(gap / 8, abs=1e-15)
    import json
    json.dumps(r10)  # plain Python values
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        reliability([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="bins"):
        reliability([0, 1], [0.5, 0.5], bins=0)


def test_new_metric_names_and_final_metric_names():
    from ctrlab.train.metrics import METRIC_NAMES, final_metric_names, gauc_mean, mrr, ndcg

    for name in ("AUC", "logloss", "gAUC", "gAUC_mean", "MRR", "nDCG@5", "nDCG@10", "NE", "calibration", "ECE"):
        assert name in METRIC_NAMES
    assert final_metric_names(["AUC", "logloss"], False) == ["AUC", "logloss", "NE", "calibration", "ECE"]
    assert final_metric_names(["AUC", "logloss", "gAUC"], True) == [
        "AUC", "logloss", "gAUC", "NE", "calibration", "ECE", "gAUC_mean", "MRR", "nDCG@5", "nDCG@10"]
    with pytest.raises(ValueError, match="unknown metric"):
        final_metric_names(["accuracy"], False)
    y, s, g = _random_groups(9, n=500, groups=40)
    out = evaluate_metrics(y, s, final_metric_names(["AUC"], True), group=g)
    assert out["gAUC_mean"] == gauc_mean(y, s, g) and out["MRR"] == mrr(y, s, g)
    assert out["nDCG@5"] == ndcg(y, s, g, k=5) and out["nDCG@10"] == ndcg(y, s, g, k=10)
    for name in ("gAUC_mean", "MRR", "nDCG@5"):
        with pytest.raises(ValueError, match=f"{name} needs group ids"):
            evaluate_metrics(y, s, [name])


def test_task_metric_takes_the_longest_metric_suffix():
    from ctrlab.train.metrics import task_metric

    assert task_metric("gAUC_mean") == (None, "gAUC_mean")
    assert task_metric("ctr_gAUC_mean") == ("ctr", "gAUC_mean")
    assert task_metric("ctr_gAUC") == ("ctr", "gAUC")
    assert task_metric("cvr_nDCG@5") == ("cvr", "nDCG@5")
    assert task_metric("my_task_nDCG@10") == ("my_task", "nDCG@10")
    assert task_metric("cvr_ECE") == ("cvr", "ECE")
    for bad in ("mean", "_AUC", "cvr_accuracy", "nDCG@3"):
        with pytest.raises(ValueError, match="unknown metric"):
            task_metric(bad)
