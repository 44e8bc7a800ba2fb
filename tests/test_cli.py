"""The `flows` command line: argument conventions, errors naming keys, and fit/test/sample/score end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.training.checkpoints import load_model
from flows.training.cli import main, split_overrides
from flows.training.config import ConfigError
from flows.training.evaluation import evaluate_log_prob

REPO = Path(__file__).resolve().parents[1]


def _write_tiny_config(directory: Path) -> Path:
    config = {
        "seed": 1,
        "data": {"dataset": "toy:8gaussians", "n_train": 512, "n_val": 128, "n_test": 256},
        "model": {"name": "gaussian"},
        "train": {"batch_size": 64, "max_epochs": 2, "lr": 0.01, "num_threads": 1},
        "output": {
            "dir": str(directory / "runs"),
            "name": "tiny",
            "samples": 50,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_split_overrides_follows_lightning_cli_conventions() -> None:
    assert split_overrides(["--train.lr", "1e-3", "--trainer.devices=2", "--seed", "3"]) == [
        ("train.lr", "1e-3"),
        ("trainer.devices", "2"),
        ("seed", "3"),
    ]
    with pytest.raises(ConfigError, match="no value"):
        split_overrides(["--train.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        split_overrides(["train.lr", "3"])


def test_print_config_merges_files_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_tiny_config(tmp_path)
    extra = tmp_path / "extra.yaml"
    extra.write_text("train: {batch_size: 32}\n")
    status = main(
        ["fit", "--config", str(path), "--config", str(extra), "--train.lr", "3e-4", "--print_config"]
    )
    assert status == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == pytest.approx(3e-4)
    assert printed["train"]["batch_size"] == 32 and printed["train"]["max_epochs"] == 2
    assert printed["data"]["dataset"] == "toy:8gaussians"


@pytest.mark.parametrize(
    ("override", "names"),
    [
        (["--train.lrr", "0.1"], ["'train.lrr'", "'lr'"]),
        (["--train.lr", "abc"], ["'train.lr'", "float", "'abc'"]),
        (["--model.hidden", "3"], ["'model.hidden'"]),
        (["--trainer.max_epochs", "3"], ["'trainer.max_epochs'", "train.max_epochs"]),
    ],
)
def test_bad_keys_exit_with_status_2_and_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: list[str], names: list[str]
) -> None:
    path = _write_tiny_config(tmp_path)
    status = main(["fit", "--config", str(path), *override])
    error = capsys.readouterr().err
    assert status == 2
    for name in names:
        assert name in error
    assert not (tmp_path / "runs").exists()  # nothing was trained


@pytest.mark.slow
def test_fit_test_sample_score_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_tiny_config(tmp_path)
    assert main(["fit", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test log-likelihood:" in out and "gap (test NLL - entropy)" in out
    run_dir = tmp_path / "runs" / "tiny"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    checkpoint = run_dir / "checkpoints" / "best.ckpt"

    # test: the checkpoint's own config gives back the same test log-likelihood
    assert main(["test", "--ckpt", str(checkpoint)]) == 0
    assert f"{metrics['test_log_likelihood']:.4f}" in capsys.readouterr().out

    # sample: CSV with the training column names, and NPY; a seed makes them reproducible
    samples_csv = tmp_path / "s.csv"
    assert (
        main(["sample", "--ckpt", str(checkpoint), "-n", "40", "--out", str(samples_csv), "--seed", "5"]) == 0
    )
    assert samples_csv.read_text().splitlines()[0] == "x0,x1"
    from_csv = np.loadtxt(samples_csv, delimiter=",", skiprows=1)
    assert (
        main(
            ["sample", "--ckpt", str(checkpoint), "-n", "40", "--out", str(tmp_path / "s.npy"), "--seed", "5"]
        )
        == 0
    )
    from_npy = np.load(tmp_path / "s.npy")
    assert from_npy.shape == (40, 2)
    np.testing.assert_allclose(from_csv, from_npy, rtol=1e-6)

    # score: one log density per row, equal to the model's log_prob
    table = np.random.default_rng(0).normal(size=(30, 2))
    data = tmp_path / "table.csv"
    np.savetxt(data, table, delimiter=",", header="x0,x1", comments="")
    scores = tmp_path / "logp.csv"
    assert main(["score", "--ckpt", str(checkpoint), "--data", str(data), "--out", str(scores)]) == 0
    written = np.loadtxt(scores, delimiter=",", skiprows=1)
    expected = evaluate_log_prob(load_model(checkpoint).flow, table)
    np.testing.assert_allclose(written, expected, rtol=1e-6)
    capsys.readouterr()
    status = main(
        [
            "score",
            "--ckpt",
            str(checkpoint),
            "--data",
            str(data),
            "--columns",
            "x0",
            "--out",
            str(tmp_path / "bad.csv"),
        ]
    )
    assert status == 2 and "the model expects 2" in capsys.readouterr().err
    assert not (tmp_path / "bad.csv").exists()


#: runs the CLI in a fresh interpreter, then prints which heavy modules it imported (on exit or SystemExit)
_IMPORT_PROBE = """
import sys
from flows.training.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print("HEAVY", sorted(m for m in ("torch", "lightning", "numpy") if m in sys.modules), status)
"""


def _heavy_imports(arguments: list[str]) -> tuple[str, subprocess.CompletedProcess]:
    """The probe's `HEAVY [modules] status` line for `flows <arguments>` run in a fresh interpreter, and the run."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    probe = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    return next((line for line in probe.stdout.splitlines() if line.startswith("HEAVY")), ""), probe


@pytest.mark.slow
def test_console_script_module_runs_in_a_fresh_process(tmp_path: Path) -> None:
    path = _write_tiny_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "flows.training.cli"]
    fit = subprocess.run(
        [*command, "fit", "--config", str(path), "--output.name", "fresh"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    # Lightning's own information lines stay; its advertisement for a hosted logger does not
    assert "GPU available" in fit.stderr + fit.stdout and "litlogger" not in fit.stderr + fit.stdout
    checkpoint = tmp_path / "runs" / "fresh" / "checkpoints" / "best.ckpt"
    # The commands that only read a checkpoint do not import Lightning (about 3 s of start-up here)
    table = tmp_path / "table.csv"
    np.savetxt(
        table, np.random.default_rng(0).normal(size=(9, 2)), delimiter=",", header="x0,x1", comments=""
    )
    for arguments in (
        ["sample", "--ckpt", str(checkpoint), "-n", "7", "--out", str(tmp_path / "fresh.csv")],
        ["test", "--ckpt", str(checkpoint)],
        ["score", "--ckpt", str(checkpoint), "--data", str(table), "--out", str(tmp_path / "scores.csv")],
    ):
        line, probe = _heavy_imports(arguments)
        assert line == "HEAVY ['numpy', 'torch'] 0", (arguments[0], line, probe.stderr[-2000:])
    assert np.loadtxt(tmp_path / "fresh.csv", delimiter=",", skiprows=1).shape == (7, 2)
    assert np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1).shape == (9,)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["test", "sample"])
def test_reading_an_image_checkpoint_does_not_import_lightning(command: str, tmp_path: Path) -> None:
    """`flows test` / `flows sample` on a Glow run's checkpoint (digits, kept in tests/data) in a fresh
    process: the image checkpoint is rebuilt without the image task's Lightning modules."""
    arguments = [command, "--ckpt", str(REPO / "tests" / "data" / "glow_run_before_issue11.pt")]
    if command == "sample":
        arguments += ["-n", "2", "--out", str(tmp_path / "drawn.npy")]
    line, probe = _heavy_imports(arguments)
    assert line == "HEAVY ['numpy', 'torch'] 0", (line, probe.stderr[-2000:])
    if command == "sample":
        assert np.load(tmp_path / "drawn.npy").shape[0] == 2
    else:
        assert "test bits/dim" in probe.stdout


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        (["--help"], 0),
        (["fit", "--help"], 0),
        (["fit", "--no-such-flag"], 2),  # argparse leaves it to the overrides: not an override
        (["fit", "--config", "configs/demo.yaml", "--train.no_such_key", "1"], 2),
        (["fit", "--config", "configs/demo.yaml", "--train.num_threads", "-3"], 2),
    ],
)
def test_help_and_config_errors_import_neither_torch_nor_lightning(arguments: list[str], status: int) -> None:
    line, probe = _heavy_imports(arguments)
    assert line == f"HEAVY [] {status}", (line, probe.stderr[-2000:])
