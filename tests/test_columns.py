"""Per-column handling (#14): bounds, discrete and categorical columns, DataFrames out, plots, YAML.

Known densities: exponential and beta columns (bounded), Poisson counts (discrete), category
probabilities (categorical); each fit is small (a few thousand rows, a few seconds on one thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import flows
from flows.training.cli import main
from flows.training.config import ConfigError, parse_config
from flows.training.pipeline import run

pd = pytest.importorskip("pandas")

BOUNDS = {"wait": (0, None), "frac": (0, 1)}
FAST = {"transforms": 2, "hidden_features": [32, 32], "max_epochs": 30, "batch_size": 256, "lr": 3e-3}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"wait": rng.exponential(2.0, n), "frac": rng.beta(2.0, 5.0, n)})


def _true_log_density(frame: pd.DataFrame) -> np.ndarray:
    return stats.expon(scale=2.0).logpdf(frame["wait"]) + stats.beta(2.0, 5.0).logpdf(frame["frac"])


@pytest.fixture(scope="module")
def bounded() -> flows.DensityEstimator:
    torch.set_num_threads(1)
    return flows.DensityEstimator(bounds=BOUNDS, **FAST).fit(_frame(3000, 0))


@pytest.mark.slow
def test_bounded_fit_approaches_the_true_log_likelihood(bounded: flows.DensityEstimator) -> None:
    test = _frame(4000, 1)
    truth = _true_log_density(test)
    gap = float(np.mean(truth) - bounded.score(test))
    assert -0.05 < gap < 0.15, gap  # a density on the support: close to the entropy bound, never far above it


@pytest.mark.slow
def test_bounded_density_integrates_to_one_in_user_units(bounded: flows.DensityEstimator) -> None:
    wait = np.linspace(1e-6, 60.0, 1201)
    frac = np.linspace(1e-6, 1.0 - 1e-6, 401)
    grid = pd.DataFrame(
        {"frac": np.tile(frac, wait.size), "wait": np.repeat(wait, frac.size)}  # columns by name, any order
    )
    density = np.exp(bounded.score_samples(grid)).reshape(wait.size, frac.size)
    mass = np.trapezoid(np.trapezoid(density, frac, axis=1), wait)
    assert mass == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_bounded_samples_stay_inside_and_come_back_as_a_dataframe(bounded: flows.DensityEstimator) -> None:
    samples = bounded.sample(20_000, random_state=0)
    assert isinstance(samples, pd.DataFrame) and list(samples.columns) == ["wait", "frac"]
    assert np.isfinite(samples.to_numpy()).all()
    assert (samples["wait"] >= 0).all() and (samples["frac"] >= 0).all() and (samples["frac"] <= 1).all()
    assert isinstance(bounded.sample(3, random_state=0), pd.DataFrame)
    assert isinstance(
        flows.DensityEstimator(**FAST, max_steps=2).fit(_frame(300, 0).to_numpy()).sample(3), np.ndarray
    )


@pytest.mark.slow
def test_outside_the_bounds_scores_minus_inf_and_fails_the_fit(bounded: flows.DensityEstimator) -> None:
    rows = pd.DataFrame({"wait": [-0.5, 1.0, 1.0, 1.0], "frac": [0.3, 1.2, 0.0, 0.3]})
    scores = bounded.score_samples(rows)
    assert np.all(scores[:3] == -np.inf) and np.isfinite(scores[3])
    data = _frame(500, 2)
    data.loc[[3, 7], "wait"] = [-1.5, -0.25]
    with pytest.raises(ValueError, match=r"column 'wait' has 2 values outside its bounds \(0, None\).*-1.5"):
        flows.DensityEstimator(bounds=BOUNDS, **FAST).fit(data)
    with pytest.raises(ConfigError, match="unknown column 'nope'"):
        flows.DensityEstimator(bounds={"nope": (0, 1)}, **FAST).fit(_frame(200, 0))
    with pytest.raises(ConfigError, match="low < high"):
        flows.DensityEstimator(bounds={"wait": (1, 0)})
    sklearn_base = pytest.importorskip("sklearn.base")
    copy = sklearn_base.clone(
        flows.DensityEstimator(bounds=BOUNDS, discrete_columns=["n"], categorical_columns=[0])
    )
    assert copy.get_params()["bounds"] == BOUNDS and copy.get_params()["categorical_columns"] == [0]


@pytest.mark.slow
def test_a_discrete_column_recovers_poisson_probabilities(tmp_path: Path) -> None:
    counts = np.random.default_rng(0).poisson(3.0, size=(4000, 1)).astype(float)
    # the standard normal base: what is tested is the discrete column's dequantisation and bound (with the
    # default mixture base: best validation NLL 2.001 against 2.010, largest pmf error 0.023 against 0.015)
    est = flows.DensityEstimator(bounds={0: (0, None)}, discrete_columns=[0], base="normal", **FAST).fit(
        counts
    )
    k = np.arange(0, 25, dtype=float)[:, None]
    mass = np.exp(est.score_samples(k))
    np.testing.assert_allclose(mass[:10], stats.poisson(3.0).pmf(k[:10, 0]), atol=0.02)
    assert 0.95 < mass.sum() < 1.01  # lower bounds of probabilities that sum to one
    # off the support: below the bound, and between integers (probability 0, not the mass of a cell)
    assert est.score_samples(np.array([[-1.0], [2.5], [2.999]])).tolist() == [-np.inf] * 3
    samples = est.sample(5000, random_state=0)
    assert np.all(samples == np.round(samples)) and samples.min() >= 0
    assert samples.mean() == pytest.approx(3.0, abs=0.15)
    path = est.save(tmp_path / "counts.pt")
    # the same rows in one batch as before saving (float32 results may differ by batch size at the last bits)
    np.testing.assert_allclose(
        flows.DensityEstimator.load(path).score_samples(k[:5]), est.score_samples(k[:5])
    )


@pytest.mark.slow
def test_categorical_labels_are_coded_and_decoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probabilities = {"Adelie": 0.2, "Chinstrap": 0.5, "Gentoo": 0.3}
    species = rng.choice(list(probabilities), size=3000, p=list(probabilities.values()))
    length = rng.normal(0.0, 1.0, 3000) + np.where(species == "Gentoo", 3.0, 0.0)
    frame = pd.DataFrame({"species": species, "length": length})
    est = flows.DensityEstimator(categorical_columns=["species"], **{**FAST, "max_epochs": 3}).fit(frame)
    samples = est.sample(2000, random_state=0)
    assert list(samples.columns) == ["species", "length"] and set(samples["species"]) <= set(probabilities)
    assert est.score_samples(frame.iloc[:5]).shape == (5,)
    one = flows.DensityEstimator(categorical_columns=["species"], **FAST).fit(frame[["species"]])
    query = pd.DataFrame({"species": list(probabilities) + ["Emperor"]})
    scores = one.score_samples(query)
    shares = one.sample(6000, random_state=0)["species"].value_counts(normalize=True)
    for (name, p), score in zip(probabilities.items(), scores):
        assert shares[name] == pytest.approx(p, abs=0.05), name  # the model's mass of the category's cell
        assert np.exp(score) == pytest.approx(p, abs=0.08), name  # a lower bound on that mass
    assert 0.9 < np.exp(scores[:3]).sum() < 1.01
    assert scores[3] == -np.inf  # a category never seen in fit
    loaded = flows.DensityEstimator.load(one.save(tmp_path / "species.pt"))
    assert set(loaded.sample(50, random_state=1)["species"]) <= set(probabilities)


@pytest.mark.slow
def test_plot_labels_axes_with_the_column_names(bounded: flows.DensityEstimator, tmp_path: Path) -> None:
    figure = bounded.plot(_frame(500, 3), tmp_path / "fit.png", n_samples=500)
    assert (tmp_path / "fit.png").stat().st_size > 1000
    labels = {ax.get_xlabel() for ax in figure.axes} | {ax.get_ylabel() for ax in figure.axes}
    assert {"wait", "frac"} <= labels


def test_column_keys_live_in_the_data_section_of_table_kinds() -> None:
    config = parse_config(
        {"model": {"name": "nsf"}, "data": {"dataset": "file:x.csv", "bounds": {"a": [0, None]}}}
    )
    assert config.data.bounds == {"a": [0, None]}
    with pytest.raises(ConfigError, match="data.bounds' does not apply to toy"):
        parse_config(
            {"model": {"name": "nsf"}, "data": {"dataset": "toy:moons", "bounds": {"x0": [0, None]}}}
        )


@pytest.mark.slow
def test_yaml_bounds_and_discrete_columns_go_through_the_pipeline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"wait": rng.exponential(2.0, 2000), "count": rng.poisson(3.0, 2000)})
    table.to_csv(tmp_path / "table.csv", index=False)
    config = {
        "seed": 0,
        "data": {
            "dataset": f"file:{tmp_path / 'table.csv'}",
            "bounds": {"wait": [0, None], "count": [0, None]},
            "discrete_columns": ["count"],
        },
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [16, 16]},
        "train": {"max_epochs": 3, "batch_size": 128},
        "output": {"dir": str(tmp_path / "runs"), "samples": 2000, "plots": True, "logger": "none"},
    }
    result = run(config, verbose=False)
    samples = pd.read_csv(result.run_dir / "samples.csv")
    assert list(samples.columns) == ["wait", "count"]
    assert (samples["wait"] >= 0).all() and (samples["count"] >= 0).all()
    assert np.all(samples["count"] == np.round(samples["count"]))
    reloaded = flows.DensityEstimator.load(result.checkpoint)
    assert reloaded.score_samples(np.array([[-1.0, 2.0]]))[0] == -np.inf
    # the command line reads the same plan from the checkpoint
    assert (
        main(["sample", "--ckpt", str(result.checkpoint), "-n", "500", "--out", str(tmp_path / "s.csv")]) == 0
    )
    drawn = pd.read_csv(tmp_path / "s.csv")
    assert (drawn["wait"] >= 0).all() and np.all(drawn["count"] == np.round(drawn["count"]))
    pd.DataFrame({"wait": [-1.0, 1.0, 1.0], "count": [2.0, 2.0, -1.0]}).to_csv(
        tmp_path / "q.csv", index=False
    )
    out = tmp_path / "logp.csv"
    assert (
        main(
            ["score", "--ckpt", str(result.checkpoint), "--data", str(tmp_path / "q.csv"), "--out", str(out)]
        )
        == 0
    )
    scored = pd.read_csv(out)["log_prob"].to_numpy()
    np.testing.assert_array_equal(np.isinf(scored), [True, False, True])
    np.testing.assert_allclose(scored[1], reloaded.score_samples(np.array([[1.0, 2.0]]))[0], rtol=1e-6)


def test_training_noise_dequantises_only_the_declared_columns_and_stays_on_the_support() -> None:
    from flows.training.columns import ColumnPlan
    from flows.training.config import MollificationConfig, TrainConfig
    from flows.training.models import build_flow
    from flows.training.module import FlowModule

    plan = ColumnPlan([0.0, 0.0, -np.inf], [np.inf, 1.0, np.inf], [True, False, False], scale=[2.0, 1.0, 1.0])
    torch.manual_seed(0)
    flow = build_flow({"name": "gaussian"}, 3, np.zeros(3), np.ones(3), support=plan.support())
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.stack([rng.poisson(3.0, 512), rng.uniform(0, 1, 512), rng.normal(size=512)], 1))
    x = x.float()
    module = FlowModule(
        flow,
        TrainConfig(batch_size=512, mollification=MollificationConfig(fraction=1.0)),
        dequantize=plan.discrete,
    )
    plain = FlowModule(flow, TrainConfig(batch_size=512), dequantize=plan.discrete).perturb(x, 1.0) - x
    assert torch.all((plain[:, 0] >= 0) & (plain[:, 0] < 1)) and float(plain[:, 0].std()) > 0.2
    assert torch.equal(plain[:, 1:], torch.zeros_like(plain[:, 1:]))  # continuous columns untouched
    noisy = module.perturb(x, 0.0)  # full-strength mollification, in the units after the support
    assert float((noisy[:, 1] - x[:, 1]).abs().mean()) > 0.05
    assert bool(plan.support().contains(noisy).all())


def test_the_discrete_warning_skips_declared_columns_and_points_at_the_options() -> None:
    from flows.training.safety import column_warnings

    table = np.stack(
        [np.arange(200.0) % 7, np.random.default_rng(0).normal(size=200), np.arange(200.0) % 3], 1
    )
    (message,) = column_warnings(table, ["a", "b", "c"], dequantized=[True, False, False])
    assert "c (3 distinct values)" in message and "'a" not in message
    assert "discrete_columns" in message and "categorical_columns" in message
    assert column_warnings(table, ["a", "b", "c"], dequantized=[True, False, True]) == []


def test_a_declared_discrete_column_must_hold_integers() -> None:
    frame = _frame(300, 0)
    with pytest.raises(ValueError, match=r"discrete column 'wait' holds 270 non-integer values"):
        flows.DensityEstimator(discrete_columns=["wait"], **FAST).fit(frame)


def test_the_all_column_dequantize_shortcut_still_scores_non_integers() -> None:
    """`dequantize=True` adds U[0, 1) noise to any column (fit does not ask for integers), so its rows score
    finite; only declared `discrete_columns` give a fractional value probability 0."""
    rows = np.random.default_rng(1).normal(size=(300, 2)) * 5
    est = flows.DensityEstimator(dequantize=True, base="normal", **FAST).fit(rows)
    assert np.isfinite(est.score_samples(rows[:20])).all()
    from flows.training.columns import ColumnPlan

    plan = est.columns_plan_
    assert not any(plan.integer) and ColumnPlan.from_record(plan.record(), 2) == plan
