"""Conditioner networks: `MLP`, `ResidualNet`, `MaskedLinear`, `MADE`, `ConvNet`, `CausalTransformer`, `ViT`.

Every network's last layer is zero-initialised, so a fresh coupling or autoregressive layer outputs
zero raw parameters, which every `flows.transformers` transformer maps to the identity. All networks
accept any leading batch dimensions. One module per network; this package re-exports them.
"""

from __future__ import annotations

from flows.nn.causal import CausalDecoder, CausalTransformer
from flows.nn.conv import ConvNet
from flows.nn.made import MADE, MaskedLinear, made_degrees
from flows.nn.mlp import MLP, ResidualNet
from flows.nn.vit import ViT

__all__ = [
    "MLP",
    "ResidualNet",
    "MaskedLinear",
    "MADE",
    "ConvNet",
    "CausalTransformer",
    "CausalDecoder",
    "ViT",
    "made_degrees",
]
