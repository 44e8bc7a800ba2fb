"""Reverse-KL training of `flows` against normflows on the built-in targets, at equal steps and batch.

    python benchmarks/sampling_peers.py --targets double_well gmm40 funnel --steps 500 --batch 256

A script that prints figures, never a timed test. Each library builds its canonical neural spline flow with
the same shape: 4 rational-quadratic coupling layers (8 bins, bound 3, linear tails), residual-network
conditioners (2 blocks of 64 units), an LU-parameterised linear layer between them, a standard normal base.
All train in one plain loop (Adam, lr `--lr`, gradient norm clipped at 5, `--batch` samples a step):
`flows` with the reparameterised and with the path gradient (`reverse_kl_loss`), normflows with
`NormalizingFlow.reverse_kld` (reparameterised). Steps run in interleaved rounds (one step of each model per
round), so a load change on the shared machine hits all alike; the time per step is the median, and the
paired ratio the median over rounds. Then each model draws `--eval` samples: normalised ESS, log Z ± SE and
its error against the exact log Z, Pareto k-hat, by the same estimators (`flows.diagnostics`). A target
with `--scale s` is sampled in units `y = x / s` by every model alike (the same log Z). The published
log-Z errors of flow annealed importance sampling (FAB, fab-jax README, far longer training) print beside.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.diagnostics import weight_summary  # noqa: E402
from flows.presets import NSF  # noqa: E402
from flows.targets import make_target  # noqa: E402
from flows.training.sampling_objectives import reverse_kl_loss  # noqa: E402

#: published mean absolute log-Z errors of FAB (fab-jax README; /work/shared/REFERENCE.md)
FAB_LOG_Z_ERROR = {"gmm40": "0.0027 ± 0.0005", "funnel": "0.0022 ± 0.0005", "many_well": "0.032 ± 0.004"}
SCALES = {"gmm40": 20.0}
HAVE_NORMFLOWS = importlib.util.find_spec("normflows") is not None


class Scaled:
    """`target` in units `y = x / scale`: `log p~(scale y) + D log scale` (the same log Z)."""

    def __init__(self, target, scale: float) -> None:
        self.target, self.scale, self.features = target, scale, target.features
        self.log_normalizer = getattr(target, "log_normalizer", None)

    def log_prob(self, y: Tensor) -> Tensor:
        return self.target.log_prob(self.scale * y) + self.features * math.log(self.scale)


def normflows_nsf(features: int, target):
    import normflows as nf

    class Target(nf.distributions.Target):
        def log_prob(self, z: Tensor) -> Tensor:
            return target.log_prob(z)

    layers = []
    for i in range(4):
        layers.append(nf.flows.CoupledRationalQuadraticSpline(features, 2, 64, reverse_mask=i % 2 == 1))
        layers.append(nf.flows.LULinearPermute(features))
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), layers, Target())


def step_function(model, target, kind: str, batch: int, lr: float) -> Callable[[], float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if kind == "normflows":
            loss = model.reverse_kld(batch)
        else:
            loss = reverse_kl_loss(model, target, batch, kind).loss
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        return float(loss)

    return step


@torch.no_grad()
def log_weights(model, target, kind: str, n: int, chunk: int = 10_000) -> Tensor:
    parts = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x, log_q = model.sample(m) if kind == "normflows" else model.sample_and_log_prob((m,))
        log_p = target.log_prob(x)
        parts.append(torch.where(torch.isfinite(log_p) & torch.isfinite(log_q), log_p - log_q, -math.inf))
    return torch.cat(parts).double()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", nargs="+", default=["double_well", "gmm40", "funnel"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.targets:
        base = make_target(name)
        target = Scaled(base, SCALES[name]) if name in SCALES else base
        d = target.features
        torch.manual_seed(args.seed)
        models = {"flows reparam": NSF(d, transforms=4, hidden_features=(64, 64)), "flows path": None}
        torch.manual_seed(args.seed)
        models["flows path"] = NSF(d, transforms=4, hidden_features=(64, 64))
        if HAVE_NORMFLOWS:
            torch.manual_seed(args.seed)
            models["normflows"] = normflows_nsf(d, target)
        kinds = {"flows reparam": "reparam", "flows path": "path", "normflows": "normflows"}
        reference = "normflows" if HAVE_NORMFLOWS else "flows reparam"
        steps = {k: step_function(m, target, kinds[k], args.batch, args.lr) for k, m in models.items()}
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.steps):
            for key, step in steps.items():
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
        truth = getattr(target, "log_normalizer", None)
        for key, model in models.items():
            torch.manual_seed(args.seed + 1)
            summary = weight_summary(log_weights(model.eval(), target, kinds[key], args.eval))
            error = summary["log_z"] - truth if truth is not None else math.nan
            ratio = statistics.median(a / b for a, b in zip(times[key][5:], times[reference][5:]))
            rows.append(
                (
                    name,
                    key,
                    sum(p.numel() for p in model.parameters()),
                    summary,
                    error,
                    1e3 * statistics.median(times[key][5:]),
                    ratio,
                )
            )
            print(
                f"{name:12s} {key:14s} params {rows[-1][2]:7d}  ESS {summary['ess']:.4f}  log Z "
                f"{summary['log_z']:+.4f} ± {summary['log_z_se']:.4f}  error {error:+.4f}  k {summary['pareto_k']:.2f}"
                f"  step {rows[-1][5]:.1f} ms  (x{ratio:.2f} of {reference})",
                flush=True,
            )
    print()
    print(f"{args.steps} steps x batch {args.batch}, lr {args.lr}, {args.eval} evaluation samples, 1 thread")
    if not HAVE_NORMFLOWS:
        print(
            "normflows is not installed (pip install normflows, or the bench extra): times are against flows reparam"
        )
    print(
        "| target | model | params | ESS | log Z ± SE | error | Pareto k | ms/step | time / reference | FAB log-Z error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, key, params, s, error, ms, ratio in rows:
        fab = FAB_LOG_Z_ERROR.get(name, "-") if key == "flows reparam" else ""
        print(
            f"| {name} | {key} | {params} | {s['ess']:.4f} | {s['log_z']:+.3f} ± {s['log_z_se']:.3f} | "
            f"{error:+.3f} | {s['pareto_k']:.2f} | {ms:.0f} | {ratio:.2f} | {fab} |"
        )


if __name__ == "__main__":
    main()
