"""The token layers behind TarFlow and Jet: causality of `CausalTransformer` (autograd), its key-value cache
against the full pass, the three inverses of `Autoregressive` against each other, `Patchify` against an
explicit loop, declared event shapes in `Chain`, and the presets built from a YAML model section."""

from __future__ import annotations

import pytest
import torch

from flows.bijectors import Coupling, ImageCoupling, Patchify, ReverseTokens, Squeeze, TokenCoupling
from flows.bijectors.autoregressive import Autoregressive
from flows.core import Chain, Inverse
from flows.nn import MLP, CausalTransformer, ViT
from flows.training.registry import check_model_options, model_builder
from flows.transformers import Affine
from tests.helpers import randomize

SMALL = {"channels": 8, "layers": 2, "heads": 2, "mlp_ratio": 2}


def _network(tokens: int = 5, features: int = 3, context_features: int = 2) -> CausalTransformer:
    torch.manual_seed(0)
    return randomize(CausalTransformer(tokens, features, 2, context_features, **SMALL)).double()


def test_causal_transformer_output_depends_only_on_earlier_tokens() -> None:
    """d out[t] / d x[s] is zero for s >= t and non-zero for some s < t (autograd Jacobian)."""
    network = _network()
    x, context = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: network(v, context), x)  # (5, 3, 2, 5, 3)
    per_token = jacobian.abs().sum(dim=(1, 2, 4))  # (out token, in token)
    assert torch.equal(per_token.triu(), torch.zeros_like(per_token))
    assert (per_token.tril(-1)[1:, 0] > 0).all(), "later tokens must see token 0"
    # Token 0's parameters come from the start token and the context alone: the context changes them.
    assert not torch.allclose(network(x, context)[0], network(x, context + 1.0)[0])


def test_causal_decoder_matches_the_full_pass() -> None:
    network = _network()
    x, context = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    full = network(x, context)
    decoder = network.decoder(context, torch.Size([4]))
    steps = [decoder.step(None)] + [decoder.step(x[:, t]) for t in range(4)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-12, rtol=1e-12)
    with pytest.raises(RuntimeError, match="already produced all 5 tokens"):
        decoder.step(x[:, 4])


def test_vit_sees_every_token_and_the_context() -> None:
    torch.manual_seed(0)
    vit = randomize(ViT(4, 3, 5, context_features=2, **SMALL)).double()
    x, context = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    out = vit(x, context)
    assert out.shape == (2, 4, 5)
    jacobian = torch.autograd.functional.jacobian(lambda v: vit(v, context[0]), x[0])  # (4, 5, 4, 3)
    assert (jacobian.abs().sum(dim=(1, 3)) > 0).all(), "non-causal: every output token sees every input token"
    assert not torch.allclose(out, vit(x, context + 1.0))


@pytest.mark.parametrize("context_features", [0, 2])
def test_cached_naive_and_fixed_point_inverses_agree(context_features: int) -> None:
    network = _network(context_features=context_features)
    layer = Autoregressive(network, Affine(), inverse_tol=0.0).double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    context = torch.randn(6, context_features, dtype=torch.float64) if context_features else None
    y, ladj = layer(x, context)
    cached = layer._inverse_cached(y, context)
    naive = layer._inverse_sequential(y, context)
    fixed, fixed_ladj, steps = layer._inverse_fixed_point(y, context)
    assert steps <= 5
    for x_back, ladj_back in (cached, naive, (fixed, fixed_ladj)):
        torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ladj_back, -ladj, atol=1e-10, rtol=1e-10)
    # "auto" takes the cache, and use_cache=False the naive loop: same numbers as the methods called above.
    torch.testing.assert_close(layer.inverse(y, context)[0], cached[0], atol=0, rtol=0)
    layer.use_cache = False
    layer.inverse_method = "sequential"
    torch.testing.assert_close(layer.inverse(y, context)[0], naive[0], atol=0, rtol=0)


def test_cached_inverse_calls_the_network_once_per_token_not_per_prefix() -> None:
    """The cache runs each transformer block on one token per step: T block calls of length 1 in all."""
    network = _network(tokens=6, context_features=0)
    layer = Autoregressive(network, Affine()).double()
    lengths: list[int] = []
    network.blocks[0].register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    original_step = network.blocks[0].step

    def counted(h: torch.Tensor, cache: object) -> object:
        lengths.append(h.shape[1])
        return original_step(h, cache)

    network.blocks[0].step = counted  # type: ignore[method-assign]
    layer.inverse(torch.randn(2, 6, 3, dtype=torch.float64))
    assert lengths == [1] * 6
    lengths.clear()
    layer.use_cache = False
    layer.inverse(torch.randn(2, 6, 3, dtype=torch.float64))
    assert lengths == [6] * 6, "the naive loop reruns the whole sequence at every step"


def test_autoregressive_rejects_a_conditioner_without_a_declared_event() -> None:
    with pytest.raises(ValueError, match="must declare event_shape"):
        Autoregressive(MLP(3, 6), Affine())
    with pytest.raises(TypeError, match="must be a flows Transformer"):
        Autoregressive(_network(), "affine")  # type: ignore[arg-type]


def test_patchify_matches_an_explicit_loop_and_inverts() -> None:
    patchify = Patchify((3, 4, 6), 2)
    x = torch.randn(2, 5, 3, 4, 6)
    tokens, ladj = patchify(x)
    assert tokens.shape == (2, 5, 6, 12) and torch.equal(ladj, torch.zeros(2, 5))
    for i in range(2):
        for j in range(3):
            for a in range(2):
                for b in range(2):
                    for c in range(3):
                        assert torch.equal(
                            tokens[..., i * 3 + j, (a * 2 + b) * 3 + c], x[..., c, 2 * i + a, 2 * j + b]
                        )
    assert torch.equal(patchify.inverse(tokens)[0], x)
    assert torch.equal(Inverse(patchify)(tokens)[0], x)
    with pytest.raises(ValueError, match="divisible by patch_size=3"):
        Patchify((1, 4, 6), 3)


def test_reverse_tokens_is_its_own_inverse() -> None:
    x = torch.randn(3, 4, 2)
    y, ladj = ReverseTokens()(x)
    assert torch.equal(y[:, 0], x[:, 3]) and torch.equal(ladj, torch.zeros(3))
    assert torch.equal(ReverseTokens().inverse(y)[0], x)


def test_chain_checks_declared_event_shapes_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"member 1 \(Coupling\).*\(5,\).*member 0 \(Coupling\).*takes event shape \(4,\)"
    ):
        Chain(Coupling(5), Coupling(4))
    with pytest.raises(ValueError, match=r"takes events of rank 3, but member 0 \(Coupling\) gives rank 1"):
        Chain(Coupling(4), Squeeze((1, 2, 2)))
    with pytest.raises(ValueError, match=r"Patchify takes event shape \(1, 4, 4\), got \(4, 2, 2\)"):
        Chain(Squeeze((1, 4, 4)), Patchify((1, 4, 4), 2))
    # Undeclared layers (ReverseTokens) pass the shape on; the chain declares what it takes and gives.
    chain = Chain(ReverseTokens(), Inverse(Patchify((1, 4, 4), 2)), ImageCoupling((1, 4, 4)))
    assert chain.input_event_shape == (4, 4) and chain.output_event_shape == (1, 4, 4)
    assert chain.event_dims == 2 and chain.output_event_dims == 3
    assert Inverse(chain).input_event_shape == (1, 4, 4) and Inverse(chain).output_event_shape == (4, 4)
    with pytest.raises(ValueError, match=r"TokenCoupling takes event shape \(4, 3\), got \(4, 4\)"):
        Chain(Patchify((1, 4, 4), 2), TokenCoupling(4, 3, **SMALL))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("tarflow", {"patch_size": 2, "blocks": 2, "layers_per_block": 1, "channels": 8, "heads": 2}),
        (
            "jet",
            {"patch_size": 4, "couplings": 3, "layers_per_coupling": 1, "channels": 8, "splits": "channels"},
        ),
    ],
)
def test_presets_build_from_a_model_section(name: str, options: dict) -> None:
    checked = check_model_options({"name": name, **options}, "image")
    flow = model_builder(name, "image")(shape=(1, 8, 8), context_features=3, **checked)
    x, context = torch.randn(4, 1, 8, 8), torch.randn(4, 3)
    assert flow.log_prob(x, context).shape == (4,)
    # A fresh flow is the identity (zero-initialised heads), so its density is the standard normal's.
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(flow.log_prob(x, context), expected)
    assert flow.sample((2,), context[:2]).shape == (2, 2, 1, 8, 8)
    with pytest.raises(Exception, match="model.heads"):
        check_model_options({"name": name, **options, "heads": "two"}, "image")


def test_flow_checks_the_transform_against_the_base_event_shape() -> None:
    from flows import Flow, StandardNormal

    with pytest.raises(
        ValueError, match=r"takes event shape \(4,\) and gives \(4,\), but the base .* \(5,\)"
    ):
        Flow(Chain(Coupling(4)), StandardNormal(5))
    with pytest.raises(
        ValueError, match=r"gives \(4, 4\), but the base distribution's event shape is \(1, 4, 4\)"
    ):
        Flow(Patchify((1, 4, 4), 2), StandardNormal((1, 4, 4)))


@pytest.mark.parametrize("name", ["tarflow", "jet"])
def test_presets_score_and_sample_an_empty_batch(name: str) -> None:
    """Zero rows in, zero rows out (the attention's head merge once could not infer its width at n = 0);
    the empty batch's shapes match a non-empty one's."""
    from flows.presets_transformer import Jet, TarFlow

    torch.manual_seed(0)
    shape = (1, 8, 8)
    flow = (
        TarFlow(shape, blocks=1, layers_per_block=1, channels=8, heads=2) if name == "tarflow" else Jet(shape)
    )
    assert flow.log_prob(torch.randn(0, *shape)).shape == (0,)
    assert flow.sample((0,)).shape == (0, *shape)
    two = flow.log_prob(torch.randn(2, *shape))
    assert two.shape == (2,) and bool(torch.isfinite(two).all())
