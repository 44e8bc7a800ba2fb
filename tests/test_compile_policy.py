"""`train.compile: auto` (flows.training.compile_policy): the rule, the ATen call count, the policy's states
with a fake clock and compiler, and a real fit that chooses, counts and leaves no dispatch mode behind."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

import flows
import flows.training.compile_policy as policy_module
from flows.training.compile_policy import (
    PROBE_STEPS,
    WARMUP_STEPS,
    CompilePolicy,
    compile_pays,
    count_aten_calls,
    estimated_compile_seconds,
)

CPU = torch.device("cpu")


def test_compile_pays_exactly_when_the_saving_exceeds_margin_times_the_compilation() -> None:
    # saving = steps * t * (1 - 1 / speedup) = steps * 0.01 * 0.5 against 2 x 30 s of compilation
    threshold = 2.0 * 30.0 / (0.01 * 0.5)  # 12,000 steps
    assert not compile_pays(0.01, int(threshold) - 1, 30.0, speedup=2.0, margin=2.0)
    assert compile_pays(0.01, int(threshold) + 1, 30.0, speedup=2.0, margin=2.0)
    assert not compile_pays(0.01, 10**9, 30.0, speedup=1.0)  # no speed-up, no saving
    # the module's constants, read at call time
    saving = 5000 * 0.01 * (1 - 1 / policy_module.ASSUMED_SPEEDUP)
    assert compile_pays(0.01, 5000, 0.99 * saving / policy_module.MARGIN)
    assert not compile_pays(0.01, 5000, 1.01 * saving / policy_module.MARGIN)


def test_the_compile_time_estimate_is_affine_in_the_aten_calls() -> None:
    fixed, per_call = policy_module.COMPILE_SECONDS_FIXED, policy_module.COMPILE_SECONDS_PER_CALL
    assert estimated_compile_seconds(0) == fixed
    assert estimated_compile_seconds(2000) == pytest.approx(fixed + 2000 * per_call)
    # within a factor 1.5 of what benchmarks/bench_compile.py measured on the project's VM
    for calls, measured in (
        (588, 20.8),
        (588, 25.1),
        (958, 36.0),
        (1886, 55.2),
        (1886, 60.9),
        (2344, 58.4),
        (2344, 84.2),
    ):
        assert measured / 1.5 < estimated_compile_seconds(calls) < 1.5 * measured


def test_count_aten_calls_counts_forward_and_backward_calls() -> None:
    x = torch.ones(3, requires_grad=True)
    assert count_aten_calls(lambda: (x + 1) * 2) == 2  # add, mul
    with_backward = count_aten_calls(lambda: ((x + 1) * 2).sum().backward())
    assert with_backward > 3  # the backward's calls are counted too
    assert torch.equal(x.grad, torch.full((3,), 2.0))  # the calls ran unchanged
    assert _get_current_dispatch_mode() is None


class FakeClock:
    """A clock that advances by `step` seconds per two readings (one training step)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.01
        self._readings = 0

    def __call__(self) -> float:
        self._readings += 1
        if self._readings % 2 == 0:
            self.now += self.step
        return self.now


class FakeCompiler:
    """Stands in for torch.compile: records its calls and returns a wrapper that counts the compiled calls."""

    def __init__(self) -> None:
        self.compilations: list[dict[str, Any]] = []
        self.compiled_calls = 0

    def __call__(self, function: Callable[..., torch.Tensor], **options: Any) -> Callable[..., torch.Tensor]:
        self.compilations.append(options)

        def compiled(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.compiled_calls += 1
            return function(*args, **kwargs)

        return compiled


def log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(-1)


def train_steps(policy: CompilePolicy, steps: int, remaining: int, x: torch.Tensor) -> None:
    for step in range(steps):
        if policy.counting_due():
            policy.record_calls(1000)
        policy.step_started()
        policy.log_density(log_prob, x.requires_grad_())
        policy.step_ended(remaining - step, CPU)


def test_auto_compiles_a_long_run_only_for_the_training_shape_and_undoes_a_slower_compilation() -> None:
    clock, compiler = FakeClock(), FakeCompiler()
    policy = CompilePolicy("auto", compiler=compiler, clock=clock)
    x = torch.randn(8, 2)
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS - 1, 10**7, x)
    assert policy.state == "probing" and policy.aten_calls == 1000 and not compiler.compilations
    train_steps(policy, 1, 10**7, x)
    assert policy.state == "compiled" and "compiled" in policy.decision
    assert "1000 ATen calls" in policy.decision
    calls = compiler.compiled_calls
    train_steps(policy, 1, 10**7, x)
    assert compiler.compilations == [{"dynamic": False}] and compiler.compiled_calls == calls + 1
    # evaluation (no gradient) and another batch shape run eagerly: no second compilation
    with torch.no_grad():
        policy.log_density(log_prob, x)
    policy.log_density(log_prob, torch.randn(3, 2, requires_grad=True))
    assert compiler.compiled_calls == calls + 1 and len(compiler.compilations) == 1
    # the compiled steps turn out slower than the eager ones (10 ms): back to eager
    clock.step = 0.02
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS, 10**7, x)
    assert policy.state == "reverted" and "back to eager" in policy.summary()
    before = compiler.compiled_calls
    train_steps(policy, 3, 10**7, x)
    assert compiler.compiled_calls == before


def test_auto_keeps_a_compilation_that_is_faster() -> None:
    clock, compiler = FakeClock(), FakeCompiler()
    policy = CompilePolicy("auto", compiler=compiler, clock=clock)
    x = torch.randn(8, 2)
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS, 10**7, x)
    clock.step = 0.004
    train_steps(policy, 1 + WARMUP_STEPS + PROBE_STEPS, 10**7, x)
    assert policy.state == "compiled" and "the compiled step 4.0 ms" in policy.summary()


@pytest.mark.parametrize("remaining", [100, 5000])
def test_auto_stays_eager_when_the_run_is_too_short(remaining: int) -> None:
    # 1000 calls: 8 + 27 = 35 s; at 10 ms and speed-up 1.5 a step saves 3.3 ms: 21,000 steps for 2 x 35 s
    compiler = FakeCompiler()
    policy = CompilePolicy("auto", compiler=compiler, clock=FakeClock())
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS + 5, remaining, torch.randn(4, 2))
    assert policy.state == "eager" and not compiler.compilations
    assert f"{remaining - WARMUP_STEPS - PROBE_STEPS + 1} steps left at 10.0 ms" in policy.summary()


def test_auto_stays_eager_without_a_compiler_or_a_training_log_density(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = CompilePolicy("auto", compiler=FakeCompiler(), clock=FakeClock())
    for _ in range(WARMUP_STEPS + PROBE_STEPS):  # the loss never went through log_density
        policy.step_started()
        policy.step_ended(10**7, CPU)
    assert policy.state == "eager" and "does not go through" in policy.summary()

    monkeypatch.setattr(policy_module.shutil, "which", lambda name: None)
    policy = CompilePolicy("auto", compiler=FakeCompiler(), clock=FakeClock())
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS, 10**7, torch.randn(4, 2))
    assert policy.state == "eager" and "no compiler" in policy.summary()


def test_fixed_settings_do_not_time_or_choose() -> None:
    compiler = FakeCompiler()
    always = CompilePolicy(True, compiler=compiler, clock=FakeClock())
    with torch.no_grad():
        always.log_density(log_prob, torch.randn(4, 2))  # true compiles evaluation too
    always.log_density(log_prob, torch.randn(5, 2))
    assert compiler.compilations == [{}] and compiler.compiled_calls == 2
    assert always.summary() is None and always.state == "compiled"

    never = CompilePolicy(False, compiler=compiler, clock=FakeClock())
    train_steps(never, WARMUP_STEPS + PROBE_STEPS + 1, 10**9, torch.randn(4, 2))
    assert never.state == "eager" and never.summary() is None and len(compiler.compilations) == 1


def test_a_fit_with_auto_counts_one_step_chooses_and_leaves_no_dispatch_mode(tmp_path: Any) -> None:
    rows = np.random.default_rng(0).normal(size=(400, 2))
    options = {"max_epochs": None, "batch_size": 50, "early_stopping_patience": None, "base": "normal"}
    short = flows.DensityEstimator("nsf", max_steps=40, transforms=2, hidden_features=[16], **options).fit(
        rows
    )
    assert _get_current_dispatch_mode() is None
    match = re.fullmatch(
        r"train.compile auto: eager \((\d+) steps left at [\d.]+ ms would not repay 2x a compilation "
        r"estimated at (\d+) s from (\d+) ATen calls per step\)",
        short.compile_,
    )
    assert match is not None, short.compile_
    left, estimate, calls = (int(g) for g in match.groups())
    assert left == 40 - WARMUP_STEPS - PROBE_STEPS
    assert 200 < calls < 5000 and estimate == round(estimated_compile_seconds(calls))
    # a wider flow dispatches more calls per step
    wider = flows.DensityEstimator("nsf", max_steps=40, transforms=4, hidden_features=[16], **options).fit(
        rows
    )
    assert int(re.search(r"(\d+) ATen calls", wider.compile_).group(1)) > 1.5 * calls
    fixed = flows.DensityEstimator("nsf", max_steps=40, transforms=2, compile=False, **options).fit(rows)
    assert fixed.compile_ is None
    assert flows.DensityEstimator.load(short.save(tmp_path / "short.pt")).compile_ == short.compile_


@pytest.mark.slow
def test_auto_compiles_a_real_fit_when_forced_and_trains_like_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the compile-time estimate at zero, `auto` compiles (Inductor) after its probe; the run trains on
    the same data to the same place as the eager run, up to float rounding."""
    rows = np.random.default_rng(1).normal(size=(600, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
    options = {"max_epochs": None, "max_steps": 120, "batch_size": 64, "early_stopping_patience": None}
    options.update(base="normal", transforms=2, hidden_features=[16], lr=3e-3, seed=0)
    eager = flows.DensityEstimator("nsf", compile=False, **options).fit(rows)
    import torch._inductor.config

    monkeypatch.setattr(policy_module, "COMPILE_SECONDS_FIXED", 0.0)
    monkeypatch.setattr(policy_module, "COMPILE_SECONDS_PER_CALL", 0.0)
    # Inductor's caches off, so that it really lowers (and warns); its own patch restores the setting
    with (
        warnings.catch_warnings(record=True) as caught,
        torch._inductor.config.patch(force_disable_caches=True),
    ):
        warnings.simplefilter("always")
        compiled = flows.DensityEstimator("nsf", **options).fit(rows)
    assert not [w for w in caught if "_prims_common" in str(w.message)]  # torch's own deprecation, silenced
    assert compiled.compile_.startswith("train.compile auto: compiled"), compiled.compile_
    assert "the compilation took" in compiled.compile_  # the compiled steps ran and were timed
    test = np.random.default_rng(2).normal(size=(500, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
    difference = compiled.score_samples(test) - eager.score_samples(test)
    assert np.abs(difference).max() < 1e-2  # rounding only: the trained models agree


def test_every_rank_takes_rank_zeros_choice_at_the_choice_step() -> None:
    """FlowModule's hooks broadcast the policy's state from rank 0 on the step where `auto` chooses (and only
    then), whatever this rank's own timings chose."""
    import types

    from flows.training.config import TrainConfig
    from flows.training.module import FlowModule

    flow = flows.NSF(2, transforms=1, hidden_features=[8])
    module = FlowModule(flow, TrainConfig(compile="auto"))
    broadcasts: list[tuple[str, int]] = []

    def broadcast(value: str, src: int) -> str:
        broadcasts.append((value, src))
        return "compiled"  # rank 0 chose to compile

    module._trainer = types.SimpleNamespace(
        world_size=2,
        global_rank=1,
        global_step=0,
        estimated_stepping_batches=30,
        strategy=types.SimpleNamespace(broadcast=broadcast),
    )
    x = torch.randn(16, 2)
    for step in range(WARMUP_STEPS + PROBE_STEPS):
        module.on_train_batch_start((x,), step)
        module.nll(x).mean().backward()
        module.on_train_batch_end(None, (x,), step)
    assert broadcasts == [("eager", 0)]  # this rank chose eager (a 30-step run), rank 0's choice wins
    assert module.compile_policy.state == "compiled" and module.compile_policy.aten_calls > 100
    assert _get_current_dispatch_mode() is None


def test_auto_trains_eagerly_when_the_compilation_raises() -> None:
    """A compiler error at the first compiled call (where auto compiles forward and backward) leaves the run
    eager with the eager value, instead of ending it."""

    def failing_compiler(
        function: Callable[..., torch.Tensor], **options: Any
    ) -> Callable[..., torch.Tensor]:
        def compiled(*args: Any, **kwargs: Any) -> torch.Tensor:
            raise RuntimeError("Inductor cannot lower op X\nlong traceback")

        return compiled

    policy = CompilePolicy("auto", compiler=failing_compiler, clock=FakeClock())
    x = torch.randn(8, 2)
    train_steps(policy, WARMUP_STEPS + PROBE_STEPS, 10**7, x)
    assert policy.state == "compiled"
    value = policy.log_density(log_prob, x.requires_grad_())
    torch.testing.assert_close(value, log_prob(x))
    assert policy.state == "failed"
    assert "compiling failed (RuntimeError: Inductor cannot lower op X), back to eager" in policy.summary()
    train_steps(policy, 30, 10**7, x)  # stays eager, no second attempt
    assert policy.state == "failed"


def test_auto_compiles_the_full_batch_shape_even_if_a_partial_batch_comes_first() -> None:
    """The compiled shape is the commonest training shape of the probe, so a last, smaller batch right after
    the choice neither compiles nor keeps the full batches eager."""
    compiler = FakeCompiler()
    policy = CompilePolicy("auto", compiler=compiler, clock=FakeClock())
    full, partial = torch.randn(8, 2), torch.randn(3, 2)
    for step in range(WARMUP_STEPS + PROBE_STEPS):
        train_steps(policy, 1, 10**7, partial if step % 5 == 4 else full)
    assert policy.state == "compiled"
    policy.log_density(log_prob, partial.requires_grad_())
    assert not compiler.compilations
    policy.log_density(log_prob, full.requires_grad_())
    assert compiler.compilations == [{"dynamic": False}] and compiler.compiled_calls == 1
