"""Shared test utilities: tolerances per dtype, parameter randomisation, Jacobian log-dets and the DDP tests' environment and state comparison."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

TOLERANCE = {torch.float64: 1e-8, torch.float32: 2e-3}


def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Add Gaussian noise to every parameter so that zero-initialised layers become non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.add_(scale * noise.to(parameter.dtype))
    return module


def jacobian_logdet(function: Callable[[Tensor], Tensor], x: Tensor, event_shape: tuple[int, ...]) -> Tensor:
    """`log |det J|` of `function` at one unbatched point `x` (shape `event_shape`), via jacrev."""
    numel = x.numel()

    def flat(v: Tensor) -> Tensor:
        return function(v.reshape(event_shape)).reshape(-1)

    jacobian = torch.func.jacrev(flat)(x.reshape(-1))
    assert jacobian.shape == (numel, numel), f"non-square Jacobian {tuple(jacobian.shape)}"
    return torch.linalg.slogdet(jacobian)[1]


def sample_context(
    batch: tuple[int, ...], features: int, dtype: torch.dtype, seed: int = 1
) -> Optional[Tensor]:
    if features == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch + (features,), generator=generator, dtype=torch.float64).to(dtype)


def ddp_environment(repo: Path) -> dict[str, str]:
    """The environment of a DDP subprocess: this checkout first on PYTHONPATH, no inherited rank variables."""
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for variable in (
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "FLOWS_RUN_DIR",
    ):
        env.pop(variable, None)
    return env


def last_state(run_dir: Path) -> dict[str, Tensor]:
    """The state dict of a run's `checkpoints/last.ckpt`."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def assert_same_trained_state(
    ddp: dict[str, Tensor], single: dict[str, Tensor], after_one_step: dict[str, Tensor]
) -> None:
    """`ddp` equals `single` (rtol 1e-4), and training moved some parameter away from `after_one_step`."""
    assert ddp.keys() == single.keys()
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(
            ddp[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
        )
        moved += int(value.is_floating_point() and not torch.allclose(value, after_one_step[key]))
    assert moved > 0  # not a comparison between two initial states
