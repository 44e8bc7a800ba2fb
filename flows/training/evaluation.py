"""Evaluating and sampling a trained table flow in batches, and writing tables of results atomically.

Used by the tabular task, `DensityEstimator` and `flows score/sample/test`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from flows.io import atomic_open
from flows.training.data import DataSplits, standard_error

__all__ = [
    "dequantized_log_prob",
    "table_log_prob",
    "draw_samples",
    "entropy_metrics",
    "evaluate_log_prob",
    "log_likelihood_metrics",
    "write_samples",
]

#: noise draws per row of the importance-weighted dequantisation bound of `dequantized_log_prob`
DEQUANTIZATION_DRAWS = 16


@torch.no_grad()
def evaluate_log_prob(
    flow: torch.nn.Module, x: np.ndarray, batch_size: int = 4096, context: Optional[np.ndarray] = None
) -> np.ndarray:
    """Per-row log density `(n,)` (float64 numpy) of rows `x (n, D)` in data units, in batches; with
    `context (n, k)`, the log density of each row given its context row."""
    parameter = next(iter(flow.parameters()), None)
    buffer = next(iter(flow.buffers()), None)
    reference = parameter if parameter is not None else buffer
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = flow.training
    flow.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        rows = torch.as_tensor(x[start : start + batch_size], dtype=dtype, device=device)
        if context is None:
            out.append(flow.log_prob(rows).double().cpu().numpy())
        else:
            given = torch.as_tensor(context[start : start + batch_size], dtype=dtype, device=device)
            out.append(flow.log_prob(rows, given).double().cpu().numpy())
    flow.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def dequantized_log_prob(
    flow: torch.nn.Module,
    x: np.ndarray,
    mask: np.ndarray,
    draws: int = DEQUANTIZATION_DRAWS,
    seed: int = 0,
    context: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Per-row `(n,)` lower bound on `log P(x_discrete) + log p(x_continuous | ...)` of rows `x (n, D)` whose
    columns with `mask (D,) == 1` hold integers: `log mean_s p(x + u_s * mask)` over `draws` fixed
    U[0, 1) draws (numpy, seeded by `seed`). Its expectation is the importance-weighted dequantisation bound,
    which tightens towards the log-probability mass as `draws` grows (one draw: the Jensen bound). Every row
    gets the same draws, so a row's score does not depend on the other rows."""
    noise = np.random.default_rng(seed).uniform(size=(draws, x.shape[1])) * mask
    total = np.stack([evaluate_log_prob(flow, x + u, context=context) for u in noise])
    return (torch.logsumexp(torch.as_tensor(total), dim=0) - np.log(draws)).numpy()


def table_log_prob(
    flow: torch.nn.Module, x: np.ndarray, plan: Any, context: Optional[np.ndarray] = None
) -> np.ndarray:
    """Per-row `(n,)` log-likelihood of rows `x (n, D)` in data units under a table flow and its column plan
    (`flows.training.columns.ColumnPlan`): category values are coded, rows off the support (or with an
    unknown category) score `-inf`, dequantised columns contribute their log-probability-mass bound
    (`dequantized_log_prob`), the others their log density. `DensityEstimator` and `flows score` use it."""
    coded = plan.encode(x, [], "x", strict=False)
    scores = np.full(x.shape[0], -np.inf)
    inside = ~plan.outside(coded).any(axis=1)
    if inside.any():
        kept = None if context is None else context[inside]
        if plan.dequantized:
            scores[inside] = dequantized_log_prob(flow, coded[inside], plan.mask, context=kept)
        else:
            scores[inside] = evaluate_log_prob(flow, coded[inside], context=kept)
    return scores


@torch.no_grad()
def draw_samples(
    flow: torch.nn.Module,
    n: int,
    seed: Optional[int] = None,
    batch_size: int = 10_000,
    context: Optional[np.ndarray] = None,
) -> np.ndarray:
    """`n` samples `(n, D)` float64 in data units (seeded with `seed` when given); with `context (m, k)`,
    `n` samples per context row, `(n, m, D)`."""
    reference = next(iter(flow.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        given = None
        if context is not None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
            given = torch.as_tensor(context, dtype=dtype, device=device)
            batch_size = max(1, batch_size // max(1, given.shape[0]))
        chunks = [
            flow.sample((min(batch_size, n - start),), given).double().cpu().numpy()
            for start in range(0, n, batch_size)
        ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def log_likelihood_metrics(log_prob: np.ndarray, prefix: str = "test") -> dict[str, Any]:
    """Mean log-likelihood, its standard error (1 std / sqrt(N)) and the NSF-paper error bar (2 std / sqrt(N))."""
    se = standard_error(log_prob)
    return {
        f"{prefix}_log_likelihood": float(np.mean(log_prob)),
        f"{prefix}_log_likelihood_se": se,
        f"{prefix}_log_likelihood_2se": 2.0 * se,
        f"{prefix}_rows": int(log_prob.shape[0]),
        f"{prefix}_nonfinite_rows": int(np.sum(~np.isfinite(log_prob))),
    }


def entropy_metrics(splits: DataSplits, test_log_likelihood: float) -> dict[str, Any]:
    if splits.entropy is None:
        return {}
    return {
        "entropy": float(splits.entropy),
        "entropy_se": None if splits.entropy_se is None else float(splits.entropy_se),
        "gap": float(-test_log_likelihood - splits.entropy),
    }


def write_samples(path: Path, samples: np.ndarray, columns: list[str]) -> Path:
    """Samples as CSV (header = column names) or NPY, chosen by the suffix; written atomically."""
    if path.suffix == ".npy":
        with atomic_open(path, "wb") as handle:
            np.save(handle, samples)
    elif path.suffix in (".csv", ".tsv"):
        delimiter = "," if path.suffix == ".csv" else "\t"
        with atomic_open(path, "w") as handle:
            np.savetxt(
                handle, samples, delimiter=delimiter, header=delimiter.join(columns), comments="", fmt="%.8g"
            )
    else:
        raise ValueError(f"output file must end in .csv, .tsv or .npy, got {path}")
    return path
