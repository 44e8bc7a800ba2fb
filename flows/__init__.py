"""flows: normalizing flows for density estimation in PyTorch.

The core (bijectors, distributions, `Flow`, presets, kernels) imports torch only. The training layer
(`flows.training`: Lightning module, data, estimator, CLI) sits above it and is imported lazily. The public
names below are imported on first access too, so that `import flows` (and the `flows` command line, whose
`--help` needs neither) does not import torch until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows._lazy import lazy_attributes

if TYPE_CHECKING:
    from flows.bijectors import Coupling, ImageCoupling, MaskedAutoregressive
    from flows.bijectors.conv import Invertible1x1Conv
    from flows.bijectors.elementwise import ElementwiseAffine, Logit, Sigmoid, Standardize, Tanh
    from flows.bijectors.linear import LULinear, Permutation
    from flows.bijectors.normalization import ActNorm, BatchNorm
    from flows.bijectors.reshape import MultiscaleSplit, Squeeze
    from flows.bijectors.support import ColumnSupport
    from flows.column_dequantization import ColumnDequantizedFlow
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
        FullGaussianMixture,
        GaussianMixture,
        StandardNormal,
        StudentT,
        make_base,
    )
    from flows.flow import Flow
    from flows.presets import MAF, NSF, RealNVP
    from flows.presets_image import Glow, RealNVPImage
    from flows.presets_transformer import Jet, TarFlow
    from flows.training.estimator import DensityEstimator
    from flows.transformers import Additive, Affine, Spline, Transformer, make_transformer

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "BatchNorm",
    "ColumnDequantizedFlow",
    "ColumnSupport",
    "ElementwiseAffine",
    "Glow",
    "Jet",
    "TarFlow",
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
    "FullGaussianMixture",
    "GaussianMixture",
    "ImageCoupling",
    "MAF",
    "MaskedAutoregressive",
    "guided",
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


#: public name -> the module that defines it (imported on first access: `import flows` stays cheap)
_LAZY = {
    "Coupling": "flows.bijectors",
    "ImageCoupling": "flows.bijectors",
    "MaskedAutoregressive": "flows.bijectors",
    "guided": "flows.bijectors",
    "Invertible1x1Conv": "flows.bijectors.conv",
    "ElementwiseAffine": "flows.bijectors.elementwise",
    "Logit": "flows.bijectors.elementwise",
    "Sigmoid": "flows.bijectors.elementwise",
    "Standardize": "flows.bijectors.elementwise",
    "Tanh": "flows.bijectors.elementwise",
    "LULinear": "flows.bijectors.linear",
    "Permutation": "flows.bijectors.linear",
    "ActNorm": "flows.bijectors.normalization",
    "BatchNorm": "flows.bijectors.normalization",
    "MultiscaleSplit": "flows.bijectors.reshape",
    "Squeeze": "flows.bijectors.reshape",
    "ColumnDequantizedFlow": "flows.column_dequantization",
    "ColumnSupport": "flows.bijectors.support",
    "Bijector": "flows.core",
    "Chain": "flows.core",
    "Inverse": "flows.core",
    "DequantizedFlow": "flows.dequantization",
    "LogitPreprocessing": "flows.dequantization",
    "UniformDequantization": "flows.dequantization",
    "VariationalDequantization": "flows.dequantization",
    "bits_per_dim": "flows.dequantization",
    "discrete_log_likelihood_bound": "flows.dequantization",
    "ConditionalDiagonalNormal": "flows.distributions",
    "ConditionalGaussianMixture": "flows.distributions",
    "ConditionalStudentT": "flows.distributions",
    "DiagonalNormal": "flows.distributions",
    "Distribution": "flows.distributions",
    "FullGaussianMixture": "flows.distributions",
    "GaussianMixture": "flows.distributions",
    "StandardNormal": "flows.distributions",
    "StudentT": "flows.distributions",
    "make_base": "flows.distributions",
    "Flow": "flows.flow",
    "MAF": "flows.presets",
    "NSF": "flows.presets",
    "RealNVP": "flows.presets",
    "Glow": "flows.presets_image",
    "RealNVPImage": "flows.presets_image",
    "TarFlow": "flows.presets_transformer",
    "Jet": "flows.presets_transformer",
    "Additive": "flows.transformers",
    "Affine": "flows.transformers",
    "Spline": "flows.transformers",
    "Transformer": "flows.transformers",
    "make_transformer": "flows.transformers",
    "DensityEstimator": "flows.training.estimator",
    "VariationalSampler": "flows.training.sampler",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
