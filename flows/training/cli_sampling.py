"""`flows sample --method importance | metropolis | hmc`: samples of a target run's flow, weighted or corrected.

`importance`: flow samples with their log importance weights (`log_weight` column); `metropolis`:
independent Metropolis-Hastings chains with the flow as proposal (`--local rwm|mala` adds local moves in the
latent space); `hmc`: HMC in the flow's latent space (NeuTra); chains come with `chain`, `step` columns, the
acceptance rates and the autocorrelation ESS per second printed. The target is rebuilt from the checkpoint's `target` section:
a built-in by name; a user's `module:attr` only when `--trust-target` names it (a checkpoint never makes flows
import code).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from flows.flow_mcmc import flow_mcmc
from flows.targets.registry import TARGETS, make_target
from flows.training.checkpoints import LoadedModel
from flows.training.config import ConfigError
from flows.training.evaluation import write_samples
from flows.training.sampling_objectives import seeded

__all__ = ["sample_target_run"]


def sample_target_run(loaded: LoadedModel, arguments: argparse.Namespace) -> int:
    """Write `-n` samples of a target run with `arguments.method` to `arguments.out`; returns 0."""
    section = loaded.config.target
    if not section.name:
        raise ConfigError(
            f"--method {arguments.method} needs a checkpoint of a target run (a target: section); "
            f"{arguments.ckpt} was trained on data"
        )
    if section.name not in TARGETS and getattr(arguments, "trust_target", None) != section.name:
        raise ConfigError(
            f"{arguments.ckpt} names the target {section.name!r}, a Python module: loading a checkpoint never "
            "imports the code it names (a file from anyone could name a module planted beside it); if you trust "
            f"that module, pass --trust-target {section.name}"
        )
    try:
        target = make_target(section.name, section.features, **section.options)
    except ValueError as error:
        raise ConfigError(
            f"cannot rebuild the checkpoint's target {section.name!r} ({error}); a Python object target is "
            "reloaded with flows.VariationalSampler.load(path, log_prob)"
        ) from error
    flow, n = loaded.flow, arguments.num_samples
    columns = [f"x{i}" for i in range(loaded.features)]
    seed = 0 if arguments.seed is None else arguments.seed
    with torch.no_grad(), seeded(seed, torch.device("cpu")):
        if arguments.method == "importance":
            x, log_q = flow.sample_and_log_prob((n,))
            log_p = target.log_prob(x)
            log_w = torch.where(torch.isfinite(log_p), log_p - log_q, -math.inf)
            table = torch.cat([x.double(), log_w.double()[:, None]], 1).numpy()
            path = write_samples(Path(arguments.out), table, [*columns, "log_weight"])
            print(f"wrote {n} samples with their log importance weights to {path}")
            return 0
    chains = max(1, min(arguments.chains, n))
    steps = math.ceil(n / chains)
    with seeded(seed, torch.device("cpu")):
        result = flow_mcmc(
            flow,
            target.log_prob,
            steps,
            chains,
            "hmc" if arguments.method == "hmc" else "independent",
            arguments.local,
            arguments.local_steps,
            arguments.step_size,
            warmup=arguments.warmup,
        )
    states = result.samples.double().numpy()  # (steps, chains, D)
    step_index, chain_index = np.meshgrid(np.arange(steps), np.arange(chains), indexing="ij")
    table = np.concatenate(
        [states.reshape(-1, loaded.features), chain_index.reshape(-1, 1), step_index.reshape(-1, 1)], 1
    )
    path = write_samples(Path(arguments.out), table[:n], [*columns, "chain", "step"])
    message = (
        f"wrote {min(n, table.shape[0])} {arguments.method} samples ({chains} chains x {steps} steps) to "
        f"{path}; acceptance rate "
        + ", ".join(f"{name} {rate:.3f}" for name, rate in result.acceptance.items())
    )
    if steps >= 4:
        ess = float(result.effective_sample_size().min())
        message += (
            f"; autocorrelation ESS {ess:.0f} (worst coordinate), {result.ess_per_second():.3g} per second"
        )
    print(message)
    return 0
