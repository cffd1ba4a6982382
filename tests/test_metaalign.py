"""MetaAlign's meta-gradient against independent float64 computations, and the MetaAlign step
around each adversarial method: alternating roles in one compiled step, the fast discriminator,
the meta-gradient's norm, and its config (an adversarial base only)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from uda_jax.config import load_config
from uda_jax.errors import UserError
from uda_jax.methods import lookup, metaalign, names
from uda_jax.methods.adversarial import Adversarial
from uda_jax.models.layers import BatchNorm


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


BASES = [name for name in names() if issubclass(lookup(name), Adversarial)]


def _tiny_metaalign(tiny_experiment, base, *overrides):
    """MetaAlign around ``base`` (the default base gvb shares the tiny experiment of every other
    test of ``metaalign``)."""
    if base != metaalign.MetaAlignConfig().base:
        overrides = (f"metaalign.base={base}", *overrides)
    tiny = tiny_experiment("metaalign", *overrides)
    assert tiny.method.base.name == base
    return tiny


def test_the_bases_are_the_adversarial_methods():
    assert BASES == ["cdan", "cdan_e", "dann", "gvb"]
    assert metaalign.MetaAlignConfig().base in BASES


@pytest.mark.parametrize("base", BASES)
def test_metaalign_step_alternates_roles_and_keeps_the_fast_discriminator(tiny_experiment, base):
    tiny = _tiny_metaalign(tiny_experiment, base)
    assert set(tiny.method.metrics) >= {"meta_grad_norm", "meta_align_first"}
    assert "grad_norm" not in tiny.method.metrics
    state = tiny.state
    _tree_close(state.extras["d_fast"], state.params["d"], rtol=0, atol=0)  # θ_D at the start
    branches = []
    for i in range(4):
        new_state, metrics = tiny.step(state, tiny.batch, jax.random.key(i))
        branches.append(float(metrics["train/meta_align_first"]))
        assert all(np.isfinite(float(v)) for v in metrics.values())
        assert float(metrics["train/meta_grad_norm"]) > 0
        assert int(new_state.step) == i + 1
        if branches[-1] == 1.0:  # align first: θ'_D = θ_D − α g_D is kept for the next cls-first
            changed = jax.tree.map(
                lambda a, b: not np.allclose(a, b), new_state.extras["d_fast"], state.params["d"]
            )
            assert any(jax.tree.leaves(changed))
        else:  # cls first reads the fast discriminator and keeps it
            _tree_close(new_state.extras["d_fast"], state.extras["d_fast"], rtol=0, atol=0)
        changed = jax.tree.map(lambda a, b: not np.allclose(a, b), new_state.params, state.params)
        assert all(any(jax.tree.leaves(changed[group])) for group in ("g", "f", "d"))
        state = new_state
    assert branches == [0.0, 1.0, 0.0, 1.0]


def test_one_traced_branch_equals_each_fixed_role_and_compiles_once(tiny_experiment):
    """``roles: alternate`` is one ``lax.cond`` on the iteration: at an even step it is the
    cls-first iteration (``roles: cls_first``), at an odd step the align-first one, and one
    trace and compilation serve both."""
    tiny = _tiny_metaalign(tiny_experiment, "gvb", "metaalign.order=second")
    method = tiny.method
    assert method.config.roles == "alternate"
    traces = []

    def counted(state, batch, key):
        traces.append(1)
        return method.step(tiny.ctx, state, batch, key)

    step = tiny.jit(counted)
    fixed = {
        role: tiny.step_of(
            dataclasses.replace(method, config=dataclasses.replace(method.config, roles=role))
        )
        for role in ("cls_first", "align_first")
    }
    for index in range(4):
        state = tiny.state.replace(step=jnp.asarray(index, jnp.int32))
        key = jax.random.key(10 + index)
        got, metrics = step(state, tiny.batch, key)
        role = "align_first" if index % 2 else "cls_first"
        expected, expected_metrics = fixed[role](state, tiny.batch, key)
        other, _ = fixed["cls_first" if index % 2 else "align_first"](state, tiny.batch, key)
        assert float(metrics["train/meta_align_first"]) == float(index % 2)
        assert metrics.keys() == expected_metrics.keys()
        for name in metrics:
            np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=1e-5, atol=1e-7)
        # float32, second order: the two compilations fuse differently (one element in 800
        # differs by ~1e-7 absolute); a wrong role would differ by far more (checked below)
        _tree_close(got.params, expected.params, rtol=1e-5, atol=1e-6)
        _tree_close(got.batch_stats, expected.batch_stats, rtol=1e-5, atol=1e-6)
        _tree_close(got.extras, expected.extras, rtol=1e-5, atol=1e-6)
        differs = jax.tree.map(lambda a, b: not np.allclose(a, b), got.params, other.params)
        assert any(jax.tree.leaves(differs))  # the two roles are different iterations
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize("base", ["cgdm", "mcd", "source_only", "metaalign", "no_such_method"])
def test_a_non_adversarial_base_is_a_user_error_naming_the_valid_bases(base):
    with pytest.raises(UserError) as info:
        load_config(None, ["method.name=metaalign", f"metaalign.base={base}"])
    message = str(info.value)
    assert "\n" not in message
    assert "metaalign.base" in message and repr(base) in message
    assert all(name in message for name in BASES)
