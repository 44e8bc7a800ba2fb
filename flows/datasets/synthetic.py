"""Synthetic targets with a known density: sample, log-density and entropy (numpy/scipy only)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from scipy.special import gammaln, logsumexp, psi

__all__ = [
    "SYNTHETIC_TARGETS",
    "GaussianMixture",
    "MultivariateStudentT",
    "SyntheticTarget",
    "make_synthetic_target",
    "random_covariance",
]


class SyntheticTarget(Protocol):
    """A distribution on R^D with tractable sampling and log-density."""

    features: int

    def sample(self, n: int, seed: int) -> np.ndarray: ...

    def log_prob(self, x: np.ndarray) -> np.ndarray: ...

    def entropy(self, n_mc: int = ..., seed: int = ...) -> tuple[float, float]: ...


def random_covariance(
    rng: np.random.Generator, features: int, min_scale: float = 0.5, max_scale: float = 1.5
) -> np.ndarray:
    """Random rotation times random axis scales: ``Q diag(s^2) Q^T``, shape (D, D), condition <= (max/min)^2."""
    q, r = np.linalg.qr(rng.standard_normal((features, features)))
    q = q * np.sign(np.diag(r))  # Haar-distributed rotation
    scales = rng.uniform(min_scale, max_scale, size=features)
    cov = (q * scales**2) @ q.T
    return 0.5 * (cov + cov.T)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_points(x: np.ndarray, features: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != features:
        raise ValueError(f"expected points of shape (n, {features}), got shape {x.shape}")
    return x


def _mc_entropy(target: SyntheticTarget, n_mc: int, seed: int) -> tuple[float, float]:
    """Monte Carlo estimate of -E[log p(x)] and its standard error."""
    n_mc = _check_positive_int(n_mc, "n_mc")
    if n_mc < 2:
        raise ValueError(f"n_mc must be >= 2 to give a standard error, got {n_mc}")
    lp = target.log_prob(target.sample(n_mc, seed))
    return float(-lp.mean()), float(lp.std(ddof=1) / math.sqrt(n_mc))


def _gaussian_log_prob(x: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log N(x; mean, L L^T) for x (n, D), mean (D,), chol (D, D) lower; returns (n,)."""
    z = np.linalg.solve(chol, (x - mean).T)  # (D, n)
    d = x.shape[1]
    half_logdet = np.log(np.diag(chol)).sum()
    return -0.5 * (z**2).sum(axis=0) - half_logdet - 0.5 * d * math.log(2.0 * math.pi)


class GaussianMixture:
    """Mixture of ``components`` full-covariance Gaussians in ``features`` dimensions.

    Means are N(0, spread^2 I); covariances are random rotations times axis scales in [0.5, 1.5]; weights are
    proportional to Uniform(0.5, 1.5) draws. All parameters are fixed by ``seed``.
    """

    def __init__(self, features: int, components: int, seed: int = 0, spread: float = 2.0) -> None:
        self.features = _check_positive_int(features, "features")
        self.components = _check_positive_int(components, "components")
        rng = np.random.default_rng(seed)
        w = rng.uniform(0.5, 1.5, size=self.components)
        self.weights: np.ndarray = w / w.sum()  # (K,)
        self.means: np.ndarray = spread * rng.standard_normal((self.components, self.features))  # (K, D)
        self.covariances: np.ndarray = np.stack(
            [random_covariance(rng, self.features) for _ in range(self.components)]
        )  # (K, D, D)
        self._chols = np.linalg.cholesky(self.covariances)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Draw ``n`` points, shape (n, D) float64."""
        n = _check_positive_int(n, "n")
        rng = np.random.default_rng(seed)
        idx = rng.choice(self.components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.features))
        return self.means[idx] + np.einsum("nij,nj->ni", self._chols[idx], z)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log-density of points x (n, D); returns (n,)."""
        x = _check_points(x, self.features)
        per = np.stack(
            [_gaussian_log_prob(x, self.means[k], self._chols[k]) for k in range(self.components)], axis=1
        )  # (n, K)
        return logsumexp(per + np.log(self.weights), axis=1)

    def entropy(self, n_mc: int = 100_000, seed: int = 0) -> tuple[float, float]:
        """Monte Carlo entropy in nats: (estimate, standard error); no closed form exists."""
        return _mc_entropy(self, n_mc, seed)


class MultivariateStudentT:
    """Multivariate Student-t with ``df`` degrees of freedom, random location and random shape matrix."""

    def __init__(self, features: int, df: float, seed: int = 0) -> None:
        self.features = _check_positive_int(features, "features")
        if not np.isfinite(df) or df <= 0:
            raise ValueError(f"df must be a positive finite number, got {df!r}")
        self.df = float(df)
        rng = np.random.default_rng(seed)
        self.loc: np.ndarray = rng.standard_normal(self.features)  # (D,)
        self.shape: np.ndarray = random_covariance(rng, self.features)  # (D, D)
        self._chol = np.linalg.cholesky(self.shape)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Draw ``n`` points, shape (n, D) float64: loc + L z / sqrt(chi2_df / df)."""
        n = _check_positive_int(n, "n")
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.features)) @ self._chol.T
        u = rng.chisquare(self.df, size=n) / self.df
        return self.loc + z / np.sqrt(u)[:, None]

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log-density of points x (n, D); returns (n,)."""
        x = _check_points(x, self.features)
        d, nu = self.features, self.df
        z = np.linalg.solve(self._chol, (x - self.loc).T)
        maha = (z**2).sum(axis=0)
        norm = (
            gammaln(0.5 * (nu + d))
            - gammaln(0.5 * nu)
            - 0.5 * d * math.log(nu * math.pi)
            - np.log(np.diag(self._chol)).sum()
        )
        return norm - 0.5 * (nu + d) * np.log1p(maha / nu)

    def exact_entropy(self) -> float:
        """Closed-form differential entropy in nats."""
        d, nu = self.features, self.df
        half_logdet = float(np.log(np.diag(self._chol)).sum())
        return float(
            half_logdet
            + 0.5 * d * math.log(nu * math.pi)
            + gammaln(0.5 * nu)
            - gammaln(0.5 * (nu + d))
            + 0.5 * (nu + d) * (psi(0.5 * (nu + d)) - psi(0.5 * nu))
        )

    def entropy(self, n_mc: int = 0, seed: int = 0) -> tuple[float, float]:
        """Entropy in nats: closed form with standard error 0 when ``n_mc == 0``, else a Monte Carlo estimate."""
        if n_mc == 0:
            return self.exact_entropy(), 0.0
        return _mc_entropy(self, n_mc, seed)


#: Named synthetic targets; construct with explicit keyword arguments (see each class's signature).
#: (`flows.datasets` adds `conditional_mixture`, `flows.datasets.conditional.ConditionalMixture`.)
SYNTHETIC_TARGETS: dict[str, type] = {
    "gaussian_mixture": GaussianMixture,
    "student_t": MultivariateStudentT,
}


def make_synthetic_target(name: str, **kwargs: Any) -> Any:
    """Build a registered target, e.g. ``make_synthetic_target("student_t", features=4, df=3.0, seed=0)``."""
    if name not in SYNTHETIC_TARGETS:
        raise ValueError(f"unknown synthetic target {name!r}; expected one of {sorted(SYNTHETIC_TARGETS)}")
    return SYNTHETIC_TARGETS[name](**kwargs)
