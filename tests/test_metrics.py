import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medmix.metrics import auroc_rows, average_precision_rows, bootstrap_ci


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_metrics_equal_sklearn(ties):
    rng = np.random.default_rng(0)
    y = (rng.random((50, 40)) < 0.3).astype(float)
    y[:, 0], y[:, 1] = 1, 0
    p = rng.random((50, 40))
    if ties:
        p = np.round(p, 1)  # many ties, like a bootstrap resample's duplicated samples
    np.testing.assert_allclose(auroc_rows(y, p), [roc_auc_score(a, b) for a, b in zip(y, p)], rtol=1e-12)
    np.testing.assert_allclose(average_precision_rows(y, p),
                               [average_precision_score(a, b) for a, b in zip(y, p)], rtol=1e-12)


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.25).astype(int)
    p = np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1)
    lo, hi = bootstrap_ci("binary", "auroc", [y], [p], 500)
    assert lo < roc_auc_score(y, p) < hi and hi - lo < 0.2
    lo2, hi2 = bootstrap_ci("binary", "auprc", [y, y], [p, p], 500)
    assert lo2 < average_precision_score(y, p) < hi2


def test_brier_and_ece_equal_their_definitions():
    """Brier = mean squared error of the probabilities; ECE over 10 equal-mass bins of the sorted
    predictions, recomputed sample by sample (and per label, then averaged, for multilabel)."""
    from medmix.metrics import task_metrics
    rng = np.random.default_rng(3)
    for n in (7, 10, 253):
        p = rng.random(n)
        y = (rng.random(n) < p ** 2).astype(float)
        order = sorted(range(n), key=lambda i: p[i])
        ece = 0.0
        for b in range(10):
            rows = order[b * n // 10:(b + 1) * n // 10]
            if rows:
                ece += len(rows) / n * abs(sum(y[i] for i in rows) / len(rows) - sum(p[i] for i in rows) / len(rows))
        m = task_metrics("binary", y, p)
        assert m["brier"]["value"] == pytest.approx(sum((p[i] - y[i]) ** 2 for i in range(n)) / n)
        assert m["ece"]["value"] == pytest.approx(ece)
    P = rng.random((120, 3))
    Y = (rng.random((120, 3)) < P).astype(float)
    m = task_metrics("multilabel", Y, P)
    per = [task_metrics("binary", Y[:, k], P[:, k]) for k in range(3)]
    assert m["macro_brier"]["value"] == pytest.approx(np.mean([e["brier"]["value"] for e in per]))
    assert m["macro_ece"]["value"] == pytest.approx(np.mean([e["ece"]["value"] for e in per]))
    perfect = task_metrics("binary", np.array([0., 1., 0., 1.]), np.array([0., 1., 0., 1.]), n_boot=20)
    assert perfect["brier"]["value"] == 0 and perfect["ece"]["value"] == 0 and perfect["ece"]["ci_high"] == 0


def test_average_ranks_equal_scipy_rankdata():
    """The AUROC's ranks (numpy, batched) are scipy's average ranks exactly, ties and NaN rows included."""
    from scipy.stats import rankdata

    from medmix.metrics import average_ranks
    rng = np.random.default_rng(0)
    for shape in [(1,), (6,), (3, 7), (4, 2, 50)]:
        for levels in (2, 5, 10_000):
            p = rng.integers(0, levels, shape).astype(float)
            assert np.array_equal(average_ranks(p), rankdata(p, axis=-1))
    p = rng.normal(size=(3, 9))
    p[1, 3] = np.nan
    assert np.array_equal(average_ranks(p), rankdata(p, axis=-1), equal_nan=True)
