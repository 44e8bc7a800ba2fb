"""The main job's config against alternatives: test log-likelihood per seed, paired differences, and time.

Each case is `flows fit --config configs/demo.yaml --seed S` plus that case's overrides, in a fresh process
with one torch thread, `--jobs` processes at a time (the times are then those of a loaded machine: compare
them within one run). A model change of the main job is kept only if its test log-likelihood matches the
old one's seed by seed (the same data and test rows per seed, so the paired difference is what counts).
Usage::

    python benchmarks/main_job_configs.py                           # the shipped config against the 4 x 8-bin one
    python benchmarks/main_job_configs.py --seeds 0 1 2 --case "rb1=--model.residual_blocks 1"
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _main_job import run_main_job

REPO = Path(__file__).resolve().parents[1]

#: the main job's model before it was made smaller (#16): 4 coupling layers, 8 bins, batch 256
PREVIOUS = (
    "--model.transforms 4 --model.bins 8 --train.batch_size 256 --train.lr 2e-3 --train.warmup_steps 200"
)


def _run(name: str, overrides: list[str], seed: int, out: Path) -> tuple[str, int, float, float, int]:
    """One main-job run of case `name` in a fresh process: (name, seed, test log-likelihood, seconds, steps)."""
    arguments = ["--seed", str(seed), "--output.dir", str(out), "--output.name", f"{name}-{seed}"]
    arguments += ["--output.plots", "false", "--output.samples", "0", "--output.progress_bar", "false"]
    run = run_main_job(REPO, [*arguments, *overrides], env={"OMP_NUM_THREADS": "1"})
    if run.test_log_likelihood is None or run.steps is None:
        raise RuntimeError(
            f"case {name}, seed {seed}: no test log-likelihood or steps in\n{run.stdout[-2000:]}"
        )
    return name, seed, run.test_log_likelihood, run.seconds, run.steps


def main() -> None:
    """Run every case for every seed and print one line per case."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        help='NAME="overrides" (repeat); the first case, "shipped", is configs/demo.yaml as it stands',
    )
    arguments = parser.parse_args()
    cases = {"shipped": [], "previous": PREVIOUS.split()}
    for case in arguments.case:
        name, equals, overrides = case.partition("=")
        if not equals or not name or name in cases:
            parser.error(
                f'--case takes NAME="overrides" with a new NAME (not shipped or previous), got {case!r}'
            )
        cases[name] = overrides.split()
    with tempfile.TemporaryDirectory(prefix="flows-main-job-") as directory:
        jobs = [(name, overrides, seed) for seed in arguments.seeds for name, overrides in cases.items()]
        with ThreadPoolExecutor(arguments.jobs) as pool:
            results = list(pool.map(lambda job: _run(*job, Path(directory)), jobs))
    by_case = {name: {seed: (ll, s, n) for case, seed, ll, s, n in results if case == name} for name in cases}
    print(f"seeds {arguments.seeds}, {arguments.jobs} processes at a time, one torch thread each")
    print(
        "case | test log-likelihood per seed | mean | paired difference to shipped (mean) | steps | median s"
    )
    for name, runs in by_case.items():
        lls = [runs[seed][0] for seed in arguments.seeds]
        diffs = [runs[seed][0] - by_case["shipped"][seed][0] for seed in arguments.seeds]
        print(
            f"{name} | {' '.join(f'{ll:.4f}' for ll in lls)} | {statistics.mean(lls):.4f} | "
            f"{statistics.mean(diffs):+.4f} | {runs[arguments.seeds[0]][2]} | "
            f"{statistics.median(runs[seed][1] for seed in arguments.seeds):.1f}"
        )


if __name__ == "__main__":
    main()
