"""Test-session settings: one torch thread per pytest worker (CI runs `-n 2` on 2 cores, and
oversubscribed threads make the suite several times slower), and deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
