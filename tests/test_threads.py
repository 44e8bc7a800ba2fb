"""`train.num_threads`: `auto` (the default) picks a count in 1..cores from the model and batch size, and every
setting leaves the caller's thread count as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flows
from flows.training.config import ConfigError, parse_config
from flows.training.threads import WORK_PER_THREAD, auto_threads, available_cores, resolve_threads


class _Sized(torch.nn.Module):
    """A module with `count` trainable parameters (and a frozen buffer-like one that does not count)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(count))
        self.frozen = torch.nn.Parameter(torch.zeros(10**6), requires_grad=False)


def test_auto_threads_stays_within_one_and_the_cores() -> None:
    small, large = _Sized(1000), _Sized(10**6)
    assert auto_threads(small, 256, cores=8) == 1  # a small flow: one thread
    rows_for_three = int(3 * WORK_PER_THREAD // 10**6)
    assert auto_threads(large, rows_for_three, cores=8) == 3
    assert auto_threads(large, 100 * rows_for_three, cores=8) == 8  # capped by the cores
    assert auto_threads(large, 100 * rows_for_three, cores=1) == 1
    assert 1 <= auto_threads(large, 100 * rows_for_three) <= available_cores()
    assert resolve_threads("auto", small, 64) == 1
    assert resolve_threads(3, small, 64) == 3 and resolve_threads(None, small, 64) is None


def test_num_threads_config_accepts_auto_ints_and_null_only() -> None:
    assert parse_config({}).train.num_threads == "auto"
    assert parse_config({"train": {"num_threads": 2}}).train.num_threads == 2
    assert parse_config({"train": {"num_threads": None}}).train.num_threads is None
    for bad in ("many", 0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="train.num_threads"):
            parse_config({"train": {"num_threads": bad}})


@pytest.mark.parametrize("setting", ["auto", 2, None])
def test_fit_restores_the_callers_thread_count(setting: object, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = flows.Flow.log_prob

    def spy(self, *args, **kwargs):  # the count in force while the model trains
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(flows.Flow, "log_prob", spy)
    previous = torch.get_num_threads()
    caller = 3 if previous != 3 else 4
    torch.set_num_threads(caller)
    try:
        rows = np.random.default_rng(0).normal(size=(200, 2))
        flows.DensityEstimator(
            "gaussian", max_steps=3, max_epochs=None, batch_size=64, num_threads=setting
        ).fit(rows)
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(previous)
    expected = {"auto": 1, 2: 2, None: caller}[setting]  # a tiny model: auto picks one thread
    assert seen and set(seen) == {expected}
