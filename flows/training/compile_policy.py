"""`train.compile`: whether a run's training steps go through `torch.compile`, and `auto`'s choice.

Compiling pays when the steps it speeds up outweigh the compilation. Both are estimated from the run itself:
`auto` trains the first `WARMUP_STEPS + PROBE_STEPS` steps eagerly, counts the ATen calls of one of them
(Inductor's compile time grows with the graph it lowers: `estimated_compile_seconds`) and times the others, then
compiles when the remaining planned steps would save `MARGIN` times the estimated compilation at an assumed
`ASSUMED_SPEEDUP` (`compile_pays`). The compiled steps are timed too: if they are not faster than the eager
ones, training goes back to eager (the compilation is lost, the run is not slowed further); so it does if
the compilation raises (forward and backward compile together, in the first compiled call). Only the
training batch shape that was compiled runs compiled (a last, smaller batch and evaluation run eagerly),
so no shape triggers a second compilation. A CPU without a C++ compiler (Inductor needs one) stays eager.

Measured on the project's 2-core VM (`benchmarks/bench_compile.py`, docs/speed.md): Inductor took
21-25 s for MAF / RealNVP steps of 588 ATen calls and 55-84 s for NSF steps of 1,886-2,344 calls, and the
compiled training step was from 2.6x faster to slower than eager, varying between runs of the same model;
hence the check after compiling.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "AtenCallCounter",
    "ASSUMED_SPEEDUP",
    "COMPILE_SECONDS_FIXED",
    "COMPILE_SECONDS_PER_CALL",
    "CompilePolicy",
    "MARGIN",
    "PROBE_STEPS",
    "WARMUP_STEPS",
    "compile_pays",
    "compiler_available",
    "count_aten_calls",
    "estimated_compile_seconds",
]

#: Inductor's compile time of a training step's graph (forward and backward): a fixed part, seconds, ...
COMPILE_SECONDS_FIXED = 8.0
#: ... and a part per ATen call of one eager training step, seconds (fitted to benchmarks/bench_compile.py)
COMPILE_SECONDS_PER_CALL = 0.027
#: the compiled step's speed-up `auto` assumes when deciding
ASSUMED_SPEEDUP = 1.5
#: the estimated saving must exceed the estimated compilation this many times
MARGIN = 2.0
#: eager steps before timing starts (first-call allocations, ActNorm's data initialisation)
WARMUP_STEPS = 3
#: timed eager steps `auto` decides on (and timed compiled steps it checks the decision on)
PROBE_STEPS = 20

Setting = Union[bool, Literal["auto"]]


class AtenCallCounter(TorchDispatchMode):
    """Counts the ATen operator calls dispatched while it is entered (`with AtenCallCounter() as c: ...`;
    `c.calls`); the calls themselves run unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_aten_calls(function: Callable[[], Any]) -> int:
    """The ATen operator calls `function()` dispatches (forward and any backward it runs)."""
    with AtenCallCounter() as counter:
        function()
    return counter.calls


def estimated_compile_seconds(aten_calls: int) -> float:
    """Inductor's compile time estimated for a training step of `aten_calls` ATen calls (forward, backward)."""
    return COMPILE_SECONDS_FIXED + COMPILE_SECONDS_PER_CALL * aten_calls


def compile_pays(
    eager_step_seconds: float,
    remaining_steps: int,
    compile_seconds: float,
    speedup: Optional[float] = None,
    margin: Optional[float] = None,
) -> bool:
    """Whether `remaining_steps` steps of `eager_step_seconds` would save `margin` x `compile_seconds` if
    compiled steps took `1 / speedup` of the eager time (None: the module's `ASSUMED_SPEEDUP`, `MARGIN`)."""
    speedup = ASSUMED_SPEEDUP if speedup is None else speedup
    margin = MARGIN if margin is None else margin
    saving = remaining_steps * eager_step_seconds * (1.0 - 1.0 / speedup)
    return saving > margin * compile_seconds


def compiler_available(device: torch.device) -> bool:
    """Whether Inductor can compile for `device`: a C++ compiler on CPUs, Triton on CUDA."""
    if device.type == "cpu":
        return any(shutil.which(name) for name in ("c++", "g++", "clang++"))
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def _backward_compiled_with_forward() -> Any:
    """A context in which AOTAutograd compiles the backward graph with the forward (it is otherwise compiled
    at the first backward, inside the training loop, where a failure could not fall back to eager)."""
    from torch._functorch import config  # (torch >= 2.0; a torch without the flag compiles it lazily)

    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


class CompilePolicy:
    """Chooses between the eager and the compiled log density of one run's training steps.

    `setting` is `train.compile`: False (always eager), True (always compiled, evaluation too), or "auto".
    The training module calls `step_started` / `step_ended` around every training step (with the planned
    steps still to run), `record_calls` with one step's ATen calls when `counting_due`, and `log_density`
    for every log density it needs. `compiler` and `clock` are replaceable for tests.
    """

    def __init__(
        self,
        setting: Setting,
        compiler: Optional[Callable[..., Callable[..., torch.Tensor]]] = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.setting = setting
        self._compiler = compiler
        self._clock = clock
        self._compiled: Optional[Callable[..., torch.Tensor]] = None
        self._compiled_shape: Optional[torch.Size] = None
        self._steps = 0
        self._started: Optional[float] = None
        #: how often each input shape went through the log density in training while probing
        self._training_shapes: collections.Counter[torch.Size] = collections.Counter()
        self._eager_times: list[float] = []
        self._compiled_times: list[float] = []
        self.aten_calls: Optional[int] = None
        #: "eager", "probing" (auto, before it chose), "compiled", "reverted" (compiled, then not faster), or
        #: "failed" (the compilation raised; eager)
        self.state = "compiled" if setting is True else ("probing" if setting == "auto" else "eager")
        #: one line saying what `auto` chose and why (None before it chose, and for True / False)
        self.decision: Optional[str] = None

    def summary(self) -> Optional[str]:
        """What `auto` chose and why, or None for a fixed setting."""
        if self.setting != "auto":
            return None
        return self.decision or "train.compile auto: eager (the run ended before the choice)"

    # ------------------------------------------------------------------ the log density

    def log_density(
        self, log_prob: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """`log_prob(x, ...)`, compiled where the policy says so (the first `log_prob` it compiles is kept)."""
        if torch.is_grad_enabled() and self.state == "probing":
            self._training_shapes[x.shape] += 1
        if self.state != "compiled":
            return log_prob(x, *args, **kwargs)
        compiler = torch.compile if self._compiler is None else self._compiler
        if self.setting is True:
            if self._compiled is None:
                self._compiled = compiler(log_prob)
            return self._compiled(x, *args, **kwargs)
        if not torch.is_grad_enabled() or x.shape != self._compiled_shape:
            return log_prob(x, *args, **kwargs)  # evaluation, or another batch shape: eager
        if self._compiled is not None:
            return self._compiled(x, *args, **kwargs)
        self._compiled = compiler(log_prob, dynamic=False)
        try:  # the first call compiles: the forward, and (forced here) the backward too
            with _backward_compiled_with_forward():
                return self._compiled(x, *args, **kwargs)
        except Exception as error:  # an op Inductor cannot compile must not end a run that trains eagerly
            self.state, self._compiled = "failed", None
            message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            self.decision = (
                f"{self.decision}; compiling failed ({type(error).__name__}: {message}), back to eager"
            )
            return log_prob(x, *args, **kwargs)

    # ------------------------------------------------------------------ timing and the choice

    @property
    def timing(self) -> bool:
        """Whether `auto` still times steps: before its choice, and while it checks a compilation (after that,
        the training module's per-step hooks have nothing to do)."""
        return (
            self.setting == "auto"
            and self.state in ("probing", "compiled")
            and len(self._compiled_times) < 1 + WARMUP_STEPS + PROBE_STEPS
        )

    def counting_due(self) -> bool:
        """Whether `auto` wants the next step's ATen calls counted (its last warm-up step, which is not timed)."""
        return self.state == "probing" and self._steps == WARMUP_STEPS - 1

    def record_calls(self, calls: int) -> None:
        """The ATen calls counted in one training step (see `counting_due`)."""
        self.aten_calls = int(calls)

    def step_started(self) -> None:
        """Called before each training step."""
        self._started = self._clock()

    def step_ended(self, remaining_steps: int, device: torch.device) -> bool:
        """Called after each training step with the planned steps still to run. True on the steps where `auto`
        chooses (or checks its choice): the same steps on every process of a run, so that they can agree."""
        if self.setting != "auto" or self._started is None:
            return False
        elapsed = self._clock() - self._started
        self._started = None
        self._steps += 1
        if self.state == "probing" and self._steps > WARMUP_STEPS:
            self._eager_times.append(elapsed)
            if len(self._eager_times) == PROBE_STEPS:
                self._decide(remaining_steps, device)
                return True
        elif self.state == "compiled":
            self._compiled_times.append(elapsed)  # the first is the compilation
            if len(self._compiled_times) == 1 + WARMUP_STEPS + PROBE_STEPS:
                self._check_speedup()
                return True
        return False

    def _decide(self, remaining_steps: int, device: torch.device) -> None:
        eager = statistics.median(self._eager_times)
        calls = self.aten_calls or 0
        estimate = estimated_compile_seconds(calls)
        prefix = "train.compile auto:"
        if not self._training_shapes:
            self.state, reason = "eager", "the training loss does not go through the flow's log_prob"
        elif not compiler_available(device):
            self.state, reason = (
                "eager",
                f"no compiler for {device.type} (Inductor needs a C++ compiler on CPUs)",
            )
        elif calls and compile_pays(eager, remaining_steps, estimate):
            self.state = "compiled"
            self._compiled_shape = self._training_shapes.most_common(1)[0][0]  # the full batch
            self.decision = (
                f"{prefix} compiled ({remaining_steps} steps left at {1e3 * eager:.1f} ms eager; compilation "
                f"estimated at {estimate:.0f} s from {calls} ATen calls per step)"
            )
            return
        else:
            self.state = "eager"
            reason = (
                f"{remaining_steps} steps left at {1e3 * eager:.1f} ms would not repay {MARGIN:g}x a compilation "
                f"estimated at {estimate:.0f} s from {calls} ATen calls per step"
            )
        self.decision = f"{prefix} eager ({reason})"

    def _check_speedup(self) -> None:
        compiled = statistics.median(self._compiled_times[1 + WARMUP_STEPS :])
        eager = statistics.median(self._eager_times)
        compilation = self._compiled_times[0] - compiled
        self.decision = f"{self.decision}; the compilation took {compilation:.0f} s"
        if compiled < eager:
            self.decision = f"{self.decision}, the compiled step {1e3 * compiled:.1f} ms"
        else:
            self.state = "reverted"
            self.decision = (
                f"{self.decision}; back to eager: the compiled step took {1e3 * compiled:.1f} ms, the eager one "
                f"{1e3 * eager:.1f} ms"
            )
