"""One model type (issue #11): every trained model is a `flows.Flow`, initialised through `Flow.initialize`,
and checkpoints written before the change (a `DequantizedFlow` holding its flow as `.flow`, a `FlowModule`
with `data_mean`/`data_std` buffers) still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flows.bijectors.normalization import ActNorm
from flows.dequantization import (
    DequantizedFlow,
    UniformDequantization,
    dequantize,
    discrete_log_likelihood_bound,
    make_preprocessing,
)
from flows.flow import Flow
from flows.presets_image import Glow
from flows.training.checkpoints import build_from_record
from flows.training.config import TrainConfig
from flows.training.data import dequantize_fixed
from flows.training.image_checkpoints import load_image_model
from flows.training.image_data import build_image_model
from flows.training.image_modules import ImageFlowModule
from flows.training.models import build_flow, standardization_of, standardizer_of
from flows.training.module import FlowModule

DATA = Path(__file__).parent / "data"
DOUBLE = torch.float64


def _actnorm_outputs(flow: Flow, run: callable) -> list[torch.Tensor]:
    """The output of every ActNorm layer of `flow` while `run()` evaluates it."""
    outputs: list[torch.Tensor] = []
    layers = [module for module in flow.modules() if isinstance(module, ActNorm)]
    assert layers
    handles = [
        layer.register_forward_hook(lambda module, inputs, output: outputs.append(output[0].detach()))
        for layer in layers
    ]
    run()
    for handle in handles:
        handle.remove()
    assert len(outputs) == len(layers)
    return outputs


def _assert_standardised(outputs: list[torch.Tensor]) -> None:
    """Zero mean and unit (biased) variance per feature / channel, the closed form of ActNorm's init."""
    for output in outputs:
        channels = output.movedim(-3, 0).flatten(1) if output.dim() == 4 else output.T
        torch.testing.assert_close(channels.mean(1), torch.zeros_like(channels[:, 0]), atol=1e-9, rtol=0)
        torch.testing.assert_close(
            channels.var(1, unbiased=False), torch.ones_like(channels[:, 0]), atol=1e-5, rtol=0
        )


def test_initialize_standardises_every_actnorm_of_a_tabular_realnvp() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(256, 4)) * [1.0, 50.0, 0.1, 3.0] + [0.0, 1000.0, -5.0, 2.0]
    mean, std = standardization_of(data)
    torch.manual_seed(0)
    model = {"name": "realnvp", "normalization": "actnorm", "transforms": 3, "hidden_features": [8]}
    flow = build_flow(model, 4, mean, std).to(DOUBLE)
    batch = torch.as_tensor(data * 0.5 + 3.0)  # unlike the standardisation's statistics
    assert flow.initialize(batch)
    _assert_standardised(_actnorm_outputs(flow, lambda: flow.log_prob(batch)))


def test_initialize_standardises_every_actnorm_of_glow() -> None:
    torch.manual_seed(0)
    flow = Glow((2, 4, 4), levels=2, steps=2, hidden_channels=4).to(DOUBLE)
    x = torch.randn(16, 2, 4, 4, dtype=DOUBLE) * 3.0 + 1.0
    assert flow.initialize(x)
    _assert_standardised(_actnorm_outputs(flow, lambda: flow.log_prob(x)))


def _dequantized_glow(preprocessing: str = "logit") -> DequantizedFlow:
    torch.manual_seed(0)
    glow = Glow((1, 4, 4), levels=2, steps=2, hidden_channels=4)
    model = DequantizedFlow(glow, UniformDequantization(17), make_preprocessing(preprocessing, 0.05))
    return model.to(DOUBLE)


def test_initialize_of_a_dequantized_flow_sees_the_dequantised_preprocessed_images() -> None:
    model = _dequantized_glow()
    images = torch.randint(0, 17, (32, 1, 4, 4))
    torch.manual_seed(3)
    assert model.initialize(images)
    torch.manual_seed(3)  # the same dequantisation noise as the initialisation drew
    _assert_standardised(_actnorm_outputs(model, lambda: model.log_prob(images)))


def test_initialize_is_false_without_data_dependent_layers() -> None:
    flow = build_flow({"name": "maf", "transforms": 2, "hidden_features": [8]}, 3)
    before = {name: value.clone() for name, value in flow.state_dict().items()}
    assert not flow.initialize(torch.randn(16, 3))
    assert all(torch.equal(before[name], value) for name, value in flow.state_dict().items())


def test_a_dequantized_flow_is_a_flow_whose_log_prob_is_the_bound() -> None:
    model = _dequantized_glow()
    assert isinstance(model, Flow)
    images = torch.randint(0, 17, (6, 1, 4, 4))
    torch.manual_seed(1)
    bound = model.log_prob(images, num_samples=3)
    torch.manual_seed(1)
    # The same bound from the pieces: the flow's continuous density (Flow.log_prob) of z = logit(y).
    continuous = Flow(model.transform, model.base)
    expected = discrete_log_likelihood_bound(
        continuous, images, model.dequantizer, model.preprocessing, None, 3
    )
    torch.testing.assert_close(bound, expected, atol=0, rtol=0)


def test_continuous_methods_of_a_dequantized_flow_work_on_y() -> None:
    model = _dequantized_glow().eval()
    torch.manual_seed(2)
    y, log_prob = model.sample_and_log_prob((5,))
    assert y.shape == (5, 1, 4, 4) and bool(((y > 0) & (y < 1)).all())
    z, ladj = model.preprocessing(y)
    torch.testing.assert_close(log_prob, Flow.log_prob(model, z) + ladj)  # change of variables y -> z
    torch.testing.assert_close(model.decode(model.encode(y)), y)
    torch.manual_seed(4)
    rsampled = model.rsample((3,))
    torch.manual_seed(4)
    torch.testing.assert_close(torch.clamp(rsampled, 0.0, 1.0), model.sample((3,)))


# ------------------------------------------------------------------------------------------ dequantisation
def test_fixed_and_training_dequantisation_share_one_function_and_keep_their_streams() -> None:
    x = np.random.default_rng(0).integers(0, 5, size=(40, 3)).astype(float)
    expected = x + np.random.default_rng(7).uniform(size=x.shape)  # the stream of earlier versions
    np.testing.assert_array_equal(dequantize_fixed(x, 7), expected)
    images = torch.randint(0, 17, (4, 1, 2, 2))
    torch.manual_seed(5)
    y, log_q = UniformDequantization(17)(images)
    torch.manual_seed(5)
    torch.testing.assert_close(y, dequantize(images.float(), torch.rand(4, 1, 2, 2), 17), atol=0, rtol=0)
    assert torch.equal(log_q, torch.zeros(4))


# ------------------------------------------------------------------------------------ older checkpoints
def test_a_flow_module_loads_a_checkpoint_with_data_mean_and_data_std() -> None:
    payload = torch.load(DATA / "table_run_before_issue11.pt", weights_only=True)
    old = payload["state_dict"]
    assert {"data_mean", "data_std"} <= set(old)  # written before the standardisation lived only in the flow
    flow, _ = build_from_record(payload["hyper_parameters"])
    module = FlowModule(flow, TrainConfig())
    module.load_state_dict(old)  # strict: the old buffers are dropped, every other key is used
    assert "data_mean" not in module.state_dict()
    for key, value in module.state_dict().items():
        assert torch.equal(value, old[key]), key
    standardizer = standardizer_of(module.flow)
    torch.testing.assert_close(1.0 / standardizer.scale, old["data_std"])
    torch.testing.assert_close(
        -standardizer.shift / standardizer.scale, old["data_mean"], atol=1e-6, rtol=1e-6
    )


def test_an_image_checkpoint_with_the_flow_nested_in_the_dequantized_flow_loads() -> None:
    path = DATA / "glow_run_before_issue11.pt"
    old = torch.load(path, weights_only=True)["state_dict"]
    assert any(
        key.startswith("flow.flow.transform.") for key in old
    )  # the layout before DequantizedFlow was a Flow
    # The DequantizedFlow's keys then: flow.* (its inner flow), dequantizer.*, preprocessing.*
    old_model = {key[len("flow.") :]: value for key, value in old.items() if key.startswith("flow.")}
    expected = {key.removeprefix("flow."): value for key, value in old_model.items()}
    loaded = load_image_model(path)
    state = loaded.model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    fresh = build_image_model(loaded.config.model, loaded.options, loaded.shape, loaded.num_levels, 0)
    module = ImageFlowModule(fresh, TrainConfig())
    module.load_state_dict(old)  # strict, as Lightning resumes: data_mean/data_std dropped, flow.flow.* moved
    assert all(torch.equal(value, state[key[len("flow.") :]]) for key, value in module.state_dict().items())
