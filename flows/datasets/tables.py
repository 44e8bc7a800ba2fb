"""Real tables bundled with scikit-learn (no network needed): wine, breast_cancer, digits."""

from __future__ import annotations

import numpy as np

__all__ = ["SKLEARN_TABLES", "DISCRETE_SKLEARN_TABLES", "load_sklearn_table"]

#: name -> (sklearn loader name, shape of the feature matrix)
SKLEARN_TABLES: dict[str, tuple[str, tuple[int, int]]] = {
    "wine": ("load_wine", (178, 13)),
    "breast_cancer": ("load_breast_cancer", (569, 30)),
    "digits": ("load_digits", (1797, 64)),
}

#: Tables whose values are integers (digits: 8x8 pixels in 0..16); dequantise (add U[0, 1) noise) before
#: fitting a density, otherwise the likelihood is unbounded on the discrete points.
DISCRETE_SKLEARN_TABLES: frozenset[str] = frozenset({"digits"})


def load_sklearn_table(name: str) -> np.ndarray:
    """Feature matrix of a scikit-learn bundled table, float64 of shape (n, D); labels are discarded.

    ``digits`` is the 64-D table of 8x8 images with integer pixel values 0..16 (see DISCRETE_SKLEARN_TABLES).
    """
    if name not in SKLEARN_TABLES:
        raise ValueError(f"unknown scikit-learn table {name!r}; expected one of {sorted(SKLEARN_TABLES)}")
    try:
        import sklearn.datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"load_sklearn_table({name!r}) needs scikit-learn; install it with `pip install scikit-learn` "
            "(or the project's data extra)"
        ) from err
    loader = getattr(sklearn.datasets, SKLEARN_TABLES[name][0])
    return np.ascontiguousarray(loader().data, dtype=np.float64)
