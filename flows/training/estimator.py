"""`DensityEstimator`: fit a flow to a table in a few lines, with scikit-learn's density-estimator conventions.

est = flows.DensityEstimator(model="nsf", transforms=5, max_epochs=50).fit(X)   # numpy or DataFrame
est.score_samples(X_test)   # log density per row, in the units of X
est.score(X_test)           # mean log density
est.sample(1000, random_state=0)
est.save("model.pt"); flows.DensityEstimator.load("model.pt")

Per column (keys: DataFrame column names or positions):
est = flows.DensityEstimator(bounds={"carat": (0, None), "depth": (0, 100)},   # support: scores, samples
                             discrete_columns=["year"], categorical_columns=["cut"]).fit(df)
est.sample(5)               # a DataFrame with df's columns (categories decoded) when fitted on one
est.plot(df, path="pairs.png")   # pairwise marginals (1-D / 2-D: the learned density) against the data

Conditional: est.fit(Y, context=C); est.score_samples(Y_test, context=C_test)   # log p(y | c) per row
est.sample(100, context=C_new)   # (100, m, D) for C_new (m, k); (100, D) for one context row (k,)

This module holds the scikit-learn surface (constructor, parameters); the rest is one concern per module:
`estimator_fitting` (the run config and `fit`), `estimator_scoring` (inputs, `score_samples`, `sample`,
`plot`) and `estimator_persistence` (`save`, `load`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

from flows.training.config import TrainConfig
from flows.training.estimator_fitting import DEFAULT_BASE, EstimatorFitting
from flows.training.estimator_persistence import EstimatorPersistence
from flows.training.estimator_scoring import EstimatorScoring

__all__ = ["DEFAULT_BASE", "DensityEstimator"]

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


try:  # scikit-learn is optional: with it the estimator is a real one (clone, GridSearchCV, pipelines, tags)
    from sklearn.base import BaseEstimator as _SklearnEstimator
    from sklearn.base import DensityMixin as _SklearnDensity

    _SKLEARN_BASES: tuple[type, ...] = (_SklearnDensity, _SklearnEstimator)
except ImportError:  # pragma: no cover - without scikit-learn
    _SKLEARN_BASES = ()


class DensityEstimator(  # type: ignore[misc]
    EstimatorFitting, EstimatorScoring, EstimatorPersistence, *_SKLEARN_BASES
):
    """A normalizing-flow density estimator for tables `(n_samples, n_features)`.

    `model` names the architecture (`"nsf"`, `"maf"`, `"realnvp"`, `"gaussian"`); `model_options` are its
    constructor's keyword arguments. `base` is the flow's base distribution (`"gmm"`, `"normal"`, ... as
    `flows.distributions.make_base` names them); `None` means `"normal"` for conditional fits and otherwise
    `"gmm"`: a full-covariance Gaussian mixture
    with a BIC-chosen number of components (`components=K` fixes it) fitted to the standardised training
    rows, the flow's transforms starting at the identity, so the fit starts as that mixture and keeps it
    if training never improves the validation NLL (`flows.training.mixture_base`). Training options are
    those of the config's `train` section (`max_epochs`, `max_steps`, `batch_size`, `lr`, `weight_decay`, `warmup_steps`, `gradient_clip`,
    `early_stopping_patience`, `noise_std`, ...); `trainer` holds `lightning.Trainer` keyword arguments
    (`accelerator`, `devices`, `precision`, ...). `batch_size="auto"` and `max_epochs="auto"` (the defaults)
    adapt to the training rows (`flows.training.table_defaults`): a batch of about rows / 8 within [32, 256],
    training for max(2,000 steps, 100 epochs), validation (early stopping) every max(50 steps, one epoch)
    and after the last step.
    `val_fraction` of the rows is held out for early stopping
    when `fit` gets no `X_val`. `standardize=True` folds the training mean/std into the model, so
    scores and samples are in the units of `X` (extreme outliers get a warning naming their columns; see
    `flows.training.models.standardization_of` for why the plain mean/std are kept).

    The model computes in float32 unless `trainer={"precision": "64-true"}` (float64); `save`/`load` keep
    that dtype. `fit` refuses values beyond the training dtype's range, and columns whose spread is too small
    for their offset in that dtype (1e9 + N(0, 1), timestamps seconds apart: float32 would round them to a
    few points; subtract an offset, or fit in float64); `score_samples` returns `-inf` for rows too far out
    for that dtype (never NaN).

    Per column (keys: column names of a fitted DataFrame, or positions): `bounds` maps a column to
    `(low, high)` (None: unbounded side); the model lives on that support (a `ColumnSupport` folded in before
    the standardisation), so scores are densities on it and samples never leave it. Values outside are a
    ValueError at fit and score `-inf`. `discrete_columns` (integers) are dequantised with U[0, 1) noise, or
    with a learned q(u | row) for `dequantization="variational"`; `categorical_columns` (any labels in a
    DataFrame) are argmax-dequantised (`flows.column_dequantization`: no order among the categories). Their
    scores are lower bounds on the log-probability mass (importance-weighted over `DEQUANTIZATION_DRAWS`
    draws) plus the log density of the continuous columns; samples are integers / labels.
    `dequantize=True` makes every column discrete.
    """

    def __init__(
        self,
        model: str = "nsf",
        *,
        base: Optional[str] = None,
        max_epochs: Union[int, str, None] = "auto",
        batch_size: Union[int, str] = "auto",
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        standardize: bool = True,
        dequantize: Optional[bool] = False,
        bounds: Optional[dict[Any, Any]] = None,
        discrete_columns: Optional[list[Any]] = None,
        categorical_columns: Optional[list[Any]] = None,
        dequantization: str = "uniform",
        seed: int = 0,
        trainer: Optional[dict[str, Any]] = None,
        output_dir: Optional[Union[str, Path]] = None,
        verbose: bool = False,
        **options: Any,
    ) -> None:
        self.model = model
        self.base = base
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.standardize = standardize
        self.dequantize = dequantize
        self.bounds = bounds
        self.discrete_columns = discrete_columns
        self.categorical_columns = categorical_columns
        self.dequantization = dequantization
        self.seed = seed
        self.trainer = trainer  # stored as given (scikit-learn's clone checks the identity of each parameter)
        self.output_dir = output_dir
        self.verbose = verbose
        self.train_options = {k: v for k, v in options.items() if k in TRAIN_KEYS}
        self.model_options = {k: v for k, v in options.items() if k not in TRAIN_KEYS}
        self.config_ = self._config()  # validates every option now, not after training

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments (scikit-learn convention)."""
        return {
            "model": self.model,
            "base": self.base,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "val_fraction": self.val_fraction,
            "standardize": self.standardize,
            "dequantize": self.dequantize,
            "bounds": self.bounds,
            "discrete_columns": self.discrete_columns,
            "categorical_columns": self.categorical_columns,
            "dequantization": self.dequantization,
            "seed": self.seed,
            "trainer": self.trainer,
            "output_dir": self.output_dir,
            "verbose": self.verbose,
            **self.train_options,
            **self.model_options,
        }

    def set_params(self, **params: Any) -> DensityEstimator:
        """Change constructor arguments (scikit-learn convention); every option is validated again."""
        merged = {**self.get_params(), **params}
        self.__init__(**merged)  # type: ignore[misc]
        return self

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in {**self.model_options, **self.train_options}.items())
        return f"DensityEstimator(model={self.model!r}{', ' + options if options else ''})"
