"""One gradient-norm pass per step: `NonFiniteGuard` checks the gradients by their total norm and
`FlowModule.configure_gradient_clipping` clips with it, as Lightning's own clipping (`clip_grad_norm_`) would."""

from __future__ import annotations

from typing import Any, Optional, Union

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import flows
from flows.training.config import TrainConfig
from flows.training.guard import NonFiniteGuard, gradient_norm
from flows.training.module import FlowModule
from flows.training.safety import TrainingDivergedError


def _reference_norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.cat([t.detach().double().flatten() for t in tensors])))


def test_gradient_norm_matches_a_float64_norm_across_dtypes_without_float16_overflow() -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(7, 3, generator=generator),
        torch.randn(5, generator=generator, dtype=torch.float64) * 1e3,
        torch.full((1000,), 3000.0, dtype=torch.float16),  # squares overflow float16 (max 65,504)
        torch.zeros(0),
    ]
    norm = gradient_norm(tensors)
    assert norm.dtype == torch.float64  # the widest of the groups
    assert float(norm) == pytest.approx(_reference_norm(tensors), rel=1e-6)
    assert float(gradient_norm(tensors[:1])) == pytest.approx(_reference_norm(tensors[:1]), rel=1e-6)
    poisoned = [tensors[0], torch.tensor([1.0, float("nan")])]
    assert torch.isnan(gradient_norm(poisoned))
    assert torch.isinf(gradient_norm([torch.tensor([float("inf"), 1.0])]))


class _LightningClipping(FlowModule):
    """The same module with Lightning's own clipping (the reference)."""

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        assert self.step_gradient_norm is not None  # the guard did measure it
        self.step_gradient_norm = None
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


class _CountingLightningClipping(FlowModule):
    """The module under test, counting the steps that fell back to Lightning's clipping."""

    fallbacks = 0

    def clip_gradients(self, *args: Any, **kwargs: Any) -> None:
        type(self).fallbacks += 1
        super().clip_gradients(*args, **kwargs)


def _train(
    module_class: type,
    clip: Optional[float],
    steps: int = 4,
    guard: bool = True,
    stale: Optional[tuple[int, float]] = None,
) -> tuple[FlowModule, list[float]]:
    torch.manual_seed(0)
    flow = flows.NSF(3, transforms=2, hidden_features=[16, 16], bins=4)
    module = module_class(flow, TrainConfig(lr=1e-2, warmup_steps=0, gradient_clip=clip))
    module.step_gradient_norm = stale  # as an interrupted earlier fit could leave it
    norms: list[float] = []

    class Record(L.Callback):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            norms.append(_reference_norm([p.grad for p in pl_module.flow.parameters()]))
            if not guard:  # a norm measured for another step (as one left by a step that raised)
                pl_module.step_gradient_norm = (trainer.global_step + 1, 1e12)

    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) * 3
    trainer = L.Trainer(
        max_steps=steps,
        gradient_clip_val=clip,
        gradient_clip_algorithm="norm",
        callbacks=[NonFiniteGuard(), Record()] if guard else [Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=16))
    return module, norms


def test_clipping_with_the_guards_norm_matches_lightnings_clipping() -> None:
    _CountingLightningClipping.fallbacks = 0
    ours, norms = _train(_CountingLightningClipping, clip=0.05)
    assert _CountingLightningClipping.fallbacks == 0  # every step clipped with the guard's norm
    reference, _ = _train(_LightningClipping, clip=0.05)
    unclipped, _ = _train(FlowModule, clip=None)
    assert min(norms) > 0.05  # every step was clipped
    for mine, theirs in zip(ours.flow.parameters(), reference.flow.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    distance = max(
        float((a - b).detach().abs().max())
        for a, b in zip(ours.flow.parameters(), unclipped.flow.parameters())
    )
    assert distance > 1e-3  # clipping changed the result, so the comparison above can fail
    assert ours.step_gradient_norm is None  # consumed by each step's clipping


def test_a_norm_left_by_another_fit_or_step_is_never_used() -> None:
    # Without the guard nothing measures this step's norm: each step falls back to Lightning's clipping,
    # whatever an earlier fit left (a norm of 1e12 "for step 0", which would scale every gradient to ~0)
    # and whatever was left for another step.
    _CountingLightningClipping.fallbacks = 0
    ours, _ = _train(_CountingLightningClipping, clip=0.05, steps=2, guard=False, stale=(0, 1e12))
    assert _CountingLightningClipping.fallbacks == 2
    reference, _ = _train(FlowModule, clip=0.05, steps=2)
    for mine, theirs in zip(ours.flow.parameters(), reference.flow.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    module = FlowModule(flows.NSF(2, transforms=1, hidden_features=[4]), TrainConfig())
    module.step_gradient_norm = (0, 1.0)
    module.on_train_start()
    assert module.step_gradient_norm is None


def test_a_finite_gradient_whose_norm_overflows_stops_training() -> None:
    class Trainer:
        current_epoch, global_step, checkpoint_callback = 0, 5, None
        precision_plugin = None

    module = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(4))])
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module[0].grad = torch.full((4,), 3e38)  # finite, but the squares' sum overflows float32
    with pytest.raises(
        TrainingDivergedError, match="total norm overflows to inf although each gradient is finite"
    ):
        NonFiniteGuard().on_before_optimizer_step(Trainer(), module, optimizer)
    module[0].grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(TrainingDivergedError, match="non-finite gradients in 1 parameters"):
        NonFiniteGuard().on_before_optimizer_step(Trainer(), module, optimizer)
