"""A synthetic conditional target with an exact conditional density p(y | c) (numpy/scipy only).

`ConditionalMixture`: context `c ~ U(low, high)^k`; given `c`, `y` in R^D is a mixture of `components`
axis-aligned Gaussians whose weights, means and scales are smooth non-linear functions of `c`:

    logit_j(c)   = 2 sin(a_j . c + p_j)
    mu_jd(c)     = m_jd + sin(f_jd . c + q_jd)
    sigma_jd(c)  = 0.15 + 0.35 sigmoid(g_jd . c)

with `a, f, g ~ N(0, 1)`, phases `p, q ~ U(0, 2 pi)` and centres `m ~ N(0, spread^2)`, all fixed by `seed`.
Rows of the generated table are `[y_0 .. y_{D-1}, c_0 .. c_{k-1}]` (columns `y*`, then `c*`); `log_prob`
of such rows is `log p(y | c)`, so `entropy()` is the conditional entropy `E_c[H(y | c)]`, the best
achievable expected test NLL of a model of `y` given `c`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit, log_softmax, logsumexp

from flows.datasets.synthetic import _check_positive_int, _mc_entropy

__all__ = ["ConditionalMixture"]


class ConditionalMixture:
    """y | c: a Gaussian mixture with context-dependent weights, means and scales (see the module docstring)."""

    def __init__(
        self,
        features: int = 2,
        context_features: int = 1,
        components: int = 3,
        seed: int = 0,
        spread: float = 1.5,
        low: float = -2.0,
        high: float = 2.0,
    ) -> None:
        self.y_features = _check_positive_int(features, "features")
        self.context_features = _check_positive_int(context_features, "context_features")
        self.components = _check_positive_int(components, "components")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"expected finite low < high for the context range, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        #: width of the generated table `[y, c]`
        self.features = self.y_features + self.context_features
        self.columns = [f"y{i}" for i in range(self.y_features)] + [
            f"c{i}" for i in range(self.context_features)
        ]
        self.context_columns = self.columns[self.y_features :]
        rng = np.random.default_rng(seed)
        k, d, j = self.context_features, self.y_features, self.components
        self._a = rng.standard_normal((j, k))
        self._p = rng.uniform(0.0, 2.0 * math.pi, size=j)
        self._m = spread * rng.standard_normal((j, d))
        self._f = rng.standard_normal((j, d, k))
        self._q = rng.uniform(0.0, 2.0 * math.pi, size=(j, d))
        self._g = rng.standard_normal((j, d, k))

    def parameters(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixture log-weights `(n, J)`, means `(n, J, D)` and scales `(n, J, D)` at contexts `c (n, k)`."""
        c = self._check(c, self.context_features, "contexts")
        log_weights = log_softmax(2.0 * np.sin(c @ self._a.T + self._p), axis=1)
        means = self._m + np.sin(np.einsum("jdk,nk->njd", self._f, c) + self._q)
        scales = 0.15 + 0.35 * expit(np.einsum("jdk,nk->njd", self._g, c))
        return log_weights, means, scales

    @staticmethod
    def _check(x: np.ndarray, width: int, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected {name} of shape (n, {width}), got shape {x.shape}")
        return x

    def sample_context(self, n: int, seed: int) -> np.ndarray:
        """`n` contexts `(n, k)` from U(low, high)^k."""
        n = _check_positive_int(n, "n")
        return np.random.default_rng(seed).uniform(self.low, self.high, size=(n, self.context_features))

    def sample_given(self, c: np.ndarray, seed: int) -> np.ndarray:
        """One `y` per context row: `(n, D)` for `c (n, k)`."""
        log_weights, means, scales = self.parameters(c)
        rng = np.random.default_rng(seed)
        cumulative = np.cumsum(np.exp(log_weights), axis=1)
        pick = (rng.uniform(size=(c.shape[0], 1)) * cumulative[:, -1:] > cumulative).sum(axis=1)
        pick = np.minimum(pick, self.components - 1)
        rows = np.arange(c.shape[0])
        return means[rows, pick] + scales[rows, pick] * rng.standard_normal((c.shape[0], self.y_features))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """`n` joint rows `[y, c]` of shape `(n, D + k)`."""
        c = self.sample_context(n, seed)
        return np.concatenate([self.sample_given(c, seed + 1_000_003), c], axis=1)

    def conditional_log_prob(self, y: np.ndarray, c: np.ndarray) -> np.ndarray:
        """`log p(y | c)` for `y (n, D)`, `c (n, k)`; returns `(n,)`."""
        y = self._check(y, self.y_features, "points")
        log_weights, means, scales = self.parameters(c)
        if y.shape[0] != log_weights.shape[0]:
            raise ValueError(
                f"expected as many contexts as points, got {log_weights.shape[0]} and {y.shape[0]}"
            )
        z = (y[:, None, :] - means) / scales
        per = -0.5 * (z**2).sum(-1) - np.log(scales).sum(-1) - 0.5 * self.y_features * math.log(2.0 * math.pi)
        return logsumexp(per + log_weights, axis=1)

    def log_prob(self, rows: np.ndarray) -> np.ndarray:
        """`log p(y | c)` of joint rows `[y, c]` `(n, D + k)`; returns `(n,)`."""
        rows = self._check(rows, self.features, "rows [y, c]")
        return self.conditional_log_prob(rows[:, : self.y_features], rows[:, self.y_features :])

    def entropy(self, n_mc: int = 100_000, seed: int = 0) -> tuple[float, float]:
        """Monte Carlo conditional entropy `E_c[H(y | c)]` in nats: (estimate, standard error)."""
        return _mc_entropy(self, n_mc, seed)
