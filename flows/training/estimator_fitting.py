"""How `DensityEstimator` fits: its run config (the table-adaptive training defaults, the default base) and
`fit` (splits, range checks, training, the fitted attributes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from flows.training.columns import normalized_bounds
from flows.training.config import parse_config
from flows.training.context import conditional_splits_from_arrays
from flows.training.data import splits_from_arrays
from flows.training.frames import is_frame, label_codes
from flows.training.registry import MODELS, check_model_options, model_parameters
from flows.training.safety import TrainingDivergedError
from flows.training.table_defaults import table_train_options
from flows.training.trainer_options import trainer_arguments, training_dtype

__all__ = ["DEFAULT_BASE", "EstimatorFitting"]

#: the base of `base=None`: a full-covariance Gaussian mixture (BIC-chosen size) fitted before the flow trains
DEFAULT_BASE = "gmm"


class EstimatorFitting:
    """`DensityEstimator`'s configuration and `fit` (a mixin; the estimator's constructor sets the options)."""

    def _config(self, rows: Optional[int] = None, conditional: bool = False) -> Any:
        """The run config for `rows` training rows (None: before `fit` knows them; validates the options),
        for a conditional fit when `conditional`."""
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
                "dequantization": self.dequantization,
            },
            "model": {"name": self.model, **self._base_option(conditional), **self.model_options},
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

    def _base_option(self, conditional: bool = False) -> dict[str, Any]:
        """The model's `base`: as given, else `DEFAULT_BASE` for unconditional fits of models that take one
        (the mixture needs scikit-learn; without it the default is `"normal"`). Conditional fits default to
        `"normal"`: the mixture would be fitted to the marginal of `X`, which the conditional transforms
        would first have to undo (measured: a one-layer MAF that is exact for p(y | c) with a normal base
        missed E[y | c] by 0.16 with the mixture base). Fits with learned dequantisation (categorical
        columns, `dequantization="variational"`) default to `"normal"` too: their flow models rows that an
        untrained `q` draws, so there is no fixed table to fit the mixture to."""
        if self.base is not None:
            return {"base": self.base}
        known = isinstance(self.model, str) and "table" in MODELS.get(self.model, {})
        if not known or "base" not in model_parameters(self.model):
            return {}  # (an unknown model name is reported by the config check)
        sklearn = importlib.util.find_spec("sklearn") is not None
        learned = bool(self.categorical_columns) or self.dequantization == "variational"
        return {"base": DEFAULT_BASE if sklearn and not conditional and not learned else "normal"}

    def fit(
        self, X: Any, y: Any = None, X_val: Any = None, *, context: Any = None, context_val: Any = None
    ) -> Any:
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
        config = self._config(rows=int(splits.train.shape[0]), conditional=bool(splits.context_columns))
        self._check_range(splits)
        # Lightning is imported here, on the first fit: building or loading an estimator does not need it
        from flows.training.tasks.tabular import fit_flow
        from flows.training.trainer import quiet_lightning_logs

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
        self.compile_ = outcome.info["compile"]
        self.config_ = config
        return self

    def _check_range(self, splits: Any) -> None:
        """A ValueError naming the columns whose values do not fit the dtype the model trains in."""
        dtype = training_dtype(self.trainer or {})
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
            "a lower lr, gradient_clip=1.0, warmup_steps=..., standardize=True, discrete_columns=[...] / "
            "categorical_columns=[...] (or dequantize=True for every column), or dropping constant columns",
            step=error.step,
            epoch=error.epoch,
            what=error.what,
            checkpoint=error.checkpoint if self.output_dir is not None else None,
        )
