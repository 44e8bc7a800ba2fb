"""The fitted Gaussian-mixture base (`base="gmm"`, the estimator's default): the untrained flow is the
BIC-chosen mixture of the standardised training rows, training never leaves it worse on validation, and
the number of components survives save / load and `flows fit` checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import flows
from flows.distributions import StandardNormal
from flows.full_mixture import FullGaussianMixture
from flows.training.config import ConfigError, parse_config
from flows.training.mixture_base import bic_mixture
from flows.training.registry import check_model_options

pytest.importorskip("sklearn")

SMALL = {"transforms": 2, "hidden_features": [16, 16], "num_threads": 1}


def clusters(n: int, seed: int) -> np.ndarray:
    """Three well separated, correlated clusters in 3-D, in units far from standard ones."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    mixing = np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 0.3], [0.0, 0.0, 0.5]])
    rows = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 3)) @ mixing
    return rows * np.array([100.0, 0.01, 3.0]) + np.array([5000.0, 0.0, -20.0])


def latents(est: flows.DensityEstimator, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fitted flow's latents of `x` and the log-Jacobians, computed in float64."""
    flow = copy.deepcopy(est.flow_).double()
    with torch.no_grad():
        z, ladj = flow.transform(torch.as_tensor(x))
    return z.numpy(), ladj.numpy()


@pytest.mark.slow
def test_the_untrained_flow_is_the_bic_mixture_of_the_standardised_rows() -> None:
    x, x_val = clusters(600, 0), clusters(150, 1)
    # lr 1e-9: the weights do not move, so the fit returns its start
    est = flows.DensityEstimator(lr=1e-9, max_steps=2, **SMALL).fit(x, X_val=x_val)
    assert isinstance(est.flow_.base, FullGaussianMixture)
    z, ladj = latents(est, x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)  # standardised (and permuted) rows
    np.testing.assert_allclose(z.std(0), 1, atol=1e-6)
    mixture = bic_mixture(z, seed=0)
    assert est.flow_.base.components == mixture.n_components == 3
    assert bic_mixture(z, seed=0, max_components=2).n_components == 2  # the cap of large tables' search
    z_val, ladj_val = latents(est, x_val)
    expected = mixture.score_samples(z_val) + ladj_val
    np.testing.assert_allclose(est.score_samples(x_val), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_training_never_ends_worse_on_validation_than_the_fitted_start() -> None:
    x, x_val = clusters(400, 2), clusters(100, 3)
    # a large learning rate and a few steps: training can only hurt the fitted start here
    est = flows.DensityEstimator(lr=0.05, max_steps=30, val_every_n_steps=10, **SMALL).fit(x, X_val=x_val)
    start = flows.DensityEstimator(lr=1e-9, max_steps=2, **SMALL).fit(x, X_val=x_val)
    assert est.best_val_nll_ <= -start.score(x_val) + 1e-5
    # every validation of the training was worse: the fit returns the fitted mixture itself
    np.testing.assert_allclose(est.score_samples(x_val), start.score_samples(x_val), rtol=1e-5)
    np.testing.assert_allclose(-est.score(x_val), est.best_val_nll_, rtol=1e-5)


@pytest.mark.slow
def test_the_mixture_survives_save_load_and_flows_fit_checkpoints(tmp_path) -> None:
    x = clusters(500, 4)
    est = flows.DensityEstimator(max_steps=20, output_dir=tmp_path / "run", **SMALL).fit(x)
    k = est.flow_.base.components
    assert k > 1 and est.record_["config"]["model"]["components"] == k
    loaded = flows.DensityEstimator.load(est.save(tmp_path / "model.pt"))
    np.testing.assert_allclose(loaded.score_samples(x[:50]), est.score_samples(x[:50]), rtol=1e-6)
    # the Lightning checkpoints of the same fit rebuild a mixture of the same size; best.ckpt is the model
    # the fit returned, also when that is the fitted start (lr 0.05: training only hurts it here)
    from_checkpoint = flows.DensityEstimator.load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert from_checkpoint.flow_.base.components == k
    kept = flows.DensityEstimator(
        lr=0.05, max_steps=30, val_every_n_steps=10, output_dir=tmp_path / "kept", **SMALL
    )
    kept.fit(x[:400], X_val=x[400:])
    best = flows.DensityEstimator.load(tmp_path / "kept" / "checkpoints" / "best.ckpt")
    np.testing.assert_allclose(best.score_samples(x[400:]), kept.score_samples(x[400:]), rtol=1e-5)
    assert kept.best_val_nll_ == pytest.approx(-kept.score(x[400:]), rel=1e-5)


@pytest.mark.slow
def test_a_normal_base_is_unchanged_and_the_option_is_checked() -> None:
    x = clusters(300, 5)
    est = flows.DensityEstimator(base="normal", max_steps=2, **SMALL).fit(x)
    assert isinstance(est.flow_.base, StandardNormal)
    assert est.get_params()["base"] == "normal"
    gaussian = flows.DensityEstimator("gaussian", max_steps=2, num_threads=1).fit(x)  # a model without a base
    assert isinstance(gaussian.flow_.base, StandardNormal)
    with pytest.raises(ConfigError, match="base"):
        flows.DensityEstimator("gaussian", base="gmm")
    options = check_model_options({"name": "maf", "base": "gmm", "components": 4})
    assert options == {"base": "gmm", "components": 4}
    config = parse_config({"data": {"dataset": "toy:moons"}, "model": {"name": "nsf", "base": "gmm"}})
    assert config.model["base"] == "gmm"


@pytest.mark.slow
def test_a_fixed_number_of_components_and_a_conditional_fit() -> None:
    x = clusters(400, 6)
    est = flows.DensityEstimator(components=2, max_steps=2, **SMALL).fit(x)
    assert est.flow_.base.components == 2
    context = np.random.default_rng(7).normal(size=(400, 2))
    conditional = flows.DensityEstimator(max_steps=4, **SMALL).fit(x, context=context)
    assert isinstance(conditional.flow_.base, StandardNormal)  # the default of conditional fits
    conditional = flows.DensityEstimator(base="gmm", max_steps=4, **SMALL).fit(x, context=context)
    assert isinstance(conditional.flow_.base, FullGaussianMixture)
    assert np.isfinite(conditional.score_samples(x[:5], context=context[:5])).all()


def test_learned_dequantisation_defaults_to_the_normal_base_and_refuses_gmm() -> None:
    """Argmax categorical columns model rows drawn by a training q: no fixed rows to fit a mixture to."""
    generator = np.random.default_rng(0)
    table = np.column_stack([generator.normal(size=300), generator.integers(0, 3, size=300)]).astype(float)
    fitted = flows.DensityEstimator(max_steps=4, categorical_columns=[1], **SMALL).fit(table)
    inner = getattr(fitted.flow_, "flow", fitted.flow_)
    assert isinstance(inner.base, StandardNormal)
    with pytest.raises(ConfigError, match="learned dequantisation"):
        flows.DensityEstimator(base="gmm", max_steps=4, categorical_columns=[1], **SMALL).fit(table)
