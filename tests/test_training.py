"""Training layer: config validation, schedules, noise, standardisation fold-in, batching, run() end to end."""

from __future__ import annotations

import copy
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from flows.training.checkpoints import load_model
from flows.training.config import (
    ConfigError,
    MollificationConfig,
    TrainConfig,
    apply_override,
    load_config,
    parse_config,
    write_yaml_atomic,
    yaml_load,
)
from flows.training.data import GlobalBatchSampler, load_splits, splits_from_arrays
from flows.training.evaluation import evaluate_log_prob
from flows.training.models import build_flow, standardization_of, standardizer_of
from flows.training.module import FlowModule, mollification_sigma, warmup_cosine_factor
from flows.training.pipeline import run
from flows.training.registry import check_model_options
from flows.training.trainer_options import trainer_arguments

# ------------------------------------------------------------------------------------------ config


def test_defaults_validate_and_round_trip_through_yaml(tmp_path: Path) -> None:
    config = parse_config({})
    path = write_yaml_atomic(config.to_dict(), tmp_path / "config.yaml")
    assert load_config([path]) == config
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"trian": {}}, ["'trian'", "'train'"]),
        ({"train": {"lrr": 0.1}}, ["'train.lrr'", "'lr'"]),
        ({"train": {"mollification": {"sigmaa": 0.5}}}, ["'train.mollification.sigmaa'", "sigma"]),
        ({"data": {"colums": ["a"]}}, ["'data.colums'", "columns"]),
        ({"output": {"samples": 10, "dirr": "x"}}, ["'output.dirr'"]),
    ],
)
def test_unknown_key_is_an_error_naming_it(values: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(values)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("values", "key", "expected"),
    [
        ({"train": {"lr": "fast"}}, "train.lr", "float"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size", "int"),
        ({"train": {"batch_size": True}}, "train.batch_size", "int"),
        ({"train": {"shuffle": "yes"}}, "train.shuffle", "bool"),
        ({"data": {"columns": "a"}}, "data.columns", "list"),
        ({"train": {"mollification": {"schedule": "exp"}}}, "train.mollification.schedule", "'linear'"),
        ({"seed": None}, "seed", "int"),
        ({"train": "fast"}, "train", "mapping"),
    ],
)
def test_wrong_type_is_an_error_naming_key_type_and_value(values: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(values)
    message = str(error.value)
    assert f"'{key}'" in message and expected in message


def test_ints_widen_to_floats_and_ranges_are_checked() -> None:
    config = parse_config({"train": {"lr": 1, "betas": [0, 0.5]}})
    assert isinstance(config.train.lr, float) and config.train.betas == [0.0, 0.5]
    with pytest.raises(ConfigError, match="train.lr"):
        parse_config({"train": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="train.mollification.sigma"):
        parse_config({"train": {"mollification": {"sigma": 1.5}}})
    with pytest.raises(ConfigError, match="max_steps"):
        parse_config({"train": {"max_epochs": None, "max_steps": -1}})


def test_several_files_merge_in_order_and_dotted_overrides_are_yaml_typed(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("seed: 1\ntrain: {lr: 1e-3, batch_size: 64}\nmodel: {name: gaussian}\n")
    small = tmp_path / "small.yaml"
    small.write_text("train:\n  batch_size: 32\ndata:\n  dataset: file:t.csv\n  columns: [a, b]\n")
    config = load_config(
        [base, small],
        [
            ("train.max_epochs", "7"),
            ("train.gradient_clip", "null"),
            ("data.columns", "[x, 2]"),
            ("seed", "5"),
        ],
    )
    assert config.seed == 5
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.train.batch_size == 32  # second file wins
    assert config.train.max_epochs == 7 and config.train.gradient_clip is None
    assert config.data.columns == ["x", 2]
    assert config.model == {"name": "gaussian"}


def test_yaml_reads_exponent_floats_and_overrides_create_nested_keys() -> None:
    assert yaml_load("a: 1e-3\nb: 5\nc: 2.5E4\nd: 1e3x") == {"a": 1e-3, "b": 5, "c": 2.5e4, "d": "1e3x"}
    assert apply_override({"train": {"lr": 1.0}}, "train.mollification.fraction", "0.5") == {
        "train": {"lr": 1.0, "mollification": {"fraction": 0.5}}
    }
    with pytest.raises(ConfigError, match="dotted key"):
        apply_override({}, "train..lr", "1")


def test_model_options_are_checked_against_the_builder_signature() -> None:
    assert check_model_options({"name": "gaussian"}) == {}
    with pytest.raises(ConfigError, match=r"'model.hidden'.*valid keys"):
        check_model_options({"name": "gaussian", "hidden": 3})
    with pytest.raises(ConfigError, match="set from the data"):
        check_model_options({"name": "gaussian", "features": 3})
    with pytest.raises(ConfigError, match="expected one of .*, got 'nope'"):
        check_model_options({"name": "nope"})


def test_trainer_keys_are_checked_against_lightning() -> None:
    assert trainer_arguments({"accelerator": "cpu", "devices": 2, "precision": "64-true"})["devices"] == 2
    with pytest.raises(ConfigError, match=r"'trainer.devicez'.*did you mean 'devices'"):
        trainer_arguments({"devicez": 2})
    with pytest.raises(ConfigError, match=r"'trainer.max_epochs'.*train.max_epochs"):
        trainer_arguments({"max_epochs": 2})
    with pytest.raises(ConfigError, match="'trainer.num_nodes'"):
        trainer_arguments({"num_nodes": "two"})


# ------------------------------------------------------------------------------------------ schedules and noise


def test_warmup_then_cosine_schedule_values() -> None:
    warmup, total, final = 4, 24, 0.1
    factors = [warmup_cosine_factor(step, warmup, total, final) for step in range(total + 3)]
    assert factors[:warmup] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for step in range(warmup, total + 3):
        progress = min(1.0, (step - warmup) / (total - warmup))
        expected = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
        assert factors[step] == pytest.approx(expected)
    assert factors[warmup] == pytest.approx(1.0)  # the peak right after warm-up
    assert factors[warmup + (total - warmup) // 2] == pytest.approx(final + (1 - final) / 2)
    assert factors[-1] == pytest.approx(final)
    assert warmup_cosine_factor(0, 0, 10) == pytest.approx(1.0)


def test_mollification_noise_anneals_to_zero() -> None:
    config = MollificationConfig(fraction=0.5, sigma=0.8, schedule="linear")
    assert mollification_sigma(0.0, config) == pytest.approx(0.8)
    assert mollification_sigma(0.25, config) == pytest.approx(0.8 * math.sqrt(0.5))
    assert mollification_sigma(0.5, config) == 0.0 and mollification_sigma(0.9, config) == 0.0
    cosine = MollificationConfig(fraction=1.0, sigma=1.0, schedule="cosine")
    sigmas = [mollification_sigma(p, cosine) for p in np.linspace(0, 1, 11)]
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(sigmas, sigmas[1:]))
    assert mollification_sigma(0.0, MollificationConfig(fraction=0.0)) == 0.0


def _module(features: int = 3, **train: object) -> tuple[FlowModule, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4000, features)) * np.arange(1, features + 1) + 10.0
    mean, std = standardization_of(data)
    flow = build_flow({"name": "gaussian"}, features, mean, std)
    module = FlowModule(flow, TrainConfig(**train))
    return module, data, std


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_module_loss_is_the_mean_negative_log_prob() -> None:
    module, data, _ = _module()
    x = torch.as_tensor(data[:64], dtype=torch.float32)
    with torch.no_grad():
        for parameter in module.flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    loss = module.training_step((x,), 0)
    torch.testing.assert_close(loss, -module.flow.log_prob(x).mean())


def test_mollification_is_variance_preserving_in_standardised_units() -> None:
    module, data, _ = _module(mollification=MollificationConfig(fraction=0.5, sigma=0.6, schedule="linear"))
    x = torch.as_tensor(data, dtype=torch.float64)
    standardizer = standardizer_of(module.flow)
    std, mean = 1.0 / standardizer.scale.double(), -standardizer.shift.double() / standardizer.scale.double()
    torch.manual_seed(0)
    z_noisy = (module.perturb(x, 0.0) - mean) / std
    z = (x - mean) / std
    correlation = ((z_noisy * z).mean(0) - z_noisy.mean(0) * z.mean(0)) / (z_noisy.std(0) * z.std(0))
    torch.testing.assert_close(z_noisy.std(0), torch.ones(3, dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(
        correlation, torch.full((3,), math.sqrt(1 - 0.36), dtype=torch.float64), atol=0.03, rtol=0
    )
    torch.testing.assert_close(module.perturb(x, 0.5), x)  # annealed to zero at the end of the fraction


def test_noise_augmentation_adds_the_configured_std_in_standardised_units() -> None:
    module, data, std = _module(noise_std=0.3)
    x = torch.as_tensor(data, dtype=torch.float64)
    torch.manual_seed(0)
    noise = (module.perturb(x, 1.0) - x) / torch.as_tensor(std)
    torch.testing.assert_close(noise.std(0), torch.full((3,), 0.3, dtype=torch.float64), atol=0.02, rtol=0)


# ------------------------------------------------------------------------------------------ standardisation


def test_standardisation_fold_in_gives_log_prob_in_data_units() -> None:
    rng = np.random.default_rng(1)
    mean_true, std_true = np.array([100.0, -3.0, 0.5]), np.array([20.0, 0.1, 1.0])
    data = rng.normal(size=(5000, 3)) * std_true + mean_true
    mean, std = standardization_of(data)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # build the fixed standardisation in float64 too
    try:
        flow = build_flow({"name": "gaussian"}, 3, mean, std)  # the inner map is the identity at init
        inner = build_flow({"name": "gaussian"}, 3)
    finally:
        torch.set_default_dtype(previous)
    x = data[:50]
    log_prob = evaluate_log_prob(flow, x)
    standardised = evaluate_log_prob(inner, (x - mean) / std)
    np.testing.assert_allclose(log_prob, standardised - np.log(std).sum(), rtol=1e-10)
    closed_form = norm(mean, std).logpdf(x).sum(axis=1)  # N(mean, diag std^2) in data units
    np.testing.assert_allclose(log_prob, closed_form, rtol=1e-10)
    samples = flow.sample((20000,)).numpy()
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * std / math.sqrt(20000))
    np.testing.assert_allclose(samples.std(0), std, rtol=0.03)


def test_standardization_of_constant_columns_uses_unit_std() -> None:
    mean, std = standardization_of(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1.0])


# ------------------------------------------------------------------------------------------ batching and data


@pytest.mark.parametrize("shuffle", [True, False])
def test_global_batches_are_shared_across_ranks(shuffle: bool) -> None:
    n, per_device, world = 103, 8, 2
    single = list(GlobalBatchSampler(n, per_device * world, shuffle, seed=4))
    ranks = [
        list(GlobalBatchSampler(n, per_device, shuffle, seed=4, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == n // (per_device * world)
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
        assert len(ranks[0][step]) == len(ranks[1][step]) == per_device
    sampler = GlobalBatchSampler(n, 16, shuffle, seed=4)
    first = list(sampler)
    sampler.set_epoch(1)
    assert (list(sampler) != first) == shuffle
    assert len(set(sum(first, []))) == len(sum(first, []))  # no row twice in an epoch


def test_dataset_strings_resolve_to_splits_with_known_entropy() -> None:
    splits = load_splits(
        parse_config({"data": {"dataset": "toy:8gaussians", "n_train": 50, "n_val": 20, "n_test": 30}}).data
    )
    assert splits.train.shape == (50, 2) and splits.val.shape == (20, 2) and splits.test.shape == (30, 2)
    assert splits.entropy == pytest.approx(2.832)
    config = parse_config(
        {"data": {"dataset": "synthetic:student_t", "target": {"features": 3, "df": 4.0}, "n_train": 40}}
    )
    splits = load_splits(config.data)
    assert splits.features == 3 and splits.entropy_se == 0.0 and splits.entropy is not None
    with pytest.raises(ConfigError, match="unknown toy"):
        load_splits(parse_config({"data": {"dataset": "toy:nope"}}).data)
    with pytest.raises(ConfigError, match="data.dataset"):
        load_splits(parse_config({"data": {"dataset": "web:foo"}}).data)


def test_file_dataset_with_columns_header_and_given_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(60, 3))
    path, test_path = tmp_path / "train.csv", tmp_path / "test.csv"
    np.savetxt(path, table, delimiter=",", header="a,b,c", comments="")
    np.savetxt(test_path, table[:7], delimiter=",", header="a,b,c", comments="")
    config = parse_config(
        {
            "data": {
                "dataset": f"file:{path}",
                "columns": ["c", "a"],
                "test_path": str(test_path),
                "val_fraction": 0.25,
            }
        }
    )
    splits = load_splits(config.data)
    assert splits.columns == ["c", "a"]
    assert splits.train.shape == (45, 2) and splits.val.shape == (15, 2)
    np.testing.assert_allclose(splits.test, table[:7][:, [2, 0]])
    np.testing.assert_allclose(
        np.sort(np.vstack([splits.train, splits.val]), axis=0), np.sort(table[:, [2, 0]], axis=0)
    )


def test_splits_from_arrays_holds_out_validation_rows() -> None:
    x = np.arange(40.0).reshape(20, 2)
    splits = splits_from_arrays(x, val_fraction=0.25, seed=0)
    assert splits.train.shape == (15, 2) and splits.val.shape == (5, 2)
    assert splits.test is splits.val


# ------------------------------------------------------------------------------------------ end to end


def _tiny_config(tmp_path: Path, **sections: dict) -> dict:
    config = {
        "seed": 0,
        "data": {
            "dataset": "synthetic:gaussian_mixture",
            "target": {"features": 3, "components": 1},
            "n_train": 2000,
            "n_val": 500,
            "n_test": 4000,
        },
        "model": {"name": "gaussian"},
        "train": {"batch_size": 100, "max_epochs": 6, "lr": 0.05, "warmup_steps": 5},
        "output": {
            "dir": str(tmp_path),
            "name": "run",
            "samples": 200,
            "plots": False,
            "progress_bar": False,
            "logger": "csv",
        },
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


@pytest.mark.slow
def test_run_fits_a_gaussian_to_the_closed_form_and_writes_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged_steps: list[int] = []
    log = FlowModule.log

    def counting_log(module: FlowModule, name: str, *args: object, **kwargs: object) -> None:
        if name == "train_nll":
            logged_steps.append(module.global_step)
        log(module, name, *args, **kwargs)

    monkeypatch.setattr(FlowModule, "log", counting_log)
    result = run(_tiny_config(tmp_path), verbose=False)
    metrics, run_dir = result.metrics, result.run_dir
    splits = load_splits(result.config.data, result.config.seed)
    # The one-component mixture is a Gaussian: a full-covariance Gaussian fitted by ML should match the
    # closed-form MLE's test log-likelihood, and the known entropy up to sampling noise.
    mle = multivariate_normal(splits.train.mean(0), np.cov(splits.train.T, bias=True))
    assert metrics["test_log_likelihood"] == pytest.approx(mle.logpdf(splits.test).mean(), abs=0.02)
    assert abs(metrics["gap"]) < 4 * metrics["test_log_likelihood_se"] + 0.02
    assert metrics["test_log_likelihood_2se"] == pytest.approx(2 * metrics["test_log_likelihood_se"])
    assert metrics["epochs"] == 6 and metrics["steps"] == 6 * 20
    for name in (
        "config.yaml",
        "metrics.json",
        "samples.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    samples = np.loadtxt(run_dir / "samples.csv", delimiter=",", skiprows=1)
    assert samples.shape == (200, 3)
    # The training loss is logged only on the steps the CSV logger writes (every 10th), and all of them are.
    assert logged_steps == list(range(9, 120, 10))
    header, *rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    written = [row.split(",") for row in rows if row.split(",")[columns.index("train_nll")]]
    assert [int(row[columns.index("step")]) for row in written] == logged_steps
    assert all(math.isfinite(float(row[columns.index("train_nll")])) for row in written)
    assert load_config([run_dir / "config.yaml"]) == result.config
    # The checkpoint rebuilds the same model in a fresh object.
    loaded = load_model(result.checkpoint)
    np.testing.assert_allclose(
        evaluate_log_prob(loaded.flow, splits.test[:100]),
        evaluate_log_prob(result.flow, splits.test[:100]),
        rtol=1e-6,
    )


@pytest.mark.slow
def test_cpu_runs_are_deterministic_and_mollification_changes_training(tmp_path: Path) -> None:
    first = run(_tiny_config(tmp_path / "a", train={"max_epochs": 2}), verbose=False)
    second = run(_tiny_config(tmp_path / "b", train={"max_epochs": 2}), verbose=False)
    for (name, a), b in zip(first.flow.state_dict().items(), second.flow.state_dict().values()):
        assert torch.equal(a, b), name
    mollified = run(
        _tiny_config(
            tmp_path / "c", train={"max_epochs": 2, "mollification": {"fraction": 0.5}}, output={"samples": 0}
        ),
        verbose=False,
    )
    changed = [
        not torch.equal(a, b)
        for a, b in zip(first.flow.state_dict().values(), mollified.flow.state_dict().values())
    ]
    assert any(changed)


@pytest.mark.parametrize("world", [2, 3])
def test_training_noise_does_not_depend_on_the_number_of_devices(world: int) -> None:
    """Rank r of W draws the noise rows r, r + W, ... of the single-process global batch."""
    import types

    per_device = 5
    single = FlowModule(torch.nn.Identity(), TrainConfig(batch_size=per_device * world), seed=7)
    single._trainer = types.SimpleNamespace(world_size=1, global_rank=0, global_step=3)
    x = torch.zeros(per_device * world, 2)
    expected = single._noise(x, 1, "normal")
    sharded = FlowModule(torch.nn.Identity(), TrainConfig(batch_size=per_device), seed=7)
    for rank in range(world):
        sharded._trainer = types.SimpleNamespace(world_size=world, global_rank=rank, global_step=3)
        torch.testing.assert_close(sharded._noise(x[:per_device], 1, "normal"), expected[rank::world])
    single._trainer = types.SimpleNamespace(world_size=1, global_rank=0, global_step=4)
    assert not torch.equal(single._noise(x, 1, "normal"), expected)  # a new draw every step


def _actnorms(flow: torch.nn.Module) -> list[torch.nn.Module]:
    from flows.bijectors.normalization import ActNorm

    return [module for module in flow.modules() if isinstance(module, ActNorm)]


def test_actnorm_initialisation_sees_the_standardised_batch() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(512, 4)) * [1.0, 50.0, 0.1, 3.0] + [0.0, 1000.0, -5.0, 2.0]
    mean, std = standardization_of(data)
    flow = build_flow(
        {"name": "realnvp", "normalization": "actnorm", "transforms": 2, "hidden_features": [8]}, 4, mean, std
    )
    first = _actnorms(flow)[0]
    outputs: list[torch.Tensor] = []
    first.register_forward_hook(lambda module, inputs, output: outputs.append(output[0].detach()))
    batch = torch.as_tensor(
        data[:256] * 0.5 + 3.0, dtype=torch.float32
    )  # a batch unlike the split statistics
    assert flow.initialize(batch)
    outputs.clear()
    flow.log_prob(batch)
    torch.testing.assert_close(outputs[0].mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(outputs[0].std(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_run_initialises_actnorm_layers_before_training(tmp_path: Path) -> None:
    model = {"name": "realnvp", "normalization": "actnorm", "transforms": 2, "hidden_features": [8]}
    result = run(
        _tiny_config(tmp_path, model=model, train={"max_epochs": None, "max_steps": 2}), verbose=False
    )
    layers = _actnorms(result.flow)
    assert layers and all(bool(layer.initialized) for layer in layers)
    assert load_model(result.checkpoint).flow.state_dict().keys() == result.flow.state_dict().keys()


def test_integer_data_are_dequantised_with_uniform_noise() -> None:
    from flows.training.table_splits import prepare_splits

    rng = np.random.default_rng(0)
    table = rng.integers(0, 5, size=(300, 2)).astype(float)
    splits = splits_from_arrays(table, table[:50], table[50:90])
    with pytest.warns(UserWarning, match="integer"):
        prepared = prepare_splits(splits, parse_config({}), seed=0)
    assert prepared.info["dequantized"]
    for name in ("val", "test"):
        original, noisy = getattr(splits, name), getattr(prepared, name)
        np.testing.assert_array_equal(np.floor(noisy), original)
        assert np.all(noisy - original > 0)
    off = prepare_splits(splits, parse_config({"data": {"dequantize": False}}), seed=0)
    assert not off.info["dequantized"]
    module = FlowModule(torch.nn.Identity(), TrainConfig(), dequantize=True)
    x = torch.as_tensor(table, dtype=torch.float32)
    noise = module.perturb(x, 0.0) - x
    assert noise.min() >= 0 and noise.max() < 1 and abs(float(noise.mean()) - 0.5) < 0.05


def test_saved_configs_carry_every_model_default(tmp_path: Path) -> None:
    # A checkpoint must rebuild the same architecture even if a preset's default changes later, so the
    # run's config.yaml and checkpoint hold every model option, the omitted ones at their defaults.
    import inspect

    import yaml

    from flows.presets import NSF
    from flows.training.checkpoints import load_model

    config = {
        "data": {"dataset": "toy:moons", "n_train": 256, "n_val": 64, "n_test": 64},
        "model": {"name": "nsf", "transforms": 1, "hidden_features": [8, 8]},
        "train": {"batch_size": 64, "max_steps": 2, "max_epochs": 1},
        "output": {"dir": str(tmp_path), "name": "run", "samples": 0, "plots": False, "logger": "none"},
    }
    result = run(config, verbose=False)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["model"]
    defaults = {
        key: parameter.default
        for key, parameter in inspect.signature(NSF).parameters.items()
        if key not in ("features", "context_features")
    }
    assert set(saved) == {"name", *defaults}
    assert saved["transforms"] == 1 and saved["hidden_features"] == [8, 8]
    assert saved["bins"] == defaults["bins"]
    record = torch.load(result.checkpoint, weights_only=False)
    assert record["hyper_parameters"]["config"]["model"] == saved
    # The checkpoint still loads and scores.
    loaded = load_model(result.checkpoint)
    assert torch.isfinite(loaded.flow.log_prob(torch.zeros(3, 2))).all()


def test_sampler_resumed_mid_epoch_skips_only_the_batches_already_trained_on() -> None:
    sampler = GlobalBatchSampler(50, 8, shuffle=True, seed=2)
    sampler.set_epoch(1)
    epoch_one = list(sampler)
    sampler.set_epoch(0)
    sampler.resume_from(1, 2)
    assert list(sampler) == list(GlobalBatchSampler(50, 8, shuffle=True, seed=2))  # another epoch: no skip
    sampler.set_epoch(1)
    assert list(sampler) == epoch_one[2:]  # the resumed epoch continues at its third batch
    assert list(sampler) == epoch_one  # once only
    for done in (0, len(sampler)):  # at an epoch boundary nothing is skipped
        sampler.resume_from(1, done)
        assert list(sampler) == epoch_one


@pytest.mark.slow
def test_train_compile_runs_log_prob_through_torch_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.compile: true` trains through `torch.compile(flow.log_prob)` to the same model (up to the
    compiler's rounding) and saves checkpoints that load like any other."""
    compiled: list[object] = []
    original_compile = torch.compile

    def recording_compile(function: object, **options: object) -> object:
        compiled.append(function)
        return original_compile(function, **options)

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = {"name": "maf", "transforms": 1, "hidden_features": [8]}
    sections = {"model": model, "output": {"samples": 0}}
    eager = run(_tiny_config(tmp_path / "eager", train={"max_epochs": 1}, **sections), verbose=False)
    assert not compiled
    fast = run(
        _tiny_config(tmp_path / "fast", train={"max_epochs": 1, "compile": True}, **sections), verbose=False
    )
    assert len(compiled) == 1 and getattr(compiled[0], "__name__", "") == "log_prob"
    for (name, a), b in zip(eager.flow.state_dict().items(), fast.flow.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert fast.metrics["test_log_likelihood"] == pytest.approx(
        eager.metrics["test_log_likelihood"], abs=1e-4
    )
    assert "_compiled" not in " ".join(load_model(fast.checkpoint).flow.state_dict())


def test_optimiser_is_fused_adamw_and_steps_like_the_per_parameter_one() -> None:
    """CPU float parameters get AdamW's fused kernel; its steps equal the per-parameter AdamW's to rounding."""
    module, data, _ = _module(weight_decay=0.01, lr=1e-2)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    reference_flow = copy.deepcopy(module.flow)
    reference = torch.optim.AdamW(reference_flow.parameters(), lr=1e-2, weight_decay=0.01, fused=False)
    x = torch.as_tensor(data[:256], dtype=torch.float32)
    for flow, step in ((module.flow, optimizer), (reference_flow, reference)):
        for _ in range(5):
            step.zero_grad()
            (-flow.log_prob(x).mean()).backward()
            step.step()
    moved = [(a - b).abs().max() for a, b in zip(module.flow.parameters(), _module()[0].flow.parameters())]
    assert max(moved) > 1e-3  # the steps did move the parameters
    for fused, plain in zip(module.flow.parameters(), reference_flow.parameters()):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_a_trainer_without_a_step_limit_counts_as_no_planned_steps() -> None:
    """Lightning estimates `inf` stepping batches for a Trainer without limits: progress and the compile
    policy's steps-left see 0 planned steps (no OverflowError from int(inf) on every step)."""
    module = FlowModule(torch.nn.Identity(), TrainConfig())
    for estimate, total, progress in ((float("inf"), 0, 1.0), (40, 40, 0.0)):
        module._trainer = types.SimpleNamespace(estimated_stepping_batches=estimate, global_step=0)
        assert module._total_steps() == total and module.progress() == progress
