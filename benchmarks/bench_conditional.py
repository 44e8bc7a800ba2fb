"""Conditional KL gap of `flows`' conditional NSF against zuko's conditional NSF on an exact target.

The target is `flows.datasets.ConditionalMixture` (y in R^2 given c ~ U(-2, 2), the target of
configs/synthetic/conditional_mixture_nsf.yaml). Both libraries build an autoregressive rational-quadratic
NSF of the same size: `transforms` MADE-conditioned spline layers with `hidden` widths, `bins` bins on
[-bound, bound] with identity tails, reverse orders between layers, context fed to every conditioner.
Both train in the same plain loop (one torch thread): the same standardised splits, the same batches in the
same order, AdamW with the same lr and cosine decay, the same gradient clipping, the same epochs.

Printed per library: test NLL (nats, data units), `gap = test NLL - E[H(y | c)]` (the conditional entropy
by Monte Carlo; +- the combined standard error), the paired KL estimate `mean(log p - log q)` over the test
rows (+- its standard error), parameters and wall time of training. zuko comes from the `bench` extra and
is imported here only, never by the library. Usage::

    python benchmarks/bench_conditional.py               # 30 epochs, 20k training rows
    python benchmarks/bench_conditional.py --epochs 2 --train 2000   # smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.datasets import ConditionalMixture  # noqa: E402


def build_flows(args: argparse.Namespace) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor]]:
    from flows import presets

    flow = presets.NSF(
        2,
        context_features=1,
        transforms=args.transforms,
        hidden_features=(args.hidden,) * args.depth,
        bins=args.bins,
        bound=args.bound,
        tails="identity",
        autoregressive=True,
        residual_blocks=0,
        lu_linear=False,
        randperm=False,
    )
    return flow, lambda y, c: flow.log_prob(y, c)


def build_zuko(args: argparse.Namespace) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor]]:
    import zuko

    flow = zuko.flows.NSF(
        2, context=1, bins=args.bins, transforms=args.transforms, hidden_features=(args.hidden,) * args.depth
    )
    return flow, lambda y, c: flow(c).log_prob(y)


def train(
    model: nn.Module,
    log_prob: Callable[[Tensor, Tensor], Tensor],
    y: Tensor,
    c: Tensor,
    args: argparse.Namespace,
) -> float:
    """The shared training loop; returns its wall time in seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    steps_per_epoch = y.shape[0] // args.batch
    total = steps_per_epoch * args.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))
    )
    model.train()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(args.seed + epoch))
        for step in range(steps_per_epoch):
            rows = order[step * args.batch : (step + 1) * args.batch]
            loss = -log_prob(y[rows], c[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--transforms", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--bound", type=float, default=5.0, help="flows' spline bound (zuko's is fixed at 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--libraries", default="flows,zuko")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    target = ConditionalMixture(features=2, context_features=1, components=3, seed=0)
    train_rows, test_rows = (
        target.sample(args.train, args.seed * 3),
        target.sample(args.test, args.seed * 3 + 2),
    )
    entropy, entropy_se = target.entropy()
    mean, std = train_rows.mean(axis=0), train_rows.std(axis=0)
    log_std_y = float(np.log(std[:2]).sum())  # the Jacobian of the standardisation of y

    def tensors(rows: np.ndarray) -> tuple[Tensor, Tensor]:
        z = torch.as_tensor((rows - mean) / std, dtype=torch.float32)
        return z[:, :2].contiguous(), z[:, 2:].contiguous()

    y_train, c_train = tensors(train_rows)
    y_test, c_test = tensors(test_rows)
    true_log_prob = target.log_prob(test_rows)
    print(
        f"target: ConditionalMixture(2 | 1), E[H(y|c)] = {entropy:.4f} +- {entropy_se:.4f} nats; "
        f"{args.train} training rows, {args.test} test rows; {args.epochs} epochs, batch {args.batch}, "
        f"lr {args.lr}; NSF: {args.transforms} autoregressive spline transforms, hidden "
        f"{[args.hidden] * args.depth}, {args.bins} bins on [-{args.bound}, {args.bound}]; 1 torch thread"
    )
    print(
        f"{'library':8} | {'test NLL':>18} | {'gap (NLL - H)':>18} | {'paired KL':>18} | {'params':>7} | wall s"
    )
    builders = {"flows": build_flows, "zuko": build_zuko}
    for name in args.libraries.split(","):
        torch.manual_seed(args.seed)
        try:
            model, log_prob = builders[name](args)
        except ImportError as error:
            print(f"{name:8} | skipped: {error}")
            continue
        seconds = train(model, log_prob, y_train, c_train, args)
        model.eval()
        with torch.no_grad():
            learned = (log_prob(y_test, c_test).double() - log_std_y).numpy()
        nll, nll_se = -learned.mean(), learned.std(ddof=1) / math.sqrt(learned.size)
        gap_se = math.sqrt(nll_se**2 + entropy_se**2)
        paired = true_log_prob - learned
        kl, kl_se = paired.mean(), paired.std(ddof=1) / math.sqrt(paired.size)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name:8} | {nll:9.4f} +- {nll_se:.4f} | {nll - entropy:9.4f} +- {gap_se:.4f} | "
            f"{kl:9.4f} +- {kl_se:.4f} | {params:7d} | {seconds:6.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
