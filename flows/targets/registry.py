"""Targets by name (`funnel`, `gmm40`, `double_well`, `many_well`, `phi4`) with keyword arguments, or a user's
own as `"module:attr"`, imported only when named: an object with `log_prob` (a target), or a callable
`log_prob(x) -> (batch,)` (then `features` is required; other options are bound as keyword arguments).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, Optional

from flows.targets.base import FunctionTarget, Target
from flows.targets.funnel import Funnel
from flows.targets.lattice import PhiFour
from flows.targets.mixture import GaussianMixture
from flows.targets.wells import DoubleWell, ManyWell

__all__ = ["TARGETS", "make_target"]

#: built-in targets: name -> constructor
TARGETS: dict[str, Callable[..., Target]] = {
    "funnel": Funnel,
    "gmm40": GaussianMixture,
    "gaussian_mixture": GaussianMixture,
    "double_well": DoubleWell,
    "many_well": ManyWell,
    "phi4": PhiFour,
}

_REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def make_target(name: str, features: Optional[int] = None, **options: Any) -> Target:
    """The target `name` (built-in or `module:attr`) built with `options`; `features` where it applies.

    Raises ValueError naming the valid names for an unknown name, or the expected form of a reference.
    """
    if not isinstance(name, str):
        raise ValueError(f"target name: expected a str (a built-in name or 'module:attr'), got {name!r}")
    if ":" in name:
        return _user_target(name, features, options)
    if name not in TARGETS:
        raise ValueError(
            f"unknown target {name!r}; built-in targets: {', '.join(sorted(TARGETS))} (or 'module:attr' "
            "for your own)"
        )
    builder = TARGETS[name]
    if features is not None:
        if "features" not in inspect.signature(builder).parameters:
            target = builder(**options)
            if target.features != features:
                raise ValueError(
                    f"target {name!r} has {target.features} features, the config asks for {features}"
                )
            return target
        options = dict(options, features=features)
    try:
        return builder(**options)
    except TypeError as error:
        allowed = ", ".join(inspect.signature(builder).parameters)
        raise ValueError(f"target {name!r}: {error}; its options are: {allowed}") from error


def _user_target(reference: str, features: Optional[int], options: dict[str, Any]) -> Target:
    if not _REFERENCE.match(reference):
        raise ValueError(
            f"a user target must be given as 'module:attr' (dotted module path, one attribute), got {reference!r}"
        )
    module_name, attr = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"target {reference!r}: cannot import module {module_name!r}: {error}") from error
    if not hasattr(module, attr):
        raise ValueError(f"target {reference!r}: module {module_name!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if hasattr(obj, "log_prob") and not inspect.isclass(obj):
        target = obj
    elif inspect.isclass(obj) and hasattr(obj, "log_prob"):
        target = obj(**options) if features is None else obj(features=features, **options)
    elif callable(obj):
        if features is None:
            raise ValueError(f"target {reference!r} is a log_prob function: give its dimension as features")
        function = functools.partial(obj, **options) if options else obj
        return FunctionTarget(function, int(features))
    else:
        raise ValueError(
            f"target {reference!r}: expected a callable or an object with log_prob, got {type(obj).__name__}"
        )
    if features is not None and int(getattr(target, "features", -1)) != features:
        raise ValueError(
            f"target {reference!r} has {getattr(target, 'features', None)} features, expected {features}"
        )
    return target
