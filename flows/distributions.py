"""Base distributions as `nn.Module`s whose parameters and constants are parameters or buffers, so they
follow `.to(device)` and `.double()`.

Contract: `log_prob(z, context=None) -> (batch)` for `z (batch + event)`;
`rsample(sample_shape, context=None) -> sample_shape + context_batch + event` (reparameterised);
`sample` is `rsample` under `no_grad`. An unconditional distribution accepts a context and ignores it,
except that its batch shape enters the shape of samples.

Families: `StandardNormal`, `DiagonalNormal`, `StudentT` (learnable degrees of freedom per dimension, for
heavy tails), `GaussianMixture` (diagonal), and `flows.full_mixture.FullGaussianMixture` (full covariances). Each parametric family takes `context_features` (0 = unconditional): its raw
parameters then come from a small network of the context instead of free `nn.Parameter`s, through the same
`RawParameters` source, so the density and sampling code is written once. `ConditionalDiagonalNormal`,
`ConditionalStudentT` and `ConditionalGaussianMixture` are the same families with `context_features`
required. `make_base` builds any of them by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flows.distribution_base import LOG_SQRT_2PI, Distribution, Shape, as_shape
from flows.full_mixture import FullGaussianMixture
from flows.mixed_precision import run_conditioner
from flows.nn import MLP

__all__ = [
    "BASE_DISTRIBUTIONS",
    "ConditionalDiagonalNormal",
    "ConditionalGaussianMixture",
    "ConditionalStudentT",
    "DiagonalNormal",
    "Distribution",
    "FullGaussianMixture",
    "GaussianMixture",
    "ParametricDistribution",
    "RawParameters",
    "StandardNormal",
    "StudentT",
    "as_shape",
    "make_base",
    "normal_log_density",
    "student_t_log_density",
]


class StandardNormal(Distribution):
    """`N(0, I)` over an event of shape `event_shape` (an int for vectors, `(C, H, W)` for images)."""

    def __init__(self, event_shape: Shape) -> None:
        super().__init__()
        self.event_shape = as_shape(event_shape)
        self.register_buffer("_dtype_device", torch.zeros(()))

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        self._check_event(z)
        event_dims = len(self.event_shape)
        log_density = -0.5 * z.square() - LOG_SQRT_2PI
        return log_density.sum(dim=tuple(range(-event_dims, 0)))

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        reference = self._dtype_device
        shape = as_shape(sample_shape) + self._batch_shape(context) + self.event_shape
        return torch.randn(shape, dtype=reference.dtype, device=reference.device)


# --------------------------------------------------------------------------------------------------
# Parameter sources: free parameters or a network of the context
# --------------------------------------------------------------------------------------------------


class RawParameters(nn.Module):
    """The raw (unconstrained) parameters of a distribution, by name.

    With `context_features == 0` they are free `nn.Parameter`s of the shapes of `initial`; otherwise a
    multilayer perceptron maps a context `(batch_c, context_features)` to all of them at once. Its last layer
    starts at zero weights and a bias equal to `initial`, so a fresh conditional distribution equals the
    unconditional one. `forward(context)` returns `{name: batch_c + shape}` (`batch_c = ()` without network).
    """

    def __init__(
        self,
        initial: dict[str, Tensor],
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        if context_features < 0:
            raise ValueError(f"context_features must be >= 0, got {context_features}")
        self.context_features = int(context_features)
        self.shapes = {name: tuple(value.shape) for name, value in initial.items()}
        if self.context_features == 0:
            self.free = nn.ParameterDict(
                {name: nn.Parameter(value.clone()) for name, value in initial.items()}
            )
            self.network = None
        else:
            self.free = None
            flat_initial = torch.cat([value.reshape(-1) for value in initial.values()])
            self.network = MLP(self.context_features, flat_initial.numel(), tuple(hidden_features))
            with torch.no_grad():  # MLP's last layer starts at zero weights; its bias sets the start.
                self.network.network[-1].bias.copy_(flat_initial)

    def forward(self, context: Optional[Tensor] = None) -> dict[str, Tensor]:
        if self.network is None:
            return dict(self.free.items())
        if context is None:
            raise ValueError(
                f"this distribution is conditional: expected a context of shape "
                f"batch + ({self.context_features},), got None"
            )
        if context.dim() < 1 or context.shape[-1] != self.context_features:
            raise ValueError(
                f"expected a context of shape batch + ({self.context_features},), "
                f"got a tensor of shape {tuple(context.shape)}"
            )
        flat = run_conditioner(self.network, context)
        batch = tuple(context.shape[:-1])
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        pieces = torch.split(flat, sizes, dim=-1)
        return {
            name: piece.reshape(batch + shape) for (name, shape), piece in zip(self.shapes.items(), pieces)
        }


class ParametricDistribution(Distribution):
    """A family whose parameters come from a `RawParameters` source (free, or a network of the context).

    Subclasses give the initial raw parameters and implement `_log_density(z_flat, raw) -> batch` and
    `_rsample_flat(shape, raw) -> shape + (features,)` on the flattened event `(features,)`; the raw
    parameters have shapes `batch_c + own shape` and broadcast against the batch.
    """

    def __init__(
        self,
        event_shape: Shape,
        initial: dict[str, Tensor],
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.event_shape = as_shape(event_shape)
        if not self.event_shape or any(size < 1 for size in self.event_shape):
            raise ValueError(f"event_shape must be positive sizes, got {self.event_shape}")
        self.features = math.prod(self.event_shape)
        self.context_features = int(context_features)
        self.raw = RawParameters(initial, context_features, hidden_features)

    def raw_parameters(self, context: Optional[Tensor] = None) -> dict[str, Tensor]:
        """The raw parameters (e.g. `loc`, `log_scale`) for `context (batch_c, k)`, shapes `batch_c + own`."""
        return self.raw(context if self.context_features > 0 else None)

    def _flatten_event(self, z: Tensor) -> Tensor:
        self._check_event(z)
        return z.reshape(z.shape[: z.dim() - len(self.event_shape)] + (self.features,))

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        return self._log_density(self._flatten_event(z), self.raw_parameters(context))

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        shape = as_shape(sample_shape) + self._batch_shape(context)
        flat = self._rsample_flat(shape, self.raw_parameters(context))
        return flat.reshape(shape + self.event_shape)

    def _log_density(self, z: Tensor, raw: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _rsample_flat(self, shape: tuple[int, ...], raw: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


def _standard_normal(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.randn(shape, dtype=like.dtype, device=like.device)


def normal_log_density(z: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Element-wise `log N(z; loc, exp(log_scale)^2)` (broadcasting)."""
    standardized = (z - loc) * torch.exp(-log_scale)
    return -0.5 * standardized.square() - log_scale - LOG_SQRT_2PI


def student_t_log_density(z: Tensor, loc: Tensor, log_scale: Tensor, df: Tensor) -> Tensor:
    """Element-wise log density of a location-scale Student-t with `df` degrees of freedom."""
    standardized = (z - loc) * torch.exp(-log_scale)
    half_df_plus_one = 0.5 * (df + 1)
    return (
        torch.lgamma(half_df_plus_one)
        - torch.lgamma(0.5 * df)
        - 0.5 * torch.log(df * math.pi)
        - log_scale
        - half_df_plus_one * torch.log1p(standardized.square() / df)
    )


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


class DiagonalNormal(ParametricDistribution):
    """`N(loc, diag(exp(log_scale))^2)` with learnable `loc` and `log_scale` (initially `N(0, I)`).

    `event_shape` is an int for vectors or e.g. `(C, H, W)`; with `context_features > 0` the parameters are
    a function of the context (see `RawParameters`).
    """

    def __init__(
        self,
        event_shape: Shape,
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
    ) -> None:
        features = math.prod(as_shape(event_shape))
        initial = {"loc": torch.zeros(features), "log_scale": torch.zeros(features)}
        super().__init__(event_shape, initial, context_features, hidden_features)

    def _log_density(self, z: Tensor, raw: dict[str, Tensor]) -> Tensor:
        return normal_log_density(z, raw["loc"], raw["log_scale"]).sum(-1)

    def _rsample_flat(self, shape: tuple[int, ...], raw: dict[str, Tensor]) -> Tensor:
        loc, log_scale = raw["loc"], raw["log_scale"]
        noise = _standard_normal(shape + (self.features,), loc)
        return loc + torch.exp(log_scale) * noise


def _inverse_softplus(value: Tensor) -> Tensor:
    return value + torch.log(-torch.expm1(-value))


class StudentT(ParametricDistribution):
    """Independent location-scale Student-t marginals with degrees of freedom `df` per dimension.

    Heavy-tailed base for data with heavy-tailed marginals (Laszkiewicz et al. 2022, "Marginal
    tail-adaptive normalizing flows"). `df = min_df + softplus(raw_df)` is learnable per dimension when
    `learn_df`, otherwise a buffer. Sampling is reparameterised in all parameters, `df` included
    (`normal / sqrt(chi2(df) / df)` with torch's reparameterised Gamma sampler). Initially `loc = 0`,
    `scale = 1`, `df = df`. With `context_features > 0`, `loc`, `scale` and (when learnt) `df` are functions
    of the context.
    """

    def __init__(
        self,
        event_shape: Shape,
        df: float = 5.0,
        learn_df: bool = True,
        min_df: float = 0.5,
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
    ) -> None:
        if not min_df > 0:
            raise ValueError(f"min_df must be > 0, got {min_df}")
        if not df > min_df:
            raise ValueError(f"df must be > min_df = {min_df}, got {df}")
        features = math.prod(as_shape(event_shape))
        initial = {"loc": torch.zeros(features), "log_scale": torch.zeros(features)}
        raw_df = _inverse_softplus(torch.full((features,), float(df) - float(min_df), dtype=torch.float64))
        if learn_df:
            initial["raw_df"] = raw_df.float()
        super().__init__(event_shape, initial, context_features, hidden_features)
        self.learn_df = bool(learn_df)
        self.min_df = float(min_df)
        if not learn_df:
            self.register_buffer("fixed_df", torch.full((features,), float(df)))

    def degrees_of_freedom(self, context: Optional[Tensor] = None) -> Tensor:
        """`df`, shape `(features,)` (or `batch_c + (features,)` when conditional and learnt)."""
        return self._df(self.raw_parameters(context))

    def _df(self, raw: dict[str, Tensor]) -> Tensor:
        if not self.learn_df:
            return self.fixed_df
        return self.min_df + F.softplus(raw["raw_df"])

    def _log_density(self, z: Tensor, raw: dict[str, Tensor]) -> Tensor:
        return student_t_log_density(z, raw["loc"], raw["log_scale"], self._df(raw)).sum(-1)

    def _rsample_flat(self, shape: tuple[int, ...], raw: dict[str, Tensor]) -> Tensor:
        loc, log_scale, df = raw["loc"], raw["log_scale"], self._df(raw)
        full = shape + (self.features,)
        noise = _standard_normal(full, loc)
        half_df = (0.5 * df).expand(full)
        gamma = torch.distributions.Gamma(half_df, torch.ones_like(half_df), validate_args=False).rsample()
        # chi2(df) = 2 Gamma(df / 2, 1); t = normal / sqrt(chi2 / df).
        standard_t = noise * torch.rsqrt(2.0 * gamma / df)
        return loc + torch.exp(log_scale) * standard_t


class GaussianMixture(ParametricDistribution):
    """A mixture of `components` Gaussians with diagonal covariances and learnable weights.

    Initially the weights are uniform, the means are drawn from `N(0, 0.5^2 I)` (distinct, so that the
    components can separate) and the scales are `sqrt(0.75)`, so the mixture has about unit variance.
    `rsample` draws the component index with the Gumbel-max trick, which has no gradient: samples are
    reparameterised in the means and scales of the components, NOT in the mixture weights.
    """

    def __init__(
        self,
        event_shape: Shape,
        components: int = 8,
        context_features: int = 0,
        hidden_features: Sequence[int] = (64, 64),
    ) -> None:
        if not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        features = math.prod(as_shape(event_shape))
        initial = {
            "logits": torch.zeros(components),
            "loc": 0.5 * torch.randn(components, features),
            "log_scale": torch.full((components, features), 0.5 * math.log(0.75)),
        }
        super().__init__(event_shape, initial, context_features, hidden_features)
        self.components = components

    def _log_density(self, z: Tensor, raw: dict[str, Tensor]) -> Tensor:
        log_weights = torch.log_softmax(raw["logits"], dim=-1)
        per_component = normal_log_density(z.unsqueeze(-2), raw["loc"], raw["log_scale"]).sum(-1)
        return torch.logsumexp(log_weights + per_component, dim=-1)

    def _rsample_flat(self, shape: tuple[int, ...], raw: dict[str, Tensor]) -> Tensor:
        logits, loc, log_scale = raw["logits"], raw["loc"], raw["log_scale"]
        # Gumbel-max: argmax(logits + Gumbel noise) ~ Categorical(softmax(logits)); no host sync.
        exponential = torch.empty(shape + (self.components,), dtype=logits.dtype, device=logits.device)
        gumbel = -torch.log(exponential.exponential_())
        index = torch.argmax(logits.detach() + gumbel, dim=-1)
        gather_index = index[..., None, None].expand(shape + (1, self.features))
        chosen_loc = loc.expand(shape + loc.shape[-2:]).gather(-2, gather_index).squeeze(-2)
        chosen_log_scale = log_scale.expand(shape + log_scale.shape[-2:]).gather(-2, gather_index).squeeze(-2)
        noise = _standard_normal(shape + (self.features,), loc)
        return chosen_loc + torch.exp(chosen_log_scale) * noise


def _require_context(cls_name: str, context_features: int) -> None:
    if not isinstance(context_features, int) or context_features < 1:
        raise ValueError(f"{cls_name} needs context_features >= 1, got {context_features!r}")


class ConditionalDiagonalNormal(DiagonalNormal):
    """`DiagonalNormal` whose `loc` and `log_scale` are a network of the context (`batch_c + (C,)`)."""

    def __init__(
        self, event_shape: Shape, context_features: int, hidden_features: Sequence[int] = (64, 64)
    ) -> None:
        _require_context(type(self).__name__, context_features)
        super().__init__(event_shape, context_features=context_features, hidden_features=hidden_features)


class ConditionalStudentT(StudentT):
    """`StudentT` whose `loc`, `log_scale` and (when learnt) `df` are a network of the context."""

    def __init__(
        self,
        event_shape: Shape,
        context_features: int,
        hidden_features: Sequence[int] = (64, 64),
        df: float = 5.0,
        learn_df: bool = True,
        min_df: float = 0.5,
    ) -> None:
        _require_context(type(self).__name__, context_features)
        super().__init__(
            event_shape,
            df=df,
            learn_df=learn_df,
            min_df=min_df,
            context_features=context_features,
            hidden_features=hidden_features,
        )


class ConditionalGaussianMixture(GaussianMixture):
    """`GaussianMixture` whose weights, means and scales are a network of the context."""

    def __init__(
        self,
        event_shape: Shape,
        context_features: int,
        hidden_features: Sequence[int] = (64, 64),
        components: int = 8,
    ) -> None:
        _require_context(type(self).__name__, context_features)
        super().__init__(
            event_shape,
            components=components,
            context_features=context_features,
            hidden_features=hidden_features,
        )


BASE_DISTRIBUTIONS = ("normal", "diagonal_normal", "student_t", "gaussian_mixture", "gmm")


def make_base(
    name: str,
    event_shape: Shape,
    context_features: int = 0,
    hidden_features: Sequence[int] = (64, 64),
    df: Optional[float] = None,
    learn_df: Optional[bool] = None,
    components: Optional[int] = None,
) -> Distribution:
    """A base distribution by name: `"normal"`, `"diagonal_normal"`, `"student_t"`, `"gaussian_mixture"`
    (diagonal covariances), `"gmm"` (`FullGaussianMixture`: full covariances, unconditional, `components`
    default 1, every component `N(0, I)` until fitted; one component is `StandardNormal`).

    With `context_features > 0` the parametric families become conditional (their parameters are a network
    of the context with `hidden_features`); `"normal"` is `StandardNormal` and ignores the context. `df` and
    `learn_df` apply to `"student_t"` only, `components` to the mixtures only; passing them to
    another family is an error, so that a misplaced key in a config does not go unnoticed.
    """
    if name not in BASE_DISTRIBUTIONS:
        raise ValueError(f"base distribution must be one of {BASE_DISTRIBUTIONS}, got {name!r}")
    if not isinstance(context_features, int) or context_features < 0:
        raise ValueError(f"context_features must be an integer >= 0, got {context_features!r}")
    family_options = {"df": df, "learn_df": learn_df, "components": components}
    allowed = {
        "student_t": {"df", "learn_df"},
        "gaussian_mixture": {"components"},
        "gmm": {"components"},
    }.get(name, set())
    wrong = sorted(key for key, value in family_options.items() if value is not None and key not in allowed)
    if wrong:
        raise ValueError(
            f"options {wrong} do not apply to base distribution {name!r} (it takes {sorted(allowed) or 'none'})"
        )
    if name == "normal":
        return StandardNormal(event_shape)
    if name == "gmm":
        return FullGaussianMixture(event_shape, 1 if components is None else int(components))
    if name == "diagonal_normal":
        return DiagonalNormal(event_shape, context_features, hidden_features)
    if name == "student_t":
        return StudentT(
            event_shape,
            df=5.0 if df is None else float(df),
            learn_df=True if learn_df is None else bool(learn_df),
            context_features=context_features,
            hidden_features=hidden_features,
        )
    return GaussianMixture(
        event_shape,
        components=8 if components is None else int(components),
        context_features=context_features,
        hidden_features=hidden_features,
    )
