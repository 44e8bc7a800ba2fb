"""Sampling speed of TarFlow: the key-value-cached sequential inverse and Jacobi (fixed-point) decoding
against the naive sequential loop that reruns the causal transformer over the whole sequence at every step.

Two sizes: a digits-sized model (1 x 8 x 8, patch 2: 16 tokens of 4 features) and a larger one
(3 x 32 x 32, patch 4: 64 tokens of 48 features). The digits model is first trained for `--train-steps`
steps on scikit-learn's digits (dequantised, scaled to [-1/2, 1/2]) so that the fixed point meets a
realistic map; the larger model has its zero-initialised heads replaced by small random weights
(`--head-std`), an untrained stand-in. All three methods invert the same latents `z`; the script checks
that they give the same samples (max abs difference printed; the fixed point stops at `inverse_tol`).

Timing: `--rounds` interleaved rounds (each round times every method once, in turn), medians; samples/s is
the batch over the median time; ratios are against the naive loop timed in the same run. One torch thread
by default (`--threads`). Usage::

    python benchmarks/bench_tarflow_sampling.py                 # both sizes
    python benchmarks/bench_tarflow_sampling.py --quick         # smoke run: tiny models, 2 rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.bijectors.autoregressive import Autoregressive  # noqa: E402
from flows.presets_transformer import TarFlow  # noqa: E402

#: name -> (inverse_method, use_cache)
METHODS = {
    "naive loop": ("sequential", False),
    "KV cache": ("sequential", True),
    "Jacobi": ("fixed_point", True),
}


@dataclass
class Size:
    name: str
    shape: tuple[int, int, int]
    patch_size: int
    blocks: int
    layers_per_block: int
    channels: int
    heads: int
    batch: int


def sizes(quick: bool, device: str) -> list[Size]:
    if quick:
        return [
            Size("digits-tiny", (1, 8, 8), 2, 2, 1, 16, 2, 8),
            Size("32x32-tiny", (3, 16, 16), 4, 2, 1, 16, 2, 4),
        ]
    big_batch = 256 if device == "cuda" else 16
    return [
        Size("digits 1x8x8 p2 (16 tokens)", (1, 8, 8), 2, 4, 2, 64, 4, 1024 if device == "cuda" else 64),
        Size("3x32x32 p4 (64 tokens)", (3, 32, 32), 4, 4, 2, 128, 4, big_batch),
    ]


def build(size: Size, device: str) -> TarFlow:
    torch.manual_seed(0)
    flow = TarFlow(
        size.shape,
        patch_size=size.patch_size,
        blocks=size.blocks,
        layers_per_block=size.layers_per_block,
        channels=size.channels,
        heads=size.heads,
    )
    return flow.to(device)


def train_on_digits(flow: TarFlow, steps: int, device: str) -> float:
    """A few Adam steps on dequantised digits in [-1/2, 1/2]; returns the final training bits/dim."""
    from flows.datasets.images import load_digits_images

    images = torch.as_tensor(load_digits_images().train, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    generator = torch.Generator(device="cpu").manual_seed(0)
    bits = float("nan")
    for _ in range(steps):
        index = torch.randint(images.shape[0], (64,), generator=generator).to(device)
        x = (images[index] + torch.rand_like(images[index])) / 17 - 0.5
        loss = -flow.log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # bits/dim of the discrete data: the density of x in [-1/2, 1/2] scaled by 17 levels per unit
        bits = (loss.item() / 64 + torch.log(torch.tensor(17.0)).item()) / torch.log(torch.tensor(2.0)).item()
    return bits


def randomize_heads(flow: TarFlow, std: float) -> None:
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, Autoregressive):
                module.conditioner.head.weight.normal_(0.0, std)


def set_method(flow: TarFlow, method: str) -> None:
    inverse_method, use_cache = METHODS[method]
    for module in flow.modules():
        if isinstance(module, Autoregressive):
            module.inverse_method, module.use_cache = inverse_method, use_cache


def jacobi_passes(flow: TarFlow, z: torch.Tensor) -> list[int]:
    """Transformer passes of each block in the Jacobi inverse, in sampling order (at most the token count)."""
    set_method(flow, "Jacobi")
    layers = [m for m in flow.modules() if isinstance(m, Autoregressive)]
    calls = [0] * len(layers)
    hooks = [
        layer.conditioner.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        flow.transform.inverse(z)
    for hook in hooks:
        hook.remove()
    return calls[::-1]


def run(size: Size, args: argparse.Namespace) -> None:
    flow = build(size, args.device)
    note = ""
    if size.shape == (1, 8, 8) and args.train_steps > 0:
        bits = train_on_digits(flow, args.train_steps, args.device)
        note = f"trained {args.train_steps} steps (train bits/dim {bits:.2f})"
    else:
        randomize_heads(flow, args.head_std)
        note = f"untrained, head weights ~ N(0, {args.head_std}^2)"
    flow.eval()
    tokens = flow.transform[0].token_shape[0]
    parameters = sum(p.numel() for p in flow.parameters())
    generator = torch.Generator(device="cpu").manual_seed(1)
    z = torch.randn((size.batch,) + size.shape, generator=generator).to(args.device)
    if args.jacobi_tol is not None:
        for module in flow.modules():
            if isinstance(module, Autoregressive):
                module.inverse_tol = args.jacobi_tol
    samples = {}
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    with torch.no_grad():
        for name in METHODS:  # warm-up, and the samples compared below
            set_method(flow, name)
            samples[name] = flow.transform.inverse(z)[0]
        for _ in range(args.rounds):
            for name in METHODS:
                set_method(flow, name)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                flow.transform.inverse(z)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    passes = jacobi_passes(flow, z)
    print(
        f"## {size.name}: {size.blocks} blocks x {size.layers_per_block} layers, {size.channels} channels, "
        f"{parameters:,} parameters, batch {size.batch}, {note}"
    )
    tolerance = "default" if args.jacobi_tol is None else args.jacobi_tol
    print(
        f"Jacobi (inverse_tol {tolerance}): transformer passes per block in sampling order {passes} (of {tokens})"
    )
    baseline = statistics.median(times["naive loop"])
    print("method     | samples/s | median ms | vs naive loop | max |x - x_naive|")
    for name in METHODS:
        median = statistics.median(times[name])
        error = (samples[name] - samples["naive loop"]).abs().max().item()
        print(
            f"{name:10} | {size.batch / median:9.1f} | {1000 * median:9.1f} | {baseline / median:12.2f}x | {error:.1e}"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and 2 rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the digits model")
    parser.add_argument("--head-std", type=float, default=0.02)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jacobi-tol", type=float, default=None, help="inverse_tol (default: the library's)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.train_steps = 2, 5
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s), {args.rounds} rounds"
    )
    for size in sizes(args.quick, args.device):
        run(size, args)


if __name__ == "__main__":
    main()
