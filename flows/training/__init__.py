"""Training layer above the core: Lightning module, configs, data, the `run` entry point, the estimator, the CLI.

Importing this package imports lightning; `import flows` does not (it exposes `DensityEstimator` lazily).
"""

from __future__ import annotations

from flows.training.config import Config, ConfigError, load_config, parse_config
from flows.training.estimator import DensityEstimator
from flows.training.pipeline import RunResult, run, validate
from flows.training.tasks.tabular import evaluate_checkpoint

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
