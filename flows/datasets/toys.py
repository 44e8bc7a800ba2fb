"""FFJORD's 2-D toy distributions, re-implemented in numpy.

Each generator follows the semantics of FFJORD's ``toy_data.py`` (same shapes, scales and noise levels),
with two deliberate differences: every sample is drawn i.i.d. from a ``numpy.random.Generator`` seeded by
the caller (FFJORD's moons/circles place points on an evenly spaced angle grid, and pinwheel returns a
multiple of 5 points), and nothing depends on scikit-learn. The limiting distributions are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["TOY_ENTROPY", "TOY_NAMES", "toy_sample"]

Sampler = Callable[[np.random.Generator, int], np.ndarray]

_8G_SCALE = 4.0
_8G_STD = 0.5
_8G_DIVISOR = 1.414


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved half circles with noise 0.1, then ``2x + (-1, -0.2)``."""
    n_out = n // 2
    t = rng.uniform(0.0, np.pi, size=n)
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where((np.arange(n) < n_out)[:, None], upper, lower)
    x = x + 0.1 * rng.standard_normal((n, 2))
    x = rng.permutation(x)
    return 2.0 * x + np.array([-1.0, -0.2])


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two concentric circles (radii 1 and 0.5) with noise 0.08, scaled by 3."""
    t = rng.uniform(0.0, 2.0 * np.pi, size=n)
    radius = np.where(np.arange(n) < n // 2, 1.0, 0.5)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    x = x + 0.08 * rng.standard_normal((n, 2))
    return 3.0 * rng.permutation(x)


def eight_gaussian_centers() -> np.ndarray:
    """The 8 mixture means after FFJORD's final division by 1.414, shape (8, 2)."""
    s = 1.0 / np.sqrt(2.0)
    unit = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=float)
    return _8G_SCALE * unit / _8G_DIVISOR


def eight_gaussian_std() -> float:
    """Per-coordinate standard deviation of each 8gaussians component (0.5 / 1.414)."""
    return _8G_STD / _8G_DIVISOR


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Equal mixture of 8 isotropic Gaussians on a circle of radius 4 / 1.414."""
    idx = rng.integers(0, 8, size=n)
    return eight_gaussian_centers()[idx] + eight_gaussian_std() * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on 8 of the 16 cells of a 4x4 board of 2x2 squares covering [-4, 4]^2 (area 32)."""
    x1 = rng.uniform(0.0, 1.0, size=n) * 4.0 - 2.0
    x2 = rng.uniform(0.0, 1.0, size=n) - rng.integers(0, 2, size=n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five curved arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2."""
    n_arms, rate = 5, 0.25
    arm_angles = np.linspace(0.0, 2.0 * np.pi, n_arms, endpoint=False)
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    feats[:, 0] += 1.0
    labels = rng.integers(0, n_arms, size=n)
    angles = arm_angles[labels] + rate * np.exp(feats[:, 0])
    c, s = np.cos(angles), np.sin(angles)
    # row vector times rotation [[c, -s], [s, c]]
    out = np.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], axis=1)
    return 2.0 * out


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved spirals (540 degrees), uniform jitter 0.5, divided by 3, plus N(0, 0.1^2) noise."""
    half = n // 2
    t = np.sqrt(rng.uniform(size=(n, 1))) * 540.0 * (2.0 * np.pi) / 360.0
    dx = -np.cos(t) * t + rng.uniform(size=(n, 1)) * 0.5
    dy = np.sin(t) * t + rng.uniform(size=(n, 1)) * 0.5
    sign = np.where(np.arange(n) < half, 1.0, -1.0)[:, None]
    x = sign * np.hstack([dx, dy]) / 3.0
    x = x + 0.1 * rng.standard_normal(x.shape)
    return rng.permutation(x)


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    """Swiss roll (t in [1.5 pi, 4.5 pi]) with unit noise, coordinates (t cos t, t sin t) divided by 5."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    x = x + rng.standard_normal((n, 2))
    return x / 5.0


_SAMPLERS: dict[str, Sampler] = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "swissroll": _swissroll,
}

TOY_NAMES: tuple[str, ...] = tuple(_SAMPLERS)

#: Differential entropy in nats of each generator (the best achievable expected test NLL).
#: 8gaussians and checkerboard are exact; the rest are estimates (about +-0.01), see REFERENCE.md.
TOY_ENTROPY: dict[str, float] = {
    "8gaussians": 2.832,
    "checkerboard": float(np.log(32.0)),
    "moons": 2.394,
    "circles": 3.268,
    "pinwheel": 2.317,
    "2spirals": 2.645,
    "swissroll": 2.669,
}


def toy_sample(name: str, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` points from the toy ``name``; returns float64 array of shape (n, 2)."""
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(f"unknown toy dataset {name!r}; expected one of {list(TOY_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    x = _SAMPLERS[name](rng, int(n))
    return np.ascontiguousarray(x, dtype=np.float64)
