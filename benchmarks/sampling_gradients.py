"""Reverse-KL gradient estimators: step cost and gradient variance at the same parameters.

    python benchmarks/sampling_gradients.py --target funnel --warmup-steps 300
    python benchmarks/sampling_gradients.py --target funnel --model realnvp --hidden 256 256

Trains a flow for `--warmup-steps` with the path gradient, then at those fixed parameters draws `--repeats`
independent gradients of each estimator (batch `--batch`), in interleaved rounds (one of each per round, so
the shared machine's load changes hit all alike): `reparam` (the plain reverse-KL step), `path` (the path
gradient with `∇ log q` carried through the sampling pass, `flows.path_gradient`) and `path_two_pass` (the
baseline: `log q` from a second density pass with detached parameters). Prints the total gradient variance
(sum over parameters; and a robust one from the interquartile ranges, as the gradients are heavy-tailed:
`path` and `path_two_pass` are the same estimator, so their two figures show the noise), the squared norm of the mean gradient, the median step time (sampling + loss +
backward) and the per-round paired time ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.flow import Flow  # noqa: E402
from flows.presets import NSF, RealNVP  # noqa: E402
from flows.targets import make_target  # noqa: E402
from flows.targets.base import checked_log_prob  # noqa: E402
from flows.training.sampling_objectives import reverse_kl_loss  # noqa: E402

ESTIMATORS = ("reparam", "path", "path_two_pass")


def two_pass_loss(flow: Flow, target, n: int) -> torch.Tensor:
    """The path gradient the plain way: sample, then `log q` in a second pass with detached parameters."""
    x = flow.rsample((n,))
    detached = {name: p.detach() for name, p in flow.named_parameters()}
    log_q = torch.func.functional_call(flow, detached, (x,))
    return (log_q - checked_log_prob(target, x, differentiable=True)).mean()


def gradient(flow: Flow, target, batch: int, kind: str) -> tuple[torch.Tensor, float]:
    flow.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if kind == "path_two_pass":
        loss = two_pass_loss(flow, target, batch)
    else:
        loss = reverse_kl_loss(flow, target, batch, kind).loss
    loss.backward()
    seconds = time.perf_counter() - start
    return torch.cat([p.grad.flatten() for p in flow.parameters() if p.grad is not None]), seconds


def build(model: str, features: int, hidden: list[int], scale: float) -> Flow:
    if model == "nsf":
        flow: Flow = NSF(features, transforms=4, hidden_features=tuple(hidden))
    else:
        flow = RealNVP(features, transforms=4, hidden_features=tuple(hidden))
    if scale != 1.0:
        from flows.bijectors.elementwise import Standardize
        from flows.core import Chain

        d = features
        flow = Flow(Chain(Standardize(torch.zeros(d), torch.full((d,), scale)), flow.transform), flow.base)
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="funnel")
    parser.add_argument("--model", choices=("nsf", "realnvp"), default="nsf")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = make_target(args.target)
    flow = build(args.model, target.features, args.hidden, args.scale)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(args.warmup_steps):
        optimizer.zero_grad()
        reverse_kl_loss(flow, target, args.batch, "path").loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
    grads: dict[str, list[torch.Tensor]] = {k: [] for k in ESTIMATORS}
    times: dict[str, list[float]] = {k: [] for k in ESTIMATORS}
    for _ in range(args.repeats):
        for kind in ESTIMATORS:
            g, seconds = gradient(flow, target, args.batch, kind)
            grads[kind].append(g)
            times[kind].append(seconds)
    results: dict[str, object] = {}
    for kind in ESTIMATORS:
        stacked = torch.stack(grads[kind])
        quartiles = torch.quantile(stacked, torch.tensor([0.25, 0.75]), dim=0)
        results[kind] = {
            "total_variance": float(stacked.var(0).sum()),
            # sum over parameters of (IQR / 1.349)²: a variance that a few heavy-tailed draws do not dominate
            "robust_total_variance": float(((quartiles[1] - quartiles[0]) / 1.349).pow(2).sum()),
            "mean_gradient_sq_norm": float(stacked.mean(0).pow(2).sum()),
            "median_step_ms": 1e3 * statistics.median(times[kind][2:]),
        }

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a][2:], times[b][2:]))

    for measure in ("total_variance", "robust_total_variance"):
        results[f"{measure}_ratio_reparam_over_path"] = (
            results["reparam"][measure] / results["path"][measure]  # type: ignore[index]
        )
    results["time_ratio_path_over_reparam"] = paired("path", "reparam")
    results["time_ratio_path_over_two_pass"] = paired("path", "path_two_pass")
    results["time_ratio_two_pass_over_reparam"] = paired("path_two_pass", "reparam")
    header = {
        "target": args.target,
        "model": args.model,
        "hidden": args.hidden,
        "warmup_steps": args.warmup_steps,
        "batch": args.batch,
        "repeats": args.repeats,
        "parameters": sum(p.numel() for p in flow.parameters()),
    }
    print(json.dumps({**header, **results}, indent=2))


if __name__ == "__main__":
    main()
