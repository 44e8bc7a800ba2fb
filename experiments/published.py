"""Published numbers for side-by-side tables: UCI test log-likelihoods (nats, higher is better) and image
bits/dim (lower is better).

Transcribed from the project's reference notes. ``status`` says how each number was obtained: "copied" =
from another paper's table (cite that table), "checked" = against the paper itself. Keys are
(dataset, model label), the label being the config file stem minus the dataset prefix
(``configs/uci/power_nsf_coupling.yaml`` -> ``("power", "nsf_coupling")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["PUBLISHED_IMAGES", "PUBLISHED_UCI", "PublishedNumber", "published_for", "uci_markdown"]


@dataclass(frozen=True)
class PublishedNumber:
    """One literature number: the model as published, its test log-likelihood and where it comes from."""

    model: str
    test_log_likelihood: float  # for images: bits/dim (see unit)
    status: str
    citation: str
    unit: str = "nats"


_MAF_T1 = "Papamakarios et al. 2017 (MAF), Table 1"
_NSF_T1 = "Durkan et al. 2019 (Neural Spline Flows), Table 1"
_DATASETS = ("power", "gas", "hepmass", "miniboone", "bsds300")

# model label -> (name as published, status, citation, numbers in _DATASETS order)
_ROWS: dict[str, tuple[str, str, str, tuple[float, ...]]] = {
    "maf": ("MAF (5)", "copied", _MAF_T1, (0.14, 9.07, -17.70, -11.75, 155.69)),
    "realnvp": ("RealNVP (10)", "copied", _MAF_T1, (0.17, 8.33, -18.71, -13.84, 153.28)),
    "nsf_coupling": ("RQ-NSF (C)", "copied", _NSF_T1, (0.64, 13.09, -14.75, -9.67, 157.54)),
    "nsf_autoregressive": ("RQ-NSF (AR)", "copied", _NSF_T1, (0.66, 13.09, -14.01, -9.22, 157.31)),
}

#: (dataset, model label) -> published number
PUBLISHED_UCI: dict[tuple[str, str], PublishedNumber] = {
    (dataset, label): PublishedNumber(name, value, status, citation)
    for label, (name, status, citation, values) in _ROWS.items()
    for dataset, value in zip(_DATASETS, values)
}


_FFJORD_T2 = "Grathwohl et al. 2019 (FFJORD), Table 2"

#: (image dataset, model label) -> published test bits/dim
PUBLISHED_IMAGES: dict[tuple[str, str], PublishedNumber] = {
    ("mnist", "realnvp"): PublishedNumber("RealNVP", 1.06, "checked", _FFJORD_T2, "bits/dim"),
    ("cifar10", "realnvp"): PublishedNumber("RealNVP", 3.49, "checked", _FFJORD_T2, "bits/dim"),
    ("mnist", "glow"): PublishedNumber("Glow", 1.05, "checked", _FFJORD_T2, "bits/dim"),
    ("cifar10", "glow"): PublishedNumber("Glow", 3.35, "checked", _FFJORD_T2, "bits/dim"),
}


def published_for(dataset: str, model_label: str) -> Optional[PublishedNumber]:
    """The literature number for a (dataset, model label) pair, or None when there is none."""
    key = (dataset.lower(), model_label.lower())
    return PUBLISHED_UCI.get(key) or PUBLISHED_IMAGES.get(key)


def uci_markdown(config_dir: str = "configs/uci") -> str:
    """Markdown table: published UCI numbers per model, and the command that re-runs each row's configs."""
    labels = list(_ROWS)
    header = "| model | " + " | ".join(d.upper() for d in _DATASETS) + " | source | reproduce (GPU) |"
    lines = [header, "|" + "---|" * (len(_DATASETS) + 3)]
    for label in labels:
        name, status, citation, values = _ROWS[label]
        command = f"`python -m experiments.run --configs {config_dir}/*_{label}.yaml --out results/uci --override data.root=$MAF_DATA`"
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {cells} | {status}: {citation} | {command} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(uci_markdown())
