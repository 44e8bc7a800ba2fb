"""`DensityEstimator.save` / `load`: one file of tensors and plain data (loaded without running code)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from flows.io import atomic_save
from flows.training.checkpoints import ESTIMATOR_FORMAT, load_model
from flows.training.config import ConfigError
from flows.training.safety import read_checkpoint

__all__ = ["EstimatorPersistence"]


class EstimatorPersistence:
    """`DensityEstimator`'s `save` and `load` (a mixin)."""

    def save(self, path: Union[str, Path]) -> Path:
        """Write the fitted model (config, columns, weights) to one file; reload with `DensityEstimator.load`."""
        self._check_fitted()
        path = Path(path)
        payload = {
            "format": ESTIMATOR_FORMAT,
            "record": self.record_,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in self.get_params().items()},
            "state_dict": self.flow_.state_dict(),
            "dtype": str(self._dtype()).removeprefix("torch."),
            "categories": dict(getattr(self, "categories_", {})),
            "frame": hasattr(self, "feature_names_in_"),
            "fit_info": {
                "best_val_nll": self.best_val_nll_,
                "epochs": self.n_epochs_,
                "steps": self.n_steps_,
                "compile": self.compile_,
            },
        }
        atomic_save(payload, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> Any:
        """Rebuild a fitted estimator from `save`'s file (or from a `flows fit` checkpoint)."""
        payload = read_checkpoint(path)
        loaded = load_model(path, payload=payload)
        saved_dtype = payload.get("dtype")
        if saved_dtype is not None and saved_dtype not in ("float32", "float64"):
            raise ValueError(f"{path}: expected a dtype of float32 or float64, got {saved_dtype!r}")
        for key, kind in (("fit_info", Mapping), ("categories", Mapping), ("params", Mapping)):
            if payload.get(key) is not None and not isinstance(payload[key], kind):
                raise ValueError(f"{path}: expected {key} to be a mapping, got {type(payload[key]).__name__}")
        params = payload.get("params")
        if params is None:  # a Lightning checkpoint: rebuild the parameters from its config
            config = loaded.config
            params = {
                "model": config.model["name"],
                **{k: v for k, v in config.model.items() if k != "name"},
                "seed": config.seed,
            }
        # Built without its `trainer` section, which is checked against `lightning.Trainer` (importing
        # Lightning: seconds) and matters only to `fit`, which checks it again; scoring and sampling need neither.
        try:
            estimator = cls(**{**params, "trainer": None})
        except (ConfigError, TypeError) as error:  # saved by another version, or edited
            warnings.warn(
                f"{path}: the saved estimator's parameters do not validate ({error}); it scores and samples "
                "with its saved flow, but get_params() and a refit use the defaults",
                stacklevel=2,
            )
            estimator = cls(model=loaded.config.model["name"])
        else:
            estimator.trainer = params.get("trainer")
        dtype = getattr(torch, str(saved_dtype or ""), None)
        estimator.flow_ = loaded.flow.to(dtype) if isinstance(dtype, torch.dtype) else loaded.flow
        estimator.record_ = payload.get("record") or payload.get("hyper_parameters")
        estimator.columns_ = loaded.columns
        estimator.n_features_in_ = loaded.features
        estimator.context_columns_ = list(loaded.context_columns)
        estimator.columns_plan_ = loaded.plan
        text = {
            loaded.columns[j]: list(labels) for j, labels in loaded.plan.labels.items()
        }  # YAML string labels
        estimator.categories_ = dict(payload.get("categories") or text)
        if payload.get("frame"):
            estimator.feature_names_in_ = np.asarray(loaded.columns, dtype=object)
        info = payload.get("fit_info", {})
        estimator.best_val_nll_ = info.get("best_val_nll")
        estimator.n_epochs_ = info.get("epochs")
        estimator.n_steps_ = info.get("steps")
        compile_choice = info.get("compile")
        estimator.compile_ = compile_choice if isinstance(compile_choice, str) else None
        estimator.config_ = loaded.config
        return estimator
