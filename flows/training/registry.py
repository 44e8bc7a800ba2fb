"""The model registry: one table from `model.name` to the builder of each kind of data (tables, images).

A builder's keyword parameters are the configurable options of a `model` section, checked against its
signature (unknown key -> error listing the valid ones; wrong type -> error naming the key, the expected type
and the value). The data fills the rest (`features` or `shape`, and `context_features`).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from flows.core import Chain
from flows.distributions import StandardNormal
from flows.flow import Flow
from flows.presets import MAF, NSF, RealNVP
from flows.presets_image import Glow, RealNVPImage
from flows.presets_transformer import Jet, TarFlow
from flows.training.config import ConfigError, check_value, unknown_key_error
from flows.training.context import check_embedding

__all__ = [
    "DATA_ARGUMENTS",
    "MODELS",
    "Kind",
    "check_model_options",
    "gaussian",
    "model_builder",
    "model_parameters",
    "with_model_defaults",
]

Kind = Literal["table", "image"]


def gaussian(features: int, context_features: int = 0) -> Flow:
    """A full-covariance Gaussian baseline: one LU-parameterised affine map to N(0, I)."""
    from flows.bijectors.linear import LULinear

    if context_features:
        raise ValueError("the gaussian baseline is unconditional; got context_features > 0")
    return Flow(Chain(LULinear(features)), StandardNormal(features))


#: model name -> {kind of data: builder returning a `flows.Flow`}
MODELS: dict[str, dict[str, Callable[..., Flow]]] = {
    "maf": {"table": MAF},
    "nsf": {"table": NSF},
    "realnvp": {"table": RealNVP, "image": RealNVPImage},
    "glow": {"image": Glow},
    "tarflow": {"image": TarFlow},
    "jet": {"image": Jet},
    "gaussian": {"table": gaussian},
}

#: keyword arguments filled in from the data, never from the config
DATA_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "table": ("features", "context_features"),
    "image": ("shape", "context_features"),
}

_DATASETS = {"table": "a table dataset", "image": "an image dataset (data.dataset: image:<name>)"}


def _names(kind: str) -> list[str]:
    return sorted(name for name, builders in MODELS.items() if kind in builders)


def model_builder(name: Any, kind: Kind = "table") -> Callable[..., Flow]:
    """The builder registered under `name` for `kind` of data; a ConfigError naming the choices otherwise."""
    builders = MODELS.get(name) if isinstance(name, str) else None
    if builders is None:
        raise ConfigError(
            f"config key 'model.name': expected one of {_names(kind)} for {_DATASETS[kind]}, got {name!r}"
        )
    if kind not in builders:
        other = next(iter(builders))
        raise ConfigError(
            f"config key 'model.name': model {name!r} is for {_DATASETS[other]}; models for {_DATASETS[kind]} "
            f"are {_names(kind)}"
        )
    return builders[kind]


def model_parameters(name: str, kind: Kind = "table") -> dict[str, inspect.Parameter]:
    """The configurable keyword parameters of model `name` (data-given ones excluded)."""
    signature = inspect.signature(model_builder(name, kind))
    return {
        key: parameter
        for key, parameter in signature.parameters.items()
        if key not in DATA_ARGUMENTS[kind]
        and key != "self"
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to no type checks
        return {}


def check_model_options(model: Mapping[str, Any], kind: Kind = "table") -> dict[str, Any]:
    """Validate a `model` section for `kind` of data; returns the builder's keyword arguments (no `name`)."""
    if "name" not in model:
        raise ConfigError(f"config key 'model.name' is required; expected one of {_names(kind)}")
    name = model["name"]
    builder = model_builder(name, kind)
    parameters = model_parameters(name, kind)
    hints = _type_hints(builder)
    options: dict[str, Any] = {}
    for key, value in model.items():
        if key == "name":
            continue
        if (
            key == "embedding" and kind == "table"
        ):  # the context's embedding network, checked with the context
            check_embedding(value)
            continue
        if key in DATA_ARGUMENTS[kind]:
            raise ConfigError(
                f"config key 'model.{key}' is set from the data and cannot be configured; remove it"
            )
        if key not in parameters:
            raise unknown_key_error(f"model.{key}", list(parameters), f"model ({name})")
        options[key] = check_value(f"model.{key}", value, hints.get(key, Any))
    for key, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and key not in options:
            raise ConfigError(f"config key 'model.{key}' is required by model {name!r}")
    return options


def with_model_defaults(model: Mapping[str, Any], kind: Kind = "table") -> dict[str, Any]:
    """The `model` section with every omitted option at its default, as plain YAML values.

    Saved configs and checkpoints carry the whole architecture, so a later change of a preset's default
    never changes what an old checkpoint rebuilds.
    """
    resolved = dict(model)
    for key, parameter in model_parameters(model["name"], kind).items():
        if key not in resolved and parameter.default is not inspect.Parameter.empty:
            default = parameter.default
            resolved[key] = list(default) if isinstance(default, tuple) else default
    return resolved
