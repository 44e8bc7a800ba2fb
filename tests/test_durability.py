"""No work is lost: atomic result and checkpoint writes, divergence that keeps the last good checkpoint,
SIGKILL mid-epoch then `--resume` reproducing an uninterrupted run, and bit-identical same-seed runs on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO

from flows.training.cli import main
from flows.training.config import write_yaml_atomic
from flows.training.estimator import DensityEstimator
from flows.training.evaluation import write_samples
from flows.training.module import FlowModule
from flows.training.pipeline import run, write_json_atomic
from flows.training.safety import TrainingDivergedError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_NSF = {"name": "nsf", "transforms": 2, "hidden_features": [16, 16], "residual_blocks": 0, "bins": 4}
#: metrics that legitimately differ between two runs of the same config
RUN_SPECIFIC = {"wall_time", "run_dir", "checkpoint", "plots", "compile"}  # compile: what timing chose


class _Crash(BaseException):
    """Stands in for the process dying between writing the data and renaming it into place."""


@pytest.fixture
def crash_on_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise _Crash()

    for target, name in (
        (os, "replace"),
        (os, "rename"),
        (shutil, "move"),
        (Path, "replace"),
        (Path, "rename"),
    ):
        monkeypatch.setattr(target, name, crash)


WRITERS: dict[str, Callable[[Path, int], Any]] = {
    "metrics.json": lambda path, version: write_json_atomic(
        {"version": version, "rows": list(range(50))}, path
    ),
    "config.yaml": lambda path, version: write_yaml_atomic(
        {"version": version, "rows": list(range(50))}, path
    ),
    "samples.csv": lambda path, version: write_samples(path, np.full((100, 2), float(version)), ["a", "b"]),
    "samples.npy": lambda path, version: write_samples(path, np.full((100, 2), float(version)), ["a", "b"]),
    "last.ckpt": lambda path, version: TorchCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.full((100,), float(version))}}, path
    ),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_an_interrupted_write_leaves_the_previous_file_intact(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    path = tmp_path / name
    WRITERS[name](path, 1)
    complete = path.read_bytes()
    request.getfixturevalue("crash_on_rename")  # from here on, every write dies before its rename
    with pytest.raises(_Crash):
        WRITERS[name](path, 2)
    # The target was never opened for writing: it still holds the whole previous version.
    assert path.read_bytes() == complete


def test_estimator_save_interrupted_mid_file_keeps_the_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = np.random.default_rng(0).normal(size=(128, 2))
    estimator = DensityEstimator("gaussian", max_epochs=1, batch_size=64, num_threads=1).fit(rows)
    path = estimator.save(tmp_path / "model.pt")
    before = path.read_bytes()
    real_save = torch.save

    def dies_halfway(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, file, *args, **kwargs)
        # A torn write of the temporary file (a handle, or a path).
        if hasattr(file, "truncate"):
            file.truncate(100)
        else:
            Path(file).write_bytes(Path(file).read_bytes()[:100])
        raise _Crash()

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(_Crash):
        estimator.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    reloaded = DensityEstimator.load(path)
    np.testing.assert_array_equal(reloaded.score_samples(rows), estimator.score_samples(rows))


# ----------------------------------------------------------------------------------------------------------
# Divergence: a clear error naming the step, and the last good checkpoint kept


def _config(directory: Path, name: str, **train: Any) -> dict[str, Any]:
    """384 training rows in batches of 64: 6 optimiser steps per epoch."""
    return {
        "seed": 3,
        "data": {"dataset": "toy:moons", "n_train": 384, "n_val": 128, "n_test": 256},
        "model": dict(TINY_NSF),
        "train": {
            "batch_size": 64,
            "max_epochs": 4,
            "lr": 5e-3,
            "num_threads": 1,
            "noise_std": 0.05,
            "mollification": {"fraction": 0.5},
            "early_stopping_patience": None,
            **train,
        },
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(directory),
            "name": name,
            "samples": 20,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("poison", ["loss", "gradients", "validation"])
def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    poison: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = FlowModule.training_step
    bad_step = 9  # in the second epoch, after the first epoch's checkpoint (step 6)

    def poisoned(self: FlowModule, batch: Any, index: int) -> torch.Tensor:
        loss = original(self, batch, index)
        if self.global_step < bad_step:
            return loss
        if poison == "loss":
            return loss * float("nan")
        # A finite loss whose gradient is NaN: sqrt has an infinite slope at 0, times 0.
        first = next(self.flow.parameters())
        return loss + torch.sqrt(first.sum() * 0.0)

    original_nll = FlowModule.nll

    def nan_on_validation(self: FlowModule, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        nll = original_nll(self, x, context)
        return nll * float("nan") if not self.training and self.current_epoch >= 1 else nll

    if poison == "validation":  # training stays finite; the second epoch's validation NLL is NaN
        monkeypatch.setattr(FlowModule, "nll", nan_on_validation)
        bad_step = 12
    else:
        monkeypatch.setattr(FlowModule, "training_step", poisoned)
    config_path = tmp_path / "diverge.yaml"
    config_path.write_text(yaml.safe_dump(_config(tmp_path, "diverge")))
    with pytest.raises(TrainingDivergedError) as caught:
        run(yaml.safe_load(config_path.read_text()), verbose=False)
    message = str(caught.value)
    assert f"optimiser step {bad_step} (epoch 1)" in message
    expected = {
        "loss": "training loss is nan",
        "gradients": "non-finite gradients",
        "validation": "val_nll is nan",
    }
    assert expected[poison] in message
    for advice in ("train.lr", "train.gradient_clip", "data.standardize", "data.dequantize", "--resume"):
        assert advice in message
    last = tmp_path / "diverge" / "checkpoints" / "last.ckpt"
    assert str(last) in message
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 6  # written at the end of the first epoch, never overwritten
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    assert not (tmp_path / "diverge" / "metrics.json").exists()

    # The CLI says the same in one line, exit status 2.
    assert main(["fit", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        f"flows fit: error: training stopped at optimiser step {bad_step}"
    )


# ----------------------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, then --resume


KILLER = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
import flows.training.trainer as run_module

class KillMidEpoch(Callback):
    def on_train_batch_start(self, trainer, module, batch, index):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = run_module.safety_callbacks
run_module.safety_callbacks = lambda monitor='val_nll': [*callbacks(monitor), KillMidEpoch()]
from flows.training.cli import main
sys.exit(main(["fit", "--config", sys.argv[1]]))
"""


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("val_every_n_steps", "kill_step", "checkpoint_step"),
    [
        (None, 2 * 6 + 3, 12),  # killed in the fourth batch of the third epoch; checkpoint at an epoch end
        (
            4,
            10,
            8,
        ),  # checkpoints every 4 steps: the last one is mid-epoch (2 of the second epoch's 6 batches)
    ],
)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path,
    val_every_n_steps: Any,
    kill_step: int,
    checkpoint_step: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = {} if val_every_n_steps is None else {"val_every_n_steps": val_every_n_steps}
    full = run(_config(tmp_path, "full", **options), verbose=False)
    run_dir = _kill_and_resume(
        _config(tmp_path, "killed", **options), tmp_path, kill_step, checkpoint_step, monkeypatch
    )
    resumed = json.loads((run_dir / "metrics.json").read_text())
    expected = {k: v for k, v in full.metrics.items() if k not in RUN_SPECIFIC}
    assert {k: v for k, v in resumed.items() if k not in RUN_SPECIFIC} == json.loads(json.dumps(expected))
    _assert_same_weights_and_log(tmp_path / "full", run_dir)


def _kill_and_resume(
    config: dict[str, Any],
    tmp_path: Path,
    kill_step: int,
    checkpoint_step: int,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Run `flows fit` on `config` in a subprocess killed with SIGKILL at `kill_step`, check its last
    checkpoint is at `checkpoint_step`, then `flows fit --resume` in this process; returns the run dir."""
    config_path = tmp_path / f"{config['output']['name']}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    killed = subprocess.run(
        [sys.executable, "-c", KILLER.replace("{step}", str(kill_step)), str(config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = Path(config["output"]["dir"]) / config["output"]["name"]
    assert not (run_dir / "metrics.json").exists()
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == checkpoint_step

    from lightning.pytorch.callbacks import Callback

    first_steps: list[int] = []

    class FirstStep(Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            first_steps.append(trainer.global_step)

    import flows.training.trainer as run_module

    callbacks = run_module.safety_callbacks
    monkeypatch.setattr(
        run_module, "safety_callbacks", lambda monitor="val_nll": [*callbacks(monitor), FirstStep()]
    )
    assert main(["fit", "--config", str(config_path), "--resume"]) == 0
    assert first_steps == [checkpoint_step]  # continued from the checkpoint, not retrained from scratch
    return run_dir


def _assert_same_weights_and_log(full_dir: Path, run_dir: Path) -> None:
    """The final and best weights are bit-identical, and so is the training log: the rows before the
    checkpoint are kept, those the killed run logged after it are replaced, so metrics.csv holds every
    step once, as in the uninterrupted run."""
    for name in ("last.ckpt", "best.ckpt"):
        a, b = _state(full_dir / "checkpoints" / name), _state(run_dir / "checkpoints" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    full_log = (full_dir / "logs" / "metrics.csv").read_text().splitlines()
    resumed_log = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert len(full_log) > 3 and resumed_log == full_log


def _target_config(directory: Path, name: str) -> dict[str, Any]:
    """A sampling run: 12 reverse-KL steps (path gradient, annealed), checkpoints every 4 steps."""
    return {
        "seed": 5,
        "target": {
            "name": "double_well",
            "validation_samples": 128,
            "evaluation_samples": 512,
            "anneal_fraction": 0.5,
        },
        "model": dict(TINY_NSF),
        "train": {
            "objective": "reverse_kl_path",
            "batch_size": 32,
            "max_steps": 12,
            "val_every_n_steps": 4,
            "lr": 5e-3,
            "num_threads": 1,
            "early_stopping_patience": None,
        },
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(directory),
            "name": name,
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }


@pytest.mark.slow
def test_target_run_killed_mid_training_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow's training samples are a function of (seed, step), so a resumed sampling run draws what the
    uninterrupted one drew after the checkpoint and ends with the same bits."""
    full = run(_target_config(tmp_path, "full"), verbose=False)
    run_dir = _kill_and_resume(_target_config(tmp_path, "killed"), tmp_path, 6, 4, monkeypatch)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["steps"] == full.metrics["steps"] == 12
    assert resumed["log_z"] == full.metrics["log_z"] and resumed["ess"] == full.metrics["ess"]
    _assert_same_weights_and_log(tmp_path / "full", run_dir)


def test_resume_without_a_checkpoint_starts_from_scratch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "fresh", max_epochs=1)
    config["model"] = {"name": "gaussian"}
    result = run(config, resume=True)
    assert "no checkpoint" in capsys.readouterr().out
    assert result.metrics["epochs"] == 1 and np.isfinite(result.metrics["test_log_likelihood"])


# ----------------------------------------------------------------------------------------------------------
# Same seed, same bits


@pytest.mark.slow
def test_same_seed_gives_bit_identical_models_and_samples_on_cpu() -> None:
    rows = np.random.default_rng(0).standard_t(3, size=(300, 3))
    options = {
        "max_epochs": 3,
        "batch_size": 64,
        "num_threads": 1,
        "noise_std": 0.1,
        "mollification": {"fraction": 0.5},
        "dequantize": False,
        **{k: v for k, v in TINY_NSF.items() if k != "name"},
    }
    first = DensityEstimator("nsf", seed=5, **options).fit(rows)
    second = DensityEstimator("nsf", seed=5, **options).fit(rows)
    other = DensityEstimator("nsf", seed=6, **options).fit(rows)
    a, b, c = (e.flow_.state_dict() for e in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    np.testing.assert_array_equal(first.score_samples(rows), second.score_samples(rows))
    np.testing.assert_array_equal(first.sample(50, random_state=1), second.sample(50, random_state=1))


def _image_config(directory: Path, name: str) -> dict[str, Any]:
    """Glow on digits, 3 optimiser steps per epoch (limit_train_batches), a checkpoint at each epoch end."""
    return {
        "seed": 5,
        "data": {"dataset": "image:digits"},
        "model": {"name": "glow", "levels": 2, "steps": 1, "hidden_channels": 8},
        "image": {
            "grid_size": 2,
            "reconstructions": 0,
            "temperatures": [1.0],
            "val_size": 8,
            "eval_samples": 1,
        },
        "train": {
            "batch_size": 8,
            "eval_batch_size": 64,
            "max_epochs": 3,
            "lr": 1e-3,
            "num_threads": 1,
            "warmup_steps": 0,
            "early_stopping_patience": None,
        },
        "trainer": {
            "accelerator": "cpu",
            "limit_train_batches": 3,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
        },
        "output": {"dir": str(directory), "name": name, "progress_bar": False, "logger": "csv"},
    }


@pytest.mark.slow
def test_image_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flows fit --resume` continues image runs too (it was silently ignored for them)."""
    full = run(_image_config(tmp_path, "full"), verbose=False)
    run_dir = _kill_and_resume(_image_config(tmp_path, "killed"), tmp_path, 4, 3, monkeypatch)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["steps"] == full.metrics["steps"] == 9
    assert resumed["test_bpd"] == full.metrics["test_bpd"]
    _assert_same_weights_and_log(tmp_path / "full", run_dir)
