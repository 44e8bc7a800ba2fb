"""Conditioner networks: MADE's autoregressive property (autograd), zero init, shapes, image conditioners."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flows.bijectors.autoregressive import MaskedAutoregressive
from flows.bijectors.coupling import (
    Coupling,
    ImageCoupling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flows.nn import MADE, MLP, ConvNet, ResidualNet
from flows.nn import _common as nn_common
from tests.helpers import randomize


def made_jacobian(made: MADE, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """`d out[d, p] / d x[i]` at one point: shape `(features, P, features)`."""
    return torch.func.jacrev(lambda v: made(v, context))(x)


@pytest.mark.parametrize("residual_blocks", [0, 2])
@pytest.mark.parametrize("context_features", [0, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_made_is_autoregressive_in_its_order(seed: int, context_features: int, residual_blocks: int) -> None:
    features = 6
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(features, generator=generator) if seed else None
    hidden = (16, 16) if residual_blocks else (16, 11, 7)
    torch.manual_seed(seed)
    # tanh (no dead units) so that every allowed dependence is visible at a single point.
    made = MADE(
        features,
        context_features,
        hidden,
        3,
        residual_blocks=residual_blocks,
        order=order,
        activation=nn.Tanh,
    ).double()
    randomize(made, scale=0.5, seed=seed)
    order = made.order
    x = torch.randn(features, dtype=torch.float64, generator=generator)
    context = torch.randn(context_features, dtype=torch.float64) if context_features else None
    jacobian = made_jacobian(made, x, context).abs().sum(dim=1)  # (out d, in i)
    allowed = order[None, :] < order[:, None]
    assert (jacobian[~allowed] == 0).all(), "an output depends on an input at or after it in the order"
    # The dependence allowed is used: with random weights, every allowed connection is non-zero.
    assert (jacobian[allowed] > 0).all(), "an allowed dependence is missing"
    if context_features:
        context_jacobian = torch.func.jacrev(lambda c: made(x, c))(context).abs().sum(dim=(1, 2))
        assert (context_jacobian > 0).all(), "every output (even the first in the order) sees the context"


def test_made_output_shape_batch_and_zero_init() -> None:
    made = MADE(4, 2, (8, 8), params_per_feature=5)
    x, context = torch.randn(2, 3, 4), torch.randn(3, 2)
    out = made(x, context.expand(2, 3, 2))
    assert out.shape == (2, 3, 4, 5)
    assert (out == 0).all(), "a fresh MADE outputs zeros (identity transformers)"
    with pytest.raises(ValueError, match="context"):
        made(x)


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1], [1, 2, 3]])
def test_made_rejects_bad_orders(order: list[int]) -> None:
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, order=torch.tensor(order))


def test_made_rejects_unequal_residual_widths() -> None:
    with pytest.raises(ValueError, match="equal hidden widths"):
        MADE(3, hidden_features=(8, 4), residual_blocks=1)


@pytest.mark.parametrize(
    "network",
    [
        lambda: MLP(5, 7, (8, 8), activation=nn.ELU, dropout=0.1),
        lambda: ResidualNet(5, 7, 8, residual_blocks=2, dropout=0.1, batch_norm=True),
    ],
    ids=["mlp", "residual"],
)
def test_dense_networks_shapes_and_zero_last_layer(network) -> None:
    net = network()
    out = net(torch.randn(2, 3, 5))
    assert out.shape == (2, 3, 7)
    assert (out == 0).all()
    randomize(net)
    assert (net.eval()(torch.randn(4, 5)) != 0).any()


@pytest.mark.parametrize(
    "network",
    [
        lambda fm: MLP(5, 12, (8, 8), feature_major_output=fm),
        lambda fm: ResidualNet(5, 12, 8, residual_blocks=2, feature_major_output=fm),
        lambda fm: MADE(5, 2, (8, 8), params_per_feature=3, feature_major_output=fm),
    ],
    ids=["mlp", "residual", "made"],
)
def test_feature_major_output_is_the_same_map_stored_transposed(network, monkeypatch) -> None:
    """`feature_major_output` changes the output's storage only: the same parameters (the state dicts load
    into each other), values and gradients as the plain network, with the rows innermost in memory (here at
    any size; by default only from `FEATURE_MAJOR_MIN_ELEMENTS` outputs on)."""
    monkeypatch.setattr(nn_common, "FEATURE_MAJOR_MIN_ELEMENTS", 0)
    plain = randomize(network(False)).double()
    transposed = network(True).double()
    transposed.load_state_dict(plain.state_dict())
    generator = torch.Generator().manual_seed(0)
    for batch in [(7,), (2, 3), (0,)]:
        x = torch.randn(batch + (5,), dtype=torch.float64, generator=generator, requires_grad=True)
        context = torch.randn(batch + (2,), dtype=torch.float64, generator=generator)
        inputs = (x, context) if isinstance(plain, MADE) else (x,)
        expected, out = plain(*inputs), transposed(*inputs)
        torch.testing.assert_close(out, expected, rtol=0.0, atol=1e-12)
        rows = out.reshape(-1, out.shape[-1] if out.dim() == len(batch) + 1 else out.shape[-2:].numel())
        if rows.shape[0] > 1:
            assert rows.stride() == (1, rows.shape[0]) and expected.is_contiguous()
        weights = torch.randn(out.shape, dtype=torch.float64, generator=generator)
        grads = torch.autograd.grad((out * weights).sum(), [x, *transposed.parameters()])
        expected_grads = torch.autograd.grad((expected * weights).sum(), [x, *plain.parameters()])
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=0.0, atol=1e-12)


def test_spline_conditioners_hand_their_parameters_over_without_a_copy() -> None:
    """A spline layer's conditioner stores its output feature-major, so the spline's elements-last layout of
    it is a view of the same memory; affine layers, and outputs below `FEATURE_MAJOR_MIN_ELEMENTS`, keep the
    plain layout."""
    from flows.ops.spline_reference import _elements_last

    x = torch.randn(512, 6)
    spline = randomize(Coupling(6, transformer="spline", bins=4))
    x_cond, _ = spline.split(x)
    params = spline.conditioner(x_cond, None)
    assert _elements_last(params, 2).data_ptr() == params.data_ptr()
    made = MaskedAutoregressive(6, transformer="spline", bins=4)
    assert made.conditioner(x, None).reshape(512, -1).stride() == (1, 512)
    assert 512 * 39 >= nn_common.FEATURE_MAJOR_MIN_ELEMENTS > 16 * 78  # outputs of the spline layers here
    assert spline.conditioner(spline.split(x[:16])[0], None).is_contiguous()
    assert made.conditioner(x[:16], None).is_contiguous()
    affine = randomize(Coupling(6, transformer="affine"))
    assert affine.conditioner(affine.split(x)[0], None).is_contiguous()


def test_residual_net_batch_norm_flattens_batch_dims() -> None:
    net = randomize(ResidualNet(3, 2, 8, residual_blocks=1, batch_norm=True)).train()
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(net(x).reshape(20, 2), net(x.reshape(20, 3)))


def test_conv_net_context_channels_and_batch_dims() -> None:
    net = randomize(ConvNet(2, 6, hidden_channels=4, context_features=3))
    x, context = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 3)
    out = net(x, context)
    assert out.shape == (2, 3, 6, 4, 4)
    torch.testing.assert_close(out[1, 2], net(x[1, 2:3], context[1, 2:3])[0])
    # The context is a constant extra channel: a context equals a conv over constant images.
    assert not torch.allclose(out, net(x, context + 1.0))
    assert (ConvNet(2, 6, 4)(x[0]) == 0).all(), "the last convolution starts at zero"


def test_masks() -> None:
    assert alternating_mask(5).tolist() == [True, False, True, False, True]
    assert half_mask(5, parity=True).tolist() == [False, False, False, True, True]
    board = checkerboard_mask((2, 2, 3))
    assert board[1].tolist() == [[True, False, True], [False, True, False]] and (board[0] == board[1]).all()
    channels = channel_mask((3, 2, 2), parity=True)
    assert channels[:, 0, 0].tolist() == [False, False, True] and channels.sum() == 4


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_image_coupling_keeps_conditioning_pixels_and_depends_only_on_them(mask: str) -> None:
    torch.manual_seed(0)
    shape = (4, 4, 4)
    layer = randomize(ImageCoupling(shape, "affine", mask=mask, hidden_channels=8)).double()
    keep = layer.mask
    x = torch.randn(shape, dtype=torch.float64)
    y, _ = layer(x)
    torch.testing.assert_close(y[keep], x[keep])
    jacobian = torch.func.jacrev(lambda v: layer(v)[0])(x).reshape(x.numel(), x.numel())
    flat = keep.reshape(-1)
    transformed = torch.nonzero(~flat).reshape(-1)
    # Transformed outputs depend on conditioning inputs and on themselves (diagonally) only.
    block = jacobian[transformed][:, transformed]
    torch.testing.assert_close(block, torch.diag(torch.diagonal(block)))
    assert jacobian[transformed][:, flat].abs().sum() > 0


def test_fresh_layers_are_the_identity() -> None:
    x = torch.randn(7, 6)
    for layer in [
        Coupling(6, "spline", residual_blocks=2, hidden_features=(8, 8)),
        Coupling(6, "affine", mask="half"),
        MaskedAutoregressive(6, "spline", residual_blocks=1, hidden_features=(8, 8)),
    ]:
        y, ladj = layer(x)
        torch.testing.assert_close(y, x)
        torch.testing.assert_close(ladj, torch.zeros(7))
    image = torch.randn(3, 2, 4, 4)
    y, ladj = ImageCoupling((2, 4, 4), "spline", mask="channel", hidden_channels=4)(image)
    torch.testing.assert_close(y, image)


def test_sequential_inverse_matches_iaf_and_runs_made_once_per_feature() -> None:
    torch.manual_seed(0)
    layer = randomize(
        MaskedAutoregressive(5, "affine", hidden_features=(8, 8), order=torch.tensor([2, 0, 4, 1, 3]))
    )
    layer = layer.double()
    calls = []
    layer.made.register_forward_hook(lambda *_: calls.append(1))
    z = torch.randn(3, 5, dtype=torch.float64)
    x, ladj = layer.inv(z)  # IAF forward = MAF inverse
    assert len(calls) == 5
    z_back, ladj_forward = layer(x)
    torch.testing.assert_close(z_back, z)
    torch.testing.assert_close(ladj + ladj_forward, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Coupling(1), "features"),
        (lambda: Coupling(4, mask="diagonal"), "mask"),
        (lambda: Coupling(4, "spline", bins=1), "bins"),
        (lambda: Coupling(4, "spline", bins=4, transformer_options={"bins": 5}), "bins"),
        (lambda: Coupling(4, "cubic"), "transformer"),
        (lambda: Coupling(4, hidden_features=(8, 4), residual_blocks=1), "equal hidden widths"),
        (lambda: ImageCoupling((1, 4, 4), mask="channel"), "channel"),
        (lambda: MaskedAutoregressive(0), "features"),
    ],
)
def test_bad_arguments_raise(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_missing_context_raises() -> None:
    with pytest.raises(ValueError, match="context"):
        Coupling(4, context_features=2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="event shape"):
        Coupling(4)(torch.randn(3, 5))
