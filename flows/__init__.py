"""flows: normalizing flows for density estimation in PyTorch.

The core (bijectors, distributions, `Flow`, presets, kernels) imports torch only. The training layer
(`flows.training`: Lightning module, data, estimator, CLI) sits above it and is imported lazily.
"""

from __future__ import annotations

from flows.bijectors import Coupling, ImageCoupling, MaskedAutoregressive
from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.elementwise import ElementwiseAffine, Logit, Sigmoid, Standardize, Tanh
from flows.bijectors.linear import LULinear, Permutation
from flows.bijectors.normalization import ActNorm, BatchNorm
from flows.bijectors.reshape import MultiscaleSplit, Squeeze
from flows.core import Bijector, Chain, Inverse
from flows.dequantization import (
    DequantizedFlow,
    LogitPreprocessing,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    discrete_log_likelihood_bound,
)
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
from flows.presets import MAF, NSF, RealNVP
from flows.presets_image import Glow, RealNVPImage
from flows.transformers import Additive, Affine, Spline, Transformer, make_transformer

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "BatchNorm",
    "ElementwiseAffine",
    "Glow",
    "Invertible1x1Conv",
    "LULinear",
    "Logit",
    "MultiscaleSplit",
    "Permutation",
    "RealNVPImage",
    "Sigmoid",
    "Squeeze",
    "Standardize",
    "Tanh",
    "DequantizedFlow",
    "LogitPreprocessing",
    "UniformDequantization",
    "VariationalDequantization",
    "bits_per_dim",
    "discrete_log_likelihood_bound",
    "Additive",
    "Affine",
    "Bijector",
    "Chain",
    "Coupling",
    "ConditionalDiagonalNormal",
    "ConditionalGaussianMixture",
    "ConditionalStudentT",
    "DiagonalNormal",
    "Distribution",
    "Flow",
    "GaussianMixture",
    "ImageCoupling",
    "MAF",
    "MaskedAutoregressive",
    "NSF",
    "RealNVP",
    "StandardNormal",
    "StudentT",
    "Inverse",
    "Spline",
    "Transformer",
    "__version__",
    "make_base",
    "make_transformer",
    "DensityEstimator",
    "VariationalSampler",
]


def __getattr__(name: str) -> object:
    """Lazy access to the training layer, so that `import flows` never imports lightning."""
    if name == "DensityEstimator":
        from flows.training.estimator import DensityEstimator

        return DensityEstimator
    if name == "VariationalSampler":
        from flows.training.sampler import VariationalSampler

        return VariationalSampler
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
