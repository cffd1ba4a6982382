"""Every registered method's step on a fixed batch: its documented metrics, its objective going
down, purity, frozen parameters; the bi-classifier sub-steps (MCD, CGDM); CGDM's warm-up switch
as data; the adversarial gradient norm against an independent gradient; and the method registry."""

import dataclasses
import math
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uda_jax.config import load_config
from uda_jax.errors import UserError
from uda_jax.losses import cross_entropy
from uda_jax.methods import Method, build_method, lookup, names, register
from uda_jax.methods.adversarial import Adversarial
from uda_jax.methods.cgdm import CGDM
from uda_jax.methods.mcd import MCD, BiClassifier

METHODS = names()


def _tree_close(a, b, **kwargs):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs)


def _with(method, **changes):
    """``method`` with fields of its config section replaced (same network and ctx)."""
    return dataclasses.replace(method, config=dataclasses.replace(method.config, **changes))


def test_every_method_is_registered():
    expected = {"source_only", "mcd", "cgdm", "swd", "dann", "cdan", "cdan_e", "gvb", "metaalign"}
    assert set(METHODS) == expected
    assert sorted(METHODS) == METHODS
    for name in METHODS:
        assert issubclass(lookup(name), Method)
        assert lookup(name).name == name


@pytest.mark.parametrize("method", METHODS)
def test_step_returns_its_documented_metrics_and_lowers_the_source_loss(tiny_experiment, method):
    tiny = tiny_experiment(method)
    state, losses = tiny.state, []
    for i in range(6):
        state, metrics = tiny.step(state, tiny.batch, jax.random.key(i))
        assert set(metrics) == {f"train/{m}" for m in tiny.method.metrics}
        assert all(np.shape(v) == () and np.isfinite(float(v)) for v in metrics.values())
        assert set(tiny.method.alignment_metrics) <= set(tiny.method.metrics)
        losses.append(float(metrics["train/loss_cls"]))
    assert int(state.step) == 6
    assert int(tiny.state.step) == 0  # the input state is not changed
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("method", METHODS)
def test_step_is_a_pure_function_of_its_inputs(tiny_experiment, method):
    tiny = tiny_experiment(method)
    s1, m1 = tiny.step(tiny.state, tiny.batch, jax.random.key(3))
    s2, m2 = tiny.step(tiny.state, tiny.batch, jax.random.key(3))
    assert {k: float(v) for k, v in m1.items()} == {k: float(v) for k, v in m2.items()}
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_frozen_bottleneck_stays_bitwise_unchanged(tiny_experiment, method):
    tiny = tiny_experiment(method, "model.bottleneck_dim=16", "model.train_bottleneck=false")
    before = tiny.state.params["g"]
    state, _ = tiny.step(tiny.state, tiny.batch, jax.random.key(0))
    after = state.params["g"]
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(
            after["bottleneck"]["fc"][name], before["bottleneck"]["fc"][name]
        )
    assert not np.array_equal(
        after["backbone"]["conv1"]["kernel"], before["backbone"]["conv1"]["kernel"]
    )


# ----------------------------------------------------------------------------- MCD and CGDM


def _repeat(sub_step, state, batch, times, key_name):
    """Applies a sub-step ``times`` times on one batch; its objective before each update."""
    values = []
    for i in range(times):
        state, metrics = sub_step(state, batch, jax.random.key(i))
        values.append(float(metrics[key_name]))
    return state, values


def _sub_step(tiny, method, name):
    return tiny.jit(lambda s, b, k: getattr(method, name)(tiny.ctx, s, b, k))


def test_mcd_sub_steps_each_lower_their_own_objective(tiny_experiment):
    tiny = tiny_experiment("mcd")
    assert isinstance(tiny.method, MCD)
    state = tiny.state
    for name in ("step_a", "step_b", "step_c"):
        state, values = _repeat(
            _sub_step(tiny, tiny.method, name), state, tiny.batch, 6, f"train/loss_{name[-1]}"
        )
        assert values[-1] < values[0], name
        assert int(state.step) == 0  # sub-steps leave the iteration counter to step()


def test_mcd_step_b_raises_the_discrepancy_step_c_lowers_it(tiny_experiment):
    tiny = tiny_experiment("mcd")
    method = _with(tiny.method, discrepancy_weight=10.0)
    state, disc_b = _repeat(
        _sub_step(tiny, method, "step_b"), tiny.state, tiny.batch, 6, "train/disc_max"
    )
    assert disc_b[-1] > disc_b[0]
    _, disc_c = _repeat(_sub_step(tiny, method, "step_c"), state, tiny.batch, 6, "train/disc_min")
    assert disc_c[-1] < disc_c[0]


def test_cgdm_step_c_lowers_its_objective_with_the_gradient_discrepancy_in_it(tiny_experiment):
    tiny = tiny_experiment("cgdm")
    method = _with(tiny.method, gd_weight=1.0, entropy_weight=0.0)
    step_c = _sub_step(tiny, method, "step_c")
    _, metrics = step_c(tiny.state, tiny.batch, jax.random.key(0))
    assert float(metrics["train/loss_gd"]) > 0.1  # the term is on and not negligible
    np.testing.assert_allclose(
        metrics["train/loss_c"], metrics["train/disc_min"] + metrics["train/loss_gd"], rtol=1e-6
    )
    _, loss_c = _repeat(step_c, tiny.state, tiny.batch, 6, "train/loss_c")
    assert loss_c[-1] < loss_c[0] - 1e-3


def test_cgdm_warmup_is_data_of_one_compiled_step(tiny_experiment):
    """Before ``warmup_steps`` the pseudo-label and L_GD terms are exactly 0 and the update is
    that of α = β = 0; from it on they are on and change the update. One compilation serves
    both: the switch is ``step >= warmup_steps`` inside the step."""
    tiny = tiny_experiment("cgdm")
    method = _with(tiny.method, warmup_steps=2, gd_weight=1.0, pseudo_weight=1.0)
    step = tiny.step_of(method)
    off_step = tiny.step_of(_with(method, gd_weight=0.0, pseudo_weight=0.0))
    key = jax.random.key(7)
    for index in range(4):
        state = tiny.state.replace(step=jnp.asarray(index, jnp.int32))
        got, metrics = step(state, tiny.batch, key)
        off, off_metrics = off_step(state, tiny.batch, key)
        assert int(got.step) == index + 1
        if index < method.warmup_steps:
            assert float(metrics["train/loss_gd"]) == 0.0
            assert float(metrics["train/loss_pseudo"]) == 0.0
            _tree_close(got.params, off.params, rtol=1e-6, atol=1e-7)
            _tree_close(got.batch_stats, off.batch_stats, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                metrics["train/loss_a"], off_metrics["train/loss_a"], rtol=1e-6
            )
        else:
            assert float(metrics["train/loss_gd"]) > 0.0
            assert float(metrics["train/loss_pseudo"]) > 0.0
            for group in ("g", "f1"):
                diff = jax.tree.map(
                    lambda a, b: float(jnp.max(jnp.abs(a - b))),
                    got.params[group],
                    off.params[group],
                )
                assert max(jax.tree.leaves(diff)) > 1e-6, group
    assert step._cache_size() == 1


def test_rolled_step_c_loop_trains_as_the_unrolled_one(tiny_experiment):
    """``cgdm.unroll_c=false`` (one compiled loop body) is the same iteration as unrolled."""
    tiny = tiny_experiment("cgdm")
    results, args = [], (tiny.state, tiny.batch, jax.random.key(3))
    for unroll in (True, False):
        traced = tiny.step_of(_with(tiny.method, num_k=2, unroll_c=unroll)).trace(*args)
        assert f"unroll={2 if unroll else 1}" in str(traced.jaxpr)  # the setting reaches the scan
        results.append(traced.lower().compile()(*args))
    (unrolled, m_unrolled), (rolled, m_rolled) = results
    assert m_rolled["train/loss_gd"] > 0  # the gradient discrepancy is in the loop body
    _tree_close(unrolled.params, rolled.params, rtol=1e-5, atol=1e-6)
    for name in m_unrolled:
        np.testing.assert_allclose(m_rolled[name], m_unrolled[name], rtol=1e-5, atol=1e-6)


def test_cgdm_is_the_joint_batch_bi_classifier_with_its_two_terms():
    assert issubclass(CGDM, BiClassifier) and CGDM.joint_batch
    assert set(BiClassifier.metrics) < set(CGDM.metrics)
    assert {"loss_gd", "loss_pseudo"} == set(CGDM.metrics) - set(BiClassifier.metrics)
    assert set(MCD.metrics) == set(BiClassifier.metrics)


# ----------------------------------------------------------------------------- adversarial


def test_adversarial_grad_norm_is_the_norm_of_the_full_gradient(tiny_experiment):
    """DANN's ``train/grad_norm`` against its gradient written out by hand: the source CE and
    the domain BCE differentiated separately, the BCE's path into G and f reversed with the
    coefficient c(step + 1) (dropout off, so the dropout keys play no part)."""
    tiny = tiny_experiment("dann", "model.discriminator_dropout=0.0")
    trade_off = 0.7
    step = tiny.step_of(_with(tiny.method, grl_max_iter=10.0, trade_off=trade_off))
    network, state, batch = tiny.ctx.network, tiny.state, tiny.batch
    num_source = batch["source_label"].shape[0]
    images = jnp.concatenate([batch["source_image"], batch["target_image"]])
    domain = jnp.concatenate([jnp.ones(num_source), jnp.zeros(num_source)])

    def forward(params):
        features, _ = network.apply_generator(
            params["g"], state.batch_stats["g"], images, train=True
        )
        (logits, _), _ = network.apply_classifier(
            params["f"], state.batch_stats["f"], features, train=True
        )
        return features, logits

    def source_ce(params):
        _, logits = forward(params)
        return cross_entropy(logits[:num_source], batch["source_label"])

    def domain_bce(params):
        features, _ = forward(params)
        d_logits, _ = network.apply_discriminator(params["d"], features, train=True)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(d_logits, domain))

    step_index = 3
    coeff = 2.0 / (1.0 + math.exp(-10.0 * (step_index + 1) / 10.0)) - 1.0  # c(t + 1), 0.96
    gradients = jax.jit(lambda p: (jax.grad(source_ce)(p), jax.grad(domain_bce)(p), domain_bce(p)))
    g_ce, g_bce, bce = gradients(state.params)
    expected = {
        "g": jax.tree.map(lambda a, b: a - coeff * trade_off * b, g_ce["g"], g_bce["g"]),
        "f": g_ce["f"],
        "d": jax.tree.map(lambda b: trade_off * b, g_bce["d"]),
    }
    unreversed = {
        **expected,
        "g": jax.tree.map(lambda a, b: a + trade_off * b, g_ce["g"], g_bce["g"]),
    }
    at_step = state.replace(step=jnp.asarray(step_index, jnp.int32))
    _, metrics = step(at_step, batch, jax.random.key(0))
    got = float(metrics["train/grad_norm"])
    assert got > 0
    np.testing.assert_allclose(got, float(optax.tree.norm(expected)), rtol=1e-5)
    assert abs(float(optax.tree.norm(unreversed)) / got - 1) > 1e-3  # the reversal shows
    np.testing.assert_allclose(metrics["train/loss_trs"], bce, rtol=1e-5)


@pytest.mark.parametrize("method", [m for m in METHODS if issubclass(lookup(m), Adversarial)])
def test_adversarial_steps_report_a_positive_grad_norm(tiny_experiment, method):
    tiny = tiny_experiment(method)
    _, metrics = tiny.step(tiny.state, tiny.batch, jax.random.key(0))
    assert float(metrics["train/grad_norm"]) > 0


# ----------------------------------------------------------------------------- the registry


def test_register_rejects_a_non_method_a_reserved_name_and_a_taken_name():
    before = names()
    with pytest.raises(ValueError, match="Method subclass"):
        register(object)
    with pytest.raises(ValueError, match="Method subclass"):
        register(lambda: None)

    class Reserved(Method):
        name = "model"

    class Nameless(Method):
        pass

    class Spaced(Method):
        name = "two words"

    class Impostor(Method):
        name = "cgdm"

    for cls in (Reserved, Nameless, Spaced):
        with pytest.raises(ValueError, match="identifier"):
            register(cls)
    with pytest.raises(ValueError, match="taken"):
        register(Impostor)
    assert names() == before
    assert lookup("cgdm") is CGDM


def test_lookup_imports_a_method_by_its_import_path(tmp_path, monkeypatch):
    module = f"uda_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            from uda_jax.methods import Method


            @dataclasses.dataclass(frozen=True)
            class ScaleConfig:
                scale: float = 1.0


            @dataclasses.dataclass(frozen=True)
            class Mine(Method):
                config: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)
                name = "mine"
                config_class = ScaleConfig


            class NotAMethod:
                name = "nope"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)  # and removed again afterwards
    cls = lookup(f"{module}:Mine")
    assert issubclass(cls, Method) and cls.__module__ == module and cls.name == "mine"
    assert "mine" not in names()  # an import path needs no registration
    config = load_config(None, [f"method.name={module}:Mine", "mine.scale=2.5"])
    method = build_method(config)
    assert isinstance(method, cls) and method.config.scale == 2.5
    for path, text in (
        (f"{module}:Missing", "is not a uda_jax.methods.Method"),
        (f"{module}:NotAMethod", "is not a uda_jax.methods.Method"),
        ("uda_no_such_module_here:Mine", "cannot import"),
    ):
        with pytest.raises(UserError, match=text) as info:
            lookup(path)
        assert "\n" not in str(info.value)


def test_unknown_method_is_a_one_line_error_with_a_did_you_mean():
    with pytest.raises(UserError) as info:
        lookup("cgdn")
    message = str(info.value)
    assert "\n" not in message
    assert "did you mean 'cgdm'" in message
    assert all(name in message for name in METHODS)
    with pytest.raises(UserError, match="did you mean 'metaalign'"):
        load_config(None, ["method.name=metalign"])
