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
