"""A streamed run on 2 DDP processes (CPU, gloo): each training row is seen once per epoch across the ranks,
and the parameters equal those of one process with the same global batch and the same shards.

The DDP run is a script in a subprocess (Lightning's `ddp` strategy re-launches it for rank 1) whose
training step records the id column of every batch it trains on, per rank and epoch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.datasets.stream import TRAIN, split_of_rows
from flows.training import run
from tests.helpers import assert_same_trained_state, ddp_environment, last_state
from tests.test_streaming import table_with_ids, write_parquet

REPO = Path(__file__).resolve().parents[1]

RECORDER = """
import json, sys
import numpy as np
import flows.training.module as module

seen = []
step = module.FlowModule.training_step

def recording_step(self, batch, index):
    seen.append([int(self.trainer.current_epoch), batch[0][:, 0].tolist()])
    return step(self, batch, index)

module.FlowModule.training_step = recording_step
from flows.training import run
config = json.loads(open(sys.argv[1]).read())
result = run(config, verbose=False)
rank = int(__import__("os").environ.get("LOCAL_RANK", 0))
open(sys.argv[2] + f"-{rank}.json", "w").write(json.dumps(seen))
"""


def _config(tmp_path: Path, name: str, batch_size: int, devices: int) -> dict:
    return {
        "seed": 5,
        "data": {
            "dataset": f"file:{tmp_path / 'ids.parquet'}",
            "streaming": True,
            "shards": 2,
            "shuffle_buffer": 64,
        },
        "model": {
            "name": "nsf",
            "transforms": 2,
            "hidden_features": [16, 16],
            "residual_blocks": 1,
            "bins": 4,
        },
        "train": {
            "batch_size": batch_size,
            "max_epochs": 2,
            "lr": 3e-3,
            "warmup_steps": 2,
            "early_stopping_patience": None,
            "num_threads": 1,
        },
        "trainer": {"accelerator": "cpu", "devices": devices, **({"strategy": "ddp"} if devices > 1 else {})},
        "output": {
            "dir": str(tmp_path),
            "name": name,
            "samples": 0,
            "plots": False,
            "progress_bar": False,
            "logger": "none",
        },
    }


@pytest.mark.slow
def test_streamed_ddp_sees_each_row_once_and_matches_one_process(tmp_path: Path) -> None:
    x = table_with_ids(640, seed=4)
    x[:, 0] /= 100.0  # ids 0.00 .. 6.39: exact in float32 after * 100 and rounding
    write_parquet(tmp_path / "ids.parquet", x, 50)
    config_path = tmp_path / "ddp.json"
    config_path.write_text(json.dumps(_config(tmp_path, "ddp", 32, 2)))
    script = tmp_path / "recorder.py"  # a file: Lightning relaunches the same command for rank 1
    script.write_text(RECORDER)
    ddp = subprocess.run(
        [sys.executable, str(script), str(config_path), str(tmp_path / "seen")],
        capture_output=True,
        text=True,
        env=ddp_environment(REPO),
        timeout=300,
        cwd=REPO,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    train_ids = set(np.flatnonzero(split_of_rows(0, 640, 5, 0.1, 0.1) == TRAIN).tolist())
    ranks = [json.loads((tmp_path / f"seen-{rank}.json").read_text()) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0  # the same number of steps on both ranks
    for epoch in (0, 1):
        ids = [round(i * 100) for rank in ranks for e, batch in rank if e == epoch for i in batch]
        assert len(ids) == len(set(ids))  # no row twice in an epoch, across ranks
        assert (
            set(ids) <= train_ids and len(train_ids) - len(ids) < 2 * 33
        )  # all but the shards' ragged rests
    epochs = [[i for e, b in ranks[0] if e == epoch for i in b] for epoch in (0, 1)]
    assert epochs[0] != epochs[1]  # a new order every epoch

    single = run(_config(tmp_path, "single", 64, 1), verbose=False)
    assert single.metrics["steps"] == len(ranks[0])
    initial = run(
        {
            **_config(tmp_path, "initial", 64, 1),
            "train": {**_config(tmp_path, "i", 64, 1)["train"], "max_steps": 1},
        },
        verbose=False,
    )
    assert_same_trained_state(
        last_state(tmp_path / "ddp"), last_state(tmp_path / "single"), last_state(initial.run_dir)
    )
