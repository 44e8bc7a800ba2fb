"""End-to-end speed where users feel it: `DensityEstimator` fits against plain PyTorch loops, and the main job.

A script that prints figures, never a timed test. In one process, interleaved round by round:

- `estimator`: `flows.DensityEstimator(max_steps=S, batch_size=64).fit(X)`, its other options at their defaults:
  validation every 50 steps (`table_defaults`) and after the last step, with its best-weights bookkeeping,
  with its default base (a Gaussian mixture fitted first, BIC-chosen size); `est. normal`: with
  `base="normal"` (the standard normal base, no mixture fit);
- `plain flows`: a hand-written loop (shuffled mini-batches, Adam, `-log_prob(x).mean()`) over the same
  `flows` model with a standard normal base (same architecture, same standardisation layer) and the same training rows, S steps;
- `plain (gmm)`: the same loop over the default estimator's model, its mixture base already fitted (so the
  `estimator` row's time over this one is what the estimator adds to its own model's steps, the BIC search included);
- `plain zuko`: the same loop over zuko's NSF of the same size, when `import zuko` works (the `bench` extra).

for S in `--steps` (default 20, 200, 2000). Ratios are per round (each case's time over the plain flows
loop's time in the same round), then their median: on a shared machine the medians move by tens of percent
between rounds, the paired ratio much less. Then the main job, `flows fit --config configs/demo.yaml`
(each tree's own config as it stands, or `--main-epochs N` epochs of it), in a fresh process per run, timed
for this tree and, with `--baseline TREE`, interleaved with another checkout of the repository (e.g. the commit
before a change). Usage::

    python benchmarks/bench_overhead.py                       # fits (3 rounds), then 2 rounds of the main job
    python benchmarks/bench_overhead.py --steps 20 200 --rounds 5 --main-epochs 0   # no main job
    python benchmarks/bench_overhead.py --baseline /tmp/old-checkout --baseline /tmp/older --main-epochs 3
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _main_job import run_main_job  # noqa: E402  (benchmarks/, on sys.path when run as a script)

import flows  # noqa: E402

#: the model of every fit: a small coupling NSF, as in a cross-validation or grid search
MODEL = {"transforms": 3, "hidden_features": [64, 64]}


def _data(rows: int, features: int, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    mixing = generator.normal(size=(features, features))
    return np.tanh(generator.normal(size=(rows, features))) @ mixing


def _estimator(steps: int, batch: int, base: Optional[str] = None) -> flows.DensityEstimator:
    return flows.DensityEstimator(
        "nsf",
        base=base,
        max_steps=steps,  # max_epochs stays "auto": validation every max(50, steps per epoch) steps
        batch_size=batch,
        lr=1e-3,
        num_threads=1,
        early_stopping_patience=None,  # all `steps` steps, as the plain loop
        **MODEL,
    )


def _plain_loop(model: torch.nn.Module, rows: torch.Tensor, steps: int, batch: int) -> None:
    """The loop a user writes by hand: shuffled mini-batches, Adam, mean negative log-likelihood."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        for index in torch.randperm(rows.shape[0], generator=generator).split(batch):
            loss = -model.log_prob(rows[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


def _zuko_loop(features: int, rows: torch.Tensor, steps: int, batch: int) -> Optional[Callable[[], None]]:
    try:
        import zuko
    except ImportError:
        return None

    class _Zuko(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flow = zuko.flows.NSF(
                features, transforms=MODEL["transforms"], hidden_features=MODEL["hidden_features"]
            )

        def log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return self.flow().log_prob(x)

    return lambda: _plain_loop(_Zuko(), rows, steps, batch)


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_fits(steps_list: list[int], rounds: int, rows: int, features: int, batch: int) -> None:
    table = _data(rows, features)
    train_rows = torch.as_tensor(table[: int(rows * 0.9)], dtype=torch.float32)  # the estimator's split size
    template = _estimator(1, batch, "normal").fit(table).flow_  # the same model (standardisation included)
    mixture_template = _estimator(1, batch).fit(table).flow_  # the default model: its fitted mixture base
    print(f"\n## fits: {rows} rows x {features} features, batch {batch}, NSF {MODEL}, 1 thread")
    print(
        "steps | case         | median s | x plain flows | x same model's plain loop (medians of per-round ratios)"
    )
    same_model = {"estimator": "plain (gmm)", "est. normal": "plain flows"}
    for steps in steps_list:
        cases: dict[str, Callable[[], object]] = {
            "estimator": lambda steps=steps: _estimator(steps, batch).fit(table),
            "est. normal": lambda steps=steps: _estimator(steps, batch, "normal").fit(table),
            "plain flows": lambda steps=steps: _plain_loop(copy.deepcopy(template), train_rows, steps, batch),
            "plain (gmm)": lambda steps=steps: _plain_loop(
                copy.deepcopy(mixture_template), train_rows, steps, batch
            ),
        }
        zuko_case = _zuko_loop(features, train_rows, steps, batch)
        if zuko_case is not None:
            cases["plain zuko"] = zuko_case
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                times[name].append(_timed(case))
        for name, values in times.items():
            ratios = [a / b for a, b in zip(values, times["plain flows"])]
            own = ""
            if name in same_model:
                own = f"{statistics.median([a / b for a, b in zip(values, times[same_model[name]])]):.2f}"
            print(
                f"{steps:5d} | {name:12s} | {statistics.median(values):8.3f} | "
                f"{statistics.median(ratios):13.2f} | {own}",
                flush=True,
            )


def _main_job(tree: Path, epochs: Optional[int], out: Path, name: str) -> tuple[float, str]:
    """Seconds of one main-job run in a fresh process (`epochs` None: as `tree` configures it), and what it
    reported (steps, test log-likelihood)."""
    arguments = [] if epochs is None else ["--train.max_epochs", str(epochs)]
    run = run_main_job(tree, [*arguments, "--output.dir", str(out), "--output.name", name])
    steps = "?" if run.steps is None else run.steps
    log_likelihood = "?" if run.test_log_likelihood is None else f"{run.test_log_likelihood:.4f}"
    return run.seconds, f"{steps} steps, test LL {log_likelihood}"


def bench_main_job(epochs: Optional[int], rounds: int, baselines: list[Path]) -> None:
    trees = {"this tree": REPO} | {f"baseline {tree.name}": tree for tree in baselines}
    times: dict[str, list[float]] = {name: [] for name in trees}
    reports: dict[str, list[str]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="flows-bench-") as directory:
        names = list(trees)
        for round_ in range(rounds):
            # Each round starts with another tree (a Latin square over the first rounds): the first run of a
            # session is slower (cold caches), and a fixed order would charge that to one tree every time.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                tree = trees[name]
                label = name.replace(" ", "-")
                seconds, report = _main_job(tree, epochs, Path(directory), f"{label}-{round_}")
                times[name].append(seconds)
                reports[name].append(report)
    override = "" if epochs is None else f" --train.max_epochs {epochs}"
    print(
        f"\n## main job: flows fit --config configs/demo.yaml{override} (each tree's own configs/demo.yaml; "
        f"fresh process, progress bar on as in the README, {rounds} interleaved rounds, each starting with another tree)"
    )
    width = max(len(name) for name in times)
    print(f"{'tree':{width}s} | median s | time / this tree's (median of per-round ratios) | runs")
    for name, values in times.items():
        ratios = [a / b for a, b in zip(values, times["this tree"])]
        runs = "; ".join(f"{t:.1f} s: {r}" for t, r in zip(values, reports[name]))
        print(
            f"{name:{width}s} | {statistics.median(values):8.2f} | {statistics.median(ratios):.2f} | {runs}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 200, 2000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--main-epochs",
        type=int,
        default=None,
        help="epochs of the main job (default: as each tree's configs/demo.yaml says; 0: skip it)",
    )
    parser.add_argument("--main-rounds", type=int, default=2)
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout to time the main job of (repeat for several)",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores available, "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}"
    )
    bench_fits(arguments.steps, arguments.rounds, arguments.rows, arguments.features, arguments.batch)
    if arguments.main_epochs is None or arguments.main_epochs > 0:
        bench_main_job(arguments.main_epochs, arguments.main_rounds, arguments.baseline)


if __name__ == "__main__":
    main()
