"""How a fitted `DensityEstimator` reads its inputs (rows, contexts, category labels) and scores, samples
and plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from flows.training.columns import ColumnPlan
from flows.training.evaluation import draw_samples, table_log_prob
from flows.training.frames import code_labels, is_frame, select_columns, to_frame
from flows.training.models import preprocessing_of

__all__ = ["EstimatorScoring"]


class EstimatorScoring:
    """`DensityEstimator`'s scoring, sampling and plotting of a fitted model (a mixin)."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "flow_"):
            raise RuntimeError("this DensityEstimator is not fitted yet; call fit(X) first")

    def _rows(self, X: Any, columns: Optional[list[str]] = None, name: str = "X") -> np.ndarray:
        """`X` as a float64 table `(n, len(columns))`: a 1-D array or a Series is one row (of a one-feature
        model: a column), a number one value of a one-feature model. A DataFrame is matched to `columns`
        (default: the fitted columns) by name when the fit had names (a DataFrame `X`, or a context DataFrame),
        and must name every one of them (`select_columns`); anything else is taken by position."""
        from flows.datasets import as_array

        self._check_fitted()
        expected = self.columns_ if columns is None else columns
        try:
            import pandas as pd
        except ImportError:
            pd = None
        X = self._row_frame(X, expected)
        if pd is not None and isinstance(X, pd.DataFrame) and self._named(columns):
            X = select_columns(X, expected, name)
        frame = pd is not None and isinstance(X, (pd.DataFrame, pd.Series))
        if np.ndim(X) == 0 and len(expected) == 1:  # one value of a one-feature model
            X = np.reshape(np.asarray(X), (1, 1))
        if np.ndim(X) == 1 and not frame:  # one row; a column for a one-feature model (as `fit` reads it)
            X = np.asanyarray(X)  # (a masked row stays masked)
            X = X[:, None] if len(expected) == 1 else X[None, :]
        rows, _ = as_array(X, name, min_rows=1, categorical=columns is None)
        if rows.shape[1] != len(expected):
            raise ValueError(
                f"{name} has {rows.shape[1]} features, but the estimator was fitted on {len(expected)}"
                + (f" ({expected})" if name != "X" else "")
            )
        return rows

    @staticmethod
    def _row_frame(X: Any, expected: list[str]) -> Any:
        """A pandas Series given to a model of several columns as one row: a one-row DataFrame (named by the
        Series' index, e.g. `df.iloc[0]`, else by position), its columns' dtypes inferred again (a row of a
        mixed frame is an object Series). Anything else as it is."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - without pandas
            return X
        if not isinstance(X, pd.Series) or len(expected) < 2:
            return X
        row = X.to_frame().T.infer_objects()
        if not set(expected) <= {str(i) for i in X.index}:
            row.columns = range(row.shape[1])  # unnamed: by position
        return row

    def _named(self, columns: Optional[list[str]]) -> bool:
        """Whether `columns` (None: the fitted columns of `X`) are names the data gave, not the defaults of an
        array (`x0, x1, ...` for `X`, `c0, c1, ...` for a context): an estimator fitted on a DataFrame, or
        loaded from a `flows fit` checkpoint of a table with a header."""
        names = self.columns_ if columns is None else list(columns)
        prefix = "x" if columns is None else "c"
        return names != [f"{prefix}{i}" for i in range(len(names))]

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
        if hasattr(self.flow_, "model_rows"):  # argmax / variational columns: the flow models wider rows
            rows = self.flow_.model_rows(torch.tensor(rows)).numpy()
        with torch.no_grad():  # (torch.tensor copies: the rows may be a read-only view of the caller's data)
            return copy.deepcopy(preprocessing).cpu().double()(torch.tensor(rows))[0].numpy()

    def _plan(self) -> ColumnPlan:
        """The fitted column plan (nothing declared for estimators saved before it existed)."""
        plan = getattr(self, "columns_plan_", None)
        return plan if plan is not None else ColumnPlan.from_record(None, self.n_features_in_)

    def _coded_rows(self, X: Any) -> np.ndarray:
        """`X` as a float table: category labels of a DataFrame as codes (-1 for an unknown one)."""
        self._check_fitted()
        labels = getattr(self, "categories_", {})
        X = self._row_frame(X, self.columns_)
        if labels and is_frame(X):
            X = X.copy()
            for name, values in labels.items():
                if name in X.columns:
                    X[name] = code_labels(X[name], values)
        return self._rows(X)

    def score_samples(self, X: Any, context: Any = None) -> np.ndarray:
        """Log density of each row of `X (n, D)` in the units of the training data: `(n,)` float64.

        With discrete or categorical columns: a lower bound on the log-probability mass of those columns
        plus the log density of the others (see the class docstring). Rows outside the bounds, with a
        category not seen in fit, or with a non-integer in an integer column, score `-inf`.

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
