"""Defaults that follow each method's official code: each method's initialisation of its new
layers (CDAN's Xavier, GVB-GD's Kaiming), GVB-GD's separate BatchNorm batches, CDAN's ×10 on
the bottleneck (a per-module learning-rate multiplier)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uda_jax.config import load_config
from uda_jax.data.domains import from_arrays
from uda_jax.errors import UserError
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.methods.adversarial import head_forward
from uda_jax.optim import build_optimizers


def _experiment(name: str, *overrides: str):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 32, 32, 1)).astype(np.float32)
    labels = np.arange(32) % 10
    source = from_arrays("s", images, labels)
    target = from_arrays("t", images + 0.5, labels)
    config = load_config(name, ["data.batch_size=8", *overrides])
    return build_experiment(config, source=source, target=target)


def _new_layers(params):
    """``{name: (kernel, bias)}`` of the Linear layers a method adds: bottleneck, head, D."""
    layers = {"bottleneck": params["g"]["bottleneck"]["fc"]}
    layers |= {f"f/{k}": v for k, v in params["f"].items()}
    layers |= {f"d/{k}": v for k, v in params["d"].items()}
    return {k: (np.asarray(v["kernel"]), np.asarray(v["bias"])) for k, v in layers.items()}


@pytest.mark.parametrize(
    ("name", "scheme"),
    [("digits_dann", "xavier"), ("digits_cdan", "xavier"), ("digits_cdan_e", "xavier"),
     ("digits_gvb", "kaiming"), ("digits_gvb_metaalign", "kaiming")],
)  # fmt: skip
def test_every_new_layer_starts_as_in_the_methods_official_code(name, scheme):
    """CDAN code: Xavier-normal weights, zero biases for the bottleneck, fc and discriminator;
    GVB-GD (and MetaAlign, built on it) code: Kaiming-normal, N(0, 2/fan_in) untruncated."""
    experiment = _experiment(name, "model.bottleneck_dim=64", "model.discriminator_hidden=256")
    layers = _new_layers(create_train_state(experiment).params)
    assert {"bottleneck", "f/fc", "d/ad_layer1", "d/ad_layer3"} <= set(layers)
    for layer, (kernel, bias) in layers.items():
        fan_in, fan_out = kernel.shape
        std = np.sqrt(2.0 / (fan_in + fan_out)) if scheme == "xavier" else np.sqrt(2.0 / fan_in)
        if kernel.size >= 500:  # enough weights for the spread to say which init it was
            assert np.std(kernel) == pytest.approx(std, rel=0.1), layer
        assert np.all(bias == 0.0), layer
    big = max(layers.values(), key=lambda kb: kb[0].size)[0]
    std = np.std(big)
    assert np.max(np.abs(big)) > 3.0 * std  # untruncated normals, as torch.nn.init


def test_cgdm_keeps_its_own_bottleneck_init():
    experiment = _experiment("digits_cgdm", "model.bottleneck_dim=64")
    fc = create_train_state(experiment).params["g"]["bottleneck"]["fc"]
    assert np.std(np.asarray(fc["kernel"])) == pytest.approx(0.005, rel=0.05)
    assert np.all(np.asarray(fc["bias"]) == np.float32(0.1))


def test_gvb_passes_source_and_target_through_batchnorm_separately_by_default():
    experiment = _experiment("digits_gvb")
    method, ctx = experiment.method, experiment.ctx
    assert method.config.separate_batchnorm
    state = create_train_state(experiment)
    rng = np.random.default_rng(1)
    batch = {
        "source_image": jnp.asarray(rng.normal(size=(8, 32, 32, 1)), jnp.float32),
        "target_image": jnp.asarray(rng.normal(size=(8, 32, 32, 1)) + 1.0, jnp.float32),
    }
    key = jax.random.key(0)
    _, logits, _, _ = method.forward_both(ctx, state.params, state.batch_stats, batch, key)
    alone = head_forward(
        ctx, state.params, state.batch_stats, batch["source_image"], jax.random.split(key)[0]
    )[1]
    np.testing.assert_allclose(logits[:8], alone, rtol=1e-6, atol=1e-6)  # source-only stats
    joint = dataclasses.replace(
        method, config=dataclasses.replace(method.config, separate_batchnorm=False)
    )
    _, joint_logits, _, _ = joint.forward_both(ctx, state.params, state.batch_stats, batch, key)
    assert np.max(np.abs(np.asarray(joint_logits[:8]) - np.asarray(alone))) > 1e-3


def test_a_module_path_gets_its_own_learning_rate_multiplier():
    experiment = _experiment("digits_dann")
    optimizers = experiment.ctx.optimizers
    params = create_train_state(experiment).params["g"]
    grads = jax.tree.map(jnp.ones_like, params)
    new, _ = optimizers["g"].update(grads, optimizers["g"].init(params), params, jnp.int32(0))
    step = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, new)
    bottleneck = step["bottleneck"]["fc"]["bias"]
    backbone = step["backbone"]["conv1"]["bias"]
    assert bottleneck == pytest.approx(10 * backbone, rel=1e-3)  # ×10, as the CDAN code


def test_module_path_multipliers_are_checked():
    config = load_config(None, ["optimizer.groups.g/backbone.kwargs.momentum=0.5"])
    masks = {"g": {"backbone": {"w": False}}, "f1": {"w": False}, "f2": {"w": False}}
    with pytest.raises(UserError, match="apply to a whole module group"):
        build_optimizers(config.optimizer, masks)
    config = load_config(None, ["optimizer.groups.g/neck.lr_mult=3"])
    with pytest.raises(UserError, match="no parameters of module 'g' are under 'neck'"):
        build_optimizers(config.optimizer, masks)
    config = load_config(None, ["optimizer.groups.g/backbone.lr_mult=3"])
    optimizer = build_optimizers(config.optimizer, masks, transformation=optax.sgd(1.0))["g"]
    assert optimizer.lr_mult == {"backbone": {"w": 3.0}}
