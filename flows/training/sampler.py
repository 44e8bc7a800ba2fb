"""`VariationalSampler`: a flow trained to sample an unnormalised density, with importance-sampling tools.

    sampler = flows.VariationalSampler(log_prob, features=10, steps=2000, gradient="path").fit()
    x, log_w = sampler.sample(10_000, return_log_weights=True)
    sampler.effective_sample_size(100_000), sampler.log_normalizer(100_000)

Training runs through the pipeline's `SamplingTask` (reverse KL, checkpoints, the non-finite guard) in a
temporary directory (or `output_dir`); the estimator conventions of `DensityEstimator` otherwise.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from flows.ais import annealed_importance_log_weights
from flows.diagnostics import effective_sample_size, log_normalizer, weight_summary
from flows.flow_mcmc import flow_mcmc
from flows.io import atomic_save
from flows.mcmc import ChainResult
from flows.samplers import importance_resample
from flows.targets.base import FunctionTarget, Target
from flows.targets.registry import make_target
from flows.training.checkpoints import load_model
from flows.training.config import TrainConfig
from flows.training.fitting import train
from flows.training.safety import read_checkpoint
from flows.training.sampling_objectives import seeded, validation_log_weights
from flows.training.tasks.sampling import SamplingData, SamplingTask
from flows.training.trainer import quiet_lightning_logs

__all__ = ["VariationalSampler"]

SAMPLER_FORMAT = "flows.VariationalSampler/1"
TRAIN_KEYS = {f for f in TrainConfig.__dataclass_fields__} - {"objective", "max_steps", "batch_size", "lr"}
GRADIENTS = {
    "path": "reverse_kl_path",
    "reparam": "reverse_kl",
    "forward": "maximum_likelihood",
    "forward_path": "maximum_likelihood_path",
}


def _as_target(log_prob: Union[Callable[[Tensor], Tensor], Target, str], features: Optional[int]) -> Target:
    if isinstance(log_prob, str):
        return make_target(log_prob, features)
    if hasattr(log_prob, "log_prob") and hasattr(log_prob, "features"):
        if features is not None and int(log_prob.features) != features:
            raise ValueError(f"the target has {log_prob.features} features, features={features} was given")
        return log_prob  # type: ignore[return-value]
    if features is None:
        raise ValueError("a log_prob function needs features=D (the dimension it takes)")
    return FunctionTarget(log_prob, int(features))  # type: ignore[arg-type]


class VariationalSampler:
    """A normalizing flow `q` fitted to an unnormalised `log_prob(x: (batch, D)) -> (batch,)` by reverse KL.

    `log_prob` may be a callable (with `features=D`), a `flows.targets.Target`, or a target name
    (`"funnel"`, `"module:attr"`). `gradient`: `"path"` (sticking the landing), `"reparam"`, `"forward"`
    (maximum likelihood on the target's exact samples) or `"forward_path"` (its path-gradient variant). `model_options` go to the model's preset; other
    `train` keys (e.g. `gradient_clip`, `val_every_n_steps`) are accepted as keyword arguments too.
    """

    def __init__(
        self,
        log_prob: Union[Callable[[Tensor], Tensor], Target, str],
        features: Optional[int] = None,
        model: str = "nsf",
        *,
        steps: int = 2000,
        batch_size: int = 256,
        lr: float = 1e-3,
        gradient: str = "path",
        scale: float = 1.0,
        validation_samples: int = 4096,
        seed: int = 0,
        trainer: Optional[dict[str, Any]] = None,
        output_dir: Optional[Union[str, Path]] = None,
        verbose: bool = False,
        **options: Any,
    ) -> None:
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient: expected one of {', '.join(GRADIENTS)}, got {gradient!r}")
        self.target = _as_target(log_prob, features)
        #: the config's target.name: the name given, else a placeholder (a Python object is not rebuilt)
        self.target_name = log_prob if isinstance(log_prob, str) else f"<{type(self.target).__name__}>"
        self.features = int(self.target.features)
        self.model, self.steps, self.batch_size, self.lr = model, steps, batch_size, lr
        self.gradient, self.scale, self.validation_samples, self.seed = (
            gradient,
            scale,
            validation_samples,
            seed,
        )
        self.trainer = dict(trainer or {})
        self.output_dir, self.verbose = output_dir, verbose
        self.train_options = {k: v for k, v in options.items() if k in TRAIN_KEYS}
        self.model_options = {k: v for k, v in options.items() if k not in TRAIN_KEYS}
        self.config_ = self._config()  # validates every option now

    def _config(self) -> Any:
        train = {
            "objective": GRADIENTS[self.gradient],
            "max_steps": self.steps,
            "max_epochs": None,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "early_stopping_patience": None,
            **self.train_options,
        }
        train.setdefault("val_every_n_steps", max(1, min(self.steps, 250)))
        values = {
            "seed": self.seed,
            "target": {
                "name": self.target_name,
                "features": self.features,
                "scale": self.scale,
                "validation_samples": self.validation_samples,
            },
            "model": {"name": self.model, **self.model_options},
            "train": train,
            "trainer": self.trainer,
            "output": {
                "dir": str(self.output_dir) if self.output_dir is not None else "runs",
                "name": "sampler",
                "samples": 0,
                "plots": False,
                "logger": "csv" if self.output_dir is not None else "none",
                "progress_bar": self.verbose,
            },
        }
        return SamplingTask().resolve(values)

    def fit(self) -> VariationalSampler:
        """Train the flow (`steps` optimiser steps of `batch_size` samples); returns self."""
        config = self._config()
        data = SamplingData(self.target)
        with quiet_lightning_logs(not self.verbose):
            if self.output_dir is None:
                with tempfile.TemporaryDirectory(prefix="flows-sampler-") as directory:
                    fitted = train(SamplingTask(), config, data, Path(directory), quiet=not self.verbose)
            else:
                run_dir = Path(self.output_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                fitted = train(SamplingTask(), config, data, run_dir, quiet=not self.verbose)
        self.flow_ = fitted.model.cpu().eval()
        self.record_ = fitted.record
        self.best_val_reverse_kl_ = fitted.best_val
        self.n_steps_ = fitted.info["steps"]
        self.config_ = config
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "flow_"):
            raise RuntimeError("this VariationalSampler is not fitted yet: call fit() (or load a saved one)")

    def _log_weights(self, n: int, seed: Optional[int]) -> Tensor:
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        seed = int(torch.randint(2**62, ()).item()) if seed is None else int(seed)
        return validation_log_weights(self.flow_, self.target, n, seed).double()

    def sample(
        self, n: int, return_log_weights: bool = False, seed: Optional[int] = None
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """`n` samples `(n, D)` of the flow; with `return_log_weights`, also `log p~(x) - log q(x)` `(n,)`
        (-inf where the target is NaN or infinite). `seed` fixes them."""
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        with (
            torch.no_grad(),
            seeded(seed, torch.device("cpu")) if seed is not None else contextlib.nullcontext(),
        ):
            x, log_q = self.flow_.sample_and_log_prob((n,))
            if not return_log_weights:
                return x
            log_p = self.target.log_prob(x)
        return x, torch.where(torch.isfinite(log_p), log_p - log_q, -math.inf)

    def effective_sample_size(self, n: int = 100_000, seed: Optional[int] = None) -> float:
        """Normalised Kish ESS in [0, 1] of `n` fresh samples."""
        return effective_sample_size(self._log_weights(n, seed))

    def log_normalizer(
        self, n: int = 100_000, seed: Optional[int] = None, method: str = "is", **ais_options: Any
    ) -> tuple[float, float]:
        """`(log Z estimate, standard error)` from `n` fresh samples: `method="is"`, importance sampling with
        the flow; `"ais"`, annealed importance sampling from the flow to the target (`flows.ais`; options
        `steps`, `kernel`, `step_size`, `leapfrog_steps`, `moves_per_step`), the FAB papers' evaluation."""
        if method == "is":
            if ais_options:
                raise ValueError(f"options {sorted(ais_options)} apply to method='ais' only")
            return log_normalizer(self._log_weights(n, seed))
        if method != "ais":
            raise ValueError(f"method: expected 'is' or 'ais', got {method!r}")
        self._check_fitted()
        with seeded(seed, torch.device("cpu")) if seed is not None else contextlib.nullcontext():
            log_w = annealed_importance_log_weights(self.flow_, self.target.log_prob, n, **ais_options)
        return log_normalizer(log_w)

    def diagnostics(self, n: int = 100_000, seed: Optional[int] = None) -> dict[str, float]:
        """ESS, log Z ± SE, Pareto k-hat and zero-weight fraction of `n` fresh samples."""
        return weight_summary(self._log_weights(n, seed))

    def resample(self, n: int, proposals: int = 100_000, seed: Optional[int] = None) -> Tensor:
        """`n` samples `(n, D)` by importance resampling of `proposals` flow samples."""
        x, log_w = self.sample(proposals, return_log_weights=True, seed=seed)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        return importance_resample(x, log_w, n, generator)

    def mcmc(
        self,
        n_steps: int,
        n_chains: int = 1,
        method: str = "independent",
        local: Optional[str] = None,
        local_steps: int = 1,
        step_size: Optional[float] = None,
        leapfrog_steps: int = 10,
        warmup: int = 0,
        seed: Optional[int] = None,
    ) -> ChainResult:
        """MCMC in the flow's latent space (`flows.flow_mcmc`): `method="independent"` (the flow as the
        proposal of independent Metropolis-Hastings), each step followed by `local_steps` `local` moves
        (`"rwm"` or `"mala"`), or `method="hmc"` (NeuTra). `warmup` steps adapt the local step size first.
        Returns a `flows.mcmc.ChainResult`: `samples (n_steps, n_chains, D)`, `acceptance` per kernel,
        `effective_sample_size()`, `ess_per_second()`."""
        self._check_fitted()
        with seeded(seed, torch.device("cpu")) if seed is not None else contextlib.nullcontext():
            return flow_mcmc(
                self.flow_,
                self.target.log_prob,
                n_steps,
                n_chains,
                method,
                local,
                local_steps,
                step_size,
                leapfrog_steps,
                warmup,
            )

    def metropolis(
        self,
        n_steps: int,
        n_chains: int = 1,
        local: Optional[str] = None,
        seed: Optional[int] = None,
        **options: Any,
    ) -> tuple[Tensor, float]:
        """Independent Metropolis-Hastings with the flow as proposal, optionally interleaved with `local`
        (`"rwm"` | `"mala"`) moves: chains `(n_steps, n_chains, D)` and the acceptance rate of the
        independent moves (`mcmc` gives every kernel's rate and the ESS)."""
        result = self.mcmc(n_steps, n_chains, "independent", local, seed=seed, **options)
        return result.samples, result.acceptance["independent"]

    def hmc(self, n_steps: int, n_chains: int = 1, seed: Optional[int] = None, **options: Any) -> ChainResult:
        """Hamiltonian Monte Carlo on the target pulled back to the flow's latent space (NeuTra)."""
        return self.mcmc(n_steps, n_chains, "hmc", seed=seed, **options)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, Path]) -> Path:
        """Write the flow (record and weights, not the target) to one file; reload with `load(path, log_prob)`."""
        self._check_fitted()
        path = Path(path)
        payload = {
            "format": SAMPLER_FORMAT,
            "hyper_parameters": self.record_,
            "state_dict": {f"flow.{k}": v for k, v in self.flow_.state_dict().items()},
            "fit_info": {"best_val_reverse_kl": self.best_val_reverse_kl_, "steps": self.n_steps_},
        }
        atomic_save(payload, path)
        return path

    @classmethod
    def load(
        cls, path: Union[str, Path], log_prob: Union[Callable[[Tensor], Tensor], Target, str]
    ) -> VariationalSampler:
        """A fitted sampler from `save`'s file (or a `flows fit` checkpoint of a target run) and its target."""
        payload = read_checkpoint(path)
        loaded = load_model(path, payload=payload)
        config = loaded.config
        sampler = cls(
            log_prob,
            loaded.features,
            config.model["name"],
            steps=max(1, config.train.max_steps),
            batch_size=config.train.batch_size,
            lr=config.train.lr,
            scale=config.target.scale,
            seed=config.seed,
        )
        sampler.flow_ = loaded.flow
        sampler.record_ = payload.get("hyper_parameters")
        info = payload.get("fit_info", {})
        sampler.best_val_reverse_kl_ = info.get("best_val_reverse_kl")
        sampler.n_steps_ = info.get("steps", payload.get("global_step"))
        sampler.config_ = config
        return sampler

    def __repr__(self) -> str:
        return f"VariationalSampler({self.target!r}, model={self.model!r}, gradient={self.gradient!r})"
