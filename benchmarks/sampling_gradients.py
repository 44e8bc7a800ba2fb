"""Path vs reparameterised reverse-KL gradients: step cost and gradient variance at the same parameters.

    python benchmarks/sampling_gradients.py --target funnel --warmup-steps 300

Trains a small NSF for `--warmup-steps` with the path gradient, then at those fixed parameters draws
`--repeats` independent gradients of each estimator (batch `--batch`) and reports the total variance
(sum over parameters), the squared norm of the mean gradient, and the mean wall time of one training step
(sampling + loss + backward).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from flows.presets import NSF
from flows.targets import make_target
from flows.training.sampling_objectives import reverse_kl_loss


def gradient(flow: torch.nn.Module, target, batch: int, kind: str) -> tuple[torch.Tensor, float]:
    flow.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = reverse_kl_loss(flow, target, batch, kind).loss
    loss.backward()
    seconds = time.perf_counter() - start
    return torch.cat([p.grad.flatten() for p in flow.parameters() if p.grad is not None]), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="funnel")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = make_target(args.target)
    flow = NSF(target.features, transforms=4, hidden_features=(64, 64))
    if args.scale != 1.0:
        from flows.bijectors.elementwise import Standardize
        from flows.core import Chain
        from flows.flow import Flow

        d = target.features
        flow = Flow(
            Chain(Standardize(torch.zeros(d), torch.full((d,), args.scale)), flow.transform), flow.base
        )
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    for _ in range(args.warmup_steps):
        optimizer.zero_grad()
        reverse_kl_loss(flow, target, args.batch, "path").loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
    results = {}
    for kind in ("reparam", "path"):
        grads, times = [], []
        for _ in range(args.repeats):
            g, seconds = gradient(flow, target, args.batch, kind)
            grads.append(g)
            times.append(seconds)
        stacked = torch.stack(grads)
        results[kind] = {
            "total_variance": float(stacked.var(0).sum()),
            "mean_gradient_sq_norm": float(stacked.mean(0).pow(2).sum()),
            "step_seconds": sum(times[2:]) / len(times[2:]),
        }
    results["variance_ratio_reparam_over_path"] = (
        results["reparam"]["total_variance"] / results["path"]["total_variance"]
    )
    results["step_cost_ratio_path_over_reparam"] = (
        results["path"]["step_seconds"] / results["reparam"]["step_seconds"]
    )
    print(
        json.dumps(
            {"target": args.target, "warmup_steps": args.warmup_steps, "batch": args.batch, **results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
