"""Training layer above the core: Lightning module, configs, data, the `run` entry point, the estimator, the CLI.

The names below are imported on first access, so that importing a light module of this package (the CLI,
the config) imports neither lightning nor torch; `import flows` does not import this package at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows._lazy import lazy_attributes

if TYPE_CHECKING:
    from flows.training.checkpoint_evaluation import evaluate_checkpoint
    from flows.training.config import Config, ConfigError, load_config, parse_config
    from flows.training.estimator import DensityEstimator
    from flows.training.pipeline import RunResult, run, validate

__all__ = [
    "Config",
    "ConfigError",
    "DensityEstimator",
    "RunResult",
    "evaluate_checkpoint",
    "load_config",
    "parse_config",
    "run",
    "validate",
]

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    "Config": "flows.training.config",
    "ConfigError": "flows.training.config",
    "load_config": "flows.training.config",
    "parse_config": "flows.training.config",
    "DensityEstimator": "flows.training.estimator",
    "RunResult": "flows.training.pipeline",
    "run": "flows.training.pipeline",
    "validate": "flows.training.pipeline",
    "evaluate_checkpoint": "flows.training.checkpoint_evaluation",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
