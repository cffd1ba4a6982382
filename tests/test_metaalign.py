"""MetaAlign's meta-gradient (reference Part II §2.3) against independent float64 computations,
and the MetaAlign train step around each adversarial method."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from uda_jax.config import load_config
from uda_jax.methods import METHODS, metaalign
from uda_jax.methods.base import StepContext
from uda_jax.models import build_network
from uda_jax.models.layers import BatchNorm
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState


class _SmallNet(nn.Module):
    """Dense → BatchNorm (batch statistics) → tanh → Dense: small, with BN in the path."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(5, name="fc0")(x)
        x = BatchNorm(name="bn")(x, train=True)
        return nn.Dense(3, name="out")(jnp.tanh(x))


@pytest.fixture
def problem(float64):
    rng = np.random.default_rng(0)
    x_tr, x_te = (jnp.asarray(rng.normal(size=(8, 4))) for _ in range(2))
    y_tr, y_te = (jnp.asarray(rng.integers(0, 3, 8)) for _ in range(2))
    model = _SmallNet()
    variables = model.init(jax.random.key(0), x_tr.astype(jnp.float32))
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), variables["params"])
    stats = jax.tree.map(lambda s: jnp.asarray(s, jnp.float64), variables["batch_stats"])

    def loss(p, x, y):
        logits = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])[0]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    l_tr = lambda p: loss(p, x_tr, y_tr)
    l_te = lambda p: loss(p, x_te, y_te)
    # per-leaf step sizes, as the per-module multipliers make them
    alphas = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.full(p.shape, 0.3 if "out" in str(path) else 0.1), params
    )
    return params, l_tr, l_te, alphas


def _meta(l_tr, l_te, alphas, order):
    inner = lambda p: (l_tr(p), (l_tr(p), None))
    outer = lambda fast, aux: (l_te(fast), None)
    return lambda p: metaalign.meta_objective(p, inner, outer, alphas, order)[0]


def _tree_close(a, b, **kwargs):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs)


def _pieces(params, l_tr, l_te, alphas):
    g_tr = jax.grad(l_tr)(params)
    fast = jax.tree.map(lambda p, g, a: p - a * g, params, g_tr, alphas)
    g_te_fast = jax.grad(l_te)(fast)
    scaled = jax.tree.map(lambda a, g: a * g, alphas, g_te_fast)
    hvp = jax.jvp(jax.grad(l_tr), (params,), (scaled,))[1]  # H_tr · (α ⊙ g_te(θ'))
    return g_tr, g_te_fast, hvp


def test_second_order_meta_gradient_equals_the_hessian_formula(problem):
    params, l_tr, l_te, alphas = problem
    g_tr, g_te_fast, hvp = _pieces(params, l_tr, l_te, alphas)
    expected = jax.tree.map(lambda a, b, h: a + b - h, g_tr, g_te_fast, hvp)
    got = jax.grad(_meta(l_tr, l_te, alphas, "second"))(params)
    _tree_close(got, expected, rtol=1e-10, atol=1e-13)
    assert max(float(jnp.max(jnp.abs(h))) for h in jax.tree.leaves(hvp)) > 1e-3  # has teeth


def test_second_order_meta_gradient_matches_central_differences(problem):
    params, l_tr, l_te, alphas = problem
    objective = jax.jit(_meta(l_tr, l_te, alphas, "second"))
    grad = jax.grad(_meta(l_tr, l_te, alphas, "second"))(params)
    rng = np.random.default_rng(1)
    h = 1e-5
    for _ in range(4):
        direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
        shifted = lambda s, v=direction: jax.tree.map(lambda p, u: p + s * h * u, params, v)
        numeric = (objective(shifted(1.0)) - objective(shifted(-1.0))) / (2 * h)
        analytic = sum(
            jnp.vdot(g, d)
            for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
        )
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-7, atol=1e-10)


def test_first_order_is_the_sum_and_differs_from_second_by_the_hessian_term(problem):
    params, l_tr, l_te, alphas = problem
    g_tr, g_te_fast, hvp = _pieces(params, l_tr, l_te, alphas)
    first = jax.grad(_meta(l_tr, l_te, alphas, "first"))(params)
    _tree_close(first, jax.tree.map(jnp.add, g_tr, g_te_fast), rtol=1e-12, atol=1e-15)
    second = jax.grad(_meta(l_tr, l_te, alphas, "second"))(params)
    _tree_close(jax.tree.map(jnp.subtract, first, second), hvp, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("order", ["first", "second"])
def test_zero_step_recovers_the_plain_sum_of_gradients(problem, order):
    params, l_tr, l_te, _ = problem
    zero = jax.tree.map(jnp.zeros_like, params)
    got = jax.grad(_meta(l_tr, l_te, zero, order))(params)
    expected = jax.tree.map(jnp.add, jax.grad(l_tr)(params), jax.grad(l_te)(params))
    _tree_close(got, expected, rtol=1e-12, atol=1e-15)


def test_first_order_taylor_identity_holds_to_second_order(problem):
    """L_te(θ − αg_tr) = L_te(θ) − α⟨g_tr, g_te⟩ + O(α²): the error quarters when α halves."""
    params, l_tr, l_te, _ = problem
    g_tr, g_te = jax.grad(l_tr)(params), jax.grad(l_te)(params)
    inner = sum(
        jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g_tr), jax.tree.leaves(g_te), strict=True)
    )
    errors = []
    for alpha in (1e-2, 5e-3, 2.5e-3):
        fast = jax.tree.map(lambda p, g, a=alpha: p - a * g, params, g_tr)
        errors.append(abs(float(l_te(fast) - (l_te(params) - alpha * inner))))
    assert errors[0] > 0
    for big, small in itertools.pairwise(errors):
        assert 3.5 < big / small < 4.5


def test_inner_multipliers_use_the_longest_matching_prefix():
    params = {"g": {"conv": 1.0}, "f": {"fc": 1.0}, "d": {"ad_layer1": 1.0, "gvbd": 1.0}}
    mults = metaalign.inner_multipliers(params, {"f": 10.0, "d/gvbd": 10.0, "d": 2.0})
    assert mults == {"g": {"conv": 1.0}, "f": {"fc": 10.0}, "d": {"ad_layer1": 2.0, "gvbd": 10.0}}


B = 4


def _setup(method, order):
    config = load_config(
        None,
        [
            f"method.name={method}",
            "metaalign.enabled=true",
            f"metaalign.order={order}",
            "metaalign.meta_lr=10",
            "model.bottleneck_dim=16",
            "model.discriminator_hidden=16",
            "optimizer.groups={}",
        ],
    )
    module = METHODS[method]
    network = build_network(config.model, 10, 1, **module.NETWORK)
    params, stats = network.init(jax.random.key(0), (32, 32, 1))
    optimizers = build_optimizers(config.optimizer, jax.tree.map(lambda _: False, params))
    ctx = StepContext(network, optimizers, config.method, config.metaalign)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state={g: o.init(params[g]) for g, o in optimizers.items()},
        pseudo_labels=jnp.zeros((B,), jnp.int32),
        key=jax.random.key(1),
        extras=metaalign.init_extras(params),
    )
    rng = np.random.default_rng(0)
    batch = {
        "source_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)), jnp.float32),
        "source_label": jnp.asarray(rng.integers(0, 10, B), jnp.int32),
        "target_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)), jnp.float32),
        "target_index": jnp.arange(B, dtype=jnp.int32),
    }
    return ctx, state, batch


@pytest.mark.parametrize("method", ["dann", "cdan", "cdan_e", "gvb"])
def test_metaalign_step_alternates_roles_and_keeps_the_fast_discriminator(method):
    ctx, state, batch = _setup(method, "first")
    step = jax.jit(lambda s, b, k: metaalign.train_step(s, b, k, ctx=ctx))
    d_before = jax.tree.map(np.asarray, state.params["d"])
    branches = []
    for i in range(3):
        new_state, metrics = step(state, batch, jax.random.key(i))
        branches.append(float(metrics["train/meta_align_first"]))
        assert all(np.isfinite(float(v)) for v in metrics.values())
        if branches[-1] == 1.0:  # align first: θ'_D = θ_D − α g_D is kept for the next cls-first
            changed = jax.tree.map(
                lambda a, b: not np.allclose(a, b), new_state.extras["d_fast"], d_before
            )
            assert any(jax.tree.leaves(changed))
        state = new_state
        d_before = jax.tree.map(np.asarray, state.params["d"])
    assert branches == [0.0, 1.0, 0.0]


def test_lax_cond_step_equals_the_host_chosen_branch():
    ctx, state, batch = _setup("gvb", "second")
    cond_step = jax.jit(lambda s, b, k: metaalign.train_step(s, b, k, ctx=ctx))
    host_step = jax.jit(lambda s, b, k: metaalign.branch_step(s, b, k, ctx=ctx, align_first=False))
    a, ma = cond_step(state, batch, jax.random.key(0))
    b, mb = host_step(state, batch, jax.random.key(0))
    _tree_close(a.params, b.params, rtol=1e-5, atol=1e-7)
    assert float(ma["train/loss_cls"]) == pytest.approx(float(mb["train/loss_cls"]), rel=1e-6)
