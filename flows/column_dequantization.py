"""Learned dequantisation of table columns: argmax for categories, variational noise for integers.

A table row `x (D,)` may hold categorical columns (codes `0 .. K-1`) and integer columns. A continuous flow
models the row through a *model row* `y`, drawn from a learned `q(noise | x)`:

- a categorical column with `K` categories becomes `K` continuous coordinates `v` (argmax dequantisation,
  Hoogeboom et al. 2021, "Argmax Flows and Multinomial Diffusion"): category `k` owns
  `{v : v_k > v_j for j != k}`. The threshold construction puts `q(v | x)` on exactly that region: from a
  free noise `u (K,)`, `v_k = u_k` and `v_j = u_k - softplus(u_k - u_j)` for the others. Nothing depends on
  the order of the codes: relabelling the categories permutes the coordinates, and every category's region
  has the same shape (mass `1 / K` under the initial, near-standard-normal model). `K - 1` coordinates
  (a reference category at 0) would save one, but give the reference a region of another shape (an orthant:
  mass `2^-(K-1)` at the start), which training must then undo;
- an integer column marked variational becomes `x_j + sigmoid(h_j)` (Flow++-style variational
  dequantisation on the unit cell).

Argmax rather than simplex dequantisation (a point on the probability simplex near the category's vertex):
the argmax coordinates are unbounded, so every vector flow models them as it is, and the threshold
construction gives the exact region and its log-Jacobian in closed form; a simplex would need a flow on a
bounded, curved support.

The noise `(u, h)` comes from a conditional flow given the row (continuous columns standardised,
categories one-hot). For any density `p(y)`, `P(x) = int_{region(x)} p(y) dy >= E_q[log p(y) - log q(y | x)]`
(Jensen), and `log mean_s p(y_s) / q(y_s | x)` over `S` draws is the tighter importance-weighted bound;
`ColumnDequantizedFlow.log_prob` returns one draw of it, so the log of the mean of `exp(log_prob)` over
draws is that bound. Samples decode by argmax (categories) and carry `x_j + u` for integer columns (the
caller floors them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from flows.distributions import Shape
from flows.flow import Flow

__all__ = ["ColumnDequantizedFlow", "argmax_category", "argmax_threshold", "make_noise_flow"]


def argmax_threshold(codes: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Threshold construction: integer `codes (b)` in `0 .. K-1` and free noise `u (b, K)` to `v (b, K)`
    inside the argmax region of each code, and `log |det dv/du| (b)` (the Jacobian is triangular: the
    chosen coordinate is `u_k` itself, each other one depends on `u_k` and its own `u_j`)."""
    chosen = F.one_hot(codes.long(), u.shape[-1]).to(torch.bool)
    threshold = torch.where(chosen, u, torch.zeros_like(u)).sum(-1, keepdim=True)
    gap = threshold - u
    v = torch.where(chosen, u, threshold - F.softplus(gap))
    log_diagonal = torch.where(chosen, torch.zeros_like(u), F.logsigmoid(gap))
    return v, log_diagonal.sum(-1)


def argmax_category(v: Tensor) -> Tensor:
    """The category `(...)` (int64) of argmax coordinates `v (..., K)`."""
    return v.argmax(dim=-1)


def make_noise_flow(noise_features: int, condition_features: int) -> Flow:
    """The default `q(noise | row)`: a small conditional NSF (2 coupling steps, hidden `(32, 32)`)."""
    from flows.presets import NSF

    return NSF(
        features=noise_features,
        context_features=condition_features,
        transforms=2,
        hidden_features=(32, 32),
        bins=8,
        residual_blocks=0,
    )


class ColumnDequantizedFlow(Flow):
    """A table flow over rows `x (batch, D)` with categorical and variationally dequantised integer columns.

    `flow` models model rows `y (batch, D')`: the `D - C` other columns in their order (integer columns
    variationally dequantised), then the `K` argmax coordinates of each categorical column in the order of
    `categories` (`{column: K}`); `D' = D - C + sum K`. `variational` lists integer columns dequantised
    by `x_j + sigmoid(h_j)`. `noise` is `q`, a conditional flow over `sum K + len(variational)`
    features given the row as `condition_features = D - C + sum K` values (defaults to `make_noise_flow`).
    `mean`, `std` (`(D - C,)`, buffers) standardise the other columns for the conditioning.

    `log_prob(x)` is one draw of the dequantisation bound (see the module docstring): stochastic, below
    `log P(x)` in expectation; `sample` returns rows `(.., D)` with category codes and `x_j + u` in integer
    columns. `encode`, `decode`, `rsample` and `sample_and_log_prob` work on model rows `y`. The flow's
    transform, base and embedding become this flow's own.
    """

    def __init__(
        self,
        flow: Flow,
        features: int,
        categories: Mapping[int, int],
        variational: Sequence[int] = (),
        noise: Optional[Flow] = None,
        mean: Optional[Tensor] = None,
        std: Optional[Tensor] = None,
    ) -> None:
        super().__init__(flow.transform, flow.base, flow.embedding, flow.context_features)
        self.features = int(features)
        self.categories = {int(j): int(k) for j, k in sorted(categories.items())}
        self.variational = sorted(int(j) for j in variational)
        if any(k < 2 for k in self.categories.values()):
            raise ValueError(f"categorical columns need 2 or more categories, got {self.categories}")
        if set(self.variational) & set(self.categories):
            raise ValueError("a column cannot be both categorical and variationally dequantised")
        bad = [j for j in [*self.categories, *self.variational] if not 0 <= j < self.features]
        if bad or not (self.categories or self.variational):
            raise ValueError(
                f"expected categorical or variational columns among 0 .. {self.features - 1}, got "
                f"categories {self.categories} and variational {self.variational}"
            )
        self.kept = [j for j in range(self.features) if j not in self.categories]
        self.model_features = len(self.kept) + sum(self.categories.values())
        if self.event_shape != (self.model_features,):
            raise ValueError(
                f"the inner flow must model {self.model_features} features (model rows), got event shape "
                f"{self.event_shape}"
            )
        self.noise_features = len(self.variational) + sum(self.categories.values())
        self.condition_features = len(self.kept) + sum(self.categories.values())
        self.noise = (
            noise if noise is not None else make_noise_flow(self.noise_features, self.condition_features)
        )
        dtype = torch.get_default_dtype()
        self.register_buffer(
            "mean", torch.zeros(len(self.kept), dtype=dtype) if mean is None else mean.clone()
        )
        self.register_buffer("std", torch.ones(len(self.kept), dtype=dtype) if std is None else std.clone())

    def _check_rows(self, x: object) -> Tensor:
        if (
            not isinstance(x, Tensor)
            or not x.is_floating_point()
            or x.dim() < 1
            or x.shape[-1] != self.features
        ):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"expected rows of {self.features} float values (batch, {self.features}), got {shape}"
            )
        return x

    def _codes(self, x: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """Each categorical column's codes (int64, clamped into range) and a `(batch)` flag of valid rows."""
        codes, valid = {}, torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        for j, k in self.categories.items():
            value = x[..., j]
            valid = valid & (value == torch.round(value)) & (value >= 0) & (value <= k - 1)
            codes[j] = torch.nan_to_num(value, nan=0.0).round().clamp(0, k - 1).long()
        return codes, valid

    def dequantize(self, x: Tensor, noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """One draw from `q`: model rows `y (batch, D')`, `log q(y | x) (batch)` and the valid-row flag.
        `noise`: the base draw of `q` (`(noise_features,)` shared by every row, or `(batch, noise_features)`);
        None draws it from torch's generator."""
        x = self._check_rows(x)
        codes, valid = self._codes(x)
        others = x[..., self.kept]
        condition = [torch.nan_to_num((others - self.mean) / self.std, posinf=0.0, neginf=0.0)]
        condition += [F.one_hot(codes[j], k).to(x.dtype) for j, k in self.categories.items()]
        given = self.noise._embed(torch.cat(condition, dim=-1))
        shape = x.shape[:-1] + (self.noise_features,)
        eps = torch.randn(shape, dtype=x.dtype, device=x.device) if noise is None else noise.expand(shape)
        h, ladj_inverse = self.noise.transform.inverse(eps, given)
        log_q = self.noise.base.log_prob(eps, given) - ladj_inverse
        columns = list(others.unbind(-1))
        for i, j in enumerate(self.variational):
            columns[self.kept.index(j)] = x[..., j] + torch.sigmoid(h[..., i])
            log_q = log_q - F.logsigmoid(h[..., i]) - F.logsigmoid(-h[..., i])
        start = len(self.variational)
        blocks = []
        for j, k in self.categories.items():
            v, log_det = argmax_threshold(codes[j], h[..., start : start + k])
            blocks.append(v)
            log_q = log_q - log_det
            start += k
        parts = ([torch.stack(columns, dim=-1)] if columns else []) + blocks
        return torch.cat(parts, dim=-1), log_q, valid

    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, noise: Optional[Tensor] = None) -> Tensor:
        """One draw of `log p(y) - log q(y | x)` for rows `x (batch, D)`; `(batch)`. Rows with an invalid
        category code or a non-finite value score `-inf`. `noise` as in `dequantize` (a shared draw makes a
        row's score independent of the other rows)."""
        y, log_q, valid = self.dequantize(x, noise)
        finite = torch.isfinite(x).all(dim=-1)
        y = torch.where((valid & finite).unsqueeze(-1), y, torch.full_like(y, math.inf))
        return torch.where(valid & finite, super().log_prob(y, context) - log_q, -math.inf)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Optional[Tensor] = None) -> bool:
        """ActNorm initialisation from rows `x (batch, D)`, through one draw of `q`."""
        return super().initialize(self.dequantize(x)[0], context)

    def rows(self, y: Tensor) -> Tensor:
        """Model rows `y (..., D')` as table rows `(..., D)`: category codes by argmax, other columns as they
        are (`x_j + u` for variational integer columns)."""
        out = y.new_zeros(y.shape[:-1] + (self.features,))
        out[..., self.kept] = y[..., : len(self.kept)]
        start = len(self.kept)
        for j, k in self.categories.items():
            out[..., j] = argmax_category(y[..., start : start + k]).to(y.dtype)
            start += k
        return out

    def model_rows(self, x: Tensor) -> Tensor:
        """A fixed stand-in model row for `x (..., D)`: the other columns (`+ 1/2` for variational ones),
        zeros for the argmax coordinates (for range checks, not for scoring)."""
        others = x[..., self.kept].clone()
        for j in self.variational:
            others[..., self.kept.index(j)] += 0.5
        return torch.cat([others, x.new_zeros(x.shape[:-1] + (self.model_features - len(self.kept),))], -1)

    def sample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Table rows `sample_shape + context_batch + (D,)` (categories decoded, see `rows`)."""
        with torch.no_grad():
            return self.rows(self.rsample(sample_shape, context))
