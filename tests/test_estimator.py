"""`flows.DensityEstimator`: scikit-learn conventions on numpy arrays and pandas DataFrames."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import flows
from flows.training.config import ConfigError

pd = pytest.importorskip("pandas")

MEAN = np.array([3.0, -200.0, 0.01])
COVARIANCE = np.array([[4.0, 1.0, 0.0], [1.0, 900.0, 0.05], [0.0, 0.05, 1e-4]])


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(MEAN, COVARIANCE, size=n)


@pytest.fixture(scope="module")
def fitted() -> flows.DensityEstimator:
    """A full-covariance Gaussian fitted by maximum likelihood to data with very different scales."""
    return flows.DensityEstimator("gaussian", max_epochs=15, batch_size=200, lr=0.05, num_threads=1).fit(
        _data(3000, 0)
    )


_LOAD_AND_SCORE = """
import ast, sys, numpy as np, flows
assert 'lightning' not in sys.modules, 'import flows'
estimator = flows.DensityEstimator.load(sys.argv[1])
scores = estimator.score_samples(np.load(sys.argv[2]))
assert 'lightning' not in sys.modules, 'load and score'
assert estimator.get_params()['trainer'] == ast.literal_eval(sys.argv[4]), estimator.get_params()['trainer']
np.save(sys.argv[3], scores)
flows.DensityEstimator(max_steps=2, batch_size=8, num_threads=1).fit(np.load(sys.argv[2]))
assert 'lightning' in sys.modules, 'fit'
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer", [None, {"enable_model_summary": True}], ids=["no_trainer", "trainer_section"]
)
def test_building_loading_and_scoring_an_estimator_do_not_import_lightning(
    fitted: flows.DensityEstimator, tmp_path: Path, trainer: dict | None
) -> None:
    """Lightning (seconds of start-up) is imported by the first fit only, not by `import flows`, building
    an estimator, loading a saved one (with a `trainer` section too, which only `fit` needs, and which the
    loaded estimator keeps) or scoring rows with it."""
    import copy
    import subprocess

    rows = _data(40, 1)
    np.save(tmp_path / "rows.npy", rows)
    saved = copy.copy(fitted)
    saved.trainer = trainer
    saved.save(tmp_path / "model.pt")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_AND_SCORE,
            *(str(tmp_path / n) for n in ("model.pt", "rows.npy", "s.npy")),
            repr(trainer),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), fitted.score_samples(rows), rtol=1e-6)


def test_options_are_validated_when_the_estimator_is_built() -> None:
    with pytest.raises(ConfigError, match="'model.hiden_features'"):
        flows.DensityEstimator("gaussian", hiden_features=[3])
    with pytest.raises(ConfigError, match="'train.lr'"):
        flows.DensityEstimator("gaussian", lr="fast")
    with pytest.raises(ConfigError, match="expected one of .* for a table dataset, got"):
        flows.DensityEstimator("gaussiann")
    with pytest.raises(RuntimeError, match="not fitted"):
        flows.DensityEstimator("gaussian").score_samples(np.zeros((2, 3)))


@pytest.mark.slow
def test_fit_returns_self_and_scores_in_data_units(fitted: flows.DensityEstimator) -> None:
    train = _data(3000, 0)
    test = _data(2000, 1)
    assert fitted.n_features_in_ == 3 and fitted.columns_ == ["x0", "x1", "x2"]
    # 10% of the rows were held out for early stopping: compare with the closed-form MLE on the rest.
    scores = fitted.score_samples(test)
    assert scores.shape == (2000,) and scores.dtype == np.float64
    reference = multivariate_normal(train.mean(0), np.cov(train.T, bias=True)).logpdf(test)
    assert abs(scores.mean() - reference.mean()) < 0.03
    np.testing.assert_allclose(scores, reference, atol=0.3)
    assert fitted.score(test) == pytest.approx(scores.mean())
    # a single row (1-D) is one sample
    assert fitted.score_samples(test[0]).shape == (1,)
    with pytest.raises(ValueError, match="3"):
        fitted.score_samples(test[:, :2])


@pytest.mark.slow
def test_sample_is_seeded_and_in_data_units(fitted: flows.DensityEstimator) -> None:
    first = fitted.sample(5000, random_state=3)
    assert first.shape == (5000, 3)
    np.testing.assert_array_equal(first, fitted.sample(5000, random_state=3))
    assert not np.array_equal(first, fitted.sample(5000, random_state=4))
    assert np.all(
        np.abs(first.mean(0) - MEAN)
        < 5 * np.sqrt(np.diag(COVARIANCE) / 5000) + 0.05 * np.sqrt(np.diag(COVARIANCE))
    )
    np.testing.assert_allclose(first.std(0), np.sqrt(np.diag(COVARIANCE)), rtol=0.08)
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(0)


@pytest.mark.slow
def test_save_load_round_trip(fitted: flows.DensityEstimator, tmp_path: Path) -> None:
    test = _data(100, 2)
    path = fitted.save(tmp_path / "model.pt")
    loaded = flows.DensityEstimator.load(path)
    np.testing.assert_allclose(loaded.score_samples(test), fitted.score_samples(test), rtol=1e-12)
    np.testing.assert_array_equal(loaded.sample(10, random_state=0), fitted.sample(10, random_state=0))
    assert loaded.get_params()["model"] == "gaussian" and loaded.get_params()["lr"] == pytest.approx(0.05)


def test_loading_parameters_that_no_longer_validate_warns_and_keeps_the_saved_flow(
    fitted: flows.DensityEstimator, tmp_path: Path
) -> None:
    """Parameters saved by another version (or edited) that the constructor refuses: the estimator still
    scores with its saved flow, and says that its parameters are the defaults now."""
    import torch

    from flows.training.safety import read_checkpoint

    path = fitted.save(tmp_path / "model.pt")
    payload = read_checkpoint(path)
    payload["params"]["lr"] = "fast"
    torch.save(payload, path)
    test = _data(20, 2)
    with pytest.warns(UserWarning, match="parameters do not validate .*'train.lr'.* use the defaults"):
        loaded = flows.DensityEstimator.load(path)
    np.testing.assert_allclose(loaded.score_samples(test), fitted.score_samples(test), rtol=1e-12)
    assert loaded.get_params()["lr"] == flows.DensityEstimator().get_params()["lr"]


@pytest.mark.slow
def test_dataframes_keep_column_names_and_order(tmp_path: Path) -> None:
    frame = pd.DataFrame(_data(1500, 5), columns=["height", "weight", "ratio"])
    validation = pd.DataFrame(_data(300, 6), columns=["height", "weight", "ratio"])
    estimator = flows.DensityEstimator("gaussian", max_epochs=3, batch_size=100, lr=0.05, num_threads=1)
    assert estimator.fit(frame, X_val=validation) is estimator
    assert estimator.columns_ == ["height", "weight", "ratio"]
    shuffled = frame[["ratio", "height", "weight"]].iloc[:20]
    np.testing.assert_allclose(
        estimator.score_samples(shuffled), estimator.score_samples(frame.iloc[:20].to_numpy())
    )
    path = estimator.save(tmp_path / "frame.pt")
    assert flows.DensityEstimator.load(path).columns_ == ["height", "weight", "ratio"]


@pytest.mark.parametrize("keep", [False, True])
def test_divergence_message_names_estimator_arguments_and_no_deleted_checkpoint(
    keep: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diverged fit says where it stopped in this class's own terms: with output_dir=None it names no
    checkpoint (its temporary folder is gone); with output_dir it names the kept checkpoint, which exists."""
    from flows.training.module import FlowModule
    from flows.training.safety import TrainingDivergedError

    original = FlowModule.training_step

    def poisoned(self: FlowModule, batch: object, index: int) -> object:
        loss = original(self, batch, index)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(FlowModule, "training_step", poisoned)
    output_dir = tmp_path / "run" if keep else None
    estimator = flows.DensityEstimator(
        "gaussian", max_epochs=3, batch_size=100, num_threads=1, output_dir=output_dir
    )
    with pytest.raises(TrainingDivergedError) as caught:
        estimator.fit(_data(300, 1))
    message = str(caught.value)
    assert "epoch 1" in message and "training loss is nan" in message
    for advice in ("lower lr", "gradient_clip=", "standardize=True"):
        assert advice in message
    assert "train.lr" not in message and "--resume" not in message
    if keep:
        assert caught.value.checkpoint is not None and Path(caught.value.checkpoint).is_file()
        assert caught.value.checkpoint in message
    else:
        assert caught.value.checkpoint is None
        assert "output_dir=None" in message and "flows-estimator-" not in message


def test_fit_without_output_dir_writes_no_files_and_keeps_the_best_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-memory fits write no checkpoint (nor anything else) and end on the best validation's weights."""
    from flows.training.best_weights import BestWeights
    from flows.training.checkpoint_io import AtomicCheckpointIO

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an in-memory fit wrote a checkpoint")

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", refuse)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    scores: list[float] = []
    original = BestWeights.on_validation_end

    def record(self: BestWeights, trainer: object, module: object) -> None:
        scores.append(float(trainer.callback_metrics["val_nll"]))  # type: ignore[attr-defined]
        original(self, trainer, module)

    monkeypatch.setattr(BestWeights, "on_validation_end", record)
    rows, held_out = _data(400, 1), _data(200, 2)
    est = flows.DensityEstimator(
        "maf", transforms=1, hidden_features=[16], max_epochs=8, batch_size=50, lr=0.05, num_threads=1
    ).fit(rows, X_val=held_out)
    assert list(tmp_path.iterdir()) == []
    assert len(scores) == 8 and est.best_val_nll_ == pytest.approx(min(scores))
    assert -est.score(held_out) == pytest.approx(min(scores), rel=1e-4, abs=1e-4)
    if scores.index(min(scores)) != len(scores) - 1:  # the last weights were not the best: they were replaced
        assert -est.score(held_out) != pytest.approx(scores[-1], rel=1e-6, abs=1e-6)
