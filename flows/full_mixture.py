"""`FullGaussianMixture`: a mixture of `K` full-covariance Gaussians over vectors, with trainable weights,
means and Cholesky factors; a flow's base that can start as a Gaussian mixture fitted to the data.

`log p(z) = logsumexp_k [log w_k + log N(z; mu_k, L_k L_k^T)]` with `w = softmax(logits)` and `L_k` lower
triangular with a positive diagonal (`exp` of a raw diagonal). Fresh, every component is `N(0, I)`, so
`FullGaussianMixture(D, 1)` is `StandardNormal(D)`: the same log density, and (one component draws no index)
the same samples for the same seed. `set_parameters` loads a fitted mixture (weights, means, covariances).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from flows.distribution_base import LOG_SQRT_2PI, Distribution, Shape, as_shape

__all__ = ["FullGaussianMixture"]


class FullGaussianMixture(Distribution):
    """`components` full-covariance Gaussians over `features`-vectors (event shape `(features,)`).

    Parameters: `logits (K,)`, `loc (K, D)`, `raw_tril (K, D, D)` (its strict lower triangle is `L_k`'s, its
    diagonal `log diag L_k`; the upper triangle is unused). Unconditional: a context is accepted and ignored,
    except that its batch shape enters the shape of samples. `rsample` draws the component with the
    Gumbel-max trick (no gradient to the weights); samples are reparameterised in the means and factors.
    """

    def __init__(self, event_shape: Shape, components: int = 1) -> None:
        super().__init__()
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        self.event_shape = as_shape(event_shape)
        if len(self.event_shape) != 1 or self.event_shape[0] < 1:
            raise ValueError(
                f"FullGaussianMixture models vectors: event_shape (features,), got {event_shape!r}"
            )
        features = self.event_shape[0]
        self.features = features
        self.components = components
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.zeros(components, features))
        self.raw_tril = nn.Parameter(torch.zeros(components, features, features))

    def scale_tril(self) -> Tensor:
        """The Cholesky factors `L_k`, shape `(K, D, D)` (lower triangular, positive diagonal)."""
        raw = self.raw_tril
        return torch.tril(raw, -1) + torch.diag_embed(torch.exp(torch.diagonal(raw, dim1=-2, dim2=-1)))

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, means: Tensor, covariances: Tensor) -> FullGaussianMixture:
        """Load a mixture: `weights (K,)` (positive; normalised here), `means (K, D)`, `covariances (K, D, D)`
        (symmetric positive definite). A ValueError names a wrong shape or a non-positive-definite matrix."""
        K, D = self.components, self.features
        weights, means, covariances = (
            torch.as_tensor(t, dtype=torch.float64) for t in (weights, means, covariances)
        )
        expected = {"weights": (K,), "means": (K, D), "covariances": (K, D, D)}
        for name, tensor in zip(expected, (weights, means, covariances)):
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(tensor.shape)}")
        if not bool(torch.all(weights > 0)):
            raise ValueError(f"weights must be positive, got {weights.tolist()}")
        factor, info = torch.linalg.cholesky_ex(0.5 * (covariances + covariances.transpose(-1, -2)))
        if bool(torch.any(info != 0)):
            raise ValueError(
                f"covariances {torch.nonzero(info).flatten().tolist()} are not positive definite"
            )
        raw = torch.tril(factor, -1) + torch.diag_embed(torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)))
        reference = self.loc
        self.logits.copy_(torch.log(weights / weights.sum()).to(reference))
        self.loc.copy_(means.to(reference))
        self.raw_tril.copy_(raw.to(reference))
        return self

    def log_prob(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """`z (batch, D) -> (batch)`."""
        self._check_event(z)
        factor = self.scale_tril()
        eye = torch.eye(self.features, dtype=factor.dtype, device=factor.device)
        inverse = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)  # L_k^-1
        difference = z.unsqueeze(-2) - self.loc  # batch + (K, D)
        whitened = torch.einsum("kij,...kj->...ki", inverse, difference)
        log_det = torch.diagonal(self.raw_tril, dim1=-2, dim2=-1).sum(-1)  # log |L_k|, (K,)
        per_component = -0.5 * whitened.square().sum(-1) - log_det - self.features * LOG_SQRT_2PI
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + per_component, dim=-1)

    def rsample(self, sample_shape: Shape = (), context: Optional[Tensor] = None) -> Tensor:
        """Samples `sample_shape + context_batch + (D,)`."""
        shape = as_shape(sample_shape) + self._batch_shape(context)
        noise = torch.randn(shape + (self.features,), dtype=self.loc.dtype, device=self.loc.device)
        if self.components == 1:
            return self.loc[0] + (self.scale_tril()[0] @ noise.unsqueeze(-1)).squeeze(-1)
        # Gumbel-max: argmax(logits + Gumbel noise) ~ Categorical(softmax(logits)); no host sync.
        exponential = torch.empty(shape + (self.components,), dtype=self.loc.dtype, device=self.loc.device)
        index = torch.argmax(self.logits.detach() - torch.log(exponential.exponential_()), dim=-1)
        loc = self.loc[index]  # shape + (D,)
        factor = self.scale_tril()[index]  # shape + (D, D)
        return loc + (factor @ noise.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, components={self.components}"
