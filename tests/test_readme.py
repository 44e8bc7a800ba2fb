"""The README's Python example runs as written and fits its data (a Gaussian with a known entropy)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_example_runs_and_fits_the_data() -> None:
    example = python_blocks()[0]
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    flow, x = namespace["flow"], namespace["x"]
    assert namespace["log_density"].shape == (5,)
    assert namespace["samples"].shape == (16, 2)
    assert namespace["latent"].shape == (5, 2)
    # The data are Gaussian with covariance A^T A: the best achievable mean NLL is its entropy.
    a = torch.tensor([[1.0, 0.8], [0.0, 0.6]])
    entropy = 0.5 * math.log(torch.linalg.det(2 * math.pi * math.e * a.T @ a).item())
    with torch.no_grad():
        nll = -flow.log_prob(x).mean().item()
    assert nll == pytest.approx(entropy, abs=0.05), f"NLL {nll:.3f} vs entropy {entropy:.3f}"


def test_readme_names_exist() -> None:
    import flows

    text = README.read_text()
    for name in re.findall(r"flows\.presets\.(\w+)", text):
        assert hasattr(flows.presets, name), name
    for name in re.findall(r"flows\.(\w+)\(", text):
        assert hasattr(flows, name), name
