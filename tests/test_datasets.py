"""Tests for flows.datasets: toys, synthetic targets, tables, files, splits and the MAF/UCI loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from scipy.spatial import cKDTree
from scipy.special import digamma, logsumexp

from flows.datasets import (
    SYNTHETIC_TARGETS,
    TOY_ENTROPY,
    TOY_NAMES,
    GaussianMixture,
    MultivariateStudentT,
    as_array,
    load_sklearn_table,
    load_table,
    load_uci,
    make_synthetic_target,
    toy_sample,
    train_val_test_split,
    validate_table,
)
from flows.datasets.files import table_columns
from flows.datasets.toys import eight_gaussian_centers, eight_gaussian_std
from flows.datasets.uci import UCI_SPLIT_SIZES, _tail_split

try:
    from data_fixtures import (
        write_bsds300,
        write_gas,
        write_hepmass,
        write_miniboone,
        write_power,
    )
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures import (
        write_bsds300,
        write_gas,
        write_hepmass,
        write_miniboone,
        write_power,
    )

# ----------------------------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_shapes_determinism(name: str) -> None:
    x = toy_sample(name, 1001, seed=3)
    assert x.shape == (1001, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, toy_sample(name, 1001, seed=3))
    assert not np.array_equal(x, toy_sample(name, 1001, seed=4))


def test_toy_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="8gaussians"):
        toy_sample("banana", 10, 0)
    with pytest.raises(ValueError, match="positive integer"):
        toy_sample("moons", 0, 0)


def test_eight_gaussians_entropy_closed_form_density() -> None:
    """MC of -log p with the exact mixture density matches the documented 2.832 nats."""
    x = toy_sample("8gaussians", 200_000, seed=0)
    c, s = eight_gaussian_centers(), eight_gaussian_std()
    assert np.isclose(s, 0.5 / 1.414) and np.allclose(np.linalg.norm(c, axis=1), 4 / 1.414)
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    lp = logsumexp(-0.5 * d2 / s**2, axis=1) - math.log(8) - math.log(2 * math.pi * s**2)
    est, se = -lp.mean(), lp.std() / math.sqrt(lp.size)
    assert abs(est - TOY_ENTROPY["8gaussians"]) < 4 * se + 1e-3, (est, se)


def test_checkerboard_is_uniform_on_area_32() -> None:
    """Support = 8 of the 16 2x2 cells of [-4, 4]^2 (area 32), uniform: entropy ln 32 exactly."""
    x = toy_sample("checkerboard", 80_000, seed=0)
    assert np.all(np.abs(x) <= 4)
    cells = np.floor(x / 2).astype(int) + 2  # 4x4 board indices 0..3
    occupied = {tuple(c) for c in np.unique(cells, axis=0)}
    assert len(occupied) == 8
    assert all((i + j) % 2 == 0 for i, j in occupied)  # a checkerboard pattern
    counts = np.unique(cells, axis=0, return_counts=True)[1]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    frac = (x / 2) % 1.0  # uniform within each cell
    for j in range(2):
        assert scipy.stats.kstest(frac[:, j], "uniform").pvalue > 1e-3
    assert math.isclose(TOY_ENTROPY["checkerboard"], math.log(8 * 4))


def _knn_entropy(x: np.ndarray, k: int = 3) -> float:
    """Kozachenko-Leonenko entropy estimate in 2-D."""
    r = cKDTree(x).query(x, k=k + 1)[0][:, k]
    return float(digamma(x.shape[0]) - digamma(k) + math.log(math.pi) + 2 * np.mean(np.log(r)))


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_entropy_knn_estimate(name: str) -> None:
    """Each generator's nearest-neighbour entropy estimate agrees with TOY_ENTROPY (a check of both)."""
    assert abs(_knn_entropy(toy_sample(name, 50_000, seed=1)) - TOY_ENTROPY[name]) < 0.03


# ----------------------------------------------------------------------------------------- synthetic


def test_gaussian_mixture_log_prob_vs_scipy() -> None:
    gm = GaussianMixture(features=3, components=4, seed=0)
    x = gm.sample(500, seed=1)
    assert x.shape == (500, 3)
    ref = logsumexp(
        [
            np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(x)
            for w, m, c in zip(gm.weights, gm.means, gm.covariances, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(gm.log_prob(x), ref, rtol=1e-10, atol=1e-10)
    eig = np.linalg.eigvalsh(gm.covariances)
    assert eig.min() >= 0.25 - 1e-9 and eig.max() <= 2.25 + 1e-9
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        gm.log_prob(np.zeros((5, 2)))


def test_student_t_log_prob_and_entropy_vs_scipy() -> None:
    t = MultivariateStudentT(features=4, df=3.0, seed=2)
    x = t.sample(400, seed=0)
    ref = scipy.stats.multivariate_t(loc=t.loc, shape=t.shape, df=t.df)
    np.testing.assert_allclose(t.log_prob(x), ref.logpdf(x), rtol=1e-10, atol=1e-10)
    if hasattr(ref, "entropy"):
        assert math.isclose(t.exact_entropy(), float(ref.entropy()), rel_tol=1e-10)
    est, se = t.entropy()
    assert se == 0.0 and est == t.exact_entropy()
    mc, mc_se = t.entropy(n_mc=200_000, seed=1)
    assert abs(mc - est) < 4 * mc_se, (mc, mc_se, est)


def test_student_t_univariate_closed_form() -> None:
    t = MultivariateStudentT(features=1, df=5.0, seed=0)
    ref = scipy.stats.t(df=5.0, loc=t.loc[0], scale=math.sqrt(t.shape[0, 0]))
    assert math.isclose(t.exact_entropy(), float(ref.entropy()), rel_tol=1e-10)
    # heavy tails: sample kurtosis well above the Gaussian's
    assert scipy.stats.kurtosis(t.sample(100_000, seed=0)[:, 0]) > 2.0


@pytest.mark.parametrize(
    "target",
    [GaussianMixture(features=2, components=3, seed=1), MultivariateStudentT(features=2, df=4.0, seed=1)],
)
def test_synthetic_density_normalises_2d(target: GaussianMixture | MultivariateStudentT) -> None:
    is_mixture = isinstance(target, GaussianMixture)
    g = np.linspace(-15, 15, 601) if is_mixture else np.linspace(-40, 40, 1601)
    xx, yy = np.meshgrid(g, g)
    p = np.exp(target.log_prob(np.stack([xx.ravel(), yy.ravel()], axis=1)))
    mass = p.sum() * (g[1] - g[0]) ** 2
    tail = 0.0 if is_mixture else 2e-3  # t with df=4 has mass beyond |x| > 40
    assert abs(mass - 1.0) < 1e-4 + tail


def test_gaussian_mixture_entropy_mc_and_registry() -> None:
    gm = make_synthetic_target("gaussian_mixture", features=2, components=2, seed=0)
    assert isinstance(gm, GaussianMixture) and set(SYNTHETIC_TARGETS) == {
        "gaussian_mixture",
        "student_t",
        "conditional_mixture",
    }
    est, se = gm.entropy(n_mc=50_000, seed=0)
    assert 0 < se < 0.02
    upper = -np.sum(gm.weights * np.log(gm.weights)) + np.sum(
        gm.weights * [0.5 * np.linalg.slogdet(2 * np.pi * np.e * c)[1] for c in gm.covariances]
    )
    assert est <= upper + 4 * se  # H(mixture) <= H(weights) + sum_k w_k H(component k)
    with pytest.raises(ValueError, match="student_t"):
        make_synthetic_target("nope")
    with pytest.raises(ValueError, match="df"):
        MultivariateStudentT(features=2, df=-1.0)


# -------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    "name,shape", [("wine", (178, 13)), ("breast_cancer", (569, 30)), ("digits", (1797, 64))]
)
def test_sklearn_tables(name: str, shape: tuple[int, int]) -> None:
    x = load_sklearn_table(name)
    assert x.shape == shape and x.dtype == np.float64 and np.all(np.isfinite(x))
    if name == "digits":
        assert np.array_equal(x, np.round(x)) and x.min() == 0 and x.max() == 16
    with pytest.raises(ValueError, match="wine"):
        load_sklearn_table("iris")


# --------------------------------------------------------------------------------------------- files


def test_validate_table_errors() -> None:
    x = np.ones((10, 2))
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 NaN and 1 infinite .*\[3, 7\]"):
        validate_table(x)
    with pytest.raises(ValueError, match="2-D"):
        validate_table(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        validate_table(np.ones((0, 3)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        validate_table(np.ones((1, 3)), name="mine")
    with pytest.raises(TypeError, match="numeric"):
        validate_table(np.array([["a", "b"], ["c", "d"]]))
    assert validate_table(np.ones((2, 2), dtype=np.int32)).dtype == np.float64


def test_as_array_inputs() -> None:
    arr, names = as_array(np.arange(5.0))
    assert arr.shape == (5, 1) and names == ["x0"]
    arr, names = as_array([[1, 2], [3, 4]])
    assert arr.shape == (2, 2) and names == ["x0", "x1"]
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1, 2, 3], "s": ["x", "y", "z"], "t": ["u", "v", "w"]})
    with pytest.raises(TypeError, match=r"\['s', 't'\]"):
        as_array(df)
    arr, names = as_array(df[["a", "b"]])
    assert names == ["a", "b"] and arr.dtype == np.float64
    with pytest.raises(TypeError):
        as_array([["1", "x"], ["2", "3"]])
    with pytest.raises(ValueError, match="rectangular"):
        as_array([[1.0, 2.0], [3.0]])


def test_load_table_formats(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(20, 3))
    df = pd.DataFrame(data, columns=["u", "v", "w"])
    df.to_csv(tmp_path / "h.csv", index=False)
    df.to_csv(tmp_path / "n.tsv", index=False, header=False, sep="\t")
    df.to_parquet(tmp_path / "t.parquet")
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "z.npz", first=data, second=data[:, :2])

    x, names = load_table(tmp_path / "h.csv")
    assert names == ["u", "v", "w"] and np.allclose(x, data)
    x, names = load_table(tmp_path / "n.tsv")
    assert names == ["x0", "x1", "x2"] and np.allclose(x, data)
    x, names = load_table(tmp_path / "h.csv", columns=["w", 0])
    assert names == ["w", "u"] and np.allclose(x, data[:, [2, 0]])
    x, names = load_table(tmp_path / "t.parquet")
    assert names == ["u", "v", "w"] and np.allclose(x, data)
    x, _ = load_table(tmp_path / "a.npy")
    assert np.array_equal(x, data)
    x, _ = load_table(tmp_path / "z.npz", key="second")
    assert np.array_equal(x, data[:, :2])
    with pytest.raises(ValueError, match="first"):
        load_table(tmp_path / "z.npz")
    with pytest.raises(ValueError, match="not found"):
        load_table(tmp_path / "h.csv", columns=["nope"])


def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: it is neither part of the first name nor of the first value."""
    data = np.random.default_rng(1).normal(size=(12, 2))
    text = pd.DataFrame(data, columns=["a", "b"]).to_csv(index=False)
    (tmp_path / "header.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "plain.csv").write_bytes(b"\xef\xbb\xbf" + text.split("\n", 1)[1].encode())
    x, names = load_table(tmp_path / "header.csv", columns=["a", "b"])
    assert names == ["a", "b"] and np.allclose(x, data)
    assert table_columns(tmp_path / "header.csv") == ["a", "b"]
    x, names = load_table(tmp_path / "plain.csv")
    assert names == ["x0", "x1"] and x.shape == (12, 2) and np.allclose(x, data)


def test_pandas_default_index_column_is_left_out_with_a_warning(tmp_path: Path) -> None:
    data = np.random.default_rng(2).normal(size=(15, 2))
    pd.DataFrame(data, columns=["a", "b"]).to_csv(tmp_path / "indexed.csv")  # header ",a,b"
    with pytest.warns(UserWarning, match=r"no name and holds the row numbers 0 \.\. 14"):
        x, names = load_table(tmp_path / "indexed.csv")
    assert names == ["a", "b"] and np.allclose(x, data)
    x, names = load_table(tmp_path / "indexed.csv", columns=[0, "a"])  # asked for by position: kept
    assert np.array_equal(x[:, 0], np.arange(15.0)) and np.allclose(x[:, 1], data[:, 0])
    shuffled = pd.DataFrame(data, columns=["a", "b"], index=np.arange(15)[::-1])
    shuffled.to_csv(tmp_path / "other_index.csv")  # not 0 .. n-1: a column like any other
    x, names = load_table(tmp_path / "other_index.csv")
    assert x.shape == (15, 3)


def test_load_table_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"\.csv.*\.parquet"):
        load_table(tmp_path / "x.xlsx")
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n3,\n5,6\n")
    with pytest.raises(ValueError, match=r"1 NaN .*\[1\]"):
        load_table(tmp_path / "nan.csv")
    (tmp_path / "str.csv").write_text("a,b\n1,x\n3,y\n")
    with pytest.raises(TypeError, match=r"\['b'\]"):
        load_table(tmp_path / "str.csv")


# -------------------------------------------------------------------------------------------- splits


def test_train_val_test_split() -> None:
    x = np.arange(100.0).reshape(50, 2)
    tr, va, te = train_val_test_split(x, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert (len(tr), len(va), len(te)) == (35, 10, 5)
    assert sorted(np.concatenate([tr, va, te])[:, 0].tolist()) == x[:, 0].tolist()
    tr2, _, _ = train_val_test_split(x, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert np.array_equal(tr, tr2)
    perm = np.random.default_rng(5).permutation(50)
    assert np.array_equal(tr, x[perm[:35]])
    for bad in [(-0.1, 0.1), (0.6, 0.5), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="fraction"):
            train_val_test_split(x, *bad)
    # tiny tables: a non-zero fraction holds out at least one row (round(0.1 * 5) is 0)
    for n, sizes in [(3, (1, 1, 1)), (5, (3, 1, 1)), (6, (4, 1, 1)), (20, (16, 2, 2))]:
        assert tuple(map(len, train_val_test_split(x[:n], 0.1, 0.1))) == sizes
    assert tuple(map(len, train_val_test_split(x[:4], 0.1, 0.0))) == (3, 1, 0)
    with pytest.raises(ValueError, match="2 rows leave no training rows .* give more rows"):
        train_val_test_split(x[:2], 0.1, 0.1)


def test_estimator_on_a_tiny_table_holds_out_a_row_or_says_it_cannot() -> None:
    from flows.training.data import splits_from_arrays

    rows = np.random.default_rng(0).normal(size=(5, 2))
    splits = splits_from_arrays(rows, val_fraction=0.1)
    assert (splits.train.shape[0], splits.val.shape[0]) == (4, 1)
    with pytest.warns(UserWarning, match="only 2 rows: none can be held out"):
        splits = splits_from_arrays(rows[:2], val_fraction=0.1)
    assert np.array_equal(splits.val, rows[:2])


# ----------------------------------------------------------------------------------------------- UCI


def _tail_sizes(n: int) -> tuple[int, int, int]:
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    return n - n_test - n_val, n_val, n_test


def test_power_preprocessing(tmp_path: Path) -> None:
    raw = write_power(tmp_path, n=317)
    out = load_uci("power", tmp_path)
    n = raw.shape[0]
    rs = np.random.RandomState(42)
    x = raw[rs.permutation(n)][:, [0, 2, 4, 5, 6, 7]]  # shuffle, then columns 3 and 1 removed
    voltage = 0.01 * rs.rand(n, 1)  # drawn first ...
    gap = 0.001 * rs.rand(n, 1)  # ... then gap, then sub-metering
    sub = rs.rand(n, 3)
    x[:, 0:1] += gap
    x[:, 1:2] += voltage
    x[:, 2:5] += sub
    n_tr, n_va, n_te = _tail_sizes(n)
    assert (n_tr, n_va, n_te) == (258, 28, 31)
    trva = x[: n_tr + n_va]
    mu, sd = trva.mean(0), trva.std(0, ddof=0)
    np.testing.assert_allclose(out["train"], (x[:n_tr] - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(out["val"], (x[n_tr : n_tr + n_va] - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(out["test"], (x[n_tr + n_va :] - mu) / sd, rtol=1e-12)
    both = np.vstack([out["train"], out["val"]])
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-12)
    assert out["train"].shape[1] == 6 and out["train"].dtype == np.float64


def test_gas_preprocessing(tmp_path: Path) -> None:
    frame = write_gas(tmp_path, n=400)
    out = load_uci("gas", tmp_path)
    # a~b and c~d are > 0.98 correlated: the first of each pair goes; g = -e (negative) stays
    kept = frame[["b", "d", "e", "f", "g"]].to_numpy()
    x = (kept - kept.mean(0)) / kept.std(0, ddof=1)
    assert _tail_sizes(400) == (324, 36, 40)
    np.testing.assert_allclose(out["train"], x[:324], rtol=1e-10)
    np.testing.assert_allclose(out["val"], x[324:360], rtol=1e-10)
    np.testing.assert_allclose(out["test"], x[360:], rtol=1e-10)


def test_gas_bad_pickle(tmp_path: Path) -> None:
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="old pandas"):
        load_uci("gas", tmp_path)


@pytest.mark.parametrize("extra", [True, False])
def test_hepmass_preprocessing(tmp_path: Path, extra: bool) -> None:
    train_raw, test_raw = write_hepmass(tmp_path, test_extra_column=extra)
    out = load_uci("hepmass", tmp_path)
    tr = train_raw[train_raw[:, 0] == 1][:, 1:]
    te = test_raw[test_raw[:, 0] == 1][:, 1:-1]
    if not extra:  # the test file's last column was 'mass' itself: it is dropped anyway
        te = np.column_stack([te, np.full(len(te), np.nan)])
    assert np.sum(tr[:, 3] == tr[:, 3].min()) > 5 and np.all(tr[:, 5] == 1000.0)
    mu, sd = tr.mean(0), tr.std(0, ddof=1)
    keep = [0, 1, 2, 4]  # f3 (repeated minimum) and mass (constant) dropped
    with np.errstate(divide="ignore", invalid="ignore"):
        trs, tes = ((tr - mu) / sd)[:, keep], ((te - mu) / sd)[:, keep]
    n_val = int(0.1 * len(trs))
    np.testing.assert_allclose(out["train"], trs[: len(trs) - n_val], rtol=1e-10)
    np.testing.assert_allclose(out["val"], trs[len(trs) - n_val :], rtol=1e-10)
    np.testing.assert_allclose(out["test"], tes, rtol=1e-10)


def test_miniboone_preprocessing(tmp_path: Path) -> None:
    raw = write_miniboone(tmp_path, n=263)
    out = load_uci("MINIBOONE", tmp_path)
    n_tr, n_va, _ = _tail_sizes(263)
    mu, sd = raw[: n_tr + n_va].mean(0), raw[: n_tr + n_va].std(0)
    np.testing.assert_allclose(out["train"], (raw[:n_tr] - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(out["val"], (raw[n_tr : n_tr + n_va] - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(out["test"], (raw[n_tr + n_va :] - mu) / sd, rtol=1e-12)


def test_bsds300_as_stored(tmp_path: Path) -> None:
    arrays = write_bsds300(tmp_path)
    out = load_uci("bsds300", tmp_path)
    for ours, theirs in [("train", "train"), ("val", "validation"), ("test", "test")]:
        assert out[ours].dtype == np.float32 and np.array_equal(out[ours], arrays[theirs])
    assert load_uci("bsds300", tmp_path, dtype=np.float64)["test"].dtype == np.float64


@pytest.mark.parametrize(
    "name,rel",
    [
        ("power", "power/data.npy"),
        ("gas", "gas/ethylene_CO.pickle"),
        ("hepmass", "hepmass/1000_train.csv"),
        ("miniboone", "miniboone/data.npy"),
        ("bsds300", "BSDS300/BSDS300.hdf5"),
    ],
)
def test_uci_missing_file_message(tmp_path: Path, name: str, rel: str) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{rel}.*Zenodo record 1161203"):
        load_uci(name, tmp_path)


def test_uci_bad_name_and_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="miniboone"):
        load_uci("cifar", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_uci("power", tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["power", "gas", "miniboone"])
def test_tail_split_reproduces_published_sizes(name: str) -> None:
    """The MAF tail split applied to the full row count gives the published split sizes."""
    _, n_tr, n_va, n_te = UCI_SPLIT_SIZES[name]
    train, val, test = _tail_split(np.empty((n_tr + n_va + n_te, 0)))
    assert (len(train), len(val), len(test)) == (n_tr, n_va, n_te)
    assert _tail_sizes(n_tr + n_va + n_te) == (n_tr, n_va, n_te)
