"""`DensityEstimator` is a scikit-learn estimator: clone, get/set_params, GridSearchCV, cross_val_score, pipelines."""

from __future__ import annotations

import numpy as np
import pytest

import flows

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FAST = {"max_epochs": 3, "batch_size": 64, "num_threads": 1, "trainer": {"accelerator": "cpu"}}


def _correlated(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ np.array([[1.0, 0.9], [0.0, 0.4]]) + np.array([3.0, -1.0])


def test_clone_gives_an_unfitted_estimator_with_the_same_parameters() -> None:
    estimator = flows.DensityEstimator("nsf", transforms=2, bins=4, hidden_features=[8], **FAST)
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == estimator.get_params()
    assert copy.get_params()["bins"] == 4 and copy.get_params()["trainer"] == {"accelerator": "cpu"}
    assert not hasattr(copy, "flow_")
    assert estimator.__sklearn_tags__().estimator_type == "density_estimator"


def test_set_params_changes_options_and_validates_them() -> None:
    estimator = flows.DensityEstimator("nsf", transforms=2, **FAST)
    estimator.set_params(bins=6, lr=3e-3)
    assert estimator.get_params()["bins"] == 6 and estimator.lr == 3e-3
    assert estimator.config_.model["bins"] == 6
    with pytest.raises(ValueError, match="bins"):
        estimator.set_params(bins="many")


@pytest.mark.slow
def test_grid_search_picks_the_learning_rate_that_fits() -> None:
    """A Gaussian model of correlated data: lr 3e-2 gets close in 3 epochs, lr 1e-6 does not move."""
    x = _correlated(600)
    search = GridSearchCV(flows.DensityEstimator("gaussian", **FAST), {"lr": [1e-6, 3e-2]}, cv=2)
    search.fit(x)
    assert search.best_params_ == {"lr": 3e-2}
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and scores[1] > scores[0] + 0.1
    assert np.isfinite(search.score(_correlated(200, seed=1)))


@pytest.mark.slow
def test_cross_val_score_and_a_pipeline_with_a_scaler_in_front() -> None:
    x = _correlated(400)
    scores = cross_val_score(flows.DensityEstimator("gaussian", lr=3e-2, **FAST), x, cv=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    pipeline = make_pipeline(StandardScaler(), flows.DensityEstimator("gaussian", lr=3e-2, **FAST)).fit(x)
    held_out = _correlated(300, seed=2)
    # The pipeline scores the standardised rows: the same model fitted directly on scaled data scores alike.
    direct = flows.DensityEstimator("gaussian", lr=3e-2, **FAST).fit(StandardScaler().fit(x).transform(x))
    assert pipeline.score(held_out) == pytest.approx(direct.score(pipeline[0].transform(held_out)), abs=1e-6)
