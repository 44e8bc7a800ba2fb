"""Sampling runs end to end through the pipeline: YAML -> metrics.json with ESS and log Z."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from flows.training.config import ConfigError, load_config, parse_config
from flows.training.pipeline import run, task_for
from flows.training.tasks.sampling import SamplingTask
from tests.sampling_targets import LOG_Z

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "targets"


def test_funnel_yaml_runs_end_to_end(tmp_path: Path) -> None:
    config = load_config(
        [CONFIGS / "funnel.yaml"],
        {
            "output.dir": str(tmp_path),
            "output.name": "funnel",
            "output.progress_bar": "false",
            "output.logger": "csv",
            "output.samples": "100",
            "train.max_steps": "20",
            "train.val_every_n_steps": "10",
            "train.batch_size": "64",
            "model.hidden_features": "[16]",
            "model.transforms": "2",
            "target.validation_samples": "256",
            "target.evaluation_samples": "2000",
        },
    )
    assert isinstance(task_for(config), SamplingTask)
    result = run(config, verbose=False)
    metrics = json.loads((tmp_path / "funnel" / "metrics.json").read_text())
    assert metrics["dataset"] == "target:funnel" and metrics["steps"] == 20
    assert 0 < metrics["ess"] <= 1 and metrics["samples"] == 2000
    assert metrics["log_z_true"] == 0.0
    assert metrics["log_z_error"] == pytest.approx(metrics["log_z"])
    assert metrics["best_val_reverse_kl"] is not None
    header = (tmp_path / "funnel" / "samples.csv").read_text().splitlines()[0]
    assert header.split(",")[-1] == "log_weight" and len(header.split(",")) == 11
    assert result.checkpoint is not None and result.checkpoint.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_target_config_runs_and_writes_its_figures(tmp_path: Path, name: str) -> None:
    overrides = {
        "output.dir": str(tmp_path),
        "output.name": name,
        "output.progress_bar": "false",
        "output.logger": "csv",
        "output.samples": "50",
        "output.plots": "true",
        "train.max_steps": "6",
        "train.val_every_n_steps": "3",
        "train.batch_size": "32",
        "model.hidden_features": "[8]",
        "model.transforms": "2",
        "target.validation_samples": "128",
        "target.evaluation_samples": "500",
        "trainer.log_every_n_steps": "1",
    }
    config = load_config([CONFIGS / f"{name}.yaml"], overrides)
    run(config, verbose=False)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0 < metrics["ess"] <= 1 and metrics["samples"] == 500
    assert ("log_z_true" in metrics) == (name != "phi4")  # phi^4 has no closed-form normaliser
    plots = {Path(p).name for p in metrics["plots"]}
    features = config.target.features or {"double_well": 2, "gmm40": 2, "phi4": 64}[name]
    expected = {"loss.png", "density.png" if features == 2 else "pairs.png"} - (
        {"pairs.png"} if name == "phi4" else set()
    )
    assert plots == expected
    for plot in plots:
        assert (tmp_path / name / "plots" / plot).stat().st_size > 1000


def test_an_affine_flow_learns_a_gaussian_user_target_exactly(tmp_path: Path) -> None:
    """A Gaussian target given as module:attr, a Gaussian flow: ESS -> 1 and log Z -> the constant."""
    values = {
        "target": {
            "name": "tests.sampling_targets:shifted_gaussian",
            "features": 2,
            "evaluation_samples": 20000,
        },
        "model": {"name": "gaussian"},
        "train": {
            "objective": "reverse_kl_path",
            "batch_size": 128,
            "max_steps": 400,
            "lr": 0.03,
            "val_every_n_steps": 100,
            "early_stopping_patience": None,
            "gradient_clip": None,
        },
        "output": {"dir": str(tmp_path), "name": "g", "progress_bar": False, "logger": "none", "samples": 0},
    }
    metrics = run(values, verbose=False).metrics
    assert metrics["ess"] > 0.98
    assert abs(metrics["log_z"] - LOG_Z) < 0.01
    assert "log_z_true" not in metrics  # a plain function knows no normaliser


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="'train.objective': 'reverse_kl' needs a target section"):
        parse_config({"model": {"name": "nsf"}, "train": {"objective": "reverse_kl"}})
    with pytest.raises(ConfigError, match="data.n_train: a run with a target section"):
        parse_config({"target": {"name": "funnel"}, "data": {"n_train": 5}})
    with pytest.raises(ConfigError, match="unknown target 'funel'"):
        SamplingTask().load_data(SamplingTask().resolve({"target": {"name": "funel"}}))
    with pytest.raises(ConfigError, match="target.name is required"):
        parse_config({"target": {"features": 3}})


def test_a_target_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    values = {
        "target": {"name": "double_well", "validation_samples": 128, "evaluation_samples": 512},
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [8]},
        "train": {"objective": "reverse_kl", "batch_size": 32, "max_steps": 10, "val_every_n_steps": 5},
        "output": {"dir": str(tmp_path), "name": "r", "progress_bar": False, "logger": "csv", "samples": 0},
    }
    first = run(values, verbose=False).metrics
    assert first["steps"] == 10 and first["log_z_true"] == pytest.approx(
        first["log_z"] - first["log_z_error"]
    )
    (tmp_path / "r" / "metrics.json").unlink()  # an unfinished run: resume continues from last.ckpt
    values["train"]["max_steps"] = 20
    second = run(values, verbose=False, resume=True).metrics
    assert second["steps"] == 20


def test_cli_samples_a_target_run_with_weights_and_by_metropolis(tmp_path: Path, capsys) -> None:
    import numpy as np

    from flows.training.cli import main

    values = {
        "target": {"name": "double_well", "validation_samples": 128, "evaluation_samples": 512},
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [8]},
        "train": {"objective": "reverse_kl", "batch_size": 32, "max_steps": 5},
        "output": {"dir": str(tmp_path), "name": "c", "progress_bar": False, "logger": "none", "samples": 0},
    }
    checkpoint = str(run(values, verbose=False).checkpoint)
    out = tmp_path / "weighted.csv"
    assert (
        main(["sample", "--ckpt", checkpoint, "-n", "50", "--out", str(out), "--method", "importance"]) == 0
    )
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (50, 3)
    # the weights are the double well's log density minus the flow's
    from flows.targets import DoubleWell
    from flows.training.checkpoints import load_model

    flow = load_model(checkpoint).flow
    x = torch.as_tensor(table[:, :2], dtype=torch.float32)
    with torch.no_grad():
        expected = DoubleWell().log_prob(x.double()) - flow.log_prob(x).double()
    np.testing.assert_allclose(table[:, 2], expected.numpy(), atol=2e-3)
    capsys.readouterr()
    assert main(["test", "--ckpt", checkpoint]) == 2  # a sampler has no test split (it was moons' by default)
    assert "is a sampler of the target 'double_well', trained on no data" in capsys.readouterr().err
    chains = tmp_path / "chains.csv"
    args = ["sample", "--ckpt", checkpoint, "-n", "60", "--out", str(chains), "--method", "metropolis"]
    assert main([*args, "--chains", "20"]) == 0
    assert "acceptance rate" in capsys.readouterr().out
    assert main([*args, "--chains", "10"]) == 0  # 6 steps per chain: an autocorrelation ESS too
    assert "autocorrelation ESS" in capsys.readouterr().out
    table = np.loadtxt(chains, delimiter=",", skiprows=1)
    assert table.shape == (60, 4) and set(table[:, 2]) == set(range(10)) and set(table[:, 3]) == set(range(6))
    for extra in (["--local", "mala", "--local-steps", "2", "--warmup", "3"], ["--method", "hmc"]):
        assert main([*args[:-2], "--method", "metropolis", "--chains", "10", *extra]) == 0
        printed = capsys.readouterr().out
        assert ("mala" in printed if "mala" in extra else "hmc" in printed) and "per second" in printed
        table = np.loadtxt(chains, delimiter=",", skiprows=1)
        assert table.shape == (60, 4) and np.isfinite(table).all()


def test_a_checkpoint_never_makes_the_cli_import_the_module_it_names(tmp_path: Path, capsys) -> None:
    """A target run's checkpoint records `target.name: module:attr`; `flows sample` imports that module only
    when the user names it with --trust-target (a file from anyone could name a module planted beside it)."""
    from flows.training.cli import main

    values = {
        "target": {
            "name": "tests.sampling_targets:shifted_gaussian",
            "features": 2,
            "evaluation_samples": 64,
        },
        "model": {"name": "nsf", "transforms": 1, "hidden_features": [8]},
        "train": {"objective": "reverse_kl", "batch_size": 32, "max_steps": 2},
        "output": {"dir": str(tmp_path), "name": "u", "progress_bar": False, "logger": "none", "samples": 0},
    }
    checkpoint = str(run(values, verbose=False).checkpoint)
    out = tmp_path / "w.csv"
    sys.modules.pop(
        "tests.sampling_targets", None
    )  # imported by the run: forget it, to see what the CLI imports
    args = ["sample", "--ckpt", checkpoint, "-n", "8", "--out", str(out), "--method", "importance"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "never imports the code it names" in err
        and "--trust-target tests.sampling_targets:shifted_gaussian" in err
    )
    assert "tests.sampling_targets" not in sys.modules and not out.exists()
    assert main([*args, "--trust-target", "tests.sampling_targets:shifted_gaussian"]) == 0
    assert out.exists() and "tests.sampling_targets" in sys.modules
