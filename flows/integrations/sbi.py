"""`flows` conditional flows as sbi density estimators (sbi 0.27): `NPE(density_estimator=flows_nsf(...))`.

    from sbi.inference import NPE, NLE
    from flows.integrations.sbi import flows_estimator

    npe = NPE(prior, density_estimator=flows_estimator("nsf", embedding_net=my_cnn, transforms=5))
    npe.append_simulations(theta, x).train()
    posterior = npe.build_posterior()          # sample / log_prob as with sbi's own flows
    nle = NLE(prior, density_estimator=flows_estimator("maf", estimate="likelihood"))

`flows_estimator(model, embedding_net=..., z_score_input=..., z_score_condition=..., **options)` returns the
builder sbi calls with a first batch of parameters and simulations; the flow's input is theta and its
condition x for NPE (`estimate="posterior"`), the other way round for NLE (`estimate="likelihood"`). It builds the `flows` preset (`"nsf"`, `"maf"`, `"realnvp"`;
`options` are its keyword arguments) on the flattened input, conditioned on the embedding of the condition,
with sbi's z-scoring: the input's standardisation is a `Standardize` bijector inside the flow (its
log-Jacobian included, so densities are in the input's units), the condition's a standardising layer in
front of `embedding_net`. Needs the optional extra `sbi` (`pip install flows[sbi]`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from flows.bijectors import Standardize
from flows.core import Chain
from flows.flow import Flow
from flows.presets import MAF, NSF, RealNVP

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
    from sbi.utils.sbiutils import standardizing_net, z_score_parser, z_standardization
except ImportError as error:  # pragma: no cover - without sbi
    raise ImportError(
        "flows.integrations.sbi needs sbi 0.27 (pip install 'flows[sbi]'), which could not be imported: "
        f"{error}"
    ) from error

__all__ = ["FlowsDensityEstimator", "flows_estimator"]

PRESETS: dict[str, Callable[..., Flow]] = {"nsf": NSF, "maf": MAF, "realnvp": RealNVP}


class FlowsDensityEstimator(ConditionalDensityEstimator):
    """A `flows.Flow` of `input_shape` given a condition of `condition_shape`, behind sbi's interface.

    `log_prob(input (sample, batch, *input_shape) or (batch, *input_shape), condition (batch, *condition_shape)
    or (sample, batch, ...))` -> `(sample, batch)`; `sample(sample_shape, condition (batch, *condition_shape))`
    -> `sample_shape + (batch, *input_shape)`; `loss(input (batch, ...), condition (batch, ...))` -> `(batch,)`.
    The flow's embedding (`flow.embedding`) maps conditions to its context.
    """

    def __init__(self, flow: Flow, input_shape: torch.Size, condition_shape: torch.Size) -> None:
        super().__init__(flow, torch.Size(input_shape), torch.Size(condition_shape))
        if tuple(flow.event_shape) != tuple(input_shape):
            raise ValueError(
                f"the flow's event shape {tuple(flow.event_shape)} differs from input_shape {tuple(input_shape)}"
            )

    @property
    def embedding_net(self) -> nn.Module:
        return self.net.embedding if self.net.embedding is not None else nn.Identity()

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        self._check_condition_shape(condition)
        input, condition, batch = self._broadcast_and_align(input, condition)
        samples = input.shape[0]
        log_prob = self.net.log_prob(
            input.reshape(samples * batch, *self.input_shape),
            condition.reshape(samples * batch, *self.condition_shape),
        )
        return log_prob.reshape(samples, batch)

    def loss(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        return -self.net.log_prob(input, condition)

    def sample(self, sample_shape: torch.Size, condition: Tensor, **kwargs: Any) -> Tensor:
        self._check_condition_shape(condition)
        return self.net.sample(torch.Size(sample_shape), self._batched(condition))

    def sample_and_log_prob(
        self, sample_shape: torch.Size, condition: Tensor, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        self._check_condition_shape(condition)
        return self.net.sample_and_log_prob(torch.Size(sample_shape), self._batched(condition))

    def _batched(self, condition: Tensor) -> Tensor:
        """`condition` with a batch dimension: one `(*condition_shape)` becomes `(1, *condition_shape)`."""
        return condition.unsqueeze(0) if condition.dim() == len(self.condition_shape) else condition


def flows_estimator(
    model: str = "nsf",
    *,
    estimate: Literal["posterior", "likelihood"] = "posterior",
    embedding_net: Optional[nn.Module] = None,
    z_score_input: Optional[str] = "independent",
    z_score_condition: Optional[str] = "independent",
    **options: Any,
) -> Callable[[Tensor, Tensor], FlowsDensityEstimator]:
    """The builder that sbi's `NPE(density_estimator=...)` / `NLE(...)` call with a first batch.

    `model`: `"nsf"`, `"maf"` or `"realnvp"`, with the preset's keyword arguments in `options`
    (`transforms`, `hidden_features`, `bins`, ...). `embedding_net` maps a condition batch
    `(n, *condition_shape)` to features `(n, k)` (default: the flattened condition). `estimate`:
    `"posterior"` (NPE: a density of theta given x) or `"likelihood"` (NLE: of x given theta); sbi calls
    every builder with `(theta, x)`. `z_score_*`:
    `"independent"` (per dimension), `"structured"` (one mean and std for all dimensions) or `"none"`.
    """
    if model not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {model!r}")
    if estimate not in ("posterior", "likelihood"):
        raise ValueError(f"estimate must be 'posterior' or 'likelihood', got {estimate!r}")
    if embedding_net is not None and not isinstance(embedding_net, nn.Module):
        raise TypeError(f"embedding_net must be a torch.nn.Module, got {type(embedding_net).__name__}")

    def build(batch_theta: Tensor, batch_x: Tensor) -> FlowsDensityEstimator:
        posterior = estimate == "posterior"
        batch_input, batch_condition = (batch_theta, batch_x) if posterior else (batch_x, batch_theta)
        if batch_input.dim() < 2 or batch_condition.dim() < 2 or len(batch_input) != len(batch_condition):
            raise ValueError(
                "expected batches (n, *input_shape) and (n, *condition_shape) with the same n, got shapes "
                f"{tuple(batch_input.shape)} and {tuple(batch_condition.shape)}"
            )
        input_shape, condition_shape = batch_input.shape[1:], batch_condition.shape[1:]
        if len(input_shape) != 1:
            raise ValueError(
                f"flows' vector presets model inputs of shape (n, features), got a batch of shape "
                f"{tuple(batch_input.shape)}: flatten the inputs (NLE: the simulator's output) first"
            )
        embedding = _embedding(embedding_net, batch_condition, z_score_condition)
        with torch.no_grad():
            embedded = embedding(batch_condition[:2])
        if embedded.dim() != 2:
            raise ValueError(
                f"embedding_net must map conditions (n, *condition_shape) to (n, k), got shape "
                f"{tuple(embedded.shape)} from a batch of shape {tuple(batch_condition[:2].shape)}"
            )
        features = int(input_shape[0])
        preset = PRESETS[model](features=features, context_features=embedded.shape[1], **options)
        transform = preset.transform
        do_z_score, structured = z_score_parser(z_score_input)
        if do_z_score:
            mean, std = z_standardization(batch_input, structured)
            standardize = Standardize(mean.expand(features).clone(), std.expand(features).clone())
            transform = Chain([standardize, transform])
        flow = Flow(transform, preset.base, embedding=embedding, context_features=None)
        return FlowsDensityEstimator(flow.to(batch_input.dtype), input_shape, condition_shape)

    return build


def _embedding(embedding_net: Optional[nn.Module], batch: Tensor, z_score: Optional[str]) -> nn.Module:
    """The condition's map to context features: optional standardisation, then `embedding_net` (or flatten)."""
    layers = []
    do_z_score, structured = z_score_parser(z_score)
    if do_z_score:
        layers.append(standardizing_net(batch, structured))
    layers.append(embedding_net if embedding_net is not None else nn.Flatten())
    return nn.Sequential(*layers)
