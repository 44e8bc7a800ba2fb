"""Evaluating and sampling a trained table flow in batches, and writing tables of results atomically.

Used by the tabular task, `DensityEstimator` and `flows score/sample/test`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from flows.datasets.stream_stats import ColumnMoments
from flows.training.data import DataSplits
from flows.training.table_writer import table_writer

__all__ = [
    "LikelihoodTally",
    "dequantized_log_prob",
    "draw_samples",
    "entropy_metrics",
    "evaluate_log_prob",
    "iter_log_prob",
    "iter_samples",
    "table_log_prob",
    "log_likelihood_metrics",
    "write_samples",
]


def _device_and_dtype(flow: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(iter(flow.parameters()), None)
    buffer = next(iter(flow.buffers()), None)
    reference = parameter if parameter is not None else buffer
    if reference is None:
        return torch.device("cpu"), torch.float32
    return reference.device, reference.dtype


#: noise draws per row of the importance-weighted dequantisation bound of `dequantized_log_prob`
DEQUANTIZATION_DRAWS = 16


@torch.no_grad()
def iter_log_prob(
    flow: torch.nn.Module,
    batches: Iterable[np.ndarray],
    contexts: Optional[Iterable[np.ndarray]] = None,
    noise: Optional[np.ndarray] = None,
) -> Iterator[np.ndarray]:
    """Per-row log density `(b,)` (float64 numpy) of each batch `(b, D)` of rows in data units; with
    `contexts` (batches `(b, k)` beside them), the log density of each row given its context row. `noise`:
    the learned dequantisation's base draw, shared by every row (a `ColumnDequantizedFlow` only)."""
    device, dtype = _device_and_dtype(flow)
    was_training = flow.training
    flow.eval()
    extra = {} if noise is None else {"noise": torch.as_tensor(noise, dtype=dtype, device=device)}
    try:
        given_batches = iter(contexts) if contexts is not None else None
        for batch in batches:
            rows = torch.as_tensor(batch, dtype=dtype, device=device)
            if given_batches is None:
                yield flow.log_prob(rows, **extra).double().cpu().numpy()
            else:
                given = torch.as_tensor(next(given_batches), dtype=dtype, device=device)
                yield flow.log_prob(rows, given, **extra).double().cpu().numpy()
    finally:
        flow.train(was_training)


def evaluate_log_prob(
    flow: torch.nn.Module,
    x: np.ndarray,
    batch_size: int = 4096,
    context: Optional[np.ndarray] = None,
    noise: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Per-row log density `(n,)` (float64 numpy) of rows `x (n, D)` in data units, in batches; with
    `context (n, k)`, the log density of each row given its context row; `noise` as in `iter_log_prob`."""
    starts = range(0, x.shape[0], batch_size)
    contexts = None if context is None else (context[i : i + batch_size] for i in starts)
    out = list(iter_log_prob(flow, (x[i : i + batch_size] for i in starts), contexts, noise))
    return np.concatenate(out) if out else np.zeros(0)


def iter_samples(
    flow: torch.nn.Module,
    n: int,
    seed: Optional[int] = None,
    batch_size: int = 10_000,
    context: Optional[np.ndarray] = None,
) -> Iterator[np.ndarray]:
    """`n` samples in chunks of at most `batch_size` rows `(b, D)` float64 in data units (seeded with `seed`
    when given: the global torch generator is forked, and restored when the iteration ends); with
    `context (m, k)`, chunks `(b, m, D)` of `n` samples per context row."""
    reference = next(iter(flow.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        given = None
        if context is not None:
            dtype = reference.dtype if reference is not None else torch.get_default_dtype()
            given = torch.as_tensor(context, dtype=dtype, device=device)
            batch_size = max(1, batch_size // max(1, given.shape[0]))
        for start in range(0, n, batch_size):
            yield flow.sample((min(batch_size, n - start),), given).double().cpu().numpy()


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
    gets the same draws, so a row's score does not depend on the other rows: the uniform noise, and for a
    `ColumnDequantizedFlow` (argmax / variational columns) the base draws of its learned `q` too, so the
    mean is the importance-weighted bound over the joint noise."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(size=(draws, x.shape[1])) * mask
    learned = getattr(flow, "noise_features", None)
    base = rng.standard_normal((draws, learned)) if learned else [None] * draws
    total = np.stack([evaluate_log_prob(flow, x + u, context=context, noise=e) for u, e in zip(noise, base)])
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
    chunks = list(iter_samples(flow, n, seed, batch_size, context))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


class LikelihoodTally:
    """Running mean and standard error of per-row log densities, fed chunk by chunk (float64, Chan's
    merge): the metrics of a split that is never held in memory whole."""

    def __init__(self) -> None:
        self.moments = ColumnMoments(1)
        self.nonfinite = 0

    def add(self, log_prob: np.ndarray) -> None:
        self.moments.add(np.asarray(log_prob, dtype=np.float64).reshape(-1, 1))
        self.nonfinite += int(np.sum(~np.isfinite(log_prob)))

    @property
    def mean(self) -> float:
        return float(self.moments.mean[0]) if self.moments.count else float("nan")

    def metrics(self, prefix: str = "test") -> dict[str, Any]:
        """Mean log-likelihood, its standard error (1 std (ddof 1) / sqrt(N)) and the NSF-paper error bar
        (2 std / sqrt(N))."""
        count = self.moments.count
        se = float(self.moments.std(ddof=1)[0] / math.sqrt(count)) if count > 1 else float("nan")
        return {
            f"{prefix}_log_likelihood": self.mean,
            f"{prefix}_log_likelihood_se": se,
            f"{prefix}_log_likelihood_2se": 2.0 * se,
            f"{prefix}_rows": int(count),
            f"{prefix}_nonfinite_rows": self.nonfinite,
        }


def log_likelihood_metrics(log_prob: np.ndarray, prefix: str = "test") -> dict[str, Any]:
    """`LikelihoodTally.metrics` of per-row log densities held in memory."""
    tally = LikelihoodTally()
    tally.add(log_prob)
    return tally.metrics(prefix)


def entropy_metrics(splits: DataSplits, test_log_likelihood: float) -> dict[str, Any]:
    if splits.entropy is None:
        return {}
    return {
        "entropy": float(splits.entropy),
        "entropy_se": None if splits.entropy_se is None else float(splits.entropy_se),
        "gap": float(-test_log_likelihood - splits.entropy),
    }


def write_samples(
    path: Path, samples: np.ndarray, columns: list[str], labels: Optional[dict[int, list[str]]] = None
) -> Path:
    """Samples `(n, D)` as CSV / TSV (header = column names) or NPY, chosen by the suffix; written atomically.
    `labels` (`{column: text labels}`): those columns hold codes, written as their labels in CSV / TSV."""
    with table_writer(path, columns, labels) as writer:
        writer.write(samples)
    return Path(path)
