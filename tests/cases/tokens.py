"""Generic-test cases for the token layers: causal-transformer `Autoregressive` (every inverse method),
`TokenCoupling` (ViT conditioner, both splits), `Patchify`, `ReverseTokens`, and small TarFlow / Jet."""

from __future__ import annotations

from flows.bijectors.autoregressive import Autoregressive
from flows.bijectors.conv import Invertible1x1Conv
from flows.bijectors.token_coupling import TokenCoupling
from flows.bijectors.tokens import Patchify, ReverseTokens
from flows.core import Chain, Inverse
from flows.nn import CausalTransformer
from flows.presets_transformer import Jet, TarFlow
from flows.transformers import make_transformer
from tests.registry import Case, register

SMALL = {"channels": 8, "layers": 2, "heads": 2, "mlp_ratio": 2}


def _causal(
    transformer: str = "affine",
    context_features: int = 0,
    tokens: int = 4,
    features: int = 3,
    **inverse: object,
) -> Autoregressive:
    built = make_transformer(transformer, **({"bins": 3} if transformer == "spline" else {}))
    network = CausalTransformer(tokens, features, built.num_params, context_features, **SMALL)
    return Autoregressive(network, built, **inverse)  # type: ignore[arg-type]


for name, inverse in [
    ("cached", {}),
    ("naive", {"use_cache": False, "inverse_method": "sequential"}),
    ("fixed-point", {"inverse_method": "fixed_point"}),
]:
    register(Case(f"causal-transformer-affine-{name}", lambda i=inverse: _causal(**i), (4, 3)))
register(Case("causal-transformer-spline-context", lambda: _causal("spline", 2), (4, 3), context_features=2))
register(Case("causal-transformer-one-token", lambda: _causal(tokens=1, features=2), (1, 2)))
register(Case("inverse-causal-transformer-context", lambda: Inverse(_causal("affine", 3)), (4, 3), 3))

for split in ["channels", "spatial"]:
    register(
        Case(
            f"token-coupling-{split}-context",
            lambda s=split: TokenCoupling(4, 3, s, grid_width=2, context_features=2, **SMALL),
            (4, 3),
            context_features=2,
        )
    )
register(
    Case(
        "patchify-reverse-tokens",
        lambda: Chain(
            Invertible1x1Conv(2),
            Patchify((2, 4, 2), 2),
            _causal(tokens=2, features=8),
            ReverseTokens(),
            TokenCoupling(2, 8, "channels", **SMALL),
            Inverse(Patchify((2, 4, 2), 2)),
        ),
        (2, 4, 2),
    )
)
register(
    Case(
        "tarflow-small-context",
        lambda: (
            TarFlow((1, 4, 4), 2, patch_size=2, blocks=2, layers_per_block=1, channels=8, heads=2).transform
        ),
        (1, 4, 4),
        context_features=2,
    )
)
register(
    Case(
        "jet-small-context",
        lambda: (
            Jet((2, 4, 4), 2, patch_size=2, couplings=2, layers_per_coupling=1, channels=8, heads=2).transform
        ),
        (2, 4, 4),
        context_features=2,
    )
)
