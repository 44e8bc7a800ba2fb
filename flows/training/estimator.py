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
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from flows.io import atomic_save
from flows.training.checkpoints import ESTIMATOR_FORMAT, load_model
from flows.training.columns import ColumnPlan, normalized_bounds
from flows.training.config import ConfigError, TrainConfig, parse_config
from flows.training.context import conditional_splits_from_arrays
from flows.training.data import splits_from_arrays
from flows.training.evaluation import draw_samples, table_log_prob
from flows.training.frames import code_labels, is_frame, label_codes, to_frame
from flows.training.models import preprocessing_of
from flows.training.registry import MODELS, check_model_options, model_parameters
from flows.training.safety import TrainingDivergedError, read_checkpoint
from flows.training.table_defaults import table_train_options
from flows.training.tasks.tabular import fit_flow
from flows.training.trainer import quiet_lightning_logs, trainer_arguments

__all__ = ["DensityEstimator"]

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: the base of `base=None`: a full-covariance Gaussian mixture (BIC-chosen size) fitted before the flow trains
DEFAULT_BASE = "gmm"


try:  # scikit-learn is optional: with it the estimator is a real one (clone, GridSearchCV, pipelines, tags)
    from sklearn.base import BaseEstimator as _SklearnEstimator
    from sklearn.base import DensityMixin as _SklearnDensity

    _SKLEARN_BASES: tuple[type, ...] = (_SklearnDensity, _SklearnEstimator)
except ImportError:  # pragma: no cover - without scikit-learn
    _SKLEARN_BASES = ()


class DensityEstimator(*_SKLEARN_BASES):  # type: ignore[misc]
    """A normalizing-flow density estimator for tables `(n_samples, n_features)`.

    `model` names the architecture (`"nsf"`, `"maf"`, `"realnvp"`, `"gaussian"`); `model_options` are its
    constructor's keyword arguments. `base` is the flow's base distribution (`"gmm"`, `"normal"`, ... as
    `flows.distributions.make_base` names them); `None` means `"gmm"`: a full-covariance Gaussian mixture
    with a BIC-chosen number of components (`components=K` fixes it) fitted to the standardised training
    rows, the flow's transforms starting at the identity, so the fit starts as that mixture and keeps it
    if training never improves the validation NLL (`flows.training.mixture_base`). Training options are those of the config's `train` section
    (`max_epochs`, `max_steps`, `batch_size`, `lr`, `weight_decay`, `warmup_steps`, `gradient_clip`,
    `early_stopping_patience`, `noise_std`, ...); `trainer` holds `lightning.Trainer` keyword arguments
    (`accelerator`, `devices`, `precision`, ...). `batch_size="auto"` and `max_epochs="auto"` (the defaults)
    adapt to the training rows (`flows.training.table_defaults`): a batch of about rows / 8 within [32, 256],
    training for max(2,000 steps, 100 epochs), validation (early stopping) every max(50 steps, one epoch).
    `val_fraction` of the rows is held out for early stopping
    when `fit` gets no `X_val`. `standardize=True` folds the training mean/std into the model, so
    scores and samples are in the units of `X` (extreme outliers get a warning naming their columns; see
    `flows.training.models.standardization_of` for why the plain mean/std are kept).

    The model computes in float32 unless `trainer={"precision": "64-true"}` (float64); `save`/`load` keep
    that dtype. `fit` refuses values beyond the training dtype's range; `score_samples` returns `-inf` for
    rows too far out for that dtype (never NaN).

    Per column (keys: column names of a fitted DataFrame, or positions): `bounds` maps a column to
    `(low, high)` (None: unbounded side); the model lives on that support (a `ColumnSupport` folded in before
    the standardisation), so scores are densities on it and samples never leave it. Values outside are a
    ValueError at fit and score `-inf`. `discrete_columns` (integers) and `categorical_columns` (any labels in
    a DataFrame, coded 0..K-1) are dequantised with U[0, 1) noise; their scores are lower bounds on the
    log-probability mass (importance-weighted over `DEQUANTIZATION_DRAWS` fixed draws) plus the log density
    of the continuous columns; samples are integers / labels. `dequantize=True` makes every column discrete.
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
        self.seed = seed
        self.trainer = trainer  # stored as given (scikit-learn's clone checks the identity of each parameter)
        self.output_dir = output_dir
        self.verbose = verbose
        self.train_options = {k: v for k, v in options.items() if k in TRAIN_KEYS}
        self.model_options = {k: v for k, v in options.items() if k not in TRAIN_KEYS}
        self.config_ = self._config()  # validates every option now, not after training

    # ------------------------------------------------------------------ configuration

    def _config(self, rows: Optional[int] = None) -> Any:
        """The run config for `rows` training rows (None: before `fit` knows them; validates the options)."""
        train = table_train_options(
            rows, self.batch_size, self.max_epochs, {"lr": self.lr, **self.train_options}
        )
        values = {
            "seed": self.seed,
            "data": {
                "dataset": "file:<arrays>",
                "standardize": self.standardize,
                "dequantize": self.dequantize,
                "bounds": normalized_bounds(self.bounds),
                "discrete_columns": list(self.discrete_columns or []),
                "categorical_columns": list(self.categorical_columns or []),
            },
            "model": {"name": self.model, **self._base_option(), **self.model_options},
            "train": train,
            "trainer": dict(self.trainer or {}),
            "output": {
                "dir": str(self.output_dir) if self.output_dir is not None else "runs",
                "name": "estimator",
                "samples": 0,
                "plots": False,
                "logger": "csv" if self.output_dir is not None else "none",
                "progress_bar": self.verbose,
            },
        }
        config = parse_config(values)
        check_model_options(config.model)
        trainer_arguments(config.trainer)
        return config

    def _base_option(self) -> dict[str, Any]:
        """The model's `base`: as given, else `DEFAULT_BASE` for models that take one (the mixture needs
        scikit-learn; without it the default is `"normal"`)."""
        if self.base is not None:
            return {"base": self.base}
        known = isinstance(self.model, str) and "table" in MODELS.get(self.model, {})
        if not known or "base" not in model_parameters(self.model):
            return {}  # (an unknown model name is reported by the config check)
        return {"base": DEFAULT_BASE if _SKLEARN_BASES else "normal"}

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

    # ------------------------------------------------------------------ fitting and scoring

    def fit(
        self, X: Any, y: Any = None, X_val: Any = None, *, context: Any = None, context_val: Any = None
    ) -> DensityEstimator:
        """Train on `X (n, D)` (numpy array, DataFrame, list); `X_val` for early stopping (else held out).

        With `context (n, k)` (and `context_val` beside `X_val`), the model is the conditional density of
        each row of `X` given its context row; it is then scored and sampled given a context. `y` is ignored
        (scikit-learn convention). Returns self.
        """
        X, X_val, labels = label_codes(X, X_val, list(self.categorical_columns or []))
        if context is None and context_val is None:
            splits = splits_from_arrays(X, X_val, None, self.val_fraction, self.seed)
        else:
            splits = conditional_splits_from_arrays(
                X, X_val, context, context_val, self.val_fraction, self.seed
            )
        config = self._config(rows=int(splits.train.shape[0]))
        self._check_range(splits)
        try:
            with quiet_lightning_logs(not self.verbose):
                if self.output_dir is None:  # in memory: no checkpoint files, no logger
                    outcome = fit_flow(config, splits, None, quiet=not self.verbose)
                else:
                    run_dir = Path(self.output_dir)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    outcome = fit_flow(config, splits, run_dir, quiet=not self.verbose)
        except TrainingDivergedError as error:
            raise self._diverged(error) from None
        self.flow_ = outcome.model.cpu().eval()
        self.record_ = outcome.record
        self.columns_plan_ = outcome.info["data"].info["columns_plan"]
        self.categories_ = labels
        if is_frame(X):
            self.feature_names_in_ = np.asarray(list(splits.columns), dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.columns_ = list(splits.columns)
        self.n_features_in_ = splits.features
        self.context_columns_ = list(splits.context_columns)
        self.best_val_nll_ = outcome.best_val
        self.n_epochs_ = outcome.info["epochs"]
        self.n_steps_ = outcome.info["steps"]
        self.config_ = config
        return self

    def _training_dtype(self) -> torch.dtype:
        """float64 when the trainer's `precision` is 64-bit, else float32 (the default dtype)."""
        precision = str((self.trainer or {}).get("precision", "32")).lower()
        return torch.float64 if precision in ("64", "64-true", "double") else torch.get_default_dtype()

    def _check_range(self, splits: Any) -> None:
        """A ValueError naming the columns whose values do not fit the dtype the model trains in."""
        dtype = self._training_dtype()
        limit = float(torch.finfo(dtype).max)
        tables = [splits.train, splits.val]
        largest = np.max([np.max(np.abs(t), axis=0) for t in tables], axis=0)
        too_large = [
            f"{name} (|x| up to {value:.3g})" for name, value in zip(splits.columns, largest) if value > limit
        ]
        if too_large:
            raise ValueError(
                f"X has values beyond the {str(dtype).removeprefix('torch.')} range (|x| <= {limit:.3g}) that "
                f"training uses, in columns {too_large}; rescale them, or fit in float64 with "
                "trainer={'precision': '64-true'}"
            )

    def _diverged(self, error: TrainingDivergedError) -> TrainingDivergedError:
        """The training layer's divergence error reworded for this class's arguments (it names config keys
        and `flows fit --resume`; without `output_dir` its checkpoint lived in a deleted temporary folder)."""
        if self.output_dir is None:
            kept = "no checkpoint is kept with output_dir=None (pass output_dir to keep them)"
        elif error.checkpoint is not None:
            kept = f"the last good checkpoint is kept at {error.checkpoint} (DensityEstimator.load reads it)"
        else:
            kept = "no checkpoint had been written yet (it diverged before the first validation)"
        return TrainingDivergedError(
            f"training stopped at optimiser step {error.step} (epoch {error.epoch}): {error.what}. {kept}; try "
            "a lower lr, gradient_clip=1.0, warmup_steps=..., standardize=True, dequantize=True for discrete "
            "columns, or dropping constant columns",
            step=error.step,
            epoch=error.epoch,
            what=error.what,
            checkpoint=error.checkpoint if self.output_dir is not None else None,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "flow_"):
            raise RuntimeError("this DensityEstimator is not fitted yet; call fit(X) first")

    def _rows(self, X: Any, columns: Optional[list[str]] = None, name: str = "X") -> np.ndarray:
        """`X` as a float64 table `(n, len(columns))`; a DataFrame naming every one of `columns` (default:
        the fitted columns) is reordered by name, anything else is taken by position."""
        from flows.datasets import as_array

        self._check_fitted()
        expected = self.columns_ if columns is None else columns
        try:
            import pandas as pd
        except ImportError:
            pd = None
        if pd is not None and isinstance(X, pd.DataFrame) and set(expected) <= {str(c) for c in X.columns}:
            X = X[[c for c in X.columns if str(c) in expected]]
            X = X[sorted(X.columns, key=lambda c: expected.index(str(c)))]
        frame = pd is not None and isinstance(X, (pd.DataFrame, pd.Series))
        if np.ndim(X) == 1 and not frame:  # one row; a column for a one-feature model (as `fit` reads it)
            X = np.asarray(X)[:, None] if len(expected) == 1 else np.asarray(X)[None, :]
        if len(X) == 1:  # as_array wants two rows to call it a table; duplicate, validate, keep one
            doubled = pd.concat([X, X]) if frame else np.concatenate([np.asarray(X)] * 2)
            rows = as_array(doubled, name)[0][:1]
        else:
            rows, _ = as_array(X, name)
        if rows.shape[1] != len(expected):
            raise ValueError(
                f"{name} has {rows.shape[1]} features, but the estimator was fitted on {len(expected)}"
                + (f" ({expected})" if name != "X" else "")
            )
        return rows

    def _context_rows(self, context: Any, method: str) -> Optional[np.ndarray]:
        """The context table `(m, k)` of a call to `method`, None for an unconditional estimator; a
        TypeError when a context is missing from a conditional estimator's call, or passed to another."""
        self._check_fitted()
        expected = getattr(self, "context_columns_", [])
        if not expected:
            if context is not None:
                raise TypeError(
                    f"this estimator was fitted without a context; {method} got context= of shape "
                    f"{np.shape(context)}: call it without one, or refit with fit(X, context=...)"
                )
            return None
        if context is None:
            raise TypeError(
                f"this estimator was fitted with a context of {len(expected)} columns {expected}; pass "
                f"context=... (rows of {len(expected)} values) to {method}"
            )
        if np.ndim(context) == 0:  # one value of a one-column context
            context = np.reshape(np.asarray(context, dtype=np.float64), (1,))
        return self._rows(context, expected, "context")

    def _dtype(self) -> torch.dtype:
        """The float dtype the fitted flow computes in."""
        for tensor in (*self.flow_.parameters(), *self.flow_.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def _standardized(self, rows: np.ndarray) -> np.ndarray:
        """`rows` in the flow's standardised units (float64): through its leading column bounds and
        `Standardize`, if any (NaN for values outside the bounds)."""
        import copy

        preprocessing = preprocessing_of(self.flow_)
        if preprocessing is None:
            return rows
        with torch.no_grad():
            return copy.deepcopy(preprocessing).cpu().double()(torch.as_tensor(rows))[0].numpy()

    def _plan(self) -> ColumnPlan:
        """The fitted column plan (nothing declared for estimators saved before it existed)."""
        plan = getattr(self, "columns_plan_", None)
        return plan if plan is not None else ColumnPlan.from_record(None, self.n_features_in_)

    def _coded_rows(self, X: Any) -> np.ndarray:
        """`X` as a float table: category labels of a DataFrame as codes (-1 for an unknown one)."""
        labels = getattr(self, "categories_", {})
        if labels and is_frame(X):
            X = X.copy()
            for name, values in labels.items():
                if name in X.columns:
                    X[name] = code_labels(X[name], values)
        return self._rows(X)

    def score_samples(self, X: Any, context: Any = None) -> np.ndarray:
        """Log density of each row of `X (n, D)` in the units of the training data: `(n,)` float64.

        With discrete or categorical columns: a lower bound on the log-probability mass of those columns
        plus the log density of the others (see the class docstring). Rows outside the bounds, or with a
        category not seen in fit, score `-inf`.

        A conditional estimator needs `context`: `(n, k)`, one row per row of `X`, or one row `(k,)` for
        all of them; it returns `log p(x | c)` per row.

        Rows with NaN or infinite values are a ValueError naming them. A row further out than the square
        root of the model dtype's largest number (1.8e19 standard units in float32) scores `-inf`: its
        log density, about `-z**2 / 2`, overflows that dtype. Should the flow still overflow to NaN on a
        row, the row scores `-inf` too, with a `RuntimeWarning` naming it; the result never holds NaN.
        """
        rows = self._coded_rows(X)
        given = self._context_rows(context, "score_samples")
        if given is not None and given.shape[0] != rows.shape[0]:
            if given.shape[0] != 1:
                raise ValueError(
                    f"X has {rows.shape[0]} rows but context has {given.shape[0]}; expected one context row "
                    "per row of X, or a single context row for all"
                )
            given = np.repeat(given, rows.shape[0], axis=0)
        limit = float(np.sqrt(torch.finfo(self._dtype()).max))
        plan = self._plan()
        with np.errstate(invalid="ignore"):  # (NaN off the support: such rows score -inf below too)
            coded = plan.encode(rows, self.columns_, "X", strict=False)
            inside = np.all(np.abs(self._standardized(coded)) <= limit, axis=1)
        scores = np.full(rows.shape[0], -np.inf)
        if inside.any():
            kept = None if given is None else given[inside]
            scores[inside] = table_log_prob(self.flow_, rows[inside], plan, context=kept)
        overflowed = np.flatnonzero(np.isnan(scores))
        if overflowed.size:
            warnings.warn(
                f"the model's log density overflowed to NaN for {overflowed.size} rows far from the training "
                f"data (first row indices: {overflowed[:5].tolist()}); they score -inf",
                RuntimeWarning,
                stacklevel=2,
            )
            scores[overflowed] = -np.inf
        return scores

    def score(self, X: Any, y: Any = None, context: Any = None) -> float:
        """Mean log density of the rows of `X` (nats), given `context` for a conditional estimator."""
        return float(np.mean(self.score_samples(X, context=context)))

    def sample(self, n_samples: int = 1, random_state: Optional[int] = None, *, context: Any = None) -> Any:
        """`n_samples` rows `(n_samples, D)` float64 in data units; `random_state` seeds them. A DataFrame
        with the fitted columns (categories as their labels) when fitted on one; discrete columns hold
        integers and every value lies inside its bounds.

        A conditional estimator needs `context`: `(m, k)` gives `(n_samples, m, D)` (samples for each
        context row; numpy), one row `(k,)` gives `(n_samples, D)`.
        """
        self._check_fitted()
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if random_state is not None and not isinstance(random_state, (int, np.integer)):
            raise TypeError(f"random_state must be an int or None, got {type(random_state).__name__}")
        given = self._context_rows(context, "sample")
        samples = draw_samples(
            self.flow_,
            int(n_samples),
            seed=None if random_state is None else int(random_state),
            context=given,
        )
        one_row = given is not None and np.ndim(context) <= 1 and given.shape[0] == 1  # a (k,) row
        samples = self._plan().decode(samples[:, 0] if one_row else samples)
        if samples.ndim == 2 and hasattr(self, "feature_names_in_"):
            return to_frame(samples, self.columns_, getattr(self, "categories_", {}))
        return samples

    def plot(
        self,
        X: Any,
        path: Optional[Union[str, Path]] = None,
        *,
        n_samples: int = 2000,
        columns: Optional[list[Any]] = None,
        random_state: Optional[int] = 0,
    ) -> Any:
        """A matplotlib Figure of the fit against the data `X (n, D)`: for one column, histograms of data and
        samples with the learned density; for two, the learned density beside data and samples; for more,
        the pairwise marginals of `columns` (names or positions; default the first six), data below the
        diagonal and samples above. Axes carry the column names (categories as codes). `path`: also write it
        as a PNG (atomically). Unconditional estimators only.
        """
        from flows.training.plots import fit_figure, save_figure

        self._check_fitted()
        if getattr(self, "context_columns_", []):
            raise TypeError("plot shows unconditional fits; this estimator was fitted with a context")
        data = self._coded_rows(X)  # in the units of the samples: integers, category values or codes
        samples = self._plan().decode(draw_samples(self.flow_, int(n_samples), seed=random_state))
        names = [str(c) for c in self.columns_]
        dims = (
            None if columns is None else [c if isinstance(c, int) else names.index(str(c)) for c in columns]
        )
        _, figure = fit_figure(self.flow_, data, samples, names, dims, data_name="X")
        if path is not None:
            save_figure(figure, path)
        return figure

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, Path]) -> Path:
        """Write the fitted model (config, columns, weights) to one file; reload with `DensityEstimator.load`."""
        self._check_fitted()
        path = Path(path)
        payload = {
            "format": ESTIMATOR_FORMAT,
            "record": self.record_,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in self.get_params().items()},
            "state_dict": self.flow_.state_dict(),
            "dtype": str(self._dtype()).removeprefix("torch."),
            "categories": dict(getattr(self, "categories_", {})),
            "frame": hasattr(self, "feature_names_in_"),
            "fit_info": {
                "best_val_nll": self.best_val_nll_,
                "epochs": self.n_epochs_,
                "steps": self.n_steps_,
            },
        }
        atomic_save(payload, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> DensityEstimator:
        """Rebuild a fitted estimator from `save`'s file (or from a `flows fit` checkpoint)."""
        loaded = load_model(path)
        payload = read_checkpoint(path)
        params = payload.get("params")
        if params is None:  # a Lightning checkpoint: rebuild the parameters from its config
            config = loaded.config
            params = {
                "model": config.model["name"],
                **{k: v for k, v in config.model.items() if k != "name"},
                "seed": config.seed,
            }
        try:
            estimator = cls(**params)
        except (ConfigError, TypeError):
            estimator = cls(model=loaded.config.model["name"])
        dtype = getattr(torch, str(payload.get("dtype", "")), None)
        estimator.flow_ = loaded.flow.to(dtype) if isinstance(dtype, torch.dtype) else loaded.flow
        estimator.record_ = payload.get("record") or payload.get("hyper_parameters")
        estimator.columns_ = loaded.columns
        estimator.n_features_in_ = loaded.features
        estimator.context_columns_ = list(loaded.context_columns)
        estimator.columns_plan_ = loaded.plan
        estimator.categories_ = dict(payload.get("categories") or {})
        if payload.get("frame"):
            estimator.feature_names_in_ = np.asarray(loaded.columns, dtype=object)
        info = payload.get("fit_info", {})
        estimator.best_val_nll_ = info.get("best_val_nll")
        estimator.n_epochs_ = info.get("epochs")
        estimator.n_steps_ = info.get("steps")
        estimator.config_ = loaded.config
        return estimator

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in {**self.model_options, **self.train_options}.items())
        return f"DensityEstimator(model={self.model!r}{', ' + options if options else ''})"
