"""Property-based fuzzing of `DensityEstimator` on untrusted tables (issue #10).

Every call either returns a result of the documented shape with no NaN, or raises a TypeError/ValueError
whose message says what was expected. Fitting is slow, so a few tiny estimators are fitted once per module
and `score_samples` / `score` / `sample` are fuzzed on them; `fit` is fuzzed only on inputs refused before
training, plus a couple of tiny real fits.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.training.estimator import DensityEstimator

FAST = {"max_epochs": 1, "batch_size": 64, "trainer": {"accelerator": "cpu"}, "num_threads": 1}
TINY_NSF = {"transforms": 1, "hidden_features": [8], "residual_blocks": 0, "bins": 3}
FEATURES = 3
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: words that an error message uses to say what was expected (or what was wrong with what came)
EXPLAINS = (
    "expected",
    "must",
    "needs",
    "non-numeric",
    "features",
    "NaN",
    "infinite",
    "empty",
    "rectangular",
    "range",
    "positive integer",
    "random_state",
)


@pytest.fixture(scope="module")
def estimators() -> dict[str, DensityEstimator]:
    """A tiny Gaussian and a tiny NSF, each fitted on 3 columns of different scales."""
    rows = np.random.default_rng(0).normal(size=(128, FEATURES)) * [1.0, 1e3, 1e-3] + [0.0, -50.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "gaussian": DensityEstimator("gaussian", **FAST).fit(rows),
            "nsf": DensityEstimator("nsf", **FAST, **TINY_NSF).fit(rows),
        }


def _explained(error: Exception) -> None:
    assert isinstance(error, (TypeError, ValueError)), repr(error)
    message = str(error)
    assert any(word in message for word in EXPLAINS), message


MAGNITUDES = st.sampled_from([0.0, 1e-300, 1e-8, 1.0, 1e8, 1e30, 1e38, 1e39, 1e300])
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def tables(draw: Any, min_columns: int = 1, max_columns: int = 6) -> Any:
    """Tables of many kinds: numpy of every dtype, 1-D arrays, DataFrames with mixed columns, lists."""
    n, d = draw(st.integers(0, 300)), draw(st.integers(min_columns, max_columns))
    kind = draw(
        st.sampled_from(["float64", "float32", "int", "bool", "complex", "object", "frame", "1d", "list"])
    )
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, d)) * draw(MAGNITUDES)
    if n and draw(st.booleans()):  # a few special values
        for _ in range(draw(st.integers(1, 3))):
            values[rng.integers(n), rng.integers(d)] = draw(SPECIALS)
    if kind == "float32":
        with np.errstate(over="ignore"):
            return values.astype(np.float32)
    if kind == "int":
        return rng.integers(-5, 5, size=(n, d))
    if kind == "bool":
        return rng.integers(0, 2, size=(n, d)).astype(bool)
    if kind == "complex":
        return values + 1j * rng.normal(size=(n, d))
    if kind == "object":
        out = values.astype(object)
        if n:
            out[rng.integers(n), rng.integers(d)] = draw(st.sampled_from(["x", "1.5", None, b"2"]))
        return out
    if kind == "frame":
        frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(d)])
        extra = draw(st.sampled_from(["none", "text", "complex", "int", "bool"]))
        if extra == "text":
            frame["name"] = ["a"] * n
        elif extra == "complex":
            frame["z"] = values[:, 0] + 1j
        elif extra == "int":
            frame["k"] = np.arange(n)
        elif extra == "bool":
            frame["flag"] = np.arange(n) % 2 == 0
        return frame
    if kind == "1d":
        return values[:, 0]
    return values.tolist()


def _check_scores(estimator: DensityEstimator, table: Any) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = estimator.score_samples(table)
    except Exception as error:  # noqa: BLE001 - the property: only explained Type/ValueErrors
        _explained(error)
        return
    n = 1 if np.ndim(table) == 1 and not isinstance(table, pd.Series) else len(table)
    assert scores.shape == (n,) and scores.dtype == np.float64
    assert not np.isnan(scores).any(), scores
    assert np.all(scores < np.inf)


@SETTINGS
@given(table=tables(2, 4), model=st.sampled_from(["gaussian", "nsf"]))
def test_score_samples_gives_scores_or_explained_errors(
    estimators: dict[str, DensityEstimator], table: Any, model: str
) -> None:
    _check_scores(estimators[model], table)


@SETTINGS
@given(
    rows=st.integers(1, 200),
    magnitude=MAGNITUDES,
    signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=FEATURES, max_size=FEATURES),
    model=st.sampled_from(["gaussian", "nsf"]),
)
def test_far_rows_score_finite_or_minus_inf(
    estimators: dict[str, DensityEstimator], rows: int, magnitude: float, signs: list[float], model: str
) -> None:
    """Right-width numeric tables up to 1e300: always scores, never NaN (far rows are -inf)."""
    table = np.random.default_rng(rows).normal(size=(rows, FEATURES)) * magnitude * np.asarray(signs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = estimators[model].score_samples(table)
    assert scores.shape == (rows,) and not np.isnan(scores).any() and np.all(scores < np.inf)
    mean = estimators[model].score(table)
    assert not np.isnan(mean)


@SETTINGS
@given(
    count=st.one_of(st.integers(-3, 50), st.floats(-2, 5), st.booleans(), st.none()),
    seed=st.one_of(st.none(), st.integers(0, 2**31 - 1), st.text(max_size=3)),
    model=st.sampled_from(["gaussian", "nsf"]),
)
def test_sample_gives_rows_or_explained_errors(
    estimators: dict[str, DensityEstimator], count: Any, seed: Any, model: str
) -> None:
    try:
        samples = estimators[model].sample(count, random_state=seed)
    except Exception as error:  # noqa: BLE001
        _explained(error)
        return
    assert samples.shape == (count, FEATURES) and samples.dtype == np.float64
    assert not np.isnan(samples).any()


def _refused_before_training(table: Any) -> bool:
    """Tables that `fit` must refuse before training (fast): anything but a clean real 2-D table."""
    if isinstance(table, pd.DataFrame):
        numeric = all(pd.api.types.is_numeric_dtype(table[c]) for c in table.columns)
        complex_ = any(pd.api.types.is_complex_dtype(table[c]) for c in table.columns)
        values = (
            table.select_dtypes("number").to_numpy(dtype=np.float64) if numeric and not complex_ else None
        )
    else:
        array = np.asarray(table)
        if np.iscomplexobj(array):
            return True
        try:
            values = array.astype(np.float64)
        except (TypeError, ValueError):
            return True
    if values is None or values.size == 0 or len(values) < 2:
        return True
    return not np.isfinite(values).all() or float(np.max(np.abs(values))) > float(np.finfo(np.float32).max)


@SETTINGS
@given(table=tables().filter(_refused_before_training))
def test_fit_refuses_bad_tables_with_explained_errors(table: Any) -> None:
    estimator = DensityEstimator("gaussian", **FAST)
    with pytest.raises((TypeError, ValueError)) as caught:
        estimator.fit(table)
    _explained(caught.value)
    assert not hasattr(estimator, "flow_")


@pytest.mark.parametrize(
    "table",
    [
        np.random.default_rng(1).integers(0, 3, size=(40, 2)).astype(bool),
        pd.DataFrame({"a": np.arange(40.0), "k": np.arange(40) % 3}),
        np.random.default_rng(2).normal(size=40) * 1e30,
    ],
    ids=["bool", "mixed-frame", "1d-1e30"],
)
def test_tiny_real_fits_score_without_nan(table: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = DensityEstimator("gaussian", **FAST).fit(table)
        scores = estimator.score_samples(table)
    assert scores.shape == (len(table),) and np.isfinite(scores).all()
    samples = estimator.sample(7, random_state=0)
    assert isinstance(samples, pd.DataFrame) == isinstance(table, pd.DataFrame)  # DataFrame in, DataFrame out
    samples = np.asarray(samples, dtype=np.float64)
    assert samples.shape == (7, estimator.n_features_in_) and not np.isnan(samples).any()
