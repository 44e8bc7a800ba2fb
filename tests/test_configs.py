"""Every config in configs/: validated as written (config schema, model options, trainer keys, the real flow
built for the real data dimension), then run end to end for a few steps on a small data subset.

UCI configs run on tiny synthetic files in the MAF archive layout (tests/data_fixtures.py) through a
`data.root` override; model sizes are shrunk for the smoke runs only, after the real config was validated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.datasets import SKLEARN_TABLES, SYNTHETIC_TARGETS, TOY_NAMES, UCI_NAMES, make_synthetic_target
from flows.training.config import load_config
from flows.training.context import ContextStats
from flows.training.models import build_flow
from flows.training.pipeline import run
from flows.training.registry import check_model_options, model_parameters
from flows.training.trainer_options import trainer_arguments

try:
    from data_fixtures import write_bsds300, write_gas, write_hepmass, write_miniboone, write_power
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures import write_bsds300, write_gas, write_hepmass, write_miniboone, write_power

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / "configs"
#: image configs (configs/images/, `data.dataset: image:<name>`) follow the image pipeline's schema
#: (flows.training.image_data); tests/test_images.py validates and smoke-runs each of them
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if "images" not in p.relative_to(CONFIG_ROOT).parts)
CONFIG_IDS = [str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in CONFIGS]

#: data dimension of each UCI benchmark after the MAF preprocessing (REFERENCE.md)
UCI_FEATURES = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
#: configs/<folder>/ holds datasets of this kind
FOLDER_KIND = {"toys": "toy", "synthetic": "synthetic", "tables": "sklearn", "uci": "uci"}
EXPECTED_UCI_MODELS = {"maf", "realnvp", "nsf_coupling", "nsf_autoregressive"}


def _features(config: Any) -> int:
    kind, _, name = config.data.dataset.partition(":")
    if kind == "toy":
        return 2
    if kind == "synthetic":
        return make_synthetic_target(name, **config.data.target).features
    if kind == "sklearn":
        return SKLEARN_TABLES[name][1][1]
    if kind == "uci":
        return UCI_FEATURES[name]
    raise AssertionError(f"no known dimension for {config.data.dataset}")


def test_configs_exist_for_every_standard_experiment() -> None:
    ids = set(CONFIG_IDS)
    for toy in TOY_NAMES:
        assert f"toys/{toy}_nsf" in ids
    for target in SYNTHETIC_TARGETS:
        assert {f"synthetic/{target}_nsf", f"synthetic/{target}_maf"} <= ids
    for table in SKLEARN_TABLES:
        assert f"tables/{table}_nsf" in ids
    for dataset in UCI_NAMES:
        assert {f"uci/{dataset}_{model}" for model in EXPECTED_UCI_MODELS} <= ids


@pytest.mark.parametrize("path", CONFIGS, ids=CONFIG_IDS)
def test_config_is_valid_as_written(path: Path) -> None:
    config = load_config([path])
    options = check_model_options(config.model)
    trainer_arguments(config.trainer)
    folder = path.relative_to(CONFIG_ROOT).parts[0]
    kind, _, name = config.data.dataset.partition(":")
    if folder in FOLDER_KIND:
        assert kind == FOLDER_KIND[folder], (
            f"{path} is in configs/{folder}/ but trains on {config.data.dataset}"
        )
        # the experiments runner labels the model by the file name: <dataset>_<model label>.yaml
        assert path.stem.startswith(f"{name}_"), f"{path.name} should start with {name}_"
    if kind == "sklearn" and name == "digits":
        assert config.data.dequantize, "digits holds integers 0..16: it must be dequantised"
    if kind == "uci":
        assert config.data.root is not None, "UCI configs name the MAF data directory (data.root)"
    # the real model builds for the real data dimension and has trainable parameters
    k = len(config.data.context_columns)  # a conditional model: the context columns are not modelled
    context = ContextStats([f"c{i}" for i in range(k)], np.zeros(k), np.ones(k)) if k else None
    flow = build_flow(config.model, _features(config) - k, context=context)
    n_params = sum(p.numel() for p in flow.parameters() if p.requires_grad)
    assert n_params > 0
    assert set(options) <= set(model_parameters(config.model["name"]))


# ------------------------------------------------------------------------------------------- smoke runs
#: model options that set its size, and the small value each takes in the smoke runs
_SMALL = {
    "transforms": 1,
    "hidden_features": 8,
    "residual_blocks": 1,
    "bins": 4,
}


def _shrunk_model(model: dict[str, Any]) -> dict[str, Any]:
    small = dict(model)
    for key, value in model.items():
        if key not in _SMALL or value is None:
            continue
        target = _SMALL[key]
        if isinstance(value, (list, tuple)):
            small[key] = [target] * min(len(value), 2)
        elif isinstance(value, int) and not isinstance(value, bool):
            small[key] = min(value, target)
    return small


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and leave the other core to the rest of the suite."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def uci_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("maf_data")
    write_power(root)
    write_gas(root)
    write_hepmass(root)
    write_miniboone(root)
    pytest.importorskip("h5py")
    write_bsds300(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=CONFIG_IDS)
def test_config_runs_a_few_steps(path: Path, tmp_path: Path, uci_root: Path, one_thread: None) -> None:
    config = load_config([path])
    overrides: list[tuple[str, Any]] = [
        ("model", _shrunk_model(config.model)),
        ("train.max_steps", 3),
        ("train.max_epochs", 1),
        ("train.batch_size", 16),
        ("train.eval_batch_size", 64),
        ("train.warmup_steps", 0),
        ("train.val_every_n_steps", 2),
        ("train.early_stopping_patience", None),
        (
            "trainer",
            {
                **config.trainer,
                "accelerator": "cpu",
                "devices": 1,
                "precision": "32-true",
                "log_every_n_steps": 1,
            },
        ),
        ("output.dir", str(tmp_path)),
        ("output.name", "run"),
        ("output.samples", 16),
        ("output.plots", False),
        ("output.logger", "csv"),
        ("output.progress_bar", False),
    ]
    if config.target.name:  # a sampling run: few flow samples to validate and evaluate
        overrides += [("target.validation_samples", 64), ("target.evaluation_samples", 256)]
    elif config.data.dataset.split(":")[0] in ("toy", "synthetic"):  # generated rows: only a few
        overrides += [("data.n_train", 64), ("data.n_val", 32), ("data.n_test", 32)]
    if config.data.dataset.startswith("uci:"):
        overrides.append(("data.root", str(uci_root)))
    small = load_config([path], overrides)
    result = run(small, verbose=False)
    metrics = result.metrics
    assert metrics["steps"] == 3
    if config.target.name:
        assert 0 < metrics["ess"] <= 1 and math.isfinite(metrics["log_z"]) and metrics["samples"] == 256
        samples = np.loadtxt(tmp_path / "run" / "samples.csv", delimiter=",", skiprows=1, ndmin=2)
        assert samples.shape == (16, metrics["features"] + 1)  # [x, log_weight]
        return
    assert math.isfinite(metrics["test_log_likelihood"]) and metrics["test_rows"] > 0
    if config.data.dataset.startswith(("toy:", "synthetic:")):
        assert math.isfinite(metrics["gap"])
    samples = np.loadtxt(tmp_path / "run" / "samples.csv", delimiter=",", skiprows=1, ndmin=2)
    context_features = metrics.get("context_features", 0)  # conditional runs write [x, context] rows
    assert samples.shape == (16, metrics["features"] + context_features)
    if not config.data.dataset.startswith("uci:"):  # the UCI fixtures are narrower than the real tables
        assert metrics["features"] + context_features == _features(config)
