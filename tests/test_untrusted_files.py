"""Checkpoints, configs and run directories are untrusted input.

- Loading never runs code: a checkpoint whose pickle asks for a callable (zip format, legacy format and a bare
  pickle) is refused by every entry point, and the callable never runs (it would create a marker file).
- Checkpoint writes are atomic on any filesystem: a writer killed mid-write (with `$TMPDIR` on another
  filesystem) leaves the previous complete `last.ckpt`, and the run resumes from it.
- `last.ckpt` is rewritten at every validation and at the end of training; `--resume` of a finished run
  changes nothing.
- A run directory is locked by one live run; `output.name` is one path component; YAML alias bombs and
  huge values give short errors; an optimiser step that makes a parameter non-finite is undone.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from flows.training.checkpoint_io import AtomicCheckpointIO
from flows.training.checkpoints import load_model
from flows.training.cli import main
from flows.training.config import ConfigError, _Loader, load_config, parse_config
from flows.training.estimator import DensityEstimator
from flows.training.image_checkpoints import load_image_model
from flows.training.module import FlowModule
from flows.training.pipeline import run
from flows.training.rundir import RunDirectoryLocked, run_lock
from flows.training.safety import TrainingDivergedError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY_NSF = {"name": "nsf", "transforms": 2, "hidden_features": [8, 8], "residual_blocks": 0, "bins": 4}


def _config(directory: Path, name: str, **train: Any) -> dict[str, Any]:
    """Moons, 256 training rows in batches of 64: 4 optimiser steps per epoch."""
    return {
        "seed": 1,
        "data": {"dataset": "toy:moons", "n_train": 256, "n_val": 64, "n_test": 64},
        "model": dict(TINY_NSF),
        "train": {
            "batch_size": 64,
            "max_epochs": 3,
            "num_threads": 1,
            "early_stopping_patience": None,
            **train,
        },
        "trainer": {"accelerator": "cpu"},
        "output": {
            "dir": str(directory),
            "name": name,
            "samples": 10,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------------
# 1. Loading never runs code


class _WritesMarker:
    """Unpickling this calls `open(marker, "w")`: the file appears if the loader runs code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def _malicious(path: Path, marker: Path, kind: str, payload: dict[str, Any]) -> Path:
    payload = dict(payload, hyper_parameters={"config": {"evil": _WritesMarker(marker)}})
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, no torch framing at all
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path


KINDS = ["zip", "legacy", "bare"]
REFUSAL = ("refusing to load", "not a readable checkpoint")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run's directory."""
    directory = tmp_path_factory.mktemp("genuine")
    run(_config(directory, "run", max_epochs=1), verbose=False)
    return directory / "run"


@pytest.mark.parametrize("kind", KINDS)
def test_python_loaders_refuse_code_and_run_none(kind: str, tmp_path: Path, genuine: Path) -> None:
    marker = tmp_path / "marker"
    good = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    path = _malicious(tmp_path / "evil.ckpt", marker, kind, {"state_dict": good["state_dict"]})
    loaders = {
        "read_checkpoint": read_checkpoint,
        "load_model": load_model,
        "DensityEstimator.load": DensityEstimator.load,
        "load_image_model": load_image_model,
        "AtomicCheckpointIO.load_checkpoint": AtomicCheckpointIO().load_checkpoint,  # Lightning's resume path
    }
    for name, load in loaders.items():
        with pytest.raises(ValueError) as caught:
            load(path)
        message = str(caught.value)
        assert str(path) in message and any(text in message for text in REFUSAL), (name, message)
        assert "nothing in it was run" in message, (name, message)
        assert not marker.exists(), name
    if kind == "zip":  # the message names what the file asked for
        assert "io.open" in message and "may be unsafe" in message


class _RunsShell:
    """Unpickling this runs a shell command that creates `marker` (torch words its refusal of a blocked module
    differently from that of an unknown global)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_shell_payload_is_refused_as_unsafe_naming_what_it_asks_for(tmp_path: Path, genuine: Path) -> None:
    marker = tmp_path / "marker"
    good = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    torch.save({"state_dict": good["state_dict"], "x": _RunsShell(marker)}, tmp_path / "shell.ckpt")
    with pytest.raises(
        ValueError, match=r"refusing to load .*it asks for (posix|os|nt)\.system\); it may be unsafe"
    ):
        read_checkpoint(tmp_path / "shell.ckpt")
    assert not marker.exists()


def test_a_flipped_bit_in_a_weight_is_refused(tmp_path: Path, genuine: Path) -> None:
    """torch.load does not check the zip's CRC-32s: a changed weight would load as another model."""
    data = bytearray((genuine / "checkpoints" / "best.ckpt").read_bytes())
    with zipfile.ZipFile(genuine / "checkpoints" / "best.ckpt") as archive:
        entry = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    header = data[entry.header_offset : entry.header_offset + 30]  # the local header: its own extra length
    name_length, extra_length = (
        int.from_bytes(header[26:28], "little"),
        int.from_bytes(header[28:30], "little"),
    )
    start = entry.header_offset + 30 + name_length + extra_length
    data[start + 5] ^= 0x01
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"is damaged: the bytes of its entry '.*data/0' do not match"):
        load_model(tmp_path / "flipped.ckpt")


@pytest.mark.parametrize("kind", KINDS)
def test_cli_commands_refuse_code_with_exit_2(
    kind: str, tmp_path: Path, genuine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    good = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    path = _malicious(tmp_path / "evil.ckpt", marker, kind, {"state_dict": good["state_dict"]})
    table = tmp_path / "table.csv"
    table.write_text("x0,x1\n0.1,0.2\n0.3,0.4\n")
    for argv in (
        ["test", "--ckpt", str(path)],
        ["sample", "--ckpt", str(path), "-n", "5", "--out", str(tmp_path / "s.csv")],
        ["score", "--ckpt", str(path), "--data", str(table), "--out", str(tmp_path / "p.csv")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and any(text in err for text in REFUSAL), err
        assert not marker.exists(), argv
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_resume_refuses_a_malicious_last_checkpoint(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "run")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "marker"
    _malicious(tmp_path / "run" / "checkpoints" / "last.ckpt", marker, kind, {"state_dict": {}})
    path = _write_config(tmp_path / "c.yaml", config)
    assert main(["fit", "--config", str(path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and any(text in err for text in REFUSAL), err
    assert not marker.exists()
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing of the run was started


def test_trainer_resumes_through_the_safe_reader(tmp_path: Path) -> None:
    """Lightning's own `ckpt_path=` load goes through `AtomicCheckpointIO` (weights only)."""
    from flows.training.trainer import make_trainer

    config = parse_config(_config(tmp_path, "run"))
    trainer = make_trainer(config, tmp_path / "run")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_gas_pickle_that_asks_for_code_is_refused(tmp_path: Path) -> None:
    from flows.datasets.uci import load_uci

    marker = tmp_path / "marker"
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(pickle.dumps(_WritesMarker(marker)))
    with pytest.raises(ValueError, match="refusing it"):
        load_uci("gas", tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# 2. Checkpoint writes are atomic, whatever filesystem $TMPDIR is on

KILL_MID_WRITE = """
import os, signal, sys, torch
import flows.training.checkpoint_io  # noqa: F401 - the writer under test
real_save = torch.save
writes = []

def torn_save(obj, handle, *args, **kwargs):
    writes.append(obj.get("global_step"))
    if len(writes) < {kill_at}:
        return real_save(obj, handle, *args, **kwargs)
    import io
    buffer = io.BytesIO()
    real_save(obj, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = torn_save  # every torch.save in this process, the atomic checkpoint writer included
from flows.training.cli import main
sys.exit(main(["fit", "--config", sys.argv[1]]))
"""


@pytest.mark.slow
def test_a_checkpoint_write_killed_midway_keeps_the_previous_one_and_resumes(tmp_path: Path) -> None:
    config = _config(tmp_path, "run", max_epochs=3)
    path = _write_config(tmp_path / "c.yaml", config)
    staging = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "staging"
    staging = staging / f"flows-test-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    # best then last at the first validation (step 4), then best at the second: killed in that write
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE.replace("{kill_at}", "3"), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(staging)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 4  # the previous, complete one
    assert list(staging.iterdir()) == []  # nothing staged elsewhere
    assert [p.name for p in checkpoints.glob(".*.tmp")]  # the torn temporary file, never renamed
    assert main(["fit", "--config", str(path), "--resume"]) == 0
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 12
    assert not list((tmp_path / "run").rglob(".*.tmp"))  # the resumed run removed the torn file
    staging.rmdir()


# ----------------------------------------------------------------------------------------------------------
# 3. last.ckpt is kept up to date; a finished run is not redone


@pytest.mark.slow
def test_last_checkpoint_follows_every_validation_and_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = FlowModule.nll

    def worse_every_epoch(self: FlowModule, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        nll = original(self, x, context)
        return nll + 10.0 * self.current_epoch if not self.training else nll

    monkeypatch.setattr(FlowModule, "nll", worse_every_epoch)
    result = run(_config(tmp_path, "run", max_epochs=3), verbose=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(checkpoints / "best.ckpt")["global_step"] == 4  # the first epoch stayed best
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 12 == result.metrics["steps"]

    # A run that stops mid-epoch (max_steps) without a validation there: last.ckpt is at its last step.
    run(_config(tmp_path, "steps", max_epochs=None, max_steps=6), verbose=False)
    assert read_checkpoint(tmp_path / "steps" / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_resume_of_a_finished_run_changes_nothing(genuine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load((genuine / "config.yaml").read_text())
    before = {**_tree(genuine)}
    mtimes = {p: p.stat().st_mtime_ns for p in genuine.rglob("*") if p.is_file() and p.name != ".lock"}
    path = _write_config(genuine.parent / "again.yaml", config)
    assert main(["fit", "--config", str(path), "--resume"]) == 0
    assert "has finished" in capsys.readouterr().out
    after = _tree(genuine)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


# ----------------------------------------------------------------------------------------------------------
# 4. One run per directory

HOLD_LOCK = """
import sys, time
from pathlib import Path
from flows.training.rundir import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_locked_run_directory_refuses_a_second_run_until_its_holder_dies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "run", max_epochs=1)
    config["model"] = {"name": "gaussian"}
    path = _write_config(tmp_path / "c.yaml", config)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for argv in (["fit", "--config", str(path)], ["fit", "--config", str(path), "--resume"]):
            started = time.perf_counter()
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert time.perf_counter() - started < 10  # at once, not after waiting
            assert str(tmp_path / "run") in err and f"pid {holder.pid}" in err, err
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written
        with pytest.raises(RunDirectoryLocked):
            run(config, verbose=False)
    finally:
        holder.kill()
        holder.wait()
    # The operating system released the dead holder's lock: the run proceeds.
    assert main(["fit", "--config", str(path)]) == 0
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_run_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    with (
        run_lock(tmp_path / "run"),
        pytest.raises(RunDirectoryLocked, match=f"pid {os.getpid()}"),
        run_lock(tmp_path / "run"),
    ):
        pass
    with run_lock(tmp_path / "run"):  # released at the end of the block
        pass


# ----------------------------------------------------------------------------------------------------------
# 5. output.name is one path component


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".", "", "a\\b"])
def test_output_name_must_be_one_directory_name(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path / "runs", name)
    with pytest.raises(ConfigError, match="output.name"):
        parse_config(config)
    path = _write_config(tmp_path / "c.yaml", config)
    assert main(["fit", "--config", str(path)]) == 2
    assert "output.name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------
# 6. YAML alias bombs, deep nesting and huge values


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_alias_bomb(), "aliases expanded"),  # 9**9 values from 400 bytes
        ("x: &x [1, 2]\n" + "".join(f"k{i}: *x\n" for i in range(150)), "at most 100 aliases"),
        ("data: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested at most 64 brackets deep"),
        ("data:\n" + "".join(" " * i + "- \n" for i in range(350)), "nested"),
        ("data: [" + ", ".join(["1"] * 300_000) + "]\n", "at most 65536 characters"),
        ("data: {dataset: 'toy:circles'}\nseed: 1\ndata: {n_train: 64}\n", "found 'data' again"),
    ],
    ids=["billion-laughs", "many-aliases", "deep-brackets", "deep-blocks", "huge", "duplicate-key"],
)
def test_hostile_yaml_is_refused_quickly(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.perf_counter()
    assert main(["fit", "--config", str(path)]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and len(err) < 600, err


def test_error_messages_show_huge_values_truncated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: [" + ", ".join(["123456789"] * 5_000) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_config([path])
    assert "'seed'" in str(caught.value) and len(str(caught.value)) < 400
    assert main(["fit", "--config", str(path)]) == 2
    assert len(capsys.readouterr().err) < 400


# ----------------------------------------------------------------------------------------------------------
# 7. No non-finite parameter is ever kept


@pytest.mark.slow
def test_a_step_that_makes_parameters_non_finite_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finite gradient with an overflowing update (e.g. an infinite learning rate) is caught after the
    step, the parameters are put back, and no checkpoint ever holds the diverged state."""
    seen: dict[str, Any] = {}
    real_step = torch.optim.AdamW.step

    def overflowing_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        out = real_step(self, closure)
        step = int(self.state[self.param_groups[0]["params"][0]]["step"])
        if step == 6:  # in the second epoch, after the first checkpoint (step 4)
            first = self.param_groups[0]["params"][0]
            seen["before"] = [p.detach().clone() for p in self.param_groups[0]["params"]]
            with torch.no_grad():
                first.mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    with pytest.raises(TrainingDivergedError) as caught:
        run(_config(tmp_path, "run"), verbose=False)
    assert "optimiser step 6" in str(caught.value) and "non-finite" in str(caught.value)
    assert "put back" in str(caught.value)
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_guard_restores_the_parameters_before_the_step() -> None:
    """The guard on its own: the parameters after a failed step equal those before it, bit for bit."""
    from flows.training.guard import NonFiniteGuard

    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=float("inf"))
    module(torch.ones(1, 3)).sum().backward()
    before = [p.detach().clone() for p in module.parameters()]

    class Trainer:
        current_epoch, global_step, checkpoint_callback = 0, 7, None
        precision_plugin = None

    guard = NonFiniteGuard()
    guard.on_before_optimizer_step(Trainer(), module, optimizer)  # finite gradients: no error
    optimizer.step()
    assert not all(torch.isfinite(p).all() for p in module.parameters())
    with pytest.raises(TrainingDivergedError, match="optimiser step 7"):
        guard.on_train_batch_end(Trainer(), module, None, None, 0)
    assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before))
    assert np.isfinite(sum(float(p.detach().sum()) for p in module.parameters()))


def test_guard_snapshot_follows_parameters_resized_or_recast_in_place() -> None:
    """The snapshot buffers are reused while the optimiser holds the same parameters. A parameter recast to
    float64, grown or shrunk in place (all keep the Parameter object) gets a fresh snapshot, so the restore
    after a diverged step gives the values before it bit for bit (a float32 buffer would round the float64
    values; a larger buffer would take the shrunk values by broadcasting, and the restore would then fail).
    Parameters that require grad are checked as they are (no detached views)."""
    from flows.training.guard import NonFiniteGuard, _all_finite

    class Trainer:
        current_epoch, global_step, checkpoint_callback = 0, 3, None
        precision_plugin = None

    module = torch.nn.ParameterList([torch.randn(3), torch.randn(2)])
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    guard = NonFiniteGuard()

    def step() -> None:
        optimizer.zero_grad()
        sum((p.square() + p).sum() for p in module).backward()
        guard.on_before_optimizer_step(Trainer(), module, optimizer)
        optimizer.step()
        guard.on_train_batch_end(Trainer(), module, None, None, 0)

    step()
    step()  # reuses the buffers
    assert bool(_all_finite(list(module.parameters())))  # requires_grad leaves, no error
    for change in ("recast", "grow", "shrink"):
        optimizer.param_groups[0]["lr"] = 0.1
        step()  # builds the snapshot, as in an ordinary run
        if change == "recast":
            module[1].data = torch.randn(2, dtype=torch.float64)  # same shape, new dtype
        elif change == "grow":
            module[0].data = torch.randn(5)
        else:
            module[0].data = torch.randn(1)  # broadcasts into the old (5,) buffer
        before = [p.detach().clone() for p in module.parameters()]
        optimizer.param_groups[0]["lr"] = float("inf")
        with pytest.raises(TrainingDivergedError, match="optimiser step 3"):
            step()
        assert all(torch.equal(p, b) for p, b in zip(module.parameters(), before)), change
    assert [p.dtype for p in module.parameters()] == [torch.float32, torch.float64]


def test_guard_accepts_models_with_empty_parameters() -> None:
    """A zero-size parameter (e.g. an unused context projection) is neither finite nor infinite: skipped."""
    from flows.training.guard import _all_finite

    assert bool(_all_finite([torch.zeros(0), torch.ones(3)]))
    assert not bool(_all_finite([torch.zeros(0), torch.tensor([1.0, float("nan")])]))
    assert bool(_all_finite([torch.zeros(0, 4)]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_guard_finiteness_check_flags_nan_and_inf_but_not_large_values(
    dtype: torch.dtype, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused check flags a NaN or ±inf in any tensor, accepts the largest finite values (a norm of them
    would overflow) and leaves every value as it was; so does the fallback where torch lacks the kernel."""
    from flows.training.guard import _all_finite

    if not fused:

        def missing_kernel(*args: object) -> None:
            raise RuntimeError("no kernel for this device")

        monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing_kernel)

    largest = torch.finfo(dtype).max
    tensors = [torch.full((3, 2), largest, dtype=dtype), torch.tensor([-largest, 1.0], dtype=dtype)]
    copies = [t.clone() for t in tensors]
    assert bool(_all_finite(tensors))
    assert all(torch.equal(t, c) for t, c in zip(tensors, copies))
    for bad in (float("nan"), float("inf"), float("-inf")):
        poisoned = [t.clone() for t in tensors]
        poisoned[1][1] = bad
        assert not bool(_all_finite(poisoned)), bad
        assert torch.equal(poisoned[0], copies[0])


def test_merged_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {lr: 0.1, batch_size: 32}\ntrain:\n  <<: *base\n  lr: 0.01\n")
    assert yaml.load(path.read_text(), Loader=_Loader)["train"] == {"lr": 0.01, "batch_size": 32}
    # an anchored mapping that overrides a merged key, reused by an alias (merging rewrites it in place)
    nested = "train: {<<: &base {<<: {lr: 0.1}, lr: 0.01}}\nother: *base\n"
    assert yaml.load(nested, Loader=_Loader) == {"train": {"lr": 0.01}, "other": {"lr": 0.01}}


# ----------------------------------------------------------------------------------------------------------
# 8. Weights and structural buffers from a file describe a valid model


def _tampered(genuine: Path, tmp_path: Path, change: Any) -> Path:
    payload = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    change(payload["state_dict"])
    torch.save(payload, tmp_path / "tampered.ckpt")
    return tmp_path / "tampered.ckpt"


def test_non_finite_or_mistyped_weights_are_refused_naming_them(tmp_path: Path, genuine: Path) -> None:
    state = read_checkpoint(genuine / "checkpoints" / "best.ckpt")["state_dict"]
    key = next(k for k, v in state.items() if k.endswith("weight") and v.is_floating_point())

    def nan(s: dict) -> None:
        s[key] = torch.full_like(s[key], float("nan"))

    def complex_(s: dict) -> None:
        s[key] = s[key].to(torch.complex64)

    with pytest.raises(
        ValueError, match=r"expected finite weights, got NaN or infinite values in \[.*weight'\]"
    ):
        load_model(_tampered(genuine, tmp_path, nan))
    with pytest.raises(ValueError, match=r"expected float32 or float64 weights, got .*weight \(complex64\)"):
        load_model(_tampered(genuine, tmp_path, complex_))
    buffer = next(k for k in state if k.endswith(".scale"))  # the folded-in standardisation: a buffer

    def nan_buffer(s: dict) -> None:
        s[buffer] = torch.full_like(s[buffer], float("nan"))

    with pytest.raises(ValueError, match=r"expected finite weights, got NaN .*scale'\]"):
        load_model(_tampered(genuine, tmp_path, nan_buffer))


def test_structural_buffers_that_describe_no_bijection_are_refused() -> None:
    """A permutation that repeats an index, an LU sign of 3, coupling indices that disagree with the mask,
    an autoregressive order that is no permutation: each would load into a map that is not a bijection (or
    rescales the density) and is refused by the layer that owns it, whoever calls load_state_dict."""
    from flows import presets

    cases = {
        "NSF reverse permutation": (presets.NSF(3, transforms=2, randperm=False), "indices", [0, 0, 1]),
        "MAF autoregressive order": (presets.MAF(3, transforms=1), "inverse_steps", [0, 2, 2]),
        "NSF coupling merge": (presets.NSF(4, transforms=1, lu_linear=False), "merge_index", [0, 1, 3, 2]),
        "LU sign": (presets.NSF(3, transforms=1, lu_linear=True), "sign", [1.0, 3.0, 1.0]),
    }
    from flows.bijectors import BatchNorm, ColumnSupport, Standardize

    cases.update(
        {
            "standardisation scale 0": (Standardize(torch.zeros(2), torch.ones(2)), "scale", [1.0, 0.0]),
            "support low >= high": (ColumnSupport(torch.zeros(2), torch.ones(2)), "low", [0.0, 2.0]),
            "batch norm variance": (BatchNorm(2), "running_var", [1.0, -1.0]),
        }
    )
    for flow, suffix, value in cases.values():
        state = flow.state_dict()
        key = next(k for k in state if k.endswith(suffix))
        state[key] = torch.tensor(value, dtype=state[key].dtype)
        with pytest.raises(ValueError, match=suffix):
            flow.load_state_dict(state)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda p: p["hyper_parameters"].update(features="abc"), "its model record is not one flows writes"),
        (
            lambda p: p["hyper_parameters"].update(columns_plan=[1]),
            "its model record is not one flows writes",
        ),
        (lambda p: p["hyper_parameters"].update(context="x"), "its model record is not one flows writes"),
        (lambda p: p.update(state_dict=[1, 2]), "expected a state_dict mapping names to tensors, got list"),
        (lambda p: p["hyper_parameters"].update(columns=["a", "b", "c"]), "names 3 columns for 2 features"),
        (lambda p: p.update(fit_info=[1]), "expected fit_info to be a mapping, got list"),
        (lambda p: p.update(dtype="float16"), "expected a dtype of float32 or float64, got 'float16'"),
    ],
    ids=["features", "columns-plan", "context", "state-dict", "columns", "fit-info", "dtype"],
)
def test_a_malformed_record_is_a_clear_error_naming_the_file(
    change: Any, expected: str, tmp_path: Path, genuine: Path
) -> None:
    payload = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    change(payload)
    torch.save(payload, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError) as caught:
        DensityEstimator.load(tmp_path / "edited.ckpt")
    assert str(tmp_path / "edited.ckpt") in str(caught.value) and expected in str(caught.value)


def test_a_checkpoint_of_a_larger_machine_still_loads(tmp_path: Path, genuine: Path) -> None:
    """The per-core limits apply to runs started here, not to the record of a run on another machine."""
    payload = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    payload["hyper_parameters"]["config"]["data"]["num_workers"] = 64
    payload["hyper_parameters"]["config"]["train"]["num_threads"] = 128
    torch.save(payload, tmp_path / "big.ckpt")
    assert load_model(tmp_path / "big.ckpt").config.data.num_workers == 64


def test_resume_accepts_older_records_moved_data_and_chosen_mixture_sizes(tmp_path: Path) -> None:
    """Only settings that define the run count: a key the record lacks (an older version), data.root, the
    target's evaluation budgets, and a model option the run chose (components of a fitted mixture) do not."""
    from flows.training.safety import resume_checkpoint

    config = parse_config(_config(tmp_path, "run")).to_dict()
    saved = copy.deepcopy(config)
    del saved["data"]["dequantization"]  # written before the key existed
    saved["model"]["components"] = 9  # the fitted mixture's size, recorded after config.yaml
    config["data"]["root"] = "/moved/archive"
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": saved}}, path)
    assert resume_checkpoint(tmp_path / "run", config) == path
    config["data"]["n_train"] = 512
    with pytest.raises(ValueError, match=r"data.n_train 256 \(the config: 512\)"):
        resume_checkpoint(tmp_path / "run", config)


def test_a_checkpoint_saved_without_checksums_still_loads(tmp_path: Path, genuine: Path) -> None:
    """torch.serialization.set_crc32_options(False) stores 0 for every CRC: nothing to check, not damage."""
    payload = read_checkpoint(genuine / "checkpoints" / "best.ckpt")
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(payload, tmp_path / "fast.ckpt")
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(tmp_path / "fast.ckpt") as archive:
        assert {entry.CRC for entry in archive.infolist()} == {0}
    assert load_model(tmp_path / "fast.ckpt").features == 2
