"""The Triton kernels against the pure-PyTorch references: values, log-dets and gradients.

Without CUDA the kernels run on CPU tensors under Triton's interpreter, which Triton enables per
`@triton.jit` when it is first imported with `TRITON_INTERPRET=1`. This module sets that variable
before importing Triton; if Triton was already imported without it (another test module imported it
first), the in-process tests skip and `test_kernels_in_interpreter_subprocess` runs this file again in a
fresh interpreter-mode process. Tensors are kept tiny: the interpreter runs each tile in numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from flows import ops  # noqa: E402
from flows.ops import triton_ops  # noqa: E402
from flows.ops.affine_reference import SCALE_FUNCTIONS, affine_reference  # noqa: E402
from flows.ops.spline_reference import rational_quadratic_spline_reference, spline_knots  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IN_PROCESS = DEVICE.type == "cuda" or triton_ops.INTERPRETED
BOUND = 3.0


@pytest.fixture(autouse=True)
def _kernels_runnable(request: pytest.FixtureRequest) -> None:
    own_process = {
        "test_kernels_in_interpreter_subprocess",
        "test_benchmark_smoke_run",
        "test_kernels_compile_for_sm90_without_a_gpu",
    }
    if not IN_PROCESS and request.node.originalname not in own_process:
        pytest.skip("Triton was imported without TRITON_INTERPRET=1: the subprocess test covers this")


def _spline_params(shape: tuple[int, ...], bins: int, scale: float = 1.5, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (scale * torch.randn(shape + (size,), generator=generator)).to(DEVICE)
        for size in (bins, bins, bins + 1)
    ]


def _test_inputs(rows: int, features: int, seed: int = 0) -> Tensor:
    """Inputs inside and outside the bound, including +-bound exactly and +-1e6."""
    generator = torch.Generator().manual_seed(seed)
    x = 4.0 * torch.rand(rows, features, generator=generator) * 2.0 - 4.0
    special = torch.tensor([BOUND, -BOUND, 1e6, -1e6, 0.0, 1e-12])
    flat = x.reshape(-1)
    flat[: special.numel()] = special[: flat.numel()]
    return x.to(DEVICE)


def _compare(
    kernel: Callable[..., tuple[Tensor, Tensor]],
    reference: Callable[..., tuple[Tensor, Tensor]],
    inputs: list[Tensor],
    rtol: float = 1e-4,
    atol: float = 1e-4,
    **options: object,
) -> None:
    """Values, log-dets and the gradients of a random linear functional of both outputs agree."""
    kernel_inputs = [tensor.clone().requires_grad_() for tensor in inputs]
    reference_inputs = [tensor.clone().requires_grad_() for tensor in inputs]
    y, ladj = kernel(*kernel_inputs, **options)
    y_ref, ladj_ref = reference(*reference_inputs, **options)
    assert y.dtype == y_ref.dtype and ladj.dtype == ladj_ref.dtype
    assert y.shape == y_ref.shape and ladj.shape == ladj_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(ladj, ladj_ref, rtol=rtol, atol=atol)
    generator = torch.Generator().manual_seed(1)
    grad_y = torch.randn(y.shape, generator=generator).to(y)
    grad_ladj = torch.randn(ladj.shape, generator=generator).to(ladj)
    ((y * grad_y).sum() + (ladj * grad_ladj).sum()).backward()
    # Gradients against the float64 reference. Its inverse clamps the root to [0, 1] and loses the
    # gradient where the root rounds to 1 + 1e-16 at +-bound, so there it is taken 1e-9 inside.
    exact_inputs = [tensor.detach().double() for tensor in inputs]
    x_exact = exact_inputs[0]
    exact_inputs[0] = torch.where(x_exact.abs() == BOUND, x_exact * (1.0 - 1e-9), x_exact)
    exact_inputs = [tensor.requires_grad_() for tensor in exact_inputs]
    y_exact, ladj_exact = reference(*exact_inputs, **options)
    ((y_exact * grad_y.double()).sum() + (ladj_exact * grad_ladj.double()).sum()).backward()
    for name, ours, theirs in zip(["x", "widths", "heights", "derivatives"], kernel_inputs, exact_inputs):
        assert ours.grad is not None and torch.isfinite(ours.grad).all(), name
        torch.testing.assert_close(
            ours.grad.double(),
            theirs.grad,
            rtol=rtol,
            atol=atol,
            msg=lambda text, name=name: f"gradient of {name}: {text}",
        )


@pytest.mark.parametrize("bins", [2, 8, 16])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_matches_reference(bins: int, inverse: bool) -> None:
    x = _test_inputs(3, 5)  # 5 features: not a multiple of any block size
    _compare(
        triton_ops.rational_quadratic_spline,
        rational_quadratic_spline_reference,
        [x, *_spline_params((3, 5), bins)],
        inverse=inverse,
        bound=BOUND,
    )


def _spline_outputs_and_gradients(inputs: list[Tensor], function: Callable, inverse: bool) -> list[Tensor]:
    inputs = [tensor.detach().clone().requires_grad_() for tensor in inputs]
    y, ladj = function(*inputs, inverse=inverse, bound=BOUND)
    y.sum().backward()  # the output is C1 across knots: its gradients exist there
    return [y.detach(), ladj.detach()] + [tensor.grad for tensor in inputs]


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_at_knots(inverse: bool) -> None:
    """Inputs exactly on knots (one element per row, so each log-det is one log-derivative).

    Which bin a knot falls in depends on the knots' float32 round-off, and narrow bins amplify the
    difference, so every result must lie between the float64 values a few float32 ulps either side.
    """
    bins = 6
    widths, heights, derivatives = (
        tensor.reshape(28, 1, -1) for tensor in _spline_params((4, 7), bins, seed=3)
    )
    knot_x, knot_y, _ = spline_knots(widths, heights, derivatives, BOUND, 1e-3, 1e-3, 1e-3)
    knots = (knot_y if inverse else knot_x).reshape(4, 7, 1, bins + 1)
    x = knots[..., :7].diagonal(dim1=1, dim2=-1).reshape(28, 1).contiguous()  # element j on its knot j % 7
    params = [widths, heights, derivatives]
    ours = _spline_outputs_and_gradients([x, *params], triton_ops.rational_quadratic_spline, inverse)
    step = 4.0 * torch.finfo(torch.float32).eps * x.abs().clamp_min(1.0)
    sides = [
        _spline_outputs_and_gradients(
            [(x + sign * step).double()] + [p.double() for p in params],
            rational_quadratic_spline_reference,
            inverse,
        )
        for sign in (-1.0, 1.0)
    ]
    for name, value, below, above in zip(
        ["y", "ladj", "x", "widths", "heights", "derivatives"], ours, *sides
    ):
        low, high = torch.minimum(below, above), torch.maximum(below, above)
        slack = 1e-4 * (1.0 + high.abs())
        inside = (value.double() >= low - slack) & (value.double() <= high + slack)
        assert inside.all(), f"{name}: {value[~inside]} outside [{low[~inside]}, {high[~inside]}]"


def test_spline_round_trip_and_batch_shapes() -> None:
    x = _test_inputs(2 * 3, 4).reshape(2, 3, 4)
    params = _spline_params((2, 3, 4), 8, seed=5)
    y, ladj = triton_ops.rational_quadratic_spline(x, *params, bound=BOUND)
    x_back, ladj_back = triton_ops.rational_quadratic_spline(y, *params, inverse=True, bound=BOUND)
    assert y.shape == (2, 3, 4) and ladj.shape == (2, 3)
    torch.testing.assert_close(x_back, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ladj + ladj_back, torch.zeros_like(ladj), rtol=0, atol=1e-4)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_extreme_parameters_and_options(inverse: bool) -> None:
    """Saturated softmaxes and derivatives near their minimum; then other bound and minimum sizes."""
    x = _test_inputs(4, 6, seed=2)
    _compare(
        triton_ops.rational_quadratic_spline,
        rational_quadratic_spline_reference,
        [x, *_spline_params((4, 6), 8, scale=5.0, seed=4)],
        rtol=1e-3,
        atol=1e-3,
        inverse=inverse,
        bound=BOUND,
    )
    options = {"bound": 1.5, "min_bin_width": 0.05, "min_bin_height": 0.02, "min_derivative": 0.1}
    _compare(
        triton_ops.rational_quadratic_spline,
        rational_quadratic_spline_reference,
        [x, *_spline_params((4, 6), 8, seed=5)],
        inverse=inverse,
        **options,
    )


def test_spline_parameters_sliced_from_one_tensor() -> None:
    """Coupling layers slice widths, heights and derivatives out of one `(..., d, 3K + 1)` tensor: the
    kernel reads them through their strides, and the gradient reaches the whole tensor."""
    bins = 5
    x = _test_inputs(6, 4).reshape(2, 3, 4)
    generator = torch.Generator().manual_seed(13)
    params = torch.randn(2, 3, 4, 3 * bins + 1, generator=generator).to(DEVICE)

    def split(function: Callable) -> Callable:
        def spline(x: Tensor, params: Tensor, **options: object) -> tuple[Tensor, Tensor]:
            pieces = params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]
            return function(x, *pieces, **options)

        return spline

    _compare(
        split(triton_ops.rational_quadratic_spline), split(rational_quadratic_spline_reference), [x, params]
    )


def test_nsf_log_prob_and_gradients_match_across_backends() -> None:
    """End to end: a small NSF gives the same log-density and parameter gradients on both backends."""
    from flows.presets import NSF

    torch.manual_seed(0)
    # bound 3 as calibrated (the preset's default before #14); with bound 5 one float32 gradient element of
    # this perturbed flow differs by 5e-4 (relative 4e-4) between the backends, beyond the 1e-4 below
    flow = NSF(3, transforms=2, hidden_features=(16, 16), bins=4, bound=3.0).to(DEVICE)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    data = torch.randn(7, 3, device=DEVICE) * 2.0
    results = []
    for backend in ("reference", "triton"):
        flow.zero_grad()
        with ops.use_backend(backend):
            log_prob = flow.log_prob(data)
            log_prob.sum().backward()
        results.append([log_prob.detach()] + [parameter.grad.clone() for parameter in flow.parameters()])
    for reference, kernel in zip(*results):
        torch.testing.assert_close(kernel, reference, rtol=1e-4, atol=1e-4)


def test_spline_broadcast_parameters() -> None:
    """Parameters shared across the batch: gradients are summed back to their shape."""
    x = _test_inputs(4, 3)
    params = _spline_params((1, 3), 5, seed=7)

    def expanded_reference(x: Tensor, *params: Tensor, **options: object) -> tuple[Tensor, Tensor]:
        # The reference gathers, so it needs the parameters expanded to the batch.
        params = [tensor.expand(x.shape + tensor.shape[-1:]) for tensor in params]
        return rational_quadratic_spline_reference(x, *params, **options)

    _compare(triton_ops.rational_quadratic_spline, expanded_reference, [x, *params], bound=BOUND)


def test_spline_split_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few rows and many features: the features split over programs, partial log-dets summed."""
    monkeypatch.setattr(triton_ops, "_MAX_BLOCK_FEATURES", 8)
    monkeypatch.setattr(triton_ops, "_TARGET_PROGRAMS", 4)
    assert triton_ops._launch_config(2, 37, 8, triton_ops._SPLINE_TILE_VALUES)["splits"] > 1
    x = _test_inputs(2, 37)
    _compare(
        triton_ops.rational_quadratic_spline,
        rational_quadratic_spline_reference,
        [x, *_spline_params((2, 37), 4, seed=9)],
        bound=BOUND,
    )


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=["empty-batch", "no-features"])
def test_spline_empty(shape: tuple[int, int]) -> None:
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    params = [tensor.requires_grad_() for tensor in _spline_params(shape, 4)]
    y, ladj = triton_ops.rational_quadratic_spline(x, *params)
    assert y.shape == shape and ladj.shape == shape[:1]
    assert torch.equal(ladj, torch.zeros(shape[:1], device=DEVICE))
    (y.sum() + ladj.sum()).backward()
    assert x.grad is not None and x.grad.shape == shape


def test_spline_bfloat16() -> None:
    """bfloat16 storage, float32 arithmetic: close to the float32 reference on the same rounded inputs."""
    x = _test_inputs(3, 5).to(torch.bfloat16)
    params = [tensor.to(torch.bfloat16) for tensor in _spline_params((3, 5), 8)]
    inputs = [tensor.requires_grad_() for tensor in [x, *params]]
    y, ladj = triton_ops.rational_quadratic_spline(*inputs, bound=BOUND)
    assert y.dtype == torch.bfloat16 and ladj.dtype == torch.bfloat16
    reference_inputs = [tensor.detach().float().requires_grad_() for tensor in inputs]
    y_ref, ladj_ref = rational_quadratic_spline_reference(*reference_inputs, bound=BOUND)
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ladj.float(), ladj_ref, rtol=1e-2, atol=2e-2)
    (y.float().sum() + ladj.float().sum()).backward()
    (y_ref.sum() + ladj_ref.sum()).backward()
    for ours, theirs in zip(inputs, reference_inputs):
        assert ours.grad.dtype == torch.bfloat16
        torch.testing.assert_close(ours.grad.float(), theirs.grad, rtol=2e-2, atol=2e-2)


def test_float64_falls_back_to_reference() -> None:
    x = _test_inputs(3, 4).double()
    params = [tensor.double() for tensor in _spline_params((3, 4), 4)]
    for ours, theirs in zip(
        triton_ops.rational_quadratic_spline(x, *params), rational_quadratic_spline_reference(x, *params)
    ):
        assert ours.dtype == torch.float64 and torch.equal(ours, theirs)
    shift, raw = torch.randn(2, 3, 4, device=DEVICE, dtype=torch.float64)
    for ours, theirs in zip(triton_ops.affine(x, shift, raw), affine_reference(x, shift, raw)):
        assert torch.equal(ours, theirs)


def test_spline_rejects_mismatched_bins() -> None:
    x = _test_inputs(2, 3)
    widths, heights, derivatives = _spline_params((2, 3), 4)
    with pytest.raises(ValueError, match="K \\+ 1 derivatives"):
        triton_ops.rational_quadratic_spline(x, widths, heights, derivatives[..., :-1])


def _affine_inputs(rows: int, features: int, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = _test_inputs(rows, features, seed).clamp(-50.0, 50.0)
    shift = torch.randn(rows, features, generator=generator).to(DEVICE)
    # Raw scales from tiny to large, both signs (tails of every parameterisation).
    raw = (torch.randn(rows, features, generator=generator) * 3.0).to(DEVICE)
    raw.view(-1)[:4] = torch.tensor([1e-7, -25.0, 25.0, 0.0])
    return [x, shift, raw]


@pytest.mark.parametrize("scale_function", SCALE_FUNCTIONS)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_affine_matches_reference(scale_function: str, inverse: bool) -> None:
    inputs = _affine_inputs(3, 5)
    if scale_function == "exp":
        inputs[2] = inputs[2].clamp(-8.0, 8.0)  # exp(25) * 50 would compare float32 round-off only
    _compare(
        triton_ops.affine,
        affine_reference,
        inputs,
        inverse=inverse,
        scale_function=scale_function,
        scale_bound=2.5,
    )


def test_affine_broadcast_split_and_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ops, "_MAX_BLOCK_FEATURES", 4)
    monkeypatch.setattr(triton_ops, "_TARGET_PROGRAMS", 4)
    x, _, _ = _affine_inputs(2, 19)
    shift, raw = torch.randn(2, 1, 19, device=DEVICE)  # shared over the batch rows

    def expanded_reference(x: Tensor, shift: Tensor, raw: Tensor, **options: object) -> tuple[Tensor, Tensor]:
        # The reference's log-det takes raw_scale's batch shape, so it needs raw_scale expanded.
        return affine_reference(x, shift, raw.expand_as(x), **options)

    _compare(triton_ops.affine, expanded_reference, [x, shift[0], raw[0]], scale_function="softplus")
    y, ladj = triton_ops.affine(
        torch.zeros(0, 4, device=DEVICE), torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
    )
    assert y.shape == (0, 4) and ladj.shape == (0,)


def test_affine_parameters_sliced_from_one_tensor() -> None:
    """Shift and raw scale interleaved in one `(..., d, 2)` tensor: read through strides, no copy."""
    x, _, _ = _affine_inputs(4, 5)
    generator = torch.Generator().manual_seed(17)
    params = torch.randn(4, 5, 2, generator=generator).to(DEVICE)

    def split(function: Callable) -> Callable:
        def affine(x: Tensor, params: Tensor, **options: object) -> tuple[Tensor, Tensor]:
            return function(x, params[..., 0], params[..., 1], **options)

        return affine

    for inverse in (False, True):
        _compare(split(triton_ops.affine), split(affine_reference), [x, params], inverse=inverse)


def test_affine_bfloat16() -> None:
    inputs = [tensor.to(torch.bfloat16).requires_grad_() for tensor in _affine_inputs(3, 5)]
    y, ladj = triton_ops.affine(*inputs, scale_function="tanh")
    assert y.dtype == torch.bfloat16 and ladj.dtype == torch.bfloat16
    reference_inputs = [tensor.detach().float().requires_grad_() for tensor in inputs]
    y_ref, ladj_ref = affine_reference(*reference_inputs, scale_function="tanh")
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ladj.float(), ladj_ref, rtol=1e-2, atol=2e-2)
    (y.float().sum() + ladj.float().sum()).backward()
    (y_ref.sum() + ladj_ref.sum()).backward()
    for ours, theirs in zip(inputs, reference_inputs):
        torch.testing.assert_close(ours.grad.float(), theirs.grad, rtol=2e-2, atol=2e-2)


def test_seam_routes_to_triton_when_forced() -> None:
    x = _test_inputs(2, 3)
    params = _spline_params((2, 3), 4)
    direct = triton_ops.rational_quadratic_spline(x, *params)
    with ops.use_backend("triton"):
        routed = ops.rational_quadratic_spline(x, *params)
        affine_routed = ops.affine(x, *params[0][..., :2].unbind(-1))
    for ours, theirs in zip(routed, direct):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(affine_routed, triton_ops.affine(x, *params[0][..., :2].unbind(-1))):
        assert torch.equal(ours, theirs)


def test_triton_backend_under_torch_compile_fullgraph() -> None:
    """The kernels are custom ops: one graph under `torch.compile(fullgraph=True)`, with their fused
    backward as the gradient (AOT autograd traces it with the fake implementations)."""
    x = _test_inputs(3, 4)
    params = _spline_params((3, 4), 4, seed=11)

    def layer(x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor) -> Tensor:
        y, ladj = ops.rational_quadratic_spline(x, widths, heights, derivatives, bound=BOUND)
        z, ladj_affine = ops.affine(y, widths[..., 0], heights[..., 0], scale_function="sigmoid")
        return (z * z).sum() + (ladj + ladj_affine).sum()

    graphs: list[str] = []

    def recording_aot_eager(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable:
        graphs.append(str(graph.graph))
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    compiled = torch.compile(layer, fullgraph=True, backend=recording_aot_eager)
    results = []
    for function in (layer, compiled):
        inputs = [tensor.clone().requires_grad_() for tensor in (x, *params)]
        with ops.use_backend("triton"):
            value = function(*inputs)
            value.backward()
        results.append([value.detach()] + [tensor.grad for tensor in inputs])
    for eager, graph in zip(*results):
        torch.testing.assert_close(graph, eager)
    assert len(graphs) == 1 and "flows.rational_quadratic_spline" in graphs[0] and "flows.affine" in graphs[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_compiled_kernels_at_scale(inverse: bool) -> None:
    """Many programs, feature splits and the auto backend on CUDA."""
    x = (torch.randn(4099, 37, device=DEVICE) * 3.0).contiguous()
    params = [tensor.to(DEVICE) for tensor in _spline_params((4099, 37), 16)]
    _compare(
        triton_ops.rational_quadratic_spline,
        rational_quadratic_spline_reference,
        [x, *params],
        inverse=inverse,
        rtol=1e-3,
        atol=1e-3,
    )
    _compare(triton_ops.affine, affine_reference, [x, params[0][..., 0], params[1][..., 0]], inverse=inverse)
    x_wide = torch.randn(3, 50_000, device=DEVICE)
    _compare(triton_ops.affine, affine_reference, [x_wide, x_wide.flip(0), x_wide.flip(1)])


@pytest.mark.slow
@pytest.mark.skipif(IN_PROCESS, reason="the kernels ran in this process")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA runs the compiled kernels in process")
def test_kernels_in_interpreter_subprocess() -> None:
    """Triton was imported without the interpreter before this module: run this file in a fresh process."""
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-x", "-p", "no:cacheprovider"]
        + ["-k", "not test_benchmark_smoke_run and not test_kernels_compile"],  # those run here already
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


@pytest.mark.slow
def test_benchmark_smoke_run() -> None:
    """`benchmarks/bench_kernels.py --smoke` runs every path (interpreter on the CPU) without crashing."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_kernels.py"), "--smoke"],
        cwd=root,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    for implementation in ("reference", "compiled", "triton"):
        assert any(line.startswith("spline fwd+bwd") and f" {implementation} " in line for line in lines)
        assert f"NSF train step {implementation}" in result.stdout
    assert "out of memory" not in result.stdout


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu() -> None:
    """The interpreter does not type-check like the compiler: compile every variant for sm_90 (Triton's
    bundled ptxas, no GPU) and require a register report for each."""
    root = Path(__file__).resolve().parents[1]
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "bench_kernels.py"),
            "--compile-only",
            "90",
            "--bins",
            "8",
        ],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("sm_90")]
    assert len(lines) == 2 * 2 + 4 * 2  # spline (direction x pass) and affine (scale x pass)
    assert all("registers" in line for line in lines), result.stdout


@pytest.mark.parametrize("bins", [2, 8])
def test_spline_inverse_without_cancellation(bins: int) -> None:
    # A flat first bin ending in a steep knot: near the top of the bin b < 0 and 2c / (-b - sqrt(D))
    # cancels. The kernel's float32 inverse must match the float64 reference of the same outputs.
    widths = torch.zeros(1, 1, bins)
    heights = torch.zeros(1, 1, bins)
    heights[..., 0] = -8.0
    derivatives = torch.zeros(1, 1, bins + 1)
    derivatives[..., 1] = 12.0
    knot_y = spline_knots(widths, heights, derivatives, 3.0, 1e-3, 1e-3, 1e-3)[1].double()
    fraction = torch.linspace(0.05, 0.999, 64, dtype=torch.float64)
    y = (knot_y[0, 0, 0] + fraction * (knot_y[0, 0, 1] - knot_y[0, 0, 0])).float()[:, None]
    params = [p.expand(64, 1, -1) for p in (widths, heights, derivatives)]
    x_kernel, _ = triton_ops.rational_quadratic_spline(y, *params, inverse=True)
    x_exact, _ = rational_quadratic_spline_reference(y.double(), *(p.double() for p in params), inverse=True)
    assert float((x_kernel.double() - x_exact).abs().max()) < 2e-5
