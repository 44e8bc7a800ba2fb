"""One registry of every bijector for the generic tests: adding a bijector is one line here.

Each case builds a fresh bijector (with its own seed, so two builds differ) for a given dtype.
Sections are grouped by family; keep entries small (events of at most ~50 elements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flows.core import Bijector


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], Bijector]
    event_shape: tuple[int, ...]
    context_features: int = 0
    # Some bijectors (BatchNorm in train mode, dropout) are only invertible in eval mode; every math
    # test runs in eval mode. `needs_init` cases get `initialize(x)` called on a batch first.
    needs_init: bool = False


CASES: list[Case] = []


def register(case: Case) -> None:
    CASES.append(case)


def _load() -> None:
    # Each family registers itself in its own module under tests/cases/ so that the files do not collide.
    import importlib
    import pkgutil

    import tests.cases as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"tests.cases.{module.name}")


_load()
