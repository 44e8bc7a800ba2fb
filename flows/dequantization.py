"""Dequantisation: continuous densities for discrete data, with the correct discrete log-likelihood bound.

Discrete data `x` take integer levels `0 .. K-1` per dimension (`K = num_levels`: 256 for 8-bit images,
17 for scikit-learn's digits). A dequantiser draws noise `u in [0, 1)^D` from `q(u | x)` and hands the
flow `y = (x + u) / K in [0, 1]^D`. For any continuous density `p_y` on `[0, 1]^D` the probability of the
bin of `x` is `P(x) = int p_y((x + u) / K) K^-D du`, so by Jensen (Theis et al. 2016; Ho et al. 2019)

    log P(x) >= E_q[ log p_y(y) - D log K - log q(u | x) ].

`UniformDequantization` has `q = U[0, 1)^D` (`log q = 0`); `VariationalDequantization` learns `q(u | x)`
as a conditional flow (Flow++). `discrete_log_likelihood_bound` evaluates the right-hand side (or, with
`num_samples > 1`, the tighter importance-weighted bound `log mean_s p(x, u_s) / q(u_s | x)`), with the
`-D log K` of the scaling and the log-Jacobian of any preprocessing (`LogitPreprocessing`,
`CenterPreprocessing`) included, so `bits_per_dim(-bound, D)` is in bits per dimension of the discrete data.

`DequantizedFlow` bundles a flow, a dequantiser and a preprocessing into one module whose `log_prob` of
integer images is that bound, and which samples images at a temperature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flows.bijectors.coupling import ImageConditioner, MaskedCoupling, checkerboard_mask
from flows.bijectors.elementwise import ElementwiseAffine, Logit
from flows.core import Bijector, Chain, sum_event
from flows.distributions import DiagonalNormal, Distribution, Shape, StandardNormal, as_shape
from flows.flow import Flow
from flows.nn import ConvNet
from flows.transformers import make_transformer

__all__ = [
    "CenterPreprocessing",
    "DequantizedFlow",
    "Dequantizer",
    "LogitPreprocessing",
    "UniformDequantization",
    "VariationalDequantization",
    "bits_per_dim",
    "dequantize",
    "discrete_log_likelihood_bound",
    "make_dequantizer",
    "make_preprocessing",
    "quantize",
    "sample_base",
]

LN2 = math.log(2.0)


def _check_levels(num_levels: object) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int):
        raise TypeError(f"num_levels must be an int, got {type(num_levels).__name__}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}")
    return num_levels


def bits_per_dim(nll_nats: Union[Tensor, float], num_dims: int) -> Union[Tensor, float]:
    """`nll / (D ln 2)`: a negative log-likelihood in nats per example as bits per dimension."""
    if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive int, got {num_dims!r}")
    return nll_nats / (num_dims * LN2)


def quantize(y: Tensor, num_levels: int) -> Tensor:
    """Continuous values `y` in `[0, 1]` (any shape) to integer levels `floor(y K)` clipped to `[0, K-1]` (int64)."""
    num_levels = _check_levels(num_levels)
    return torch.clamp(torch.floor(y * num_levels), 0, num_levels - 1).long()


def dequantize(x: Tensor, u: Tensor, num_levels: int = 1) -> Tensor:
    """`(x + u) / K`: integer levels `x` plus noise `u` in `[0, 1)` (same shape), as `[0, 1]` values.

    `num_levels = 1` keeps the level units (`x + u`, tables). Every dequantiser adds its noise through this
    function; each draws `u` from its own generator.
    """
    return (x + u) / num_levels


# ------------------------------------------------------------------------------------------ dequantisers
class Dequantizer(nn.Module):
    """Base class: `forward(x, context) -> (y, log_q)`.

    `x`: integer levels `batch + event` (any integer or float dtype). `y = (x + u) / K` in `[0, 1]`, of the
    dequantiser's float dtype; `log_q (batch)` is `log q(u | x)`, the log density of the noise in level units.
    """

    num_levels: int
    event_dims: int

    def _float(self, x: Tensor) -> Tensor:
        reference = self._dtype_device
        return x.to(dtype=reference.dtype, device=reference.device)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class UniformDequantization(Dequantizer):
    """`u ~ U[0, 1)^D` independent of `x`; `log q(u | x) = 0`. Works for any event with `event_dims` dims."""

    def __init__(self, num_levels: int, event_dims: int = 3) -> None:
        super().__init__()
        self.num_levels = _check_levels(num_levels)
        if event_dims < 1:
            raise ValueError(f"event_dims must be >= 1, got {event_dims}")
        self.event_dims = int(event_dims)
        self.register_buffer("_dtype_device", torch.zeros(()))

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, event_dims={self.event_dims}"

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x = self._float(x)
        if x.dim() < self.event_dims:
            raise ValueError(f"expected at least {self.event_dims} event dims, got shape {tuple(x.shape)}")
        u = torch.rand_like(x)
        log_q = x.new_zeros(x.shape[: x.dim() - self.event_dims])
        return dequantize(x, u, self.num_levels), log_q


class _DataConditionedConvNet(nn.Module):
    """`ConvNet` over `[image, x_data]` channels: the data image arrives flattened at the front of the context.

    `forward(image (b, C_in, H, W), context (b, D + k))`: the first `D = C_x H W` context features are the
    (scaled) data image, the remaining `k` are the class context, appended as constant channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, data_shape: tuple[int, int, int], hidden: int, k: int
    ) -> None:
        super().__init__()
        self.data_shape = data_shape
        self.data_features = math.prod(data_shape)
        self.network = ConvNet(in_channels + data_shape[0], out_channels, hidden, k)
        self.class_features = k

    def forward(self, image: Tensor, context: Tensor) -> Tensor:
        batch = image.shape[:-3]
        data = context[..., : self.data_features].reshape(batch + self.data_shape)
        classes = context[..., self.data_features :] if self.class_features else None
        return self.network(torch.cat([image, data], dim=-3), classes)


class _DataConditionedCoupling(MaskedCoupling):
    """A checkerboard affine/spline coupling on the noise whose conditioner also sees the data image."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        parity: bool,
        hidden_channels: int,
        class_features: int,
        transformer: str,
    ) -> None:
        built = make_transformer(transformer)
        mask = checkerboard_mask(shape, parity)
        conditioner = ImageConditioner(mask, "checkerboard", built.num_params, hidden_channels, 0)
        channels = shape[0]
        conditioner.network = _DataConditionedConvNet(
            channels, channels * built.num_params, shape, hidden_channels, class_features
        )
        super().__init__(mask, conditioner, built, math.prod(shape) + class_features)


class VariationalDequantization(Dequantizer):
    """Learnt noise `q(u | x)` (Flow++, Ho et al. 2019): `u = sigmoid(h)`, `h = g^-1(eps; x)`, `eps ~ N(0, I)`.

    `g` is a chain of `steps` checkerboard couplings on `shape = (C, H, W)` whose conditioners see the data
    image `x / (K - 1) - 1/2` (and the class context when `context_features > 0`). Starts near the
    logistic-normal `sigmoid(N(0, I))`. `log q(u | x) = log N(eps) + log|dg/dh| - sum log sigmoid'(h)`.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        num_levels: int,
        context_features: int = 0,
        hidden_channels: int = 32,
        steps: int = 4,
        transformer: Literal["affine", "spline"] = "affine",
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        if len(shape) != 3 or min(shape) < 1 or shape[1] * shape[2] < 2:
            raise ValueError(f"shape must be (C, H, W) with at least 2 pixels, got {shape}")
        if context_features < 0 or steps < 1 or hidden_channels < 1:
            raise ValueError(
                "VariationalDequantization needs context_features >= 0, steps >= 1 and hidden_channels >= 1, "
                f"got {context_features}, {steps}, {hidden_channels}"
            )
        self.shape = shape
        self.num_levels = _check_levels(num_levels)
        self.event_dims = 3
        self.context_features = int(context_features)
        self.transform = Chain(
            *(
                _DataConditionedCoupling(shape, step % 2 == 1, hidden_channels, context_features, transformer)
                for step in range(steps)
            )
        )
        self.base = StandardNormal(shape)
        self.register_buffer("_dtype_device", torch.zeros(()))

    def _conditioning(self, x: Tensor, context: Optional[Tensor]) -> Tensor:
        batch = x.shape[:-3]
        scaled = x / (self.num_levels - 1) - 0.5
        flat = scaled.reshape(batch + (-1,))
        if self.context_features == 0:
            return flat
        if context is None:
            raise ValueError(
                f"this dequantiser is conditional: expected a context of shape batch + ({self.context_features},), "
                "got None"
            )
        return torch.cat([flat, context.to(flat.dtype).expand(batch + context.shape[-1:])], dim=-1)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x = self._float(x)
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"expected images with event shape {self.shape}, got shape {tuple(x.shape)}")
        conditioning = self._conditioning(x, context)
        eps = torch.randn_like(x)
        h, ladj_inverse = self.transform.inverse(eps, conditioning)
        log_q_h = self.base.log_prob(eps) - ladj_inverse
        log_sigmoid_derivative = -F.softplus(-h) - F.softplus(h)
        log_q = log_q_h - sum_event(log_sigmoid_derivative, 3)
        u = torch.sigmoid(h)
        return dequantize(x, u, self.num_levels), log_q

    def log_prob(self, u: Tensor, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`log q(u | x)` of given noise `u in (0, 1)` (`batch + shape`) for data `x`; returns `(batch)`."""
        x = self._float(x)
        u = u.to(x.dtype)
        h = torch.log(u) - torch.log1p(-u)
        eps, ladj = self.transform(h, self._conditioning(x, context))
        log_sigmoid_derivative = -F.softplus(-h) - F.softplus(h)
        return self.base.log_prob(eps) + ladj - sum_event(log_sigmoid_derivative, 3)


def make_dequantizer(
    kind: Literal["uniform", "variational"],
    shape: tuple[int, ...],
    num_levels: int,
    context_features: int = 0,
    **options: object,
) -> Dequantizer:
    """`"uniform"` or `"variational"` (`options`: `hidden_channels`, `steps`, `transformer`)."""
    if kind == "uniform":
        if options:
            raise ValueError(f"uniform dequantisation takes no options, got {sorted(options)}")
        return UniformDequantization(num_levels, event_dims=len(shape))
    if kind == "variational":
        return VariationalDequantization(tuple(shape), num_levels, context_features, **options)  # type: ignore[arg-type]
    raise ValueError(f"dequantization must be 'uniform' or 'variational', got {kind!r}")


# ---------------------------------------------------------------------------------------- preprocessing
class LogitPreprocessing(Logit):
    """RealNVP's `z = logit(alpha + (1 - 2 alpha) y)` of `y in [0, 1]`, with its log-Jacobian as `ladj`.

    `alpha` in `(0, 0.5)` keeps boundary values finite (Dinh et al. 2017 use 0.05 on CIFAR-10, 1e-6 on MNIST).
    """

    def __init__(self, alpha: float = 0.05, event_dims: int = 3) -> None:
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        super().__init__(alpha, event_dims)


class CenterPreprocessing(ElementwiseAffine):
    """Glow's `z = y - 1/2`: `[0, 1]` to `[-1/2, 1/2]`, `ladj = 0`."""

    def __init__(self, event_dims: int = 3) -> None:
        super().__init__(shift=-0.5, scale=1.0, event_dims=event_dims)


def make_preprocessing(
    kind: Literal["logit", "center", "none"], alpha: float = 0.05, event_dims: int = 3
) -> Optional[Bijector]:
    """`"logit"` (`LogitPreprocessing(alpha)`), `"center"` (`y - 1/2`) or `"none"` (None)."""
    if kind == "logit":
        return LogitPreprocessing(alpha, event_dims)
    if kind == "center":
        return CenterPreprocessing(event_dims)
    if kind == "none":
        return None
    raise ValueError(f"preprocessing must be 'logit', 'center' or 'none', got {kind!r}")


# ------------------------------------------------------------------------------------------------ bound
def discrete_log_likelihood_bound(
    flow: Flow,
    x: Tensor,
    dequantizer: Dequantizer,
    preprocessing: Optional[Bijector] = None,
    context: Optional[Tensor] = None,
    num_samples: int = 1,
) -> Tensor:
    """A stochastic lower bound on `log P(x)` of integer data `x (batch + event)`; returns `(batch)` in nats.

    One sample: `log p_flow(pre(y)) + ladj_pre(y) - D log K - log q(u | x)` with `y = (x + u) / K` (its
    expectation is the variational bound). `num_samples = S > 1`: `log mean_s exp(...)` over S noise draws,
    the importance-weighted bound, tighter and still below `log P(x)`.
    """
    return _bound(flow.log_prob, flow.event_shape, x, dequantizer, preprocessing, context, num_samples)


def check_noise_std(noise_std: object) -> float:
    """A finite, non-negative noise level as a float (the one check of every `noise_std`)."""
    if (
        isinstance(noise_std, bool)
        or not isinstance(noise_std, (int, float))
        or not 0 <= noise_std < math.inf
    ):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return float(noise_std)


def _bound(
    log_density: Callable[[Tensor, Optional[Tensor]], Tensor],
    event_shape: tuple[int, ...],
    x: Tensor,
    dequantizer: Dequantizer,
    preprocessing: Optional[Bijector],
    context: Optional[Tensor],
    num_samples: int,
    noise_std: float = 0.0,
) -> Tensor:
    """`discrete_log_likelihood_bound` with the continuous density `log_density(z (batch + event), context)`.

    `noise_std > 0` adds `N(0, noise_std^2)` noise to the flow's input `z` (noise augmentation): the training
    objective of a flow of noisy data, no longer a bound on `log P(x)`.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    noise_std = check_noise_std(noise_std)
    event_dims = len(event_shape)
    if x.dim() < event_dims or tuple(x.shape[x.dim() - event_dims :]) != tuple(event_shape):
        raise ValueError(f"expected data with event shape {tuple(event_shape)}, got shape {tuple(x.shape)}")
    num_dims = math.prod(event_shape)
    if num_samples > 1:
        x = x.unsqueeze(0).expand((num_samples,) + x.shape)
        if context is not None:
            context = context.unsqueeze(0).expand((num_samples,) + context.shape)
    y, log_q = dequantizer(x, context)
    z, ladj = (y, 0.0) if preprocessing is None else preprocessing(y)
    if noise_std > 0:
        z = z + noise_std * torch.randn_like(z)
    log_joint = log_density(z, context) + ladj - num_dims * math.log(dequantizer.num_levels) - log_q
    if num_samples == 1:
        return log_joint
    return torch.logsumexp(log_joint, dim=0) - math.log(num_samples)


# ------------------------------------------------------------------------------------------ temperature
def sample_base(
    base: Distribution, sample_shape: Shape = (), context: Optional[Tensor] = None, temperature: float = 1.0
) -> Tensor:
    """Base samples with the standard deviation scaled by `temperature` (Glow's "temperature").

    Supported for `StandardNormal` (`T eps`) and `DiagonalNormal` and its conditional form
    (`loc + T scale eps`); any base at `temperature = 1`.
    """
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 1.0:
        return base.sample(sample_shape, context)
    if isinstance(base, StandardNormal):
        return temperature * base.sample(sample_shape, context)
    if isinstance(base, DiagonalNormal):
        with torch.no_grad():
            raw = base.raw_parameters(context)
            loc = raw["loc"]
            shape = as_shape(sample_shape) + (() if context is None else tuple(context.shape[:-1]))
            noise = torch.randn(shape + (base.features,), dtype=loc.dtype, device=loc.device)
            flat = loc + temperature * torch.exp(raw["log_scale"]) * noise
            return flat.reshape(shape + tuple(base.event_shape))
    raise ValueError(
        f"temperature sampling needs a StandardNormal or DiagonalNormal base, got {type(base).__name__}; "
        "use temperature 1.0"
    )


class DequantizedFlow(Flow):
    """A `Flow` for discrete data: `log_prob(x)` is the dequantisation bound, `sample` returns `[0, 1]` values.

    Built from a flow that models `z = preprocessing(y)`, `y = (x + u) / K`: its transform, base and
    embedding become this flow's own, beside the `dequantizer` and the `preprocessing`. The continuous
    methods (`encode`, `decode`, `rsample`, `sample_and_log_prob`) work on `y` in `[0, 1]`; `log_prob` and
    `initialize` take integer data `x`. `context` (e.g. a one-hot class label) goes to the flow and to a
    conditional dequantiser. Weights saved before it was a `Flow` (keys `flow.*`) load unchanged.

    `noise_std > 0` says the flow was trained on `z` with Gaussian noise of that standard deviation added
    (TarFlow's noise augmentation, `log_prob(..., noise_std=...)` in training): `sample` then takes one
    denoising step `z + noise_std^2 grad log p(z)` (Tweedie's formula, the flow's own score) before
    post-processing. `log_prob` without `noise_std` stays the bound on `log P(x)`.
    """

    def __init__(
        self,
        flow: Flow,
        dequantizer: Dequantizer,
        preprocessing: Optional[Bijector] = None,
        noise_std: float = 0.0,
    ) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"flow must be a flows.Flow, got {type(flow).__name__}")
        if not isinstance(dequantizer, Dequantizer):
            raise TypeError(f"dequantizer must be a flows Dequantizer, got {type(dequantizer).__name__}")
        super().__init__(flow.transform, flow.base, flow.embedding, flow.context_features)
        self.dequantizer = dequantizer
        self.preprocessing = preprocessing
        self.noise_std = check_noise_std(noise_std)
        self.register_load_state_dict_pre_hook(_drop_inner_flow_prefix)

    @property
    def num_levels(self) -> int:
        return self.dequantizer.num_levels

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def _preprocess(self, y: Tensor) -> tuple[Tensor, Union[Tensor, float]]:
        """`y in [0, 1]` to the flow's input `z = preprocessing(y)`, with the preprocessing's ladj."""
        return (y, 0.0) if self.preprocessing is None else self.preprocessing(y)

    def _postprocess(self, z: Tensor) -> tuple[Tensor, Union[Tensor, float]]:
        """The flow's output `z` back to `y`, with the inverse preprocessing's ladj."""
        return (z, 0.0) if self.preprocessing is None else self.preprocessing.inverse(z)

    def log_prob(
        self, x: Tensor, context: Optional[Tensor] = None, num_samples: int = 1, noise_std: float = 0.0
    ) -> Tensor:
        """Lower bound on `log P(x)` of integer data `x (batch + event)`, `(batch)` nats (see the module doc).

        `noise_std > 0`: the noise-augmented training objective instead (Gaussian noise on the flow's input).
        """
        return _bound(
            super().log_prob,
            self.event_shape,
            x,
            self.dequantizer,
            self.preprocessing,
            context,
            num_samples,
            noise_std,
        )

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """ActNorm initialisation from integer data `x (batch + event)`, dequantised and preprocessed."""
        y, _ = self.dequantizer(x, context)
        return super().initialize(self._preprocess(y)[0], context)

    def encode(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Continuous data `y in [0, 1]` (`batch + event`) to the latent."""
        return super().encode(self._preprocess(y)[0], context)

    def decode(self, latent: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Latent to continuous data `y` (in `[0, 1]` up to the model's support)."""
        return self._postprocess(super().decode(latent, context))[0]

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Reparameterised continuous samples `y` of shape `sample_shape + context_batch + event`."""
        return self._postprocess(super().rsample(sample_shape, context))[0]

    def sample_and_log_prob(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """Continuous samples `y` and their log densities `log p(y)` (gradients flow)."""
        z, log_prob = super().sample_and_log_prob(sample_shape, context)
        y, ladj_inverse = self._postprocess(z)
        return y, log_prob - ladj_inverse

    @torch.no_grad()
    def sample(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None, temperature: float = 1.0
    ) -> Tensor:
        """Continuous samples `y` of shape `sample_shape + context_batch + event`, clipped to `[0, 1]`."""
        _, embedded = self._validate(None, context)
        latent = sample_base(self.base, sample_shape, embedded, temperature)
        z, _ = self.transform.inverse(latent, embedded)
        if self.noise_std > 0:
            z = self.denoise(z, context)
        return torch.clamp(self._postprocess(z)[0], 0.0, 1.0)

    def denoise(
        self, z: Tensor, context: Optional[Tensor] = None, noise_std: Optional[float] = None
    ) -> Tensor:
        """One score step `z + s^2 grad_z log p(z | context)` on flow inputs `z (batch + event)`.

        Tweedie's formula: for a flow of data plus `N(0, s^2)` noise it gives `E[clean z | z]`. `s` defaults
        to the model's `noise_std`; `context` is the raw context, broadcast as in `sample`.
        """
        s = self.noise_std if noise_std is None else check_noise_std(noise_std)
        if context is not None and z.dim() > context.dim() - 1 + len(self.event_shape):
            context = context.expand(z.shape[: z.dim() - len(self.event_shape)] + context.shape[-1:])
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            (score,) = torch.autograd.grad(Flow.log_prob(self, z, context).sum(), z)
        return (z + s**2 * score).detach()

    def sample_levels(
        self, sample_shape: Shape = (), context: Optional[Tensor] = None, temperature: float = 1.0
    ) -> Tensor:
        """Integer samples in `[0, K-1]` (int64): `quantize(sample(...))`."""
        return quantize(self.sample(sample_shape, context, temperature), self.num_levels)


def _drop_inner_flow_prefix(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object
) -> None:
    """Load-state-dict pre-hook: weights saved when `DequantizedFlow` held its flow as `.flow` (keys
    `prefix + "flow." + name`) are renamed to `prefix + name`, where this flow keeps them now."""
    old = prefix + "flow."
    for key in [key for key in state_dict if key.startswith(old)]:
        state_dict[prefix + key[len(old) :]] = state_dict.pop(key)
