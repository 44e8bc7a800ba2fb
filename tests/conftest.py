"""Test-session settings: one torch thread per pytest worker (CI runs `-n 2` on 2 cores, and
oversubscribed threads make the suite several times slower), and Triton's interpreter without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Triton decides at import time whether to interpret its kernels: without CUDA, run them on CPU tensors
# under the interpreter so that the kernel tests run in-process (CI has no GPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
