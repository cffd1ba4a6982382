"""Optimizers and schedules from the config against PyTorch's update rules written out, and
against plain optax computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uda_jax.config import ScheduleConfig, load_config
from uda_jax.errors import UserError
from uda_jax.optim import OPTIMIZERS, build_optimizers, build_schedule, inv_schedule

P0 = np.array([1.0, -2.0, 3.0])
GRADS = [np.array([0.5, 0.1, -0.2]), np.array([-0.3, 0.2, 0.4]), np.array([0.7, -0.6, 0.1])]


def _optimizer(*overrides, group="g", frozen=False, **kwargs):
    config = load_config(None, list(overrides))
    params = {"w": jnp.asarray(P0, jnp.float32)}
    optimizers = build_optimizers(config.optimizer, {group: {"w": frozen}}, **kwargs)
    return optimizers[group], params


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- update rules


def test_sgd_momentum_with_coupled_weight_decay_matches_torch_rule():
    opt, params = _optimizer(
        "optimizer.learning_rate=0.1", "optimizer.weight_decay=0.01", "optimizer.groups={}"
    )
    state = opt.init(params)
    p = P0.copy()
    buf = None
    for t, g in enumerate(GRADS[:2]):
        params, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params, t)
        d = g + 0.01 * p  # torch.optim.SGD: d = grad + wd·p; buf = d, then μ·buf + d
        buf = d if buf is None else 0.9 * buf + d
        p = p - 0.1 * buf
    np.testing.assert_allclose(params["w"], p, rtol=1e-6)


def test_sgd_momentum_with_inv_schedule_and_lr_mult_matches_torch_rule():
    """v = m·v + g + wd·p; p -= lr(t)·lr_mult·v, with lr(t) = lr0·(1 + γt)^(−p)."""
    lr0, gamma, power, wd, momentum, mult = 0.05, 0.5, 0.75, 0.01, 0.9, 10.0
    opt, params = _optimizer(
        f"optimizer.learning_rate={lr0}",
        f"optimizer.weight_decay={wd}",
        f"optimizer.kwargs.momentum={momentum}",
        "optimizer.schedule.name=inv",
        f"optimizer.schedule.kwargs.gamma={gamma}",
        f"optimizer.schedule.kwargs.power={power}",
        f"optimizer.groups={{f: {{lr_mult: {mult}}}}}",
        group="f",
    )
    assert opt.lr_mult == mult
    state = opt.init(params)
    update = jax.jit(opt.update)
    p, v = P0.copy(), np.zeros(3)
    for t, g in enumerate(GRADS):
        params, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params, jnp.int32(t))
        v = momentum * v + g + wd * p
        p = p - lr0 * (1 + gamma * t) ** -power * mult * v
        np.testing.assert_allclose(params["w"], p, rtol=1e-6, err_msg=f"step {t}")


def test_group_kwargs_override_cgdm_g_without_momentum():
    opt, params = _optimizer("optimizer.learning_rate=0.1", "optimizer.weight_decay=0.0")
    state = opt.init(params)
    grads = {"w": jnp.ones(3)}
    params, state = opt.update(grads, state, params, 0)
    params, state = opt.update(grads, state, params, 1)  # with momentum 0.9 this would be 2.9
    np.testing.assert_allclose(params["w"], P0 - 0.2, rtol=1e-6)


def test_lr_multiplier_scales_the_group_learning_rate():
    opt, params = _optimizer(
        "optimizer.name=sgd",
        "optimizer.weight_decay=0.0",
        "optimizer.groups={f: {lr_mult: 10}}",
        group="f",
    )
    np.testing.assert_allclose(opt.learning_rate(0), 0.1, rtol=1e-6)
    np.testing.assert_allclose(opt.schedule(0), 0.01, rtol=1e-6)
    new, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params, 0)
    np.testing.assert_allclose(params["w"] - new["w"], 0.1, rtol=1e-6)


def test_a_group_stepped_twice_in_one_iteration_uses_that_iterations_learning_rate():
    """CGDM steps G several times per iteration: each step takes lr(t) of the iteration t, not
    of a per-group step counter (which would give lr(t), lr(t + 1), ...)."""
    opt, params = _optimizer(
        "optimizer.weight_decay=0",
        "optimizer.schedule.name=inv",
        "optimizer.schedule.kwargs.gamma=1.0",
        "optimizer.schedule.kwargs.power=1.0",
        "optimizer.groups={g: {kwargs: {momentum: 0.0}}}",
    )
    state = opt.init(params)
    grads = {"w": jnp.ones(3)}
    update = jax.jit(opt.update)
    t = jnp.int32(3)
    once, state = update(grads, state, params, t)
    twice, state = update(grads, state, once, t)
    lr = 0.01 / (1 + 3)  # lr(3); lr(4) would be 0.01 / 5
    np.testing.assert_allclose(once["w"], P0 - lr, rtol=1e-6)
    np.testing.assert_allclose(twice["w"], P0 - 2 * lr, rtol=1e-6)  # not P0 - lr - 0.01 / 5


def test_frozen_leaves_are_not_stepped_even_with_weight_decay():
    opt, params = _optimizer(frozen=True)
    new, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params, 0)
    np.testing.assert_array_equal(new["w"], params["w"])


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("adam", []),
        ("adamw", ["optimizer.weight_decay=0"]),
        ("adamw", ["optimizer.kwargs.weight_decay=0"]),  # the coupled L2 instead
        ("lion", ["optimizer.weight_decay=0"]),
        ("rmsprop", []),
    ],
)
def test_any_optax_optimizer_by_name_takes_a_step(name, overrides):
    opt, params = _optimizer(f"optimizer.name={name}", "optimizer.learning_rate=0.01", *overrides)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts with floats
        new, _ = jax.jit(opt.update)({"w": jnp.ones(3)}, opt.init(params), params, 0)
    assert np.all(np.asarray(new["w"]) < np.asarray(params["w"]))


@pytest.mark.parametrize("name", ["adamw", "lion"])
def test_coupled_and_decoupled_weight_decay_together_are_refused(name):
    config = load_config(None, [f"optimizer.name={name}"])  # default optimizer.weight_decay 5e-4
    message = _one_line_error(build_optimizers, config.optimizer, {"g": {}})
    assert f"optimizer.weight_decay=0.0005 (coupled L2) and optax.{name}'s own" in message
    assert "set optimizer.weight_decay=0 or optimizer.kwargs.weight_decay=0" in message


def test_your_own_transformation_and_schedule_give_the_update_of_the_same_optax_chain():
    """A user's transformation at learning rate 1 and a user's schedule: exactly
    ``chain(clip, adam(schedule))`` of optax, over three steps."""
    schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    opt, params = _optimizer(
        "optimizer.weight_decay=0",
        "optimizer.schedule=inv",  # replaced by the schedule passed
        "optimizer.groups={}",
        transformation=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0)),
        schedule=schedule,
    )
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    expected = dict(params)
    with jax.numpy_dtype_promotion("standard"):
        state, ref_state = opt.init(params), reference.init(expected)
        for t, g in enumerate(GRADS):
            grads = {"w": 3.0 * jnp.asarray(g, jnp.float32)}  # norm > 1: the clip acts
            params, state = opt.update(grads, state, params, jnp.int32(t))
            updates, ref_state = reference.update(grads, ref_state, expected)
            expected = optax.apply_updates(expected, updates)
            np.testing.assert_array_equal(params["w"], expected["w"])
    assert not np.allclose(params["w"], P0)
    np.testing.assert_allclose(opt.learning_rate(2), 0.025, rtol=1e-6)


def test_registry_holds_the_common_optimizers():
    assert {"sgd", "adam", "adamw", "lion", "lamb", "rmsprop"} <= set(OPTIMIZERS)


# ----------------------------------------------------------------------------- schedules


def test_inv_schedule_is_the_papers_formula():
    lr0, gamma, power = 0.001, 0.001, 0.75
    config = load_config(
        None,
        [
            f"optimizer.learning_rate={lr0}",
            "optimizer.schedule.name=inv",
            f"optimizer.schedule.kwargs.gamma={gamma}",
            f"optimizer.schedule.kwargs.power={power}",
        ],
    )
    from_config = build_schedule(config.optimizer.learning_rate, config.optimizer.schedule)
    direct = inv_schedule(lr0, gamma, power)
    shorthand = load_config(None, [f"optimizer.learning_rate={lr0}", "optimizer.schedule=inv"])
    default = build_schedule(lr0, shorthand.optimizer.schedule)  # gamma 0.001, power 0.75
    for t in (0, 1, 10, 500, 10000, 100000):
        expected = lr0 * (1 + gamma * t) ** -power
        np.testing.assert_allclose(from_config(t), expected, rtol=1e-6, err_msg=f"t={t}")
        np.testing.assert_allclose(direct(t), expected, rtol=1e-6, err_msg=f"t={t}")
        np.testing.assert_allclose(default(t), expected, rtol=1e-6, err_msg=f"t={t}")
    np.testing.assert_allclose(jax.jit(from_config)(jnp.int32(10000)), lr0 * 11**-power, 1e-6)


def test_constant_schedule_is_the_learning_rate():
    schedule = build_schedule(0.03, ScheduleConfig())
    for t in (0, 7, 10**6):
        np.testing.assert_allclose(schedule(t), 0.03, rtol=1e-7)


def test_an_optax_schedule_by_name_starts_at_the_learning_rate():
    config = load_config(
        None,
        [
            "optimizer.learning_rate=0.2",
            "optimizer.schedule.name=cosine_decay_schedule",
            "optimizer.schedule.kwargs.decay_steps=100",
        ],
    )
    schedule = build_schedule(config.optimizer.learning_rate, config.optimizer.schedule)
    reference = optax.cosine_decay_schedule(init_value=0.2, decay_steps=100)
    for t in (0, 1, 25, 50, 99, 100, 150):
        np.testing.assert_allclose(schedule(t), reference(t), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(schedule(0), 0.2, rtol=1e-6)
    np.testing.assert_allclose(schedule(50), 0.1, rtol=1e-5)
    opt, _ = _optimizer(
        "optimizer.learning_rate=0.2",
        "optimizer.schedule.name=cosine_decay_schedule",
        "optimizer.schedule.kwargs.decay_steps=100",
        "optimizer.groups={f: {lr_mult: 10}}",
        group="f",
    )
    np.testing.assert_allclose(opt.learning_rate(50), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "schedule, fragment",
    [
        (ScheduleConfig("cosine_decay"), "unknown optimizer.schedule.name 'cosine_decay'"),
        (ScheduleConfig("cosine_decay"), "(did you mean 'cosine_decay_schedule'?)"),
        (ScheduleConfig("invv"), "(did you mean 'inv'?)"),
        (ScheduleConfig("inv", {"gama": 0.1}), "optimizer.schedule.kwargs.gama"),
        (ScheduleConfig("inv", {"gama": 0.1}), "(did you mean 'gamma'?)"),
        (ScheduleConfig("cosine_decay_schedule", {"decay_step": 10}), "did you mean 'decay_steps'"),
        (ScheduleConfig("cosine_decay_schedule"), "optimizer.schedule cosine_decay_schedule"),
    ],
)
def test_bad_schedules_are_one_line_user_errors(schedule, fragment):
    assert fragment in _one_line_error(build_schedule, 0.01, schedule)


def test_a_bad_schedule_from_the_config_fails_when_the_optimizers_are_built():
    config = load_config(None, ["optimizer.schedule=cosine_decay"])
    message = _one_line_error(build_optimizers, config.optimizer, {"g": {}})
    assert "did you mean 'cosine_decay_schedule'" in message


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optimizer.name=adamm"], "did you mean 'adam'"),
        (["optimizer.kwargs.momentun=0.5"], "did you mean 'momentum'"),
        (["optimizer.kwargs.momentum=abc"], "optax.sgd rejects the keyword arguments"),
        (["optimizer.groups.h.lr_mult=2"], "no module 'h'"),
        (["optimizer.name=adamw"], "would decay twice"),
    ],
)
def test_bad_optimizer_settings_name_the_problem(overrides, fragment):
    config = load_config(None, overrides)
    assert fragment in _one_line_error(build_optimizers, config.optimizer, {"g": {}, "f": {}})
