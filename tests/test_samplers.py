"""Importance resampling reproduces a known Gaussian; zero weights are never drawn (MCMC: test_mcmc.py)."""

from __future__ import annotations

import math

import pytest
import torch

from flows.samplers import importance_resample


def test_importance_resampling_reproduces_the_target() -> None:
    generator = torch.Generator().manual_seed(2)
    x = 0.5 + 1.5 * torch.randn(200_000, 1, generator=generator, dtype=torch.float64)
    log_q = -0.5 * ((x[:, 0] - 0.5) / 1.5) ** 2 - math.log(1.5)
    log_w = -0.5 * x[:, 0] ** 2 - log_q
    log_w[:10] = -math.inf
    resampled = importance_resample(x, log_w, 50_000, generator)
    assert abs(float(resampled.mean())) < 0.02 and abs(float(resampled.var()) - 1) < 0.03
    with pytest.raises(ValueError, match=r"shape \(200000,\)"):
        importance_resample(x, log_w[:5], 3)
    with pytest.raises(ValueError, match="every weight is zero"):
        importance_resample(x[:3], torch.full((3,), -math.inf), 3)
