"""TarFlow's training and sampling options for image flows: Gaussian noise augmentation (`train.noise_std`),
the denoising score step after sampling (Tweedie's formula against its closed form for Gaussians), and the
class dropout that classifier-free guidance needs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.bijectors.elementwise import ElementwiseAffine
from flows.dequantization import DequantizedFlow, make_dequantizer
from flows.distributions import StandardNormal
from flows.flow import Flow
from flows.training.config import ConfigError, TrainConfig

SHAPE = (1, 2, 2)
LEVELS = 17


def gaussian_model(mean: float, std: float, noise_std: float = 0.0) -> DequantizedFlow:
    """A `DequantizedFlow` (no preprocessing) whose flow input `z` is `N(mean, std^2)` per dimension, float64."""
    transform = ElementwiseAffine(shift=-mean / std, scale=1.0 / std, event_dims=3)
    flow = Flow(transform, StandardNormal(SHAPE))
    return DequantizedFlow(flow, make_dequantizer("uniform", SHAPE, LEVELS), None, noise_std).double()


def test_denoising_step_is_the_posterior_mean_of_gaussian_data() -> None:
    # Clean z ~ N(m, a^2) plus N(0, s^2) noise is N(m, a^2 + s^2); E[clean | noisy] = m + a^2 (z - m) / (a^2 + s^2).
    m, a, s = 0.4, 0.3, 0.2
    model = gaussian_model(m, math.sqrt(a**2 + s**2), noise_std=s)
    z = torch.randn((5,) + SHAPE, dtype=torch.float64)
    expected = m + a**2 * (z - m) / (a**2 + s**2)
    torch.testing.assert_close(model.denoise(z), expected, rtol=1e-6, atol=1e-6)  # float32 constants
    # An explicit level overrides the model's; zero is the identity.
    torch.testing.assert_close(model.denoise(z, noise_std=0.0), z)
    with pytest.raises(ValueError, match="noise_std"):
        model.denoise(z, noise_std=-1.0)


def test_samples_of_a_noise_trained_model_are_denoised() -> None:
    # Noisy variance a^2 + s^2; after the step the sample variance is a^4 / (a^2 + s^2).
    torch.manual_seed(0)
    m, a, s = 0.5, 0.05, 0.05
    noisy = math.sqrt(a**2 + s**2)
    plain = gaussian_model(m, noisy).sample(40_000)
    denoised = gaussian_model(m, noisy, noise_std=s).sample(40_000)
    assert float(plain.var()) == pytest.approx(noisy**2, rel=0.03)
    assert float(denoised.var()) == pytest.approx(a**4 / noisy**2, rel=0.03)
    assert float(denoised.mean()) == pytest.approx(m, abs=1e-3)


def test_the_noise_augmented_objective_is_the_bound_at_noisy_inputs() -> None:
    # For N(m, v) per dimension, E_eps log p(z + s eps) = log p(z) - D s^2 / (2 v): same dequantisation noise
    # (same seed), averaged over many noise draws.
    m, std, s = 0.5, 0.25, 0.1
    model = gaussian_model(m, std)
    x = torch.randint(0, LEVELS, (20_000,) + SHAPE)
    torch.manual_seed(1)
    clean = model.log_prob(x)
    torch.manual_seed(1)
    noisy = model.log_prob(x, noise_std=s)
    dims = math.prod(SHAPE)
    difference = (noisy - clean).double()
    standard_error = float(difference.std() / math.sqrt(difference.numel()))
    assert standard_error < 0.01  # a tenth of a nat would be visible
    assert abs(float(difference.mean()) + dims * s**2 / (2 * std**2)) < 4 * standard_error
    torch.manual_seed(1)
    torch.testing.assert_close(model.log_prob(x, noise_std=0.0), clean)
    with pytest.raises(ValueError, match="noise_std"):
        model.log_prob(x, noise_std=float("nan"))


def _image_module(noise_std: float = 0.0, class_dropout: float = 0.0, num_classes: int = 0):
    from flows.training.image_modules import ImageFlowModule

    model = gaussian_model(0.5, 0.25)
    module = ImageFlowModule(
        model, TrainConfig(noise_std=noise_std), num_classes=num_classes, class_dropout=class_dropout
    )
    module.seed = 0
    return module


def test_the_image_module_adds_noise_in_training_only() -> None:
    module = _image_module(noise_std=0.1)
    x = torch.randint(0, LEVELS, (4000,) + SHAPE)
    module.train()
    torch.manual_seed(2)
    training = module.nll(x)
    module.eval()
    torch.manual_seed(2)
    evaluation = module.nll(x)
    torch.manual_seed(2)
    torch.testing.assert_close(evaluation, -module.flow.log_prob(x))
    dims = math.prod(SHAPE)
    difference = (training - evaluation).double()
    standard_error = float(difference.std() / math.sqrt(difference.numel()))
    assert abs(float(difference.mean()) - dims * 0.1**2 / (2 * 0.25**2)) < 4 * standard_error


def test_class_dropout_nulls_a_seeded_fraction_of_training_labels_only() -> None:
    module = _image_module(class_dropout=0.3, num_classes=10)
    labels = torch.arange(5000) % 10
    batch = (torch.zeros((5000,) + SHAPE, dtype=torch.long), labels)
    module.train()
    _, context = module.inputs(batch)
    dropped = context.sum(-1) == 0
    assert float(dropped.double().mean()) == pytest.approx(0.3, abs=0.03)
    kept = ~dropped
    assert torch.equal(context[kept].argmax(-1), labels[kept])
    # Deterministic for (seed, step); untouched in evaluation.
    assert torch.equal(module.inputs(batch)[1], context)
    module.eval()
    assert bool((module.inputs(batch)[1].sum(-1) == 1).all())


def test_image_options_check_class_dropout_and_guidance() -> None:
    from flows.training.image_data import parse_image_options

    assert parse_image_options({"conditional": True, "class_dropout": 0.1}).class_dropout == 0.1
    with pytest.raises(ConfigError, match="image.class_dropout.*\\[0, 1\\)"):
        parse_image_options({"conditional": True, "class_dropout": 1.0})
    with pytest.raises(ConfigError, match="image.class_dropout.*conditional: true only"):
        parse_image_options({"class_dropout": 0.1})
    assert parse_image_options({"conditional": True, "class_dropout": 0.1, "guidance": 2.0}).guidance == 2.0
    with pytest.raises(ConfigError, match="image.guidance.*class_dropout > 0"):
        parse_image_options({"conditional": True, "guidance": 2.0})
    with pytest.raises(ConfigError, match="image.guidance.*finite"):
        parse_image_options({"conditional": True, "class_dropout": 0.1, "guidance": float("inf")})


@pytest.mark.slow
def test_a_noise_augmented_conditional_run_trains_samples_and_reloads(tmp_path: Path) -> None:
    from flows.training.image_checkpoints import load_image_model, sample_images
    from flows.training.pipeline import run

    config = {
        "seed": 0,
        "data": {"dataset": "image:digits"},
        "model": {"name": "tarflow", "patch_size": 2, "blocks": 2, "layers_per_block": 1, "channels": 8},
        "train": {"batch_size": 32, "max_steps": 4, "noise_std": 0.05, "num_threads": 1},
        "image": {
            "conditional": True,
            "class_dropout": 0.2,
            "guidance": 1.0,
            "grid_size": 4,
            "reconstructions": 2,
        },
        "trainer": {"accelerator": "cpu", "limit_val_batches": 1},
        "output": {"dir": str(tmp_path), "name": "run", "progress_bar": False},
    }
    metrics = run(config, verbose=False).metrics
    assert math.isfinite(metrics["test_bpd"])
    checkpoint = Path(metrics["run_dir"]) / "checkpoints" / "last.ckpt"
    loaded = load_image_model(checkpoint)
    assert loaded.model.noise_std == 0.05
    drawn = sample_images(checkpoint, tmp_path / "drawn.npy", count=3, label=2, seed=0)
    steered = sample_images(checkpoint, tmp_path / "steered.npy", count=3, label=2, seed=0, guidance=4.0)
    assert np.load(drawn).shape == np.load(steered).shape == (3, 1, 8, 8)
    assert (Path(metrics["run_dir"]) / "samples" / "samples_t1.00.png").is_file()
