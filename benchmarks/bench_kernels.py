"""Speed of the element-wise ops: eager reference vs `torch.compile(reference)` vs the Triton kernels.

A script that prints figures, never a timed test. For the rational-quadratic spline and the affine
map, forward and forward+backward, it reports per size the median time over repetitions (CUDA events
on a GPU) and the achieved bandwidth: the bytes an ideal fused kernel must move (inputs read once,
outputs written once; the same count for every implementation) divided by the time. The bandwidth is
set against the device's peak from a table and against a measured `torch.clone` copy, the practical
peak. It ends with the training-step throughput of an NSF (`flows.presets.NSF`) under each backend.

Usage::

    python benchmarks/bench_kernels.py                      # GPU: 1M..100M elements, 8 and 16 bins
    python benchmarks/bench_kernels.py --dtype bfloat16 --elements 1e6 1e7
    python benchmarks/bench_kernels.py --smoke              # CPU, tiny sizes, Triton's interpreter
    python benchmarks/bench_kernels.py --compile-only 90    # no GPU: compile for sm_90, print registers

`--smoke` only checks that every path runs (on the CPU under Triton's interpreter, with
`torch.compile(backend="eager")`); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Peak DRAM bandwidth in bytes/s by device name (vendor datasheets); the first matching key wins.
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # SXM5, HBM3
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,
    "L40S": 8.64e11,
    "L4": 3.0e11,
    "A10": 6.0e11,
    "RTX 4090": 1.008e12,
}

IMPLEMENTATIONS = ("reference", "compiled", "triton")


def peak_bandwidth(device: torch.device) -> Optional[float]:
    """Datasheet peak bandwidth of a CUDA device, or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value
    return None


def median_seconds(function: Callable[[], Any], repetitions: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `function()` over `repetitions` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repetitions):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repetitions):
            begin = time.perf_counter()
            function()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, numel: int, repetitions: int) -> float:
    """Bytes/s of `torch.clone` on a float32 buffer of `numel` elements (read + write)."""
    buffer = torch.empty(numel, dtype=torch.float32, device=device)
    seconds = median_seconds(buffer.clone, repetitions, 2, device)
    return 2 * buffer.numel() * buffer.element_size() / seconds


def spline_bytes(elements: int, rows: int, bins: int, element_size: int, backward: bool) -> int:
    """Ideal traffic: x and 3K+1 parameters per element in, y and one log-det per row out."""
    parameters = 3 * bins + 1
    forward = element_size * (elements * (1 + parameters) + elements + rows)
    if not backward:
        return forward
    # Backward reads x, the parameters, grad y and grad ladj; writes grad x and the parameter grads.
    return forward + element_size * (elements * (2 + parameters) + rows + elements * (1 + parameters))


def affine_bytes(elements: int, rows: int, element_size: int, backward: bool) -> int:
    forward = element_size * (3 * elements + elements + rows)
    if not backward:
        return forward
    return forward + element_size * (4 * elements + rows + 3 * elements)


def _implementations(op: str, smoke: bool) -> dict[str, Callable[..., tuple[Tensor, Tensor]]]:
    from flows.ops import triton_ops
    from flows.ops.affine_reference import affine_reference
    from flows.ops.spline_reference import rational_quadratic_spline_reference

    reference = rational_quadratic_spline_reference if op == "spline" else affine_reference
    kernel = triton_ops.rational_quadratic_spline if op == "spline" else triton_ops.affine
    compiled = torch.compile(reference, backend="eager" if smoke else "inductor", dynamic=False)
    return {"reference": reference, "compiled": compiled, "triton": kernel}


def _inputs(
    op: str, elements: int, features: int, bins: int, dtype: torch.dtype, device: torch.device
) -> list[Tensor]:
    rows = max(1, elements // features)
    shape = (rows, features)
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int) -> Tensor:
        return torch.randn(size, generator=generator, device=device, dtype=dtype)

    if op == "spline":
        return [randn(*shape) * 2.0, randn(*shape, bins), randn(*shape, bins), randn(*shape, bins + 1)]
    return [randn(*shape), randn(*shape), randn(*shape)]


def bench_op(
    op: str,
    elements: int,
    features: int,
    bins: int,
    dtype: torch.dtype,
    device: torch.device,
    repetitions: int,
    smoke: bool,
    peak: Optional[float],
    copy: float,
) -> list[str]:
    """Table lines for one op at one size: every implementation, forward and forward+backward."""
    lines = []
    implementations = _implementations(op, smoke)
    for backward in (False, True):
        for name, function in implementations.items():
            label = f"{op:6s} {'fwd+bwd' if backward else 'fwd':7s} {elements:>11,d} {bins if op == 'spline' else '-':>4} {name:9s}"
            try:
                inputs = _inputs(op, elements, features, bins, dtype, device)
                rows = inputs[0].shape[0]
                if backward:
                    for tensor in inputs:
                        tensor.requires_grad_()
                    grad_y = torch.randn_like(inputs[0])
                    grad_ladj = torch.randn(rows, device=device, dtype=dtype)

                    def step(
                        function: Callable = function,
                        inputs: list[Tensor] = inputs,
                        grads: list[Tensor] = [grad_y, grad_ladj],  # noqa: B006 - read only
                    ) -> None:
                        for tensor in inputs:
                            tensor.grad = None
                        y, ladj = function(*inputs)
                        torch.autograd.backward([y, ladj], grads)

                else:

                    def step(function: Callable = function, inputs: list[Tensor] = inputs) -> None:
                        with torch.no_grad():
                            function(*inputs)

                seconds = median_seconds(step, repetitions, 1 if smoke else 3, device)
            except torch.cuda.OutOfMemoryError:
                lines.append(f"{label}  out of memory")
                torch.cuda.empty_cache()
                continue
            size = dtype.itemsize
            moved = (
                spline_bytes(elements, rows, bins, size, backward)
                if op == "spline"
                else affine_bytes(elements, rows, size, backward)
            )
            rate = moved / seconds
            peak_text = f"{100 * rate / peak:5.1f}% peak" if peak else "   n/a peak"
            lines.append(
                f"{label} {1e3 * seconds:10.3f} ms {rate / 1e9:9.1f} GB/s  {peak_text}  {100 * rate / copy:5.1f}% copy"
            )
            del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return lines


def bench_training(device: torch.device, smoke: bool, repetitions: int) -> list[str]:
    """Samples/s of one NSF training step (log-prob, backward, Adam): eager reference, compiled
    reference (`torch.compile` of `log_prob`) and eager Triton kernels."""
    try:
        from flows.presets import NSF
    except ImportError as error:
        return [f"NSF training step skipped: {error}"]
    from flows import ops

    features, batch, transforms = (4, 8, 1) if smoke else (16, 4096, 5)
    lines = []
    for label, backend, compile_log_prob in [
        ("reference", "reference", False),
        ("compiled", "reference", True),
        ("triton", "triton", False),
    ]:
        torch.manual_seed(0)
        flow = NSF(features, transforms=transforms, hidden_features=(32, 32) if smoke else (128, 128), bins=8)
        flow = flow.to(device)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
        data = torch.randn(batch, features, device=device)
        log_prob = flow.log_prob
        if compile_log_prob:
            log_prob = torch.compile(log_prob, backend="eager" if smoke else "inductor")

        def step(
            log_prob: Callable = log_prob, optimizer: torch.optim.Optimizer = optimizer, data: Tensor = data
        ) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = -log_prob(data).mean()
            loss.backward()
            optimizer.step()

        with ops.use_backend(backend):
            seconds = median_seconds(step, repetitions, 1 if smoke else 5, device)
        lines.append(
            f"NSF train step {label:9s} batch={batch} features={features} transforms={transforms} bins=8: "
            f"{1e3 * seconds:8.3f} ms  {batch / seconds:12,.0f} samples/s"
        )
    return lines


def compile_report(arch: int, bins: Sequence[int], features: int, dtype: torch.dtype) -> list[str]:
    """Compile every kernel variant for `sm_<arch>` with the launch configuration `triton_ops` would pick
    (no GPU needed: Triton's bundled ptxas) and report registers and spill stack per thread."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from flows.ops import triton_ops
    from flows.ops._triton_affine import affine_kernel
    from flows.ops._triton_spline import rational_quadratic_spline_kernel

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    integers = {"rows", "features", "split_features", "splits"}

    def argument_type(name: str, pointer: str, constexprs: dict[str, Any]) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return pointer
        if name in integers or name.endswith("_stride"):
            return "i32"
        return "fp32"

    def compile_one(kernel: Any, pointer: str, constexprs: dict[str, Any]) -> str:
        signature = {name: argument_type(name, pointer, constexprs) for name in kernel.arg_names}
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": triton_ops._NUM_WARPS},
        )
        with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
            handle.write(compiled.asm["cubin"])
            handle.flush()
            usage = subprocess.run(
                [str(cuobjdump), "-res-usage", handle.name], capture_output=True, text=True
            ).stdout
        match = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
        return (
            f"{match.group(1):>4s} registers, {match.group(2):>5s} bytes stack"
            if match
            else "no usage report"
        )

    rows = 100_000
    lines = []
    for pointer in ["*fp32" if dtype == torch.float32 else "*bf16"]:
        for bin_count in bins:
            padded = triton_ops._next_power_of_2(bin_count + 1)
            config = triton_ops._launch_config(rows, features, padded, triton_ops._SPLINE_TILE_VALUES)
            for inverse in (False, True):
                for backward in (False, True):
                    constexprs = {
                        "BINS": bin_count,
                        "PADDED": padded,
                        "BLOCK_ROWS": config["block_rows"],
                        "BLOCK_FEATURES": config["block_features"],
                        "INVERSE": inverse,
                        "BACKWARD": backward,
                    }
                    usage = compile_one(rational_quadratic_spline_kernel, pointer, constexprs)
                    direction = "inverse" if inverse else "forward"
                    lines.append(
                        f"sm_{arch} spline {pointer[1:]:4s} bins={bin_count:<3d} {direction:7s} "
                        f"{'backward' if backward else 'pass':8s} {usage}"
                    )
        config = triton_ops._launch_config(rows, features, 1, triton_ops._AFFINE_TILE_VALUES)
        for scale, name in enumerate(("tanh", "softplus", "sigmoid", "exp")):
            for backward in (False, True):
                constexprs = {
                    "SCALE": scale,
                    "BLOCK_ROWS": config["block_rows"],
                    "BLOCK_FEATURES": config["block_features"],
                    "INVERSE": False,
                    "BACKWARD": backward,
                }
                usage = compile_one(affine_kernel, pointer, constexprs)
                lines.append(
                    f"sm_{arch} affine {pointer[1:]:4s} {name:8s} {'backward' if backward else 'pass':8s} {usage}"
                )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes on the CPU under Triton's interpreter"
    )
    parser.add_argument("--elements", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--bins", type=int, nargs="+", default=[8, 16])
    parser.add_argument(
        "--features", type=int, default=16, help="last (summed) dimension; rows = elements / features"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--ops", nargs="+", choices=["spline", "affine"], default=["spline", "affine"])
    parser.add_argument("--no-training", action="store_true", help="skip the NSF training-step comparison")
    parser.add_argument(
        "--compile-only",
        type=int,
        metavar="ARCH",
        help="compile the kernels for sm_ARCH (e.g. 90) and print registers/spills; needs no GPU",
    )
    args = parser.parse_args(argv)
    if args.compile_only is not None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            raise SystemExit("--compile-only needs TRITON_INTERPRET unset (the interpreter compiles nothing)")
        for line in compile_report(args.compile_only, args.bins, args.features, getattr(torch, args.dtype)):
            print(line, flush=True)
        return

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("on the CPU the kernels need TRITON_INTERPRET=1 before Triton is first imported")
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        raise SystemExit("bench_kernels needs Triton: pip install 'flows[kernels]'") from None
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU interpreter check")

    dtype = getattr(torch, args.dtype)
    elements = [40] if args.smoke else [int(value) for value in args.elements]
    bins = [4] if args.smoke else args.bins
    features = 5 if args.smoke else args.features
    repetitions = 1 if args.smoke else args.repetitions

    peak = peak_bandwidth(device)
    copy = copy_bandwidth(device, 1 << 12 if args.smoke else 1 << 28, repetitions)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (Triton interpreter, smoke run)"
    print(f"device: {name}; dtype {args.dtype}; features {features}; median of {repetitions}")
    peak_text = f"{peak / 1e9:.0f} GB/s" if peak else "unknown"
    print(f"peak bandwidth (datasheet): {peak_text}; torch.clone copy: {copy / 1e9:.1f} GB/s")
    print(
        f"{'op':6s} {'pass':7s} {'elements':>11s} {'bins':>4} {'impl':9s} {'median':>13s} {'achieved':>14s}"
    )
    for op in args.ops:
        for count in elements:
            for bin_count in bins if op == "spline" else bins[:1]:
                for line in bench_op(
                    op, count, features, bin_count, dtype, device, repetitions, args.smoke, peak, copy
                ):
                    print(line, flush=True)
    if not args.no_training:
        for line in bench_training(device, args.smoke, repetitions):
            print(line, flush=True)


if __name__ == "__main__":
    main()
