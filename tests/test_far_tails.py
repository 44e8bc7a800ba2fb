"""NSF far outside its spline bound, in float32: exact wherever float32 can hold the log density.

With `tails="linear"` the tails are affine with learned slopes, so a point at |x| ~ 1e5 can map to a latent
of 1e20 and more through a few layers; its true log density is then below -3.4e38, which float32 cannot hold:
-inf is the correctly rounded value there (never NaN, never +inf). Wherever the float64 log density fits in
float32, the float32 evaluation agrees with it. With `tails="identity"` every point stays representable.
"""

from __future__ import annotations

import pytest
import torch

import flows

FLOAT32_LOWEST = float(torch.finfo(torch.float32).min)


@pytest.mark.parametrize("tails", ["linear", "identity"])
@pytest.mark.parametrize("autoregressive", [False, True])
def test_nsf_far_outside_the_bound_matches_float64_where_float32_can_hold_it(
    tails: str, autoregressive: bool
) -> None:
    torch.manual_seed(0)
    flow = flows.presets.NSF(
        features=4, transforms=3, hidden_features=(32, 32), bins=8, tails=tails, autoregressive=autoregressive
    )
    with torch.no_grad():  # trained-like weights: far from the identity initialisation
        for parameter in flow.parameters():
            parameter.normal_(0.0, 0.5)
    scales = torch.tensor([1e5, 3e5, 6e5, 1.0, 10.0])
    x = torch.randn(64, 4) * scales[torch.randint(len(scales), (64, 4))]
    low = flow.log_prob(x)
    high = flow.double().log_prob(x.double())
    assert not torch.isnan(low).any() and not (low == float("inf")).any()
    representable = high > 0.5 * FLOAT32_LOWEST
    assert representable.any()
    torch.testing.assert_close(low[representable].double(), high[representable], rtol=1e-4, atol=1e-3)
    assert torch.all(torch.isinf(low[~representable]) & (low[~representable] < 0))
    if tails == "identity":
        assert representable.all()
