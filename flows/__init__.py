"""flows: normalizing flows for density estimation in PyTorch.

The core (bijectors, distributions, `Flow`, presets, kernels) imports torch only. The training layer
(`flows.training`: Lightning module, data, estimator, CLI) sits above it and is imported lazily.
"""

from __future__ import annotations

from flows.core import Bijector, Chain, Inverse
from flows.distributions import (
    ConditionalDiagonalNormal,
    ConditionalGaussianMixture,
    ConditionalStudentT,
    DiagonalNormal,
    Distribution,
    GaussianMixture,
    StandardNormal,
    StudentT,
    make_base,
)
from flows.flow import Flow
from flows.transformers import Additive, Affine, Spline, Transformer, make_transformer

__version__ = "0.1.0"

__all__ = [
    "Additive",
    "Affine",
    "Bijector",
    "Chain",
    "ConditionalDiagonalNormal",
    "ConditionalGaussianMixture",
    "ConditionalStudentT",
    "DiagonalNormal",
    "Distribution",
    "Flow",
    "GaussianMixture",
    "StandardNormal",
    "StudentT",
    "Inverse",
    "Spline",
    "Transformer",
    "__version__",
    "make_base",
    "make_transformer",
    "DensityEstimator",
]


def __getattr__(name: str) -> object:
    """Lazy access to the training layer, so that `import flows` never imports lightning."""
    if name == "DensityEstimator":
        from flows.training.estimator import DensityEstimator

        return DensityEstimator
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
