"""Rebuild a trained flow from a file: a Lightning checkpoint of `flows fit` or a `DensityEstimator.save` file.

Both hold `hyper_parameters` (the resolved config, the number of features, the column names, whether the
standardisation was folded in) and the weights, so a fresh process needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from flows.flow import Flow
from flows.training.config import Config, parse_config
from flows.training.models import build_flow

__all__ = ["LoadedModel", "load_model", "model_record"]

ESTIMATOR_FORMAT = "flows.DensityEstimator/1"


@dataclass
class LoadedModel:
    """A flow in evaluation mode (CPU, in the float dtype of its saved weights) and what it was trained with."""

    flow: Flow
    config: Config
    columns: list[str]
    features: int
    dtype: torch.dtype = torch.float32
    #: the columns a conditional model conditions on (empty: unconditional)
    context_columns: list[str] = field(default_factory=list)
    #: the column bounds, dequantised columns and categories (`flows.training.columns.ColumnPlan`)
    plan: Any = None


def model_record(
    config: Config,
    features: int,
    columns: list[str],
    standardized: bool,
    context: Any = None,
    plan: Any = None,
) -> dict[str, Any]:
    """The hyper-parameters stored next to the weights: enough to rebuild the flow's architecture.

    `context` (a `flows.training.context.ContextStats`): the context columns and their standardisation.
    `plan` (a `flows.training.columns.ColumnPlan`): the column bounds, dequantised columns and categories.
    """
    record = {
        "config": config.to_dict(),
        "features": int(features),
        "columns": [str(c) for c in columns],
        "standardized": bool(standardized),
    }
    if context is not None:
        record["context"] = context.record()
    if plan is not None:
        record["columns_plan"] = plan.record()
    return record


def build_from_record(record: dict[str, Any]) -> tuple[Flow, Config]:
    """An untrained flow with the architecture described by `record` (placeholder standardisation)."""
    from flows.training.columns import ColumnPlan
    from flows.training.context import stats_from_record

    config = parse_config(record["config"])
    features = int(record["features"])
    context = stats_from_record(record.get("context"))
    plan = ColumnPlan.from_record(record.get("columns_plan"), features)
    if plan.features != features:  # the plan decides the model's width: it must describe the record's columns
        raise ValueError(
            f"the weights do not fit the model its record describes: the record has {features} features but a "
            f"column plan of {plan.features} columns"
        )
    support, width = plan.support(), plan.model_features
    if record.get("standardized", False):
        mean, std = np.zeros(width), np.ones(width)
        flow = build_flow(config.model, width, mean, std, context=context, support=support)
    else:
        flow = build_flow(config.model, width, context=context, support=support)
    return plan.wrap(flow), config


def load_model(
    path: Union[str, Path],
    map_location: Union[str, torch.device] = "cpu",
    payload: Optional[dict[str, Any]] = None,
) -> LoadedModel:
    """Load a `.ckpt` written by `flows fit` or a file written by `DensityEstimator.save`. `payload`: the file
    already read with `read_checkpoint` (by a caller that needs its other entries too: read once)."""
    from flows.training.safety import error_summary, read_checkpoint

    path = Path(path)
    if payload is None:  # clear errors for missing, truncated or foreign files
        payload = read_checkpoint(path, map_location)
    record = payload.get("hyper_parameters") or payload.get("record")
    if not isinstance(record, dict) or "config" not in record or "features" not in record:
        raise ValueError(f"{path} has no flows model record (config and features); was it written by flows?")
    try:
        flow, config = build_from_record(record)
        columns = list(record.get("columns") or [f"x{i}" for i in range(int(record["features"]))])
        plan = _plan_of(record)
        context_columns = list((record.get("context") or {}).get("columns", []))
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as error:  # (ConfigError too)
        raise ValueError(
            f"{path}: its model record is not one flows writes ({error_summary(error, 300)}); a damaged or edited "
            "checkpoint"
        ) from None
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"{path}: expected a state_dict mapping names to tensors, got {type(state).__name__}"
        )
    if len(columns) != int(record["features"]):
        raise ValueError(
            f"{path}: its record names {len(columns)} columns for {int(record['features'])} features; a damaged or "
            "edited checkpoint"
        )
    if payload.get("format") != ESTIMATOR_FORMAT:  # a Lightning checkpoint of FlowModule: keys "flow.*"
        state = {key[len("flow.") :]: value for key, value in state.items() if key.startswith("flow.")}
    _check_state(path, state, flow)
    dtype = next((v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()), None)
    if dtype is not None:  # a float64 fit stays float64 (load_state_dict would round it to the flow's dtype)
        flow.to(dtype)
    try:
        flow.load_state_dict(state)
    except RuntimeError as error:  # weights of another architecture than the record describes
        raise ValueError(f"{path}: the weights do not fit the model its record describes: {error}") from error
    except ValueError as error:  # a structural buffer that describes no valid layer (Bijector.check_state)
        raise ValueError(f"{path}: {error}") from None
    flow.eval()
    return LoadedModel(
        flow=flow,
        config=config,
        columns=columns,
        features=int(record["features"]),
        dtype=dtype or torch.float32,
        context_columns=context_columns,
        plan=plan,
    )


def _check_state(path: Path, state: dict[str, Any], flow: torch.nn.Module) -> None:
    """A ValueError naming the entries of a checkpoint's `state` that no model of flows holds: values that are
    not tensors, floating-point weights in another type than float32 / float64 (complex, integer, 16-bit:
    load_state_dict would cast them silently), non-finite parameters and NaN in any buffer (NaN weights score
    every row -inf and sample NaN)."""
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{path}: expected a state_dict mapping names to tensors, got other entries")
    expected = flow.state_dict()
    parameters = {name for name, _ in flow.named_parameters()}
    wrong_type, non_finite = [], []
    for key, value in state.items():
        target = expected.get(key)
        if target is None or not target.is_floating_point():
            continue  # (unexpected keys are load_state_dict's error; integer buffers are checked by their owner)
        if value.dtype not in (torch.float32, torch.float64):
            wrong_type.append(f"{key} ({str(value.dtype).removeprefix('torch.')})")
        elif bool(torch.isnan(value).any()) or (key in parameters and not bool(torch.isfinite(value).all())):
            non_finite.append(key)  # (buffers may hold +-inf: a column's open bounds; never NaN)
    if wrong_type:
        raise ValueError(
            f"{path}: expected float32 or float64 weights, got {', '.join(wrong_type[:5])}"
            + (f" and {len(wrong_type) - 5} more" if len(wrong_type) > 5 else "")
        )
    if non_finite:
        raise ValueError(
            f"{path}: expected finite weights, got NaN or infinite values in {non_finite[:5]}"
            + (f" and {len(non_finite) - 5} more" if len(non_finite) > 5 else "")
            + "; the checkpoint is damaged or was saved from a diverged run"
        )


def _plan_of(record: dict[str, Any]) -> Any:
    from flows.training.columns import ColumnPlan

    return ColumnPlan.from_record(record.get("columns_plan"), int(record["features"]))
