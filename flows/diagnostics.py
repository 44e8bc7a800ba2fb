"""Importance-sampling diagnostics of a proposal q for an unnormalised target p~ (torch and numpy only).

With log weights `log w = log p~(x) - log q(x)`, x ~ q (a weight of -inf where the target has zero density):
the normalised Kish effective sample size `(Σw)² / (N Σw²)` in [0, 1]; the log-normaliser estimate
`log mean w` with its delta-method standard error `sqrt(Var w / N) / mean w`; and the Pareto k̂ of the
weights' upper tail (PSIS, Vehtari et al. 2024), with the generalized Pareto fit of Zhang & Stephens (2009).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "autocorrelation_ess",
    "effective_sample_size",
    "fit_generalized_pareto",
    "log_normalizer",
    "pareto_k",
    "weight_summary",
]

ArrayLike = Union[Tensor, np.ndarray]


def _log_weights(log_w: ArrayLike) -> Tensor:
    lw = torch.as_tensor(log_w, dtype=torch.float64).reshape(-1)
    if lw.numel() == 0:
        raise ValueError("expected at least one log weight, got none")
    if torch.isnan(lw).any() or (lw == math.inf).any():
        raise ValueError("log weights must be finite or -inf (zero density); got NaN or +inf")
    return lw


def effective_sample_size(log_w: ArrayLike) -> float:
    """Normalised Kish ESS `(Σw)² / (N Σw²)` of log weights `(N,)`; 0 when every weight is zero."""
    lw = _log_weights(log_w)
    if (lw == -math.inf).all():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0) - math.log(lw.numel())))


def log_normalizer(log_w: ArrayLike) -> tuple[float, float]:
    """`(log mean w, standard error)` from log weights `(N,)`; SE by the delta method, `sqrt((1/ESS - 1)/N)`
    with the unbiased variance (`inf` for N = 1 or all-zero weights)."""
    lw = _log_weights(log_w)
    n = lw.numel()
    if (lw == -math.inf).all():
        return -math.inf, math.inf
    estimate = float(torch.logsumexp(lw, 0) - math.log(n))
    if n < 2:
        return estimate, math.inf
    w = torch.exp(lw - lw.max())
    relative_variance = float(w.var(unbiased=True) / w.mean() ** 2)
    return estimate, math.sqrt(relative_variance / n)


def fit_generalized_pareto(x: ArrayLike) -> tuple[float, float]:
    """`(k, sigma)` of a generalized Pareto fitted to exceedances `x > 0` (`(n,)`, n >= 5), by the
    profile-likelihood quadrature of Zhang & Stephens (2009) with the weakly informative prior on k used
    by PSIS (Vehtari et al.; shrinks k toward 0.5 by 10 / (n + 10))."""
    values = np.sort(np.asarray(torch.as_tensor(x, dtype=torch.float64).reshape(-1).numpy()))
    n = values.size
    if n < 5 or not np.all(np.isfinite(values)) or values[0] < 0:
        raise ValueError(
            f"expected at least 5 finite non-negative exceedances, got {n} values (min {values[:1]})"
        )
    prior = 3.0
    m = 30 + int(np.sqrt(n))
    b = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (prior * values[int(n / 4 + 0.5) - 1]) + 1.0 / values[-1]
    k = np.log1p(-b[:, None] * values[None, :]).mean(1)  # profile k(b) = mean log(1 - b x)
    profile = n * (np.log(-b / k) - k - 1.0)
    weights = np.exp(profile - profile.max())  # posterior weights of the b grid, 1 / sum_j exp(L_j - L_i)
    weights = weights / weights.sum()
    keep = weights >= 10 * np.finfo(float).eps
    weights, b = weights[keep] / weights[keep].sum(), b[keep]
    b_hat = float(np.sum(b * weights))
    k_hat = float(np.mean(np.log1p(-b_hat * values)))
    sigma = -k_hat / b_hat
    a = 10.0
    k_hat = k_hat * n / (n + a) + a * 0.5 / (n + a)
    return k_hat, float(sigma)


def pareto_k(log_w: ArrayLike) -> float:
    """PSIS Pareto k̂ of log weights `(N,)`: the generalized Pareto shape fitted to the `M = min(N/5, 3√N)`
    largest weights above the next one (k̂ < 0.7: the importance-sampling estimates are reliable). NaN when
    fewer than 5 tail weights are positive and distinct."""
    lw = _log_weights(log_w)
    finite = lw[lw > -math.inf]
    n = lw.numel()
    tail = int(min(0.2 * n, 3 * math.sqrt(n)))
    if tail < 5 or finite.numel() <= tail:
        return math.nan
    ordered = torch.sort(finite).values
    top, threshold = ordered[-tail:], ordered[-tail - 1]
    peak = top[-1]
    exceed = torch.exp(top - peak) - torch.exp(threshold - peak)
    if float(exceed.max()) <= 0:
        return math.nan
    return fit_generalized_pareto(exceed)[0]


def autocorrelation_ess(chains: ArrayLike) -> Tensor:
    """Effective sample size per coordinate `(D,)` of MCMC chains `(n_steps, n_chains, D)`: total draws over
    the integrated autocorrelation time `tau = -1 + 2 Σ_k (ρ_2k + ρ_2k+1)`, summed while the pair sums stay
    positive (Geyer's initial positive sequence); ρ from FFT autocovariances averaged over the chains, each
    centred on the mean of all chains."""
    x = torch.as_tensor(chains, dtype=torch.float64)
    if x.dim() == 2:
        x = x[..., None]
    if x.dim() != 3 or x.shape[0] < 4:
        raise ValueError(f"expected chains of shape (n_steps >= 4, n_chains, D), got {tuple(x.shape)}")
    steps, n_chains, _ = x.shape
    centred = x - x.mean((0, 1), keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * steps, dim=0)
    autocovariance = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * steps, dim=0)[:steps] / steps
    rho = autocovariance.mean(1)  # (steps, D)
    rho = rho / rho[:1].clamp_min(1e-300)
    pairs = rho[0 : steps - 1 : 2] + rho[1:steps:2]  # (steps // 2, D)
    positive = torch.cumprod((pairs > 0).double(), 0)  # stop at the first non-positive pair
    tau = (-1.0 + 2.0 * (pairs * positive).sum(0)).clamp_min(1.0 / (steps * n_chains))
    return steps * n_chains / tau


def weight_summary(log_w: ArrayLike) -> dict[str, float]:
    """ESS, log Z ± SE, Pareto k̂ and the fraction of zero weights of log weights `(N,)`, as a dict."""
    lw = _log_weights(log_w)
    estimate, error = log_normalizer(lw)
    return {
        "ess": effective_sample_size(lw),
        "log_z": estimate,
        "log_z_se": error,
        "pareto_k": pareto_k(lw),
        "zero_weight_fraction": float((lw == -math.inf).double().mean()),
        "samples": int(lw.numel()),
    }
