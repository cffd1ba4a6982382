"""Optimizers from the config against PyTorch's update rules written out (Part VII §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax.config import load_config
from uda_jax.errors import UserError
from uda_jax.optim import OPTIMIZERS, build_optimizers, learning_rate_at


def _optimizer(*overrides, group="g", frozen=False):
    config = load_config(None, list(overrides))
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    optimizers = build_optimizers(config.optimizer, {group: {"w": frozen}})
    return optimizers[group], params


def test_sgd_momentum_with_coupled_weight_decay_matches_torch_rule():
    opt, params = _optimizer(
        "optimizer.learning_rate=0.1", "optimizer.weight_decay=0.01", "optimizer.groups={}"
    )
    state = opt.init(params)
    p = np.asarray(params["w"], np.float64)
    buf = None
    for t, g in enumerate([np.array([0.5, 0.1, -0.2]), np.array([-0.3, 0.2, 0.4])]):
        params, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params, t)
        d = g + 0.01 * p  # torch.optim.SGD: d = grad + wd·p; buf = d, then μ·buf + d
        buf = d if buf is None else 0.9 * buf + d
        p = p - 0.1 * buf
    np.testing.assert_allclose(params["w"], p, rtol=1e-6)


def test_group_kwargs_override_cgdm_g_without_momentum():
    opt, params = _optimizer("optimizer.learning_rate=0.1", "optimizer.weight_decay=0.0")
    state = opt.init(params)
    grads = {"w": jnp.ones(3)}
    params, state = opt.update(grads, state, params, 0)
    params, state = opt.update(grads, state, params, 1)  # with momentum 0.9 this would be 2.9
    np.testing.assert_allclose(params["w"], np.array([1.0, -2.0, 3.0]) - 0.2, rtol=1e-6)


def test_lr_multiplier_and_inv_schedule():
    config = load_config(None, ["optimizer.schedule=inv", "optimizer.learning_rate=0.001"])
    expected = 0.001 * (1 + 0.001 * 10000) ** -0.75
    np.testing.assert_allclose(learning_rate_at(config.optimizer, 10000), expected, rtol=1e-6)
    opt, params = _optimizer(
        "optimizer.name=sgd",
        "optimizer.weight_decay=0.0",
        "optimizer.groups={f: {lr_mult: 10}}",
        group="f",
    )
    new, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params, 0)
    np.testing.assert_allclose(params["w"] - new["w"], 0.1, rtol=1e-6)


def test_frozen_leaves_are_not_stepped_even_with_weight_decay():
    opt, params = _optimizer(frozen=True)
    new, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params, 0)
    np.testing.assert_array_equal(new["w"], params["w"])


@pytest.mark.parametrize("name", ["adam", "adamw", "lion", "rmsprop"])
def test_any_optax_optimizer_by_name_takes_a_step(name):
    opt, params = _optimizer(f"optimizer.name={name}", "optimizer.learning_rate=0.01")
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts with floats
        new, _ = jax.jit(opt.update)({"w": jnp.ones(3)}, opt.init(params), params, 0)
    assert np.all(np.asarray(new["w"]) < np.asarray(params["w"]))


def test_registry_holds_the_common_optimizers():
    assert {"sgd", "adam", "adamw", "lion", "lamb", "rmsprop"} <= set(OPTIMIZERS)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optimizer.name=adamm"], "did you mean 'adam'"),
        (["optimizer.kwargs.momentun=0.5"], "did you mean 'momentum'"),
        (["optimizer.groups.h.lr_mult=2"], "no module 'h'"),
    ],
)
def test_bad_optimizer_settings_name_the_problem(overrides, fragment):
    config = load_config(None, overrides)
    with pytest.raises(UserError, match=fragment):
        build_optimizers(config.optimizer, {"g": {}, "f": {}})
