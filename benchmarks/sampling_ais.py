"""Importance sampling against annealed importance sampling (AIS) with a trained flow: log Z ± SE, ESS,
Pareto k̂ and CPU seconds of each on the same flow.

    flows fit --config configs/targets/funnel.yaml --output.name funnel
    python benchmarks/sampling_ais.py --ckpt runs/funnel/checkpoints/best.ckpt --target funnel -n 20000

AIS (`flows.ais`) starts `n` chains at the flow's base and anneals to the target in `--steps` equal steps of
the inverse temperature with one HMC move each (`--step-size`, `--leapfrog`), in the flow's latent space.
The CPU-time ratio AIS ÷ IS is printed beside them (one thread, `time.process_time`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ais import annealed_importance_log_weights  # noqa: E402
from flows.diagnostics import effective_sample_size, log_normalizer, pareto_k  # noqa: E402
from flows.targets import make_target  # noqa: E402
from flows.training.checkpoints import load_model  # noqa: E402
from flows.training.sampling_objectives import validation_log_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a target run's checkpoint")
    parser.add_argument("--target", required=True, help="the built-in target it was trained on")
    parser.add_argument("--features", type=int, default=None)
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-size", type=float, default=0.3)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--log-z", type=float, default=None, help="exact log Z (default: the target's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flow = load_model(args.ckpt).flow.eval()
    target = make_target(args.target, args.features)
    exact = args.log_z if args.log_z is not None else getattr(target, "log_normalizer", None)
    runs = {
        "IS": lambda: validation_log_weights(flow, target, args.n, args.seed).double(),
        f"AIS {args.steps} x HMC({args.step_size}, {args.leapfrog})": lambda: annealed_importance_log_weights(
            flow, target.log_prob, args.n, args.steps, "hmc", args.step_size, args.leapfrog
        ),
    }
    seconds = {}
    for name, run in runs.items():
        torch.manual_seed(args.seed)
        start = time.process_time()
        log_w = run()
        seconds[name] = time.process_time() - start
        estimate, se = log_normalizer(log_w)
        error = (
            "" if exact is None else f" error {estimate - exact:+.4f} ({abs(estimate - exact) / se:.1f} SE)"
        )
        print(
            f"{name}: n {args.n} log Z {estimate:.4f} ± {se:.4f}{error} ESS {effective_sample_size(log_w):.3f} "
            f"k {pareto_k(log_w):.2f} CPU {seconds[name]:.1f} s"
        )
    names = list(seconds)
    print(f"CPU time AIS ÷ IS: {seconds[names[1]] / max(seconds[names[0]], 1e-9):.0f}")


if __name__ == "__main__":
    main()
