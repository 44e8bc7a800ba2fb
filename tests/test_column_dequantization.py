"""Argmax dequantisation of categorical columns and variational dequantisation of integer columns (#14).

The bounds are checked where the exact log-mass is known: a Gaussian model's argmax regions (orthant and
wedge probabilities) and a fitted one-column model's cell masses by quadrature. Fits use small flows on a
few thousand rows (seconds on one thread).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import flows
from flows.bijectors.elementwise import ElementwiseAffine
from flows.column_dequantization import ColumnDequantizedFlow, argmax_category, argmax_threshold
from flows.distributions import StandardNormal
from flows.training.config import ConfigError

pd = pytest.importorskip("pandas")

SMALL = {"transforms": 2, "hidden_features": [32, 32], "lr": 3e-3, "batch_size": 256}
FIT = {
    **SMALL,
    "max_epochs": None,
    "max_steps": 300,
    "val_every_n_steps": 100,
    "early_stopping_patience": None,
}


def _gaussian(features: int, mean: tuple[float, ...] = ()) -> flows.Flow:
    """A normal model `N(mean, I)` over `features` model coordinates (an affine transform)."""
    shift = -torch.as_tensor(mean or (0.0,) * features)
    return flows.Flow(ElementwiseAffine(shift, 1.0, event_dims=1), StandardNormal((features,)))


def _argmax_mass(mean: np.ndarray) -> np.ndarray:
    """P(argmax v = k) for v ~ N(mean, I), by quadrature: int phi(t - m_k) prod_j Phi(t - m_j) dt."""
    t = np.linspace(-12.0, 12.0, 20001)
    masses = []
    for k in range(mean.size):
        others = np.prod([stats.norm.cdf(t - m) for j, m in enumerate(mean) if j != k], axis=0)
        masses.append(np.trapezoid(stats.norm.pdf(t - mean[k]) * others, t))
    return np.asarray(masses)


def test_threshold_lands_in_the_region_with_the_autograd_log_determinant() -> None:
    torch.manual_seed(0)
    u = 3 * torch.randn(6, 4, dtype=torch.float64)
    for code in range(4):
        codes = torch.full((6,), code)
        v, log_det = argmax_threshold(codes, u)
        assert torch.equal(argmax_category(v), codes)
        for i in range(6):
            jacobian = torch.autograd.functional.jacobian(
                lambda w, i=i, codes=codes: argmax_threshold(codes[i : i + 1], w[None])[0][0], u[i]
            )
            assert torch.linalg.slogdet(jacobian)[1].item() == pytest.approx(log_det[i].item(), abs=1e-10)


def test_argmax_weights_are_unbiased_and_the_bound_is_below_the_exact_log_mass() -> None:
    """Model coordinates v ~ N(m, I_3): the exact masses P(argmax v = k) come from quadrature."""
    torch.manual_seed(0)
    mean = (0.8, 0.0, -0.5)
    flow = ColumnDequantizedFlow(_gaussian(3, mean), 1, {0: 3}).double()
    exact = np.log(_argmax_mass(np.asarray(mean)))
    with torch.no_grad():
        x = torch.arange(3.0, dtype=torch.float64).repeat_interleave(20000)[:, None]
        draws = flow.log_prob(x).reshape(3, -1)
    # exp(log p - log q) is an unbiased estimate of the mass: a wrong log q (Jacobian) shifts its mean
    mass = draws.exp().mean(dim=1).numpy()
    np.testing.assert_allclose(mass, np.exp(exact), rtol=0.05)
    # 16-draw importance-weighted bounds: below the exact log-mass on average, and tighter than one draw
    bound16 = (torch.logsumexp(draws.reshape(3, -1, 16), dim=-1) - math.log(16)).numpy()
    elbo = draws.mean(dim=1).numpy()
    for k in range(3):
        se = bound16[k].std() / np.sqrt(bound16[k].size)
        assert bound16[k].mean() <= exact[k] + 3 * se, k
        assert elbo[k] < bound16[k].mean() - 0.01, k
    # the category frequencies of samples are those masses too
    codes = flow.sample((40000,))[:, 0].long()
    np.testing.assert_allclose(np.bincount(codes.numpy(), minlength=3) / 40000, np.exp(exact), atol=0.01)


def test_variational_weights_are_unbiased_for_a_cell_mass() -> None:
    """A variational integer column over N(0, 1): P(k) = Phi(k + 1) - Phi(k)."""
    torch.manual_seed(0)
    flow = ColumnDequantizedFlow(_gaussian(1), 1, {}, variational=[0]).double()
    levels = np.arange(-2, 2)
    with torch.no_grad():
        x = torch.as_tensor(levels, dtype=torch.float64).repeat_interleave(20000)[:, None]
        draws = flow.log_prob(x).reshape(len(levels), -1)
    exact = stats.norm.cdf(levels + 1) - stats.norm.cdf(levels)
    # the weights p / q are heavy-tailed (a logistic-normal q vanishes at the cell's edges, p does not), so
    # the mean converges slowly; a missing or wrong sigmoid Jacobian would be off by a factor of about 5
    np.testing.assert_allclose(draws.exp().mean(dim=1).numpy(), exact, rtol=0.1)
    bound16 = (torch.logsumexp(draws.reshape(len(levels), -1, 16), dim=-1) - math.log(16)).numpy()
    assert np.all(bound16.mean(axis=1) <= np.log(exact))
    assert np.all(draws.mean(dim=1).numpy() < bound16.mean(axis=1))


def test_invalid_codes_score_minus_inf_and_rows_are_checked() -> None:
    flow = ColumnDequantizedFlow(_gaussian(4), 2, {1: 3})
    scores = flow.log_prob(torch.tensor([[0.5, 0.0], [0.5, 3.0], [0.5, 1.5], [0.5, -1.0]]))
    assert torch.isfinite(scores[0]) and torch.isinf(scores[1:]).all()
    with pytest.raises(ValueError, match="expected rows of 2 float values"):
        flow.log_prob(torch.zeros(4, 3))


def _categorical_table(n: int, seed: int) -> tuple[pd.DataFrame, dict[float, float]]:
    """A categorical column with values in an order unrelated to their probabilities (the middle value,
    in sorted order, is the rarest) and an independent N(0, 1) column."""
    probabilities = {7.0: 0.45, -1.0: 0.45, 3.0: 0.10}
    rng = np.random.default_rng(seed)
    values = rng.choice(list(probabilities), size=n, p=list(probabilities.values()))
    return pd.DataFrame({"c": values, "x": rng.normal(size=n)}), probabilities


@pytest.mark.slow
def test_fitted_category_masses_and_frequencies_match_the_truth() -> None:
    torch.set_num_threads(1)
    frame, probabilities = _categorical_table(2000, 0)
    est = flows.DensityEstimator(categorical_columns=["c"], **FIT).fit(frame)
    shares = est.sample(20000, random_state=0)["c"].value_counts(normalize=True)
    x = np.random.default_rng(1).normal(size=400)
    masses = {}
    for value, p in probabilities.items():
        assert shares[value] == pytest.approx(p, abs=0.03), value
        score = est.score_samples(pd.DataFrame({"c": np.full(x.size, value), "x": x}))
        masses[value] = np.exp(np.mean(score - stats.norm.logpdf(x)))  # log P(c) + log p(x) - log p(x)
        assert masses[value] == pytest.approx(p, abs=0.03), value
    assert sum(masses.values()) < 1.02  # lower bounds of masses that sum to one
    assert est.score_samples(pd.DataFrame({"c": [5.0], "x": [0.0]}))[0] == -np.inf  # an unseen category


def _zero_inflated(n: int, seed: int) -> np.ndarray:
    """Counts: 0 with probability 1/2, else Poisson(4): a sharp step in mass between the cells 0 and 1."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.5, 0, rng.poisson(4.0, n))[:, None].astype(float)


@pytest.mark.slow
def test_variational_dequantisation_tightens_the_bound_and_stays_below_the_exact_mass() -> None:
    torch.set_num_threads(1)
    train, test = _zero_inflated(2000, 0), _zero_inflated(2000, 1)
    # the same (normal) base for both: the comparison is of the dequantisations (a uniform fit would
    # otherwise default to the fitted mixture base, which learned dequantisation cannot use)
    options = dict(discrete_columns=[0], bounds={0: (0, None)}, base="normal", **FIT)
    uniform = flows.DensityEstimator(**options).fit(train)
    variational = flows.DensityEstimator(dequantization="variational", **options).fit(train)
    k = np.arange(40)
    pmf = 0.5 * (k == 0) + 0.5 * stats.poisson(4.0).pmf(k)
    entropy = -np.sum(pmf * np.log(pmf))
    score_u, score_v = uniform.score_samples(test), variational.score_samples(test)
    gain = score_v - score_u
    assert gain.mean() > 0.01 and gain.mean() > 2 * gain.std() / np.sqrt(gain.size), gain.mean()
    assert score_v.mean() < -entropy + 2 * score_v.std() / np.sqrt(score_v.size)  # cross-entropy >= entropy
    # a row's score does not depend on the rows scored with it
    assert variational.score_samples(np.array([[3.0]]))[0] == pytest.approx(score_v[test[:, 0] == 3][0])
    # the exact log-mass of each cell under the fitted model, by quadrature of its density over the cell;
    # the 16-draw bound that score_samples reports (a random variable) is below it on average over 200
    # independent sets of draws
    model = variational.flow_.double()
    for level in range(8):
        y = torch.linspace(level, level + 1, 4001, dtype=torch.float64)[:, None]
        with torch.no_grad():
            density = flows.Flow.log_prob(model, y).exp().numpy()
            draws = model.log_prob(torch.full((200 * 16, 1), float(level), dtype=torch.float64))
        bounds = (torch.logsumexp(draws.reshape(200, 16), dim=1) - math.log(16)).numpy()
        exact = np.log(np.trapezoid(density, y[:, 0].numpy()))
        se = bounds.std() / np.sqrt(bounds.size)
        assert bounds.mean() <= exact + 3 * se + 1e-4, (level, bounds.mean(), exact)
        assert bounds.mean() > exact - 0.3, (level, bounds.mean(), exact)  # and not vacuous


def test_learned_dequantisation_refuses_training_noise_on_the_columns() -> None:
    frame, _ = _categorical_table(200, 0)
    est = flows.DensityEstimator(
        categorical_columns=["c"], noise_std=0.1, max_steps=2, max_epochs=None, **SMALL
    )
    with pytest.raises(ConfigError, match="noise_std"):
        est.fit(frame)


def test_dequantization_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="dequantization"):
        flows.DensityEstimator(discrete_columns=[0], dequantization="gaussian")


@pytest.mark.slow
def test_penguins_categorical_columns_fit_and_sample_valid_categories(tmp_path) -> None:
    palmerpenguins = pytest.importorskip("palmerpenguins")
    torch.set_num_threads(1)
    table = palmerpenguins.load_penguins().dropna().reset_index(drop=True)
    table = table[["species", "island", "sex", "bill_length_mm", "body_mass_g", "year"]]
    est = flows.DensityEstimator(
        categorical_columns=["species", "island", "sex"],
        discrete_columns=["year"],
        bounds={"bill_length_mm": (0, None), "body_mass_g": (0, None), "year": (2007, 2009)},
        max_epochs=None,
        max_steps=150,
        **SMALL,
    ).fit(table)
    samples = est.sample(3000, random_state=0)
    for column in ("species", "island", "sex"):
        assert set(samples[column]) <= set(table[column]), column
        assert samples[column].nunique() == table[column].nunique(), column  # every category is sampled
    assert samples["year"].isin([2007, 2008, 2009]).all()
    assert (samples["bill_length_mm"] > 0).all() and (samples["body_mass_g"] > 0).all()
    scores = est.score_samples(table)
    assert np.isfinite(scores).all()
    loaded = flows.DensityEstimator.load(est.save(tmp_path / "penguins.pt"))
    np.testing.assert_allclose(loaded.score_samples(table.iloc[:20]), scores[:20], rtol=1e-6)


@pytest.mark.slow
def test_yaml_string_categories_are_coded_by_the_plan_and_decoded_in_samples(tmp_path) -> None:
    from flows.training.checkpoints import load_model
    from flows.training.cli import main
    from flows.training.pipeline import run

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    probabilities = {"red": 0.6, "green": 0.1, "blue": 0.3}
    colour = rng.choice(list(probabilities), size=2000, p=list(probabilities.values()))
    table = pd.DataFrame({"size": rng.normal(size=2000) + (colour == "green"), "colour": colour})
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    config = {
        "seed": 0,
        "data": {"dataset": f"file:{path}", "categorical_columns": ["colour"]},
        "model": {"name": "nsf", "transforms": 2, "hidden_features": [32, 32]},
        "train": {
            "max_epochs": None,
            "max_steps": 120,
            "batch_size": 256,
            "lr": 3e-3,
            "val_every_n_steps": 60,
        },
        "output": {"dir": str(tmp_path / "runs"), "samples": 4000, "plots": False, "logger": "none"},
    }
    result = run(config, verbose=False)
    samples = pd.read_csv(result.run_dir / "samples.csv")
    shares = samples["colour"].value_counts(normalize=True)  # (the shares' accuracy: the estimator's test)
    assert set(shares.index) == set(probabilities) and shares["red"] > shares["blue"] > shares["green"]
    loaded = load_model(result.checkpoint)  # plain data: the labels are strings in the record
    assert loaded.plan.labels == {1: ["blue", "green", "red"]}
    reloaded = flows.DensityEstimator.load(result.checkpoint)  # DataFrames with the labels score through it
    assert reloaded.score_samples(pd.DataFrame({"size": [0.0], "colour": ["purple"]}))[0] == -np.inf
    out = tmp_path / "drawn.csv"
    assert main(["sample", "--ckpt", str(result.checkpoint), "-n", "300", "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["colour"]) <= set(probabilities)
    # `flows score` codes the labels of a file through the plan: an unknown label scores -inf
    query = pd.DataFrame({"size": [0.0, 0.0, 0.0], "colour": ["red", "green", "purple"]})
    query.to_csv(tmp_path / "q.csv", index=False)
    scored = tmp_path / "logp.csv"
    assert (
        main(
            [
                "score",
                "--ckpt",
                str(result.checkpoint),
                "--data",
                str(tmp_path / "q.csv"),
                "--out",
                str(scored),
            ]
        )
        == 0
    )
    log_p = pd.read_csv(scored)["log_prob"].to_numpy()
    assert np.isfinite(log_p[:2]).all() and log_p[2] == -np.inf
    assert log_p[0] > log_p[1]  # red (0.6) is more likely than green (0.1) at the same size


def test_text_categories_are_coded_by_the_sorted_labels_of_all_files(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    from flows.datasets import load_tables

    pd.DataFrame({"x": [1.0, 2.0, 3.0], "kind": ["b", "a", "b"]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"x": [4.0, 5.0], "kind": ["c", "a"]}).to_csv(tmp_path / "val.csv", index=False)
    tables, names, labels = load_tables([tmp_path / "train.parquet", tmp_path / "val.csv"], ["kind"])
    assert names == ["x", "kind"] and labels == {"kind": ["a", "b", "c"]}
    np.testing.assert_array_equal(tables[0][:, 1], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(tables[1][:, 1], [2.0, 0.0])
    with pytest.raises(TypeError, match="non-numeric columns"):  # text outside categorical_columns
        load_tables([tmp_path / "val.csv"], [])


def test_the_discrete_warning_points_at_the_dequantisation_options() -> None:
    from flows.training.safety import column_warnings

    table = np.column_stack([np.arange(100) % 3, np.random.default_rng(0).normal(size=100)]).astype(float)
    (message,) = column_warnings(table, ["kind", "x"], dequantized=False)
    assert "kind (3 distinct values)" in message and "x (" not in message
    for option in ("discrete_columns", "categorical_columns", "dequantization", "argmax", "dequantize=True"):
        assert option in message, option
