"""The one pipeline: tasks validate their whole config once, and an objective plugs in without touching it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from flows.training.config import ConfigError, parse_config
from flows.training.evaluation import evaluate_log_prob
from flows.training.fitting import train
from flows.training.objectives import MaximumLikelihood, Objective
from flows.training.pipeline import task_for, validate
from flows.training.tasks.image import ImageTask
from flows.training.tasks.tabular import TabularTask


def _tabular(**sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "seed": 0,
        "data": {"dataset": "toy:moons", "n_train": 256, "n_val": 128, "n_test": 64},
        "model": {"name": "gaussian"},
        "train": {"batch_size": 64, "max_epochs": 3, "num_threads": 1, "early_stopping_patience": None},
        "trainer": {"accelerator": "cpu"},
        "output": {"progress_bar": False, "logger": "none", "samples": 0, "plots": False},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def _image(**sections: Any) -> dict[str, Any]:
    config = _tabular(model={"name": "glow", "levels": 1, "steps": 1}, **sections)
    config["data"] = {"dataset": "image:digits", **sections.get("data", {})}
    return config


def test_each_kind_of_run_gets_its_task() -> None:
    assert isinstance(task_for(_tabular()), TabularTask)
    assert isinstance(task_for(_image()), ImageTask)
    assert isinstance(task_for(parse_config(_image())), ImageTask)


def test_a_table_config_refuses_an_image_section() -> None:
    with pytest.raises(ConfigError, match="'image'.*image datasets only.*toy:moons"):
        validate(_tabular(image={"grid_size": 4}))


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("train", {"mollification": {"fraction": 0.5}}, "train.mollification.fraction"),
        ("data", {"standardize": False}, "data.standardize"),
        ("data", {"dequantize": True}, "data.dequantize"),
    ],
)
def test_an_image_config_refuses_table_only_keys(section: str, values: dict, key: str) -> None:
    config = _image()
    config[section] = {**config[section], **values}
    with pytest.raises(
        ConfigError, match=f"'{key}' (applies to table datasets only|does not apply to image:)"
    ):
        validate(config)


def test_validate_fills_the_model_defaults_of_each_kind() -> None:
    assert validate(_tabular(model={"name": "nsf"})).model["bins"] == 8
    assert "hidden_channels" in validate(_image()).model


class HalfNLL(Objective):
    """Half the maximum-likelihood loss, monitored as `val_half_nll`: a stand-in for a new objective."""

    monitor = "val_half_nll"

    def training_loss(self, module: Any, batch: Any) -> torch.Tensor:
        return 0.5 * MaximumLikelihood().training_loss(module, batch)

    def validation_total(self, module: Any, batch: Any, batch_index: int) -> tuple[torch.Tensor, int]:
        total, rows = MaximumLikelihood().validation_total(module, batch, batch_index)
        return 0.5 * total, rows


class HalfNLLTask(TabularTask):
    def objective(self, config: Any) -> Objective:
        return HalfNLL()


@pytest.mark.slow
def test_a_new_objective_plugs_in_and_drives_checkpoints_and_early_stopping(tmp_path: Path) -> None:
    task = HalfNLLTask()
    config = task.resolve(_tabular(train={"early_stopping_patience": 2}))
    data = task.load_data(config)
    fitted = train(task, config, data, tmp_path, quiet=True)
    checkpoint = fitted.trainer.checkpoint_callback
    assert checkpoint.monitor == "val_half_nll"
    assert fitted.trainer.early_stopping_callback.monitor == "val_half_nll"
    assert (
        "val_half_nll" in fitted.trainer.callback_metrics and "val_nll" not in fitted.trainer.callback_metrics
    )
    # The best checkpoint's score is the objective's value of the restored best weights: half the NLL.
    splits = fitted.info["data"]
    nll = -float(np.mean(evaluate_log_prob(fitted.model, splits.val)))
    assert fitted.best_val == pytest.approx(0.5 * nll, rel=1e-5)
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize(
    ("dataset", "data", "key"),
    [
        ("file:t.csv", {"n_train": 64}, "data.n_train"),
        ("toy:moons", {"columns": ["a"]}, "data.columns"),
        ("sklearn:wine", {"root": "/data"}, "data.root"),
        ("uci:power", {"val_fraction": 0.2}, "data.val_fraction"),
        ("image:digits", {"context_columns": ["x0"]}, "data.context_columns"),
        ("toy:moons", {"target": {"features": 3}}, "data.target"),
    ],
)
def test_a_data_key_that_the_dataset_never_reads_is_refused(dataset: str, data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}' does not apply to {dataset.split(':')[0]}: datasets"):
        parse_config({"data": {"dataset": dataset, **data}})
    # the same value where it applies, or the default where it does not, is accepted
    parse_config({"data": {"dataset": dataset}})
