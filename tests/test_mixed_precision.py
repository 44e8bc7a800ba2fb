"""Mixed precision (`flows.mixed_precision`): under autocast only the conditioners compute in 16 bits.

Under CPU bfloat16 autocast, every registry bijector must keep float32 outputs and log-determinants and invert
itself as precisely as in float32 (its conditioners still compute in bfloat16: the round trip recomputes the
same 16-bit parameters). Before the policy, 17 of the 54 cases returned bfloat16 (16 of them latents that a
flow's `decode` refused) and round trips through flows of the others were off by up to 0.13.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import flows
from flows import Flow
from flows.core import Bijector, Chain
from flows.distributions import DiagonalNormal, GaussianMixture, StandardNormal, StudentT
from flows.full_mixture import FullGaussianMixture
from flows.mixed_precision import conditioners_in_mixed_precision, full_precision
from flows.path_gradient import sample_with_score
from flows.training.config import ConfigError
from flows.training.trainer_options import SIXTEEN_BIT_PRECISIONS, trainer_arguments
from tests.helpers import TOLERANCE, randomize
from tests.registry import CASES, Case
from tests.test_bijectors import build, ids, inputs

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_bijectors_keep_float32_and_invert_exactly_under_bfloat16_autocast(case: Case) -> None:
    bijector = build(case, torch.float32)
    x, context = inputs(case, (7,), torch.float32)
    with torch.no_grad(), torch.autocast(**BF16), full_precision("cpu"):
        y, ladj = bijector(x, context)
        x_back, ladj_inverse = bijector.inverse(y, context)
    assert y.dtype == ladj.dtype == x_back.dtype == ladj_inverse.dtype == torch.float32
    tolerance = TOLERANCE[torch.float32] * 10  # as in the float32 generic test
    torch.testing.assert_close(x_back, x, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(ladj + ladj_inverse, torch.zeros_like(ladj), atol=tolerance, rtol=0)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()


def test_conditioners_compute_in_bfloat16_and_transforms_in_float32() -> None:
    """The point of mixed precision: the conditioner's matrix products in 16 bits; nothing else."""
    flow = flows.presets.NSF(features=4, transforms=2, hidden_features=(16, 16))
    seen: list[tuple[torch.dtype, bool]] = []
    for module in flow.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(
                lambda module, args, out: seen.append((out.dtype, conditioners_in_mixed_precision()))
            )
    x = torch.randn(32, 4)
    with torch.autocast(**BF16):
        log_prob = flow.log_prob(x)
        assert not conditioners_in_mixed_precision()  # restored after the call
    assert seen and all(dtype == torch.bfloat16 and suspended for dtype, suspended in seen)
    assert log_prob.dtype == torch.float32
    seen.clear()
    flow.log_prob(x)  # without autocast nothing changes
    assert seen and all(dtype == torch.float32 and not suspended for dtype, suspended in seen)


@pytest.mark.parametrize("preset", ["nsf", "maf", "tarflow"])
def test_flow_log_densities_match_its_samples_and_round_trips_under_bfloat16_autocast(preset: str) -> None:
    """`sample_and_log_prob` and `log_prob` agree, and `decode(encode(x)) = x`, as in float32; the log-densities
    differ from the float32 flow's only through the conditioners' rounding. Before the policy an NSF's (parameters
    at scale 0.1) samples' reported log-densities were off by up to 19 nats from `log_prob`, and `encode` gave
    bfloat16."""
    torch.manual_seed(0)
    if preset == "tarflow":  # a causal transformer, whose inverse otherwise steps through its key-value cache
        flow = flows.presets.TarFlow(
            shape=(1, 4, 4), patch_size=2, blocks=2, layers_per_block=1, channels=16, heads=2
        )
        x = torch.randn(64, 1, 4, 4)
    else:
        builder = flows.presets.NSF if preset == "nsf" else flows.presets.MAF
        flow = builder(features=4, transforms=3, hidden_features=(32, 32))
        x = torch.randn(64, 4)
    randomize(flow, scale=0.05)
    flow.eval()
    with torch.no_grad():
        log_prob_float32 = flow.log_prob(x)
        with torch.autocast(**BF16):
            log_prob = flow.log_prob(x)
            z = flow.encode(x)
            x_back = flow.decode(z)
            samples, sample_log_prob = flow.sample_and_log_prob(64)
            resampled_log_prob = flow.log_prob(samples)
    assert log_prob.dtype == z.dtype == samples.dtype == sample_log_prob.dtype == torch.float32
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sample_log_prob, resampled_log_prob, atol=1e-3, rtol=1e-4)
    # the conditioners' bfloat16 rounding moves the log-densities a little, no more
    assert (log_prob - log_prob_float32).abs().max() < 0.5
    assert (log_prob - log_prob_float32).abs().max() > 0  # and they did compute in bfloat16


@pytest.mark.parametrize("precision", SIXTEEN_BIT_PRECISIONS)
def test_sixteen_bit_true_precisions_are_refused(precision: str) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.precision.*bf16-mixed"):
        trainer_arguments({"precision": precision})
    assert trainer_arguments({"precision": "bf16-mixed"}) == {"precision": "bf16-mixed"}


@pytest.mark.slow
def test_estimator_trains_under_bf16_mixed_precision() -> None:
    """End to end through Lightning's bf16-mixed plugin: the fit runs its conditioners in bfloat16 and scores
    held-out rows within a few hundredths of a nat of the float32 fit (a normal base: the default mixture base
    fitted to these clusters beats a few epochs of training, and both fits would return it)."""
    from flows.training.estimator import DensityEstimator

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 2)) * 3
    data = centers[rng.integers(0, 4, 1500)] + rng.normal(size=(1500, 2)) * 0.5
    scores = {}
    for precision in ("32-true", "bf16-mixed"):
        estimator = DensityEstimator(
            model="nsf", base="normal", max_epochs=4, trainer={"precision": precision}, seed=0
        )
        estimator.fit(data[:1200])
        scores[precision] = estimator.score(data[1200:])
    assert np.isfinite(scores["bf16-mixed"])
    assert scores["bf16-mixed"] != scores["32-true"]
    assert abs(scores["bf16-mixed"] - scores["32-true"]) < 0.05


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    return randomize(module, scale=0.3, seed=3)


@pytest.mark.parametrize(
    "build",
    [
        lambda: StandardNormal((3,)),
        lambda: DiagonalNormal((3,)),
        lambda: StudentT((3,)),
        lambda: GaussianMixture((3,), components=3),
        lambda: FullGaussianMixture((3,), components=3),
    ],
    ids=["normal", "diagonal", "student-t", "mixture", "full-mixture"],
)
def test_base_densities_compute_in_float32_under_autocast_when_called_directly(build) -> None:
    """The sampling objectives call `flow.base` directly, outside any Flow method: the full-covariance
    mixture's matrix products ran in bfloat16 there (0.043 nats off)."""
    base = _randomized(build())
    z = torch.randn(16, 3)
    expected = base.log_prob(z)
    with torch.autocast(**BF16):
        log_prob = base.log_prob(z)
        torch.manual_seed(0)
        samples, sample_log_prob = base.rsample_and_log_prob((8,))
    torch.manual_seed(0)
    expected_samples, expected_sample_log_prob = base.rsample_and_log_prob((8,))
    assert log_prob.dtype == samples.dtype == torch.float32
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        (samples, sample_log_prob), (expected_samples, expected_sample_log_prob), rtol=0, atol=0
    )


def test_path_gradient_sampling_keeps_its_transforms_in_float32_under_autocast() -> None:
    """`sample_with_score` runs coupling transformers outside the layers' methods; under autocast its samples
    must still be `decode(z)` and its log-densities `log_prob` (they were 0.056 and 0.14 nats off)."""
    torch.manual_seed(0)
    flow = _randomized(flows.presets.NSF(features=3, transforms=2, hidden_features=(16, 16)))
    z = torch.randn(32, 3)
    with torch.autocast(**BF16):
        x, log_q, score = sample_with_score(flow, 32, z.clone())
        decoded = flow.decode(z)
        log_prob = flow.log_prob(x.detach())
    assert x.dtype == log_q.dtype == score.dtype == torch.float32
    torch.testing.assert_close(x.detach(), decoded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_q, log_prob, atol=1e-3, rtol=1e-4)


def test_a_users_own_bijector_and_the_context_embedding_follow_the_policy() -> None:
    """`Bijector` wraps every subclass's forward and inverse, so a layer written elsewhere computes in float32;
    a flow's context embedding is a network like a conditioner and computes in bfloat16."""

    class Scale(Bijector):  # a matrix product in the transform itself, which autocast would run in bfloat16
        def __init__(self) -> None:
            super().__init__()
            self.matrix = torch.nn.Parameter(torch.eye(3) + 0.1 * torch.randn(3, 3))

        def forward(self, x, context=None):
            return x @ self.matrix, torch.linalg.slogdet(self.matrix)[1].expand(x.shape[:-1])

        def inverse(self, y, context=None):
            return y @ torch.linalg.inv(self.matrix), -torch.linalg.slogdet(self.matrix)[1].expand(
                y.shape[:-1]
            )

    torch.manual_seed(0)
    embedding = torch.nn.Linear(5, 4)
    seen: list[torch.dtype] = []
    embedding.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    transform = Chain(Scale(), flows.presets.NSF(features=3, transforms=1, context_features=4).transform)
    flow = Flow(transform, StandardNormal((3,)), embedding=embedding)
    x, context = torch.randn(8, 3), torch.randn(8, 5)
    with torch.autocast(**BF16):
        z = flow.encode(x, context)
        x_back = flow.decode(z, context)
        y, _ = Scale().forward(x)  # called alone, outside any Flow
    assert z.dtype == y.dtype == torch.float32 and seen == [torch.bfloat16, torch.bfloat16]
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)


def test_the_suspended_autocast_is_per_thread() -> None:
    """A thread inside a Flow method under autocast must not turn another thread's conditioners to 16 bits
    (with a process-wide flag, interleaved exits left it set for good)."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with torch.autocast(**BF16), full_precision("cpu"):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert inside.wait(10)
        assert not conditioners_in_mixed_precision()
        flow = flows.presets.NSF(features=3, transforms=1, hidden_features=(8,))
        dtypes: list[torch.dtype] = []
        for module in flow.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
        flow.log_prob(torch.randn(4, 3))
        assert dtypes and set(dtypes) == {torch.float32}
    finally:
        release.set()
        worker.join()
