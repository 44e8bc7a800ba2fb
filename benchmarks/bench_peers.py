"""Side-by-side speed of `flows` against zuko, nflows and normflows on matched flows.

A script that prints figures, never a timed test. Every library builds its own canonical layer for each
architecture (MAF, NSF coupling, NSF autoregressive, RealNVP) with the same number of transforms,
spline bins and conditioner depth; hidden widths of the peers whose conditioners are shaped
differently (normflows' residual nets) are chosen so that parameter counts match `flows` within ~10%.
The table prints the parameter counts to show the match.

Measured per library, in one process, after warm-up, as medians over repetitions:

- `log_prob`: one `log_prob` of a batch (no gradients), reported as samples per second;
- `train`: one training step (forward, backward of the mean negative log-likelihood, AdamW step);
- `sample`: drawing one batch of samples (no gradients);
- `peak MB`: the peak of memory allocated during one training step (CUDA: `max_memory_allocated`;
  CPU: the running sum of allocations and frees recorded by `torch.profiler(profile_memory=True)`).

A `floor` row (unless `--no-floor`) times the dense matrix products and ReLUs of flows' own
conditioners alone, on the same parameter tensors (`MatmulFloor`): no implementation of the model can be
faster than that on this machine, so its `x peer` is the ceiling of any library's speed-up over the peers.

Ratios: `x peer` compares with the fastest peer (the smallest median time): the median over rounds of
that peer's time divided by this library's time in the same round (> 1 means faster than every peer).
Calls of one round run back to back, so this paired ratio cancels load changes between rounds, which
on a shared machine move the medians themselves by tens of percent. Usage::

    python benchmarks/bench_peers.py                # full run on CPU
    python benchmarks/bench_peers.py --quick        # few repetitions (smoke test)
    python benchmarks/bench_peers.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.training.compile_policy import count_aten_calls  # noqa: E402 (torch only, no Lightning)

ARCHITECTURES = ("maf", "nsf-coupling", "nsf-ar", "realnvp")
FLOOR = "floor"
LIBRARIES = ("flows", "zuko", "nflows", "normflows")
AUTOREGRESSIVE = ("maf", "nsf-ar")


@dataclass(frozen=True)
class Spec:
    """The architecture every library builds: `transforms` layers, MLP conditioners of `depth` hidden layers."""

    architecture: str
    features: int
    transforms: int = 5
    hidden: int = 128
    depth: int = 2
    bins: int = 8
    bound: float = 3.0


class Model:
    """A library's flow behind one interface: `log_prob(x) -> (batch,)`, `sample(n) -> (n, D)`."""

    def __init__(
        self,
        module: nn.Module,
        log_prob: Callable[[Tensor], Tensor],
        sample: Callable[[int], Tensor],
        note: str,
        same_direction: bool = True,
    ) -> None:
        self.same_direction = same_direction
        self.module = module
        self.log_prob = log_prob
        self.sample = sample
        self.note = note

    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------ floor
class MatmulFloor(nn.Module):
    """The dense matrix products (with ReLU) of a model's `nn.Linear` layers and nothing else.

    Each layer keeps its shape (a `MaskedLinear` runs dense, without its mask product); consecutive
    layers whose widths chain (a conditioner's hidden layers) are fed one into the next, and a layer
    whose input width breaks the chain (a conditioner's first layer) reads a fixed input that needs no
    gradient. So the floor leaves out everything else a flow does (transforms, log-determinants,
    permutations, masks, and the input gradients of first layers): any implementation of the same
    float32 layers is slower than it, and `fastest peer / floor` is the largest speed-up over the peers
    that any library could reach on this machine.
    """

    def __init__(self, model: nn.Module, batch: int) -> None:
        super().__init__()
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self.weights = nn.ParameterList(nn.Parameter(layer.weight.detach().clone()) for layer in layers)
        self.biases = nn.ParameterList(
            nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None for layer in layers
        )
        widths = sorted({layer.in_features for layer in layers})
        generator = torch.Generator().manual_seed(0)
        self.inputs = {width: torch.randn(batch, width, generator=generator) for width in widths}

    def to(self, *args: Any, **kwargs: Any) -> MatmulFloor:  # type: ignore[override]
        super().to(*args, **kwargs)
        self.inputs = {width: x.to(*args, **kwargs) for width, x in self.inputs.items()}
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Sum of every layer's activations per row: `x (batch, D)` only sets the batch size."""
        total = x.new_zeros(x.shape[0])
        h: Optional[Tensor] = None
        for weight, bias in zip(self.weights, self.biases):
            if h is None or h.shape[-1] != weight.shape[1]:
                if h is not None:
                    total = total + h.sum(-1)
                h = self.inputs[weight.shape[1]]
            h = torch.relu(nn.functional.linear(h, weight, bias))
        return total if h is None else total + h.sum(-1)


def build_floor(spec: Spec, hidden: int, batch: int) -> Model:
    flows_model = build_flows(spec, hidden)
    floor = MatmulFloor(flows_model.module, batch)

    def no_sample(n: int) -> Tensor:
        raise NotImplementedError

    return Model(floor, floor, no_sample, "dense matmuls + ReLU of flows' conditioners only (a lower bound)")


# ------------------------------------------------------------------------------------------------ flows
def build_flows(
    spec: Spec, hidden: int, compile_model: bool = False, sample_method: Optional[str] = None
) -> Model:
    from flows import presets

    d = spec.features
    common = {"transforms": spec.transforms, "hidden_features": (hidden,) * spec.depth}
    if spec.architecture == "maf":
        flow = presets.MAF(d, **common)
    elif spec.architecture in ("nsf-ar", "nsf-coupling"):
        # Plain MLP / MADE conditioners and reverse permutations, as the peers' layers are built here;
        # identity tails (boundary slopes fixed to 1, 3K - 1 parameters per feature) like nflows' and
        # zuko's splines, so that the parameter counts are equal.
        flow = presets.NSF(
            d,
            bins=spec.bins,
            bound=spec.bound,
            tails="identity",
            autoregressive=spec.architecture == "nsf-ar",
            residual_blocks=0,
            lu_linear=False,
            randperm=False,
            **common,
        )
    elif spec.architecture == "realnvp":
        flow = presets.RealNVP(d, **common)
    else:
        raise ValueError(spec.architecture)
    if sample_method is not None:
        for module in flow.modules():
            if hasattr(module, "inverse_method"):
                module.inverse_method = sample_method
    log_prob = flow.log_prob
    sample: Callable[[int], Tensor] = lambda n: flow.sample((n,))  # noqa: E731
    note = "presets"
    if compile_model:
        # log_prob (and with it the training step's forward and backward) is compiled. A compiled
        # autoregressive inverse cannot stop early (a data-dependent exit breaks the graph), so for
        # autoregressive flows one fixed-point step is compiled and the loop keeps its early exit.
        log_prob = torch.compile(flow.log_prob, fullgraph=True, dynamic=False)
        if spec.architecture in AUTOREGRESSIVE:
            for module in flow.modules():
                if hasattr(module, "compile_fixed_point_step"):
                    module.compile_fixed_point_step(dynamic=False)
        else:
            sample = torch.compile(sample, fullgraph=True, dynamic=False)
        note += " + torch.compile"
    return Model(flow, log_prob, sample, note)


# ------------------------------------------------------------------------------------------------- zuko
def build_zuko(spec: Spec, hidden: int) -> Model:
    import zuko
    from zuko.transforms import MonotonicRQSTransform

    d = spec.features
    hidden_features = (hidden,) * spec.depth
    spline = dict(
        univariate=partial(MonotonicRQSTransform, slope=1e-3),
        shapes=[(spec.bins,), (spec.bins,), (spec.bins - 1,)],
    )
    if spec.architecture == "maf":
        flow = zuko.flows.MAF(d, transforms=spec.transforms, hidden_features=hidden_features)
        note = "flows.MAF"
    elif spec.architecture == "nsf-ar":
        flow = zuko.flows.NSF(d, bins=spec.bins, transforms=spec.transforms, hidden_features=hidden_features)
        note = "flows.NSF"
    elif spec.architecture == "nsf-coupling":
        # zuko's coupling flow (GeneralCouplingTransform) with its rational-quadratic spline.
        flow = zuko.flows.NICE(d, transforms=spec.transforms, hidden_features=hidden_features, **spline)
        note = "flows.NICE + MonotonicRQSTransform"
    elif spec.architecture == "realnvp":
        flow = zuko.flows.RealNVP(d, transforms=spec.transforms, hidden_features=hidden_features)
        note = "flows.RealNVP"
    else:
        raise ValueError(spec.architecture)
    return Model(flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)), note)


# ----------------------------------------------------------------------------------------------- nflows
def build_nflows(spec: Spec, hidden: int) -> Model:
    from nflows import distributions, flows, transforms
    from nflows.nn import nets

    d = spec.features
    layers: list[nn.Module] = []

    class ContextFreeMLP(nets.MLP):
        # nflows' coupling layers call `net(x, context)`; its MLP takes no context.
        def forward(self, inputs: Tensor, context: Optional[Tensor] = None) -> Tensor:
            return super().forward(inputs)

    def mlp(in_features: int, out_features: int) -> nn.Module:
        return ContextFreeMLP((in_features,), (out_features,), hidden_sizes=[hidden] * spec.depth)

    made = dict(hidden_features=hidden, num_blocks=spec.depth - 1, use_residual_blocks=False)
    for index in range(spec.transforms):
        mask = torch.ones(d)
        mask[index % 2 :: 2] = -1
        if spec.architecture == "maf":
            layers += [
                transforms.MaskedAffineAutoregressiveTransform(d, **made),
                transforms.ReversePermutation(d),
            ]
        elif spec.architecture == "nsf-ar":
            layers += [
                transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    d, num_bins=spec.bins, tails="linear", tail_bound=spec.bound, **made
                ),
                transforms.ReversePermutation(d),
            ]
        elif spec.architecture == "nsf-coupling":
            layers.append(
                transforms.PiecewiseRationalQuadraticCouplingTransform(
                    mask, mlp, num_bins=spec.bins, tails="linear", tail_bound=spec.bound
                )
            )
        elif spec.architecture == "realnvp":
            layers.append(transforms.AffineCouplingTransform(mask, mlp))
        else:
            raise ValueError(spec.architecture)
    if spec.architecture in AUTOREGRESSIVE:
        layers = layers[:-1]
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([d]))
    note = "MADE (no residual)" if spec.architecture in AUTOREGRESSIVE else "coupling + nets.MLP"
    return Model(flow, flow.log_prob, flow.sample, note)


# -------------------------------------------------------------------------------------------- normflows
def build_normflows(spec: Spec, hidden: int) -> Model:
    import normflows as nf

    d = spec.features
    layers: list[nn.Module] = []
    for index in range(spec.transforms):
        if spec.architecture == "maf":
            layers.append(
                nf.flows.MaskedAffineAutoregressive(
                    d, hidden, num_blocks=spec.depth - 1, use_residual_blocks=False
                )
            )
            note = "MaskedAffineAutoregressive (no residual; IAF direction*)"
        elif spec.architecture == "nsf-ar":
            # normflows' autoregressive spline always uses residual MADE blocks: width matched on parameters.
            layers.append(
                nf.flows.AutoregressiveRationalQuadraticSpline(
                    d, 1, hidden, num_bins=spec.bins, tail_bound=spec.bound
                )
            )
            note = "AutoregressiveRationalQuadraticSpline (1 residual block)"
        elif spec.architecture == "nsf-coupling":
            layers.append(
                nf.flows.CoupledRationalQuadraticSpline(
                    d, 1, hidden, num_bins=spec.bins, tail_bound=spec.bound, reverse_mask=index % 2 == 1
                )
            )
            note = "CoupledRationalQuadraticSpline (1 residual block)"
        elif spec.architecture == "realnvp":
            half = d - d // 2
            net = nf.nets.MLP([half] + [hidden] * spec.depth + [2 * (d // 2)], init_zeros=True)
            layers.append(nf.flows.AffineCouplingBlock(net))
            note = "AffineCouplingBlock + nets.MLP"
        else:
            raise ValueError(spec.architecture)
        if spec.architecture in ("maf", "nsf-ar", "realnvp") and index < spec.transforms - 1:
            layers.append(nf.flows.Permute(d, mode="swap"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
    # normflows' affine autoregressive layer runs its MADE in the sampling direction (an IAF): one pass to
    # sample, `features` passes for the density. Its sampling time is shown but not used as a reference.
    same_direction = spec.architecture != "maf"
    return Model(model, model.log_prob, lambda n: model.sample(n)[0], note, same_direction)


BUILDERS: dict[str, Callable[..., Model]] = {
    "flows": build_flows,
    "zuko": build_zuko,
    "nflows": build_nflows,
    "normflows": build_normflows,
    FLOOR: build_floor,
}


def available(library: str) -> Optional[str]:
    """None when the library imports, else the reason it does not."""
    if importlib.util.find_spec(library) is None:
        return "not installed"
    try:
        __import__(library)
    except Exception as error:  # report any import failure, whatever its type
        return f"import failed: {type(error).__name__}: {error}"
    return None


def matched_model(library: str, spec: Spec, target: Optional[int], **options: Any) -> tuple[Model, int]:
    """Build with `spec.hidden`; if the parameter count is off by > 10%, search the width that matches."""
    build = BUILDERS[library]
    model = build(spec, spec.hidden, **options)
    if target is None or abs(model.parameters() - target) <= 0.1 * target:
        return model, spec.hidden
    best = (abs(model.parameters() - target), spec.hidden)
    for hidden in range(max(4, spec.hidden // 4), 2 * spec.hidden + 1, 2):
        count = build(spec, hidden, **options).parameters()
        best = min(best, (abs(count - target), hidden))
    return build(spec, best[1], **options), best[1]


# --------------------------------------------------------------------------------------------- measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    functions: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device, budget_s: float
) -> dict[str, float]:
    """Median seconds per call of each function (see `interleaved_times`)."""
    return {
        name: statistics.median(values)
        for name, values in interleaved_times(functions, repeats, warmup, device, budget_s).items()
    }


def interleaved_times(
    functions: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device, budget_s: float
) -> dict[str, list[float]]:
    """Seconds of each timed call of each function, repetitions interleaved across the functions.

    Interleaving (one call of each function per round) spreads the load of a shared machine evenly over
    the libraries. After `warmup` untimed calls (at least one: it absorbs compilation), a function gets
    `repeats` timed calls, fewer when its calls are slow (at most `budget_s` seconds in all, at least one
    call); a function whose first timed call alone exceeds `budget_s` (sequential sampling of the slowest
    peers) keeps that call as its one time.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    planned: dict[str, int] = {}
    for name, function in functions.items():
        for _ in range(max(1, warmup)):
            function()
        first = timed(function, device)
        times[name].append(first)
        planned[name] = max(0, min(repeats, int(budget_s / max(first, 1e-9))) - 1)
    for round_index in range(max(planned.values(), default=0)):
        for name, function in functions.items():
            if round_index < planned[name]:
                times[name].append(timed(function, device))
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of `numerator[i] / denominator[i]` (calls of one round ran back to back, so a
    load change between rounds cancels), or the ratio of the medians with fewer than 3 paired rounds."""
    pairs = min(len(numerator), len(denominator))
    if pairs < 3:
        return statistics.median(numerator) / statistics.median(denominator)
    return statistics.median(a / b for a, b in zip(numerator[:pairs], denominator[:pairs]))


def peak_memory_mb(function: Callable[[], Any], device: torch.device) -> float:
    """Peak memory allocated while `function` runs, in MB, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    running, peak = 0, 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak / 2**20


@dataclass
class Result:
    library: str
    parameters: int
    hidden: int
    log_prob_s: float
    train_s: float
    sample_s: float
    peak_mb: float
    note: str
    same_direction: bool = True
    #: ATen operator calls of one training step (forward, backward, AdamW)
    train_calls: int = 0
    #: every timed call, per metric ("log_prob_s", "train_s", "sample_s"), for paired ratios
    times: dict[str, list[float]] = field(default_factory=dict)


def measure_all(
    models: dict[str, tuple[Model, int]], args: argparse.Namespace, device: torch.device
) -> list[Result]:
    """Time log_prob, a training step and sampling of every library's model, interleaved."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.current_features, device=device)
    log_prob, train, sample, memory = {}, {}, {}, {}
    for library, (model, _) in models.items():
        module = model.module.to(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def log_prob_call(model: Model = model) -> Tensor:
            with torch.no_grad():
                return model.log_prob(x)

        def train_step(model: Model = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = -model.log_prob(x).mean()
            loss.backward()
            optimizer.step()

        def sample_call(model: Model = model) -> Tensor:
            with torch.no_grad():
                return model.sample(args.batch)

        log_prob[library], train[library] = log_prob_call, train_step
        if library != FLOOR:
            sample[library] = sample_call
    if args.compile and "flows" in models:
        # The first calls compile (forward, then forward and backward): report that time once.
        seconds = [
            timed(function, device) for function in (log_prob["flows"], train["flows"], sample["flows"])
        ]
        print(
            f"flows torch.compile: first log_prob {seconds[0]:.1f} s, first training step {seconds[1]:.1f} s, "
            f"first sample {seconds[2]:.1f} s (compilation included)"
        )
    log_prob_s = interleaved_times(log_prob, args.repeats, args.warmup, device, args.budget)
    train_s = interleaved_times(train, args.repeats, args.warmup, device, args.budget)
    calls = {library: count_aten_calls(step) for library, step in train.items()}
    if "flows" in models and args.fit_steps > 0:
        # The fixed-point sampler's cost depends on how strongly features depend on each other, which is
        # nil at the identity initialisation: fit flows' model first (the peers' samplers do a fixed
        # number of passes whatever the parameters).
        fit(models["flows"][0], args.current_features, args.fit_steps, device)
    sample_s = interleaved_times(sample, args.repeats, 1, device, args.budget)
    for library, step in train.items():
        memory[library] = peak_memory_mb(step, device) if args.memory and library != FLOOR else math.nan
    return [
        Result(
            library=library,
            parameters=model.parameters(),
            hidden=hidden,
            log_prob_s=statistics.median(log_prob_s[library]),
            train_s=statistics.median(train_s[library]),
            sample_s=statistics.median(sample_s[library]) if library in sample_s else math.nan,
            peak_mb=memory[library],
            note=model.note,
            same_direction=model.same_direction,
            train_calls=calls[library],
            times={
                "log_prob_s": log_prob_s[library],
                "train_s": train_s[library],
                "sample_s": sample_s.get(library, []),
            },
        )
        for library, (model, hidden) in models.items()
    ]


def synthetic_data(batch: int, features: int, device: torch.device, seed: int = 0) -> Tensor:
    """Correlated, non-Gaussian data `(batch, features)`: a random linear mix bent by a sine."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features**0.5 + torch.eye(features)
    x = torch.randn(batch, features, generator=generator) @ mixing.T
    return (x + 0.5 * torch.sin(2.0 * x.roll(1, dims=-1))).to(device)


def fit(model: Model, features: int, steps: int, device: torch.device) -> None:
    """A short maximum-likelihood fit on `synthetic_data`, so that features depend on each other."""
    data = synthetic_data(4096, features, device)
    optimizer = torch.optim.AdamW(model.module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (256,), generator=generator).to(device)]
        optimizer.zero_grad(set_to_none=True)
        (-model.module.log_prob(batch).mean()).backward()
        optimizer.step()


def fast_sampling_report(model: Model, batch: int, device: torch.device, repeats: int) -> None:
    """flows' fixed-point against its sequential inverse on the same latents: time, error, iterations."""
    from flows.bijectors.autoregressive import MaskedAutoregressive

    flow = model.module
    layers = [m for m in flow.modules() if isinstance(m, MaskedAutoregressive)]
    if not layers:
        return
    torch.manual_seed(2)
    z = flow.base.sample((batch,))

    def decode(method: str) -> Tensor:
        for layer in layers:
            layer.inverse_method = method
        with torch.no_grad():
            return flow.transform.inverse(z)[0]

    times = interleaved_medians(
        {"fixed_point": lambda: decode("fixed_point"), "sequential": lambda: decode("sequential")},
        repeats,
        1,
        device,
        budget_s=20.0,
    )
    x_fixed, x_sequential = decode("fixed_point"), decode("sequential")
    error = (x_fixed - x_sequential).abs().max().item()
    iterations = []
    y = z
    with torch.no_grad():
        for bijector in reversed(flow.transform.bijectors):
            if isinstance(bijector, MaskedAutoregressive):
                y, _, steps = bijector._inverse_fixed_point(y, None)
                iterations.append(steps)
            else:
                y, _ = bijector.inverse(y)
    print(
        f"flows fast sampling: fixed point {1e3 * times['fixed_point']:.1f} ms vs sequential "
        f"{1e3 * times['sequential']:.1f} ms = {times['sequential'] / times['fixed_point']:.2f}x; "
        f"max |x_fixed - x_sequential| = {error:.2e}; iterations per layer {iterations} "
        f"(sequential: {len(z[0])} passes each)"
    )


def training_budget(results: list[Result], target: float = 1.5) -> str:
    """What a training step `target` x faster than the fastest peer would need: flows' time beyond the matmul
    floor (its conditioners' products alone) against the time that target leaves, and the ATen calls per step."""
    by_library = {r.library: r for r in results}
    peers = [r for r in results if r.library not in ("flows", FLOOR)]
    calls = ", ".join(f"{r.library} {r.train_calls:,d}" for r in results if r.library != FLOOR)
    line = f"ATen calls per training step: {calls}"
    if "flows" not in by_library or FLOOR not in by_library or not peers:
        return line
    fastest = min(peers, key=lambda r: r.train_s)
    floor, flows_s = by_library[FLOOR].train_s, by_library["flows"].train_s
    allowed = fastest.train_s / target - floor
    beyond = flows_s - floor
    if allowed <= 0:
        verdict = "(the floor forbids it)"
    elif allowed >= beyond:
        verdict = "(met, by the medians)"
    else:
        verdict = f"({100 * (1 - allowed / beyond):.0f}% less)"
    return (
        f"{line}\ntraining {target:g}x the fastest peer ({fastest.library}, {1e3 * fastest.train_s:.2f} ms) needs "
        f"flows <= {1e3 * fastest.train_s / target:.2f} ms: its time beyond the matmul floor ({1e3 * floor:.2f} ms) "
        f"is {1e3 * beyond:.2f} ms and may be {1e3 * max(allowed, 0.0):.2f} ms {verdict}"
    )


def print_table(spec: Spec, results: list[Result], batch: int) -> None:
    peers = [r for r in results if r.library not in ("flows", FLOOR)]
    fastest: dict[str, Optional[Result]] = {}
    for key in ("log_prob_s", "train_s", "sample_s"):
        candidates = [r for r in peers if key != "sample_s" or r.same_direction]
        fastest[key] = min(candidates, key=lambda r, key=key: getattr(r, key), default=None)
    title = f"{spec.architecture}  D={spec.features}  transforms={spec.transforms}  batch={batch}"
    print(f"\n## {title}")
    header = (
        f"{'library':<10} {'params':>9} {'hidden':>6} | {'log_prob ms':>11} {'k/s':>7} {'x peer':>6} | "
        f"{'train ms':>9} {'x peer':>6} | {'sample ms':>10} {'k/s':>7} {'x peer':>6} | {'peak MB':>8} | note"
    )
    print(header)
    print("-" * len(header))
    for r in results:

        def ratio(key: str, r: Result = r) -> str:
            peer = fastest[key]
            if peer is None or math.isnan(getattr(r, key)) or not r.times.get(key):
                return "   n/a"
            return f"{paired_ratio(peer.times[key], r.times[key]):6.2f}"

        print(
            f"{r.library:<10} {r.parameters:>9,d} {r.hidden:>6d} | {1e3 * r.log_prob_s:>11.2f} "
            f"{batch / r.log_prob_s / 1e3:>7.1f} {ratio('log_prob_s')} | {1e3 * r.train_s:>9.2f} {ratio('train_s')} | "
            f"{1e3 * r.sample_s:>10.2f} {batch / r.sample_s / 1e3:>7.1f} {ratio('sample_s')} | "
            f"{r.peak_mb:>8.1f} | {r.note}"
        )
    print(training_budget(results))
    if any(not r.same_direction for r in results):
        print(
            "* IAF direction: this peer's layer samples in one pass and evaluates the density in `features` "
            "passes; its sampling time is not used as the sampling reference."
        )
    sys.stdout.flush()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, D=8 only (smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="flows with torch.compile(fullgraph=True)")
    parser.add_argument("--features", type=int, nargs="+", default=[8, 43])
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all)")
    parser.add_argument(
        "--budget", type=float, default=4.0, help="max seconds of timed calls per library and metric"
    )
    parser.add_argument(
        "--fit-steps", type=int, default=100, help="fit flows' model this long before timing sampling"
    )
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the matmul floor row (flows' dense conditioner products alone: a lower bound on any library)",
    )
    parser.add_argument(
        "--flows-backend",
        default="auto",
        help="flows.ops backend for flows' model: auto (default), reference or triton",
    )
    parser.add_argument("--flows-sampler", default=None, help="force flows' inverse method (e.g. sequential)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.fit_steps = 3, 1, min(args.fit_steps, 10)
        if args.features == [8, 43]:
            args.features = [8]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.set_default_dtype(torch.float32)
    if args.flows_backend != "auto":
        from flows import ops

        ops.set_backend(args.flows_backend)

    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, float32, "
        f"flows backend {args.flows_backend}"
    )
    versions = []
    libraries = []
    for library in args.libraries:
        reason = available(library)
        if reason is None:
            module = sys.modules[library]
            try:
                version = importlib.metadata.version(library)
            except importlib.metadata.PackageNotFoundError:  # a source checkout, not installed
                version = getattr(module, "__version__", "?")
            versions.append(f"{library} {version}")
            libraries.append(library)
        else:
            print(f"skipping {library}: {reason}")
    if args.floor and "flows" in libraries:
        libraries.append(FLOOR)
    print("libraries: " + ", ".join(versions))
    print(
        f"medians of up to {args.repeats} interleaved repetitions (at most {args.budget:g} s per library and "
        f"metric) after {args.warmup} warm-up calls; x peer = median over rounds of fastest peer time / this time"
    )

    for features in args.features:
        args.current_features = features
        for architecture in args.architectures:
            spec = Spec(architecture, features, transforms=args.transforms, hidden=args.hidden)
            models: dict[str, tuple[Model, int]] = {}
            if args.compile:
                # Each model's compiled `Flow.log_prob` guards on the module: start every table afresh so
                # that dynamo's recompile limit (per code object) is never reached.
                torch._dynamo.reset()
            target = None
            for library in libraries:
                options: dict[str, Any] = {}
                if library == "flows":
                    options = {"compile_model": args.compile, "sample_method": args.flows_sampler}
                if library == FLOOR:
                    options = {"batch": args.batch}
                torch.manual_seed(0)
                try:
                    models[library] = matched_model(
                        library, spec, None if library == FLOOR else target, **options
                    )
                except Exception as error:  # a library that cannot build this architecture is reported
                    print(
                        f"{library} {architecture} D={features}: build failed: {type(error).__name__}: {error}"
                    )
                    continue
                if target is None and library != FLOOR:
                    target = models[library][0].parameters()
            results = measure_all(models, args, device)
            print_table(spec, results, args.batch)
            if "flows" in models and architecture in AUTOREGRESSIVE:
                fast_sampling_report(models["flows"][0], args.batch, device, max(1, args.repeats // 4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
