"""Each method's train step on a fixed batch: shapes, its own objective going down, purity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax.config import load_config
from uda_jax.methods import METHODS, cgdm, get_method, mcd
from uda_jax.methods.base import StepContext, compile_train_step
from uda_jax.models import build_network
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState

B = 8


def _setup(method, *overrides):
    config = load_config(
        None,
        [
            f"method.name={method}",
            "model.classifier_widths=[32,32]",
            "model.dropout=0.0",
            "optimizer.learning_rate=0.05",
            "method.warmup_steps=0",
            "method.num_k=1",
            "model.discriminator_hidden=32",
            *overrides,
        ],
    )
    module = get_method(method)
    network = build_network(
        config.model, 10, module.NUM_CLASSIFIERS, **getattr(module, "NETWORK", {})
    )
    params, stats = network.init(jax.random.key(0), (32, 32, 1))
    masks = {g: network.frozen_mask(g, t) for g, t in params.items()}
    optimizers = build_optimizers(config.optimizer, masks)
    ctx = StepContext(network, optimizers, config.method)
    rng = np.random.default_rng(0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state={g: o.init(params[g]) for g, o in optimizers.items()},
        pseudo_labels=jnp.asarray(rng.integers(0, 10, 2 * B), jnp.int32),
        key=jax.random.key(1),
    )
    batch = {
        "source_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)), jnp.float32),
        "source_label": jnp.asarray(rng.integers(0, 10, B), jnp.int32),
        "target_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)) + 0.5, jnp.float32),
        "target_index": jnp.arange(B, dtype=jnp.int32),
    }
    return module, ctx, state, batch


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_step_runs_and_lowers_source_loss(method):
    module, ctx, state, batch = _setup(method)
    step = compile_train_step(module.train_step, ctx)
    losses = []
    for i in range(6):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["train/loss_cls"]))
    assert int(state.step) == 6
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


def _repeat(sub_step, state, batch, times, key_name):
    """Applies a sub-step ``times`` times on one batch; its objective before each update."""
    sub_step = jax.jit(sub_step)
    values = []
    for i in range(times):
        state, metrics = sub_step(state, batch, jax.random.key(i))
        values.append(float(metrics[key_name]))
    return state, values


def test_mcd_sub_steps_each_lower_their_own_objective():
    _, ctx, state, batch = _setup("mcd")
    state, loss_a = _repeat(
        lambda s, b, k: mcd.step_a(s, b, k, ctx), state, batch, 6, "train/loss_a"
    )
    state, loss_b = _repeat(
        lambda s, b, k: mcd.step_b(s, b, k, ctx), state, batch, 6, "train/loss_b"
    )
    state, loss_c = _repeat(
        lambda s, b, k: mcd.step_c(s, b, k, ctx), state, batch, 6, "train/loss_c"
    )
    for values in (loss_a, loss_b, loss_c):
        assert values[-1] < values[0]


def test_mcd_step_b_raises_the_discrepancy_step_c_lowers_it():
    _, ctx, state, batch = _setup("mcd", "method.discrepancy_weight=10.0")
    step_b = lambda s, b, k: mcd.step_b(s, b, k, ctx)
    state, disc_b = _repeat(step_b, state, batch, 6, "train/disc_max")
    assert disc_b[-1] > disc_b[0]
    step_c = lambda s, b, k: mcd.step_c(s, b, k, ctx)
    _, disc_c = _repeat(step_c, state, batch, 6, "train/disc_min")
    assert disc_c[-1] < disc_c[0]


def test_cgdm_step_c_lowers_its_objective_with_the_gradient_discrepancy_in_it():
    module, ctx, state, batch = _setup("cgdm", "method.gd_weight=1.0", "method.entropy_weight=0.0")
    step = lambda s, b, k: module.train_step(s, b, k, ctx=ctx)
    _, metrics = jax.jit(step)(state, batch, jax.random.key(0))
    assert float(metrics["train/loss_gd"]) > 0.1  # the term is on and not negligible
    extra = lambda s, b, f, k: (cgdm.gradient_discrepancy_loss(ctx, s, b, f, k), {})
    step_c = lambda s, b, k: mcd.step_c(s, b, k, ctx, extra)
    _, loss_c = _repeat(step_c, state, batch, 6, "train/loss_c")
    assert loss_c[-1] < loss_c[0] - 1e-3


def test_gradient_discrepancy_is_off_during_warmup():
    module, ctx, state, batch = _setup("cgdm", "method.warmup_steps=5")
    state, metrics = compile_train_step(module.train_step, ctx)(state, batch, jax.random.key(0))
    assert float(metrics["train/loss_gd"]) == 0.0
    _, ctx_on, state_on, _ = _setup("cgdm")
    _, metrics_on = compile_train_step(module.train_step, ctx_on)(
        state_on, batch, jax.random.key(0)
    )
    assert float(metrics_on["train/loss_gd"]) > 0.0


def test_frozen_bottleneck_stays_bitwise_unchanged():
    module, ctx, state, batch = _setup(
        "cgdm", "model.bottleneck_dim=16", "model.train_bottleneck=false"
    )
    before = jax.tree.map(np.asarray, state.params["g"])
    state, _ = compile_train_step(module.train_step, ctx)(state, batch, jax.random.key(0))
    after = state.params["g"]
    np.testing.assert_array_equal(
        after["bottleneck"]["fc"]["kernel"], before["bottleneck"]["fc"]["kernel"]
    )
    np.testing.assert_array_equal(
        after["bottleneck"]["fc"]["bias"], before["bottleneck"]["fc"]["bias"]
    )
    assert not np.array_equal(
        after["backbone"]["conv1"]["kernel"], before["backbone"]["conv1"]["kernel"]
    )


def test_train_step_is_a_pure_function_of_its_inputs():
    module, ctx, state, batch = _setup("cgdm")
    step = jax.jit(lambda s, b, k: module.train_step(s, b, k, ctx=ctx))
    _, m1 = step(state, batch, jax.random.key(3))
    _, m2 = step(state, batch, jax.random.key(3))
    assert {k: float(v) for k, v in m1.items()} == {k: float(v) for k, v in m2.items()}


def test_rolled_step_c_loop_trains_as_the_unrolled_one():
    """``method.unroll_c=false`` (one compiled loop body) is the same iteration as unrolled."""
    results = []
    for unroll in ("true", "false"):
        module, ctx, state, batch = _setup("cgdm", "method.num_k=3", f"method.unroll_c={unroll}")
        step = lambda s, b, k, ctx=ctx, module=module: module.train_step(s, b, k, ctx=ctx)
        jaxpr = str(jax.make_jaxpr(step)(state, batch, jax.random.key(3)))
        assert f"unroll={3 if unroll == 'true' else 1}" in jaxpr  # the setting reaches the scan
        results.append(jax.jit(step)(state, batch, jax.random.key(3)))
    (unrolled, m_unrolled), (rolled, m_rolled) = results
    assert m_rolled["train/loss_gd"] > 0  # the gradient discrepancy is in the loop body
    for a, b in zip(jax.tree.leaves(unrolled.params), jax.tree.leaves(rolled.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in m_unrolled:
        np.testing.assert_allclose(m_rolled[name], m_unrolled[name], rtol=1e-5, atol=1e-6)


def test_host_chosen_cgdm_variants_equal_the_lax_cond_step():
    """``branch_step(active=…)`` is ``train_step`` with the warm-up switch fixed on the host:
    the same parameters and metrics in the warm-up (L^W and L_GD off) and after it (on)."""
    module, ctx, state, batch = _setup(
        "cgdm", "method.warmup_steps=1", "model.dropout=0.5", "method.gd_weight=1.0"
    )
    cond_step = jax.jit(lambda s, b, k: module.train_step(s, b, k, ctx=ctx))
    steps, active_at = module.step_variants(ctx)
    assert [active_at(i) for i in range(3)] == [False, True, True]
    for i in range(2):
        key = jax.random.key(10 + i)
        host_step = jax.jit(lambda s, b, k, i=i: steps[active_at(i)](s, b, k, ctx=ctx))
        expected, expected_metrics = cond_step(state, batch, key)
        got, metrics = host_step(state, batch, key)
        assert (float(metrics["train/loss_gd"]) > 0.0) == (i == 1)
        assert (float(metrics["train/loss_pseudo"]) > 0.0) == (i == 1)
        assert metrics.keys() == expected_metrics.keys()
        for name in metrics:
            np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=2e-5, atol=1e-6)
        leaves = zip(jax.tree.leaves(got.params), jax.tree.leaves(expected.params), strict=True)
        for a, b in leaves:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert int(got.step) == int(expected.step) == i + 1
        state = expected


def test_cgdm_variants_differ_where_the_switch_matters():
    """At an active step, the warm-up variant is not the step: the switch reaches the update."""
    module, ctx, state, batch = _setup("cgdm", "method.gd_weight=1.0")  # warmup_steps=0
    steps, _ = module.step_variants(ctx)
    on, off = (
        jax.jit(lambda s, b, k, f=flag: steps[f](s, b, k, ctx=ctx))(
            state, batch, jax.random.key(0)
        )[0]
        for flag in (True, False)
    )
    kernel = lambda s: np.asarray(s.params["g"]["backbone"]["conv2"]["kernel"])
    assert np.abs(kernel(on) - kernel(off)).max() > 1e-6
