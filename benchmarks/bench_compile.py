"""What `torch.compile` costs and saves per training step: the figures behind `train.compile: auto`.

For each flow (one fresh process each, Inductor's on-disk caches off, so every graph really compiles) the
script counts the ATen calls of one eager training step (forward, backward), times the first compiled step
(the compilation), then eager and compiled steps in interleaved blocks of five (the machine's drift hits both
alike), and prints the compile time per ATen call (`flows.training.compile_policy.estimated_compile_seconds`
is fitted to these), the speed-up, and after how many steps compiling pays. One torch thread by default.

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --cases nsf-demo maf-8 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _main_job_case() -> tuple[str, int, int, dict]:
    """The main job's model and batch, as `configs/demo.yaml` has them (its data, 8 Gaussians, are 2-D)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    options = {key: value for key, value in config["model"].items() if key != "name"}
    return config["model"]["name"].upper(), 2, int(config["train"]["batch_size"]), options


#: name -> (preset, features, batch, preset options)
CASES: dict[str, tuple[str, int, int, dict]] = {
    # the main job's model, and the one it had before #16 (the docs' compile table)
    "nsf-demo": _main_job_case(),
    "nsf-demo-4x8": ("NSF", 2, 256, {"transforms": 4, "hidden_features": [64, 64], "residual_blocks": 2}),
    "nsf-8": ("NSF", 8, 256, {"transforms": 5, "hidden_features": [128, 128]}),
    "nsf-43": ("NSF", 43, 512, {"transforms": 5, "hidden_features": [256, 256]}),
    "maf-8": ("MAF", 8, 256, {"transforms": 5, "hidden_features": [128, 128]}),
    "realnvp-8": ("RealNVP", 8, 256, {"transforms": 5, "hidden_features": [128, 128]}),
}


def _one_case(name: str, steps: int) -> dict:
    """Runs in a fresh process: the figures of one case as a dict."""
    import torch

    import flows
    from flows.training.compile_policy import count_aten_calls

    torch.manual_seed(0)
    preset, features, batch, options = CASES[name]
    flow = getattr(flows, preset)(features, **options)
    x = torch.randn(batch, features)
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-4, fused=True)

    def step(log_prob) -> None:
        loss = -log_prob(x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    calls = count_aten_calls(lambda: step(flow.log_prob))
    for _ in range(3):
        step(flow.log_prob)
    compiled_log_prob = torch.compile(flow.log_prob, dynamic=False)
    start = time.perf_counter()
    step(compiled_log_prob)
    first = time.perf_counter() - start
    for _ in range(3):
        step(compiled_log_prob)
    eager: list[float] = []
    compiled: list[float] = []
    for _ in range(max(1, steps // 5)):  # interleaved blocks of 5 steps: the machine's drift hits both alike
        for times, log_prob in ((eager, flow.log_prob), (compiled, compiled_log_prob)):
            for _ in range(5):
                start = time.perf_counter()
                step(log_prob)
                times.append(time.perf_counter() - start)
    eager_s, compiled_s = statistics.median(eager), statistics.median(compiled)
    compile_s = first - compiled_s
    saved = eager_s - compiled_s
    return {
        "case": name,
        "parameters": sum(p.numel() for p in flow.parameters()),
        "aten_calls": calls,
        "eager_ms": 1e3 * eager_s,
        "compiled_ms": 1e3 * compiled_s,
        "speedup": eager_s / compiled_s,
        "compile_s": compile_s,
        "compile_ms_per_call": 1e3 * compile_s / calls,
        "break_even_steps": compile_s / saved if saved > 0 else float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=30, help="timed steps, eager and compiled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_one_case(args.one, args.steps)))
        return
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    print(
        "case      | params    | ATen calls/step | eager ms | compiled ms | speed-up | compile s | "
        "compile ms/call | break-even steps"
    )
    environment = {
        **os.environ,
        "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    for name in args.cases:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        output = subprocess.run(command, capture_output=True, text=True, env=environment)
        if output.returncode != 0:
            print(f"{name:9} | failed: {output.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(output.stdout.strip().splitlines()[-1])
        print(
            f"{r['case']:9} | {r['parameters']:9,} | {r['aten_calls']:15,} | {r['eager_ms']:8.2f} | "
            f"{r['compiled_ms']:11.2f} | {r['speedup']:7.2f}x | {r['compile_s']:9.1f} | "
            f"{r['compile_ms_per_call']:15.1f} | {r['break_even_steps']:,.0f}"
        )


if __name__ == "__main__":
    main()
