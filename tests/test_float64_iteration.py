"""Whole training iterations in float64 against an independent computation.

One full iteration of CGDM and of MetaAlign (first and second order, around GVB-GD) on a tiny
LeNet network, compared leaf by leaf (parameters, BatchNorm running statistics, MetaAlign's
stale discriminator) with a re-derivation written here from the equations of the method
modules' docstrings. Only the network's ``apply_generator`` / ``apply_classifier`` /
``apply_discriminator`` are shared with the library: the losses, the gradient discrepancy, the
meta-objective, the inner and outer updates, the reversal and learning-rate schedules, momentum
and coupled weight decay are all re-written below in plain ``jax.numpy``.

Dropout is 0 everywhere, so the steps are deterministic and their keys do not matter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import cpu, domain_losses
from uda_jax.config import load_config
from uda_jax.experiment import method_network
from uda_jax.methods import StepContext, build_method
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState

pytestmark = pytest.mark.usefixtures("float64")

F64 = jnp.float64
RTOL, ATOL = 1e-12, 1e-15  # asked: 1e-12 relative; they agree to about 1e-14

B = 4  # per domain
CLASSES = 5
NUM_TARGET = 8  # rows of the (virtual) target training set, for the pseudo-labels
GAMMA, POWER = 0.002, 0.7  # inv: lr(t) = lr0·(1 + GAMMA·t)^(−POWER)
CGDM_LR0, META_LR0 = 0.05, 0.001
WEIGHT_DECAY = 5e-4
F_MOMENTUM = 0.9  # every group but G
META_F_LR_MULT = 10.0  # MetaAlign runs: the head's learning-rate multiplier
GRL_MAX_ITER, GRL_ALPHA = 100.0, 10.0
GVB_TRADE_OFF, GVBG_WEIGHT, GVBD_WEIGHT = 0.7, 0.3, 0.2
CGDM_WEIGHTS = {"entropy": 0.1, "pseudo": 0.3, "gd": 0.5, "disc": 1.0}

COMMON = (
    "model.backbone=lenet",
    "model.classifier_widths=[16,16]",
    "model.discriminator_hidden=16",
    "model.dropout=0",
    "model.discriminator_dropout=0",
    f"data.batch_size={B}",
    "optimizer.name=sgd",
    f"optimizer.weight_decay={WEIGHT_DECAY}",
    f"optimizer.kwargs.momentum={F_MOMENTUM}",
    "optimizer.groups.g.kwargs.momentum=0.0",
    "optimizer.schedule=inv",
    f"optimizer.schedule.kwargs.gamma={GAMMA}",
    f"optimizer.schedule.kwargs.power={POWER}",
)
CGDM = (
    "method.name=cgdm",
    f"optimizer.learning_rate={CGDM_LR0}",
    "cgdm.warmup_steps=0",
    "cgdm.num_k=2",
    f"cgdm.gd_weight={CGDM_WEIGHTS['gd']}",
    f"cgdm.pseudo_weight={CGDM_WEIGHTS['pseudo']}",
    f"cgdm.entropy_weight={CGDM_WEIGHTS['entropy']}",
    f"cgdm.discrepancy_weight={CGDM_WEIGHTS['disc']}",
)
METAALIGN = (
    "method.name=metaalign",
    f"optimizer.learning_rate={META_LR0}",
    "metaalign.base=gvb",
    f"optimizer.groups.f.lr_mult={META_F_LR_MULT}",
    f"gvb.grl_max_iter={GRL_MAX_ITER}",
    f"gvb.grl_alpha={GRL_ALPHA}",
    f"gvb.trade_off={GVB_TRADE_OFF}",
    f"gvb.gvbg_weight={GVBG_WEIGHT}",
    f"gvb.gvbd_weight={GVBD_WEIGHT}",
)

# ----------------------------------------------------------------------------- the library side


def _to_f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, F64), tree)


@functools.cache
def _network(family: str):
    """The network of a method family, built as ``build_experiment`` builds it, with float64
    parameters and batch statistics (the network does not depend on the variant's options)."""
    config = load_config(None, [*COMMON, *(CGDM if family == "cgdm" else METAALIGN)])
    tuning = cpu.tuning(config.cpu_tuning, config.model.backbone)
    network = method_network(config, build_method(config), CLASSES, cpu.layer_ops(tuning))
    # Initialised in float32: under x64 ``Network.init`` feeds the discriminator a float64
    # zeros input, which strict promotion refuses against its float32 kernel.
    with jax.enable_x64(False):
        params, stats = jax.jit(lambda key: network.init(key, (32, 32, 1)))(jax.random.key(0))
    return network, _to_f64(params), _to_f64(stats), tuning


@functools.cache
def _library(family: str, overrides: tuple[str, ...]):
    """``(method, ctx, initial state, compiled step)`` of one configuration."""
    config = load_config(None, [*COMMON, *(CGDM if family == "cgdm" else METAALIGN), *overrides])
    method = build_method(config)
    network, params, stats, tuning = _network(family)
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(config.optimizer, masks)
    ctx = StepContext(network, optimizers)
    extras = method.init_extras(params, NUM_TARGET)
    if "pseudo_labels" in extras:
        labels = np.random.default_rng(3).integers(0, CLASSES, NUM_TARGET)
        extras = {**extras, "pseudo_labels": jnp.asarray(labels, jnp.int32)}
    state = TrainState.create(params, stats, optimizers, jax.random.key(1), extras)
    step = cpu.jit(functools.partial(method.step, ctx), tuning)
    return method, ctx, state, step


@functools.cache
def _batch():
    rng = np.random.default_rng(7)
    return {
        "source_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)), F64),
        "source_label": jnp.asarray(rng.integers(0, CLASSES, B), jnp.int32),
        "target_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)) + 0.5, F64),
        "target_index": jnp.asarray([5, 0, 3, 6], jnp.int32),
    }


# ----------------------------------------------------------------------------- the re-derivation


def sg(x):
    return jax.lax.stop_gradient(x)


def softmax(z):
    e = jnp.exp(z - sg(jnp.max(z, axis=1, keepdims=True)))
    return e / jnp.sum(e, axis=1, keepdims=True)


def per_row_ce(z, labels):
    """``−log softmax(z)[y]`` per row, as logsumexp minus the picked logit."""
    m = sg(jnp.max(z, axis=1, keepdims=True))
    lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(z - m), axis=1))
    one_hot = (labels[:, None] == jnp.arange(z.shape[1], dtype=labels.dtype)[None, :]).astype(F64)
    return lse - jnp.sum(one_hot * z, axis=1)


def ce(z, labels):
    return jnp.mean(per_row_ce(z, labels))


def row_h(p):
    return -jnp.sum(p * jnp.log(p + 1e-5), axis=1)


def im_entropy(p):
    """``mean_i H(p_i) + Σ_k p̄_k log p̄_k`` with ``p̄ = mean_i p_i + 1e-5``."""
    mean = jnp.mean(p, axis=0) + 1e-5
    return jnp.mean(row_h(p)) + jnp.sum(mean * jnp.log(mean))


def discrepancy(p1, p2):
    return jnp.mean(jnp.abs(p1 - p2))


def weighted_ce(z, labels):
    """``(1/B) Σ_i w_i / sg(Σ_j w_j) · CE_i`` with ``w_i = 1 + exp(−H(p_i))``."""
    w = 1.0 + jnp.exp(-row_h(softmax(z)))
    return jnp.sum(w * per_row_ce(z, labels)) / sg(jnp.sum(w)) / z.shape[0]


def cosine(x, y):
    """Cosine over axis 0 (a kernel ``[in, out]``: one per output unit; a vector: one)."""
    dot = jnp.sum(x * y, axis=0)
    norms = jnp.sum(x * x, axis=0) * jnp.sum(y * y, axis=0)
    return dot / jnp.sqrt(jnp.maximum(norms, 1e-16))


def gd_of_classifier(net, f_params, f_stats, features, labels, pseudo):
    """``mean over tensors (1 − cos(∂CE_s/∂P, ∂L^W_t/∂P))``, rows of a kernel averaged."""

    def logits(p):
        return net.apply_classifier(p, f_stats, features, train=True)[0]

    g_s = jax.grad(lambda p: ce(logits(p)[:B], labels))(f_params)
    g_t = jax.grad(lambda p: weighted_ce(logits(p)[B:], pseudo))(f_params)
    per_tensor = [
        1.0 - jnp.mean(cosine(a, b))
        for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_t), strict=True)
    ]
    return sum(per_tensor) / len(per_tensor)


def inv_lr(t, lr0):
    return lr0 * (1.0 + GAMMA * jnp.asarray(t, F64)) ** (-POWER)


def grl_c(t):
    return 2.0 / (1.0 + jnp.exp(-GRL_ALPHA * jnp.asarray(t, F64) / GRL_MAX_ITER)) - 1.0


def reversal(x, c):
    """Value ``x``; every derivative (of any order) through it is multiplied by ``−c``."""
    return -c * x + sg((1.0 + c) * x)


def sgd(params, grads, velocity, lr, momentum):
    """torch.optim.SGD: ``v ← m·v + (g + wd·p)``, ``p ← p − lr·v``."""
    v = jax.tree.map(lambda p, g, v: momentum * v + (g + WEIGHT_DECAY * p), params, grads, velocity)
    return jax.tree.map(lambda p, v: p - lr * v, params, v), v


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _sgd_groups(params, grads, velocity, lr, lr_mult):
    params, velocity = dict(params), dict(velocity)
    for group, group_grads in grads.items():
        momentum = 0.0 if group == "g" else F_MOMENTUM
        params[group], velocity[group] = sgd(
            params[group], group_grads, velocity[group], lr * lr_mult.get(group, 1.0), momentum
        )
    return params, velocity


# CGDM ---------------------------------------------------------------------------------------


def reference_cgdm(net, params, stats, velocity, t, batch, pseudo_labels, w):
    """One CGDM iteration: A (G, F1, F2), B (F1, F2), C×2 (G); ``w`` the loss weights."""
    x = jnp.concatenate([batch["source_image"], batch["target_image"]], axis=0)
    y = batch["source_label"]
    y_hat = pseudo_labels[batch["target_index"]]

    def heads(p, s, features):
        z1, s1 = net.apply_classifier(p["f1"], s["f1"], features, train=True)
        z2, s2 = net.apply_classifier(p["f2"], s["f2"], features, train=True)
        return z1, z2, s1, s2

    # A: CE on both classifiers + w_E·entropy + α·L^W on pseudo-labels; G, F1, F2 step.
    def loss_a(p):
        features, s_g = net.apply_generator(p["g"], stats["g"], x, train=True)
        z1, z2, s1, s2 = heads(p, stats, features)
        loss = ce(z1[:B], y) + ce(z2[:B], y)
        loss += w["entropy"] * (im_entropy(softmax(z1[B:])) + im_entropy(softmax(z2[B:])))
        loss += w["pseudo"] * (weighted_ce(z1[B:], y_hat) + weighted_ce(z2[B:], y_hat))
        return loss, {"g": s_g, "f1": s1, "f2": s2}

    trainable = {k: params[k] for k in ("g", "f1", "f2")}
    grads, stats = jax.grad(loss_a, has_aux=True)(trainable)
    params, velocity = _sgd_groups(params, grads, velocity, inv_lr(t, CGDM_LR0), {})

    # B: F1, F2 maximise the discrepancy on G's (fixed) features, keeping CE low.
    features, s_g = net.apply_generator(params["g"], stats["g"], x, train=True)
    features = sg(features)

    def loss_b(p):
        z1, z2, s1, s2 = heads(p, stats, features)
        p1, p2 = softmax(z1[B:]), softmax(z2[B:])
        loss = ce(z1[:B], y) + ce(z2[:B], y) - w["disc"] * discrepancy(p1, p2)
        loss += w["entropy"] * (im_entropy(p1) + im_entropy(p2))
        return loss, {"g": s_g, "f1": s1, "f2": s2}

    grads, stats = jax.grad(loss_b, has_aux=True)({k: params[k] for k in ("f1", "f2")})
    params, velocity = _sgd_groups(params, grads, velocity, inv_lr(t, CGDM_LR0), {})

    # C, twice (one loop body): G minimises discrepancy + entropy + β·L_GD.
    def repeat_c(_, carry):
        params, stats, velocity = carry

        def loss_c(g):
            features, s_g = net.apply_generator(g, stats["g"], x, train=True)
            z1, z2, s1, s2 = heads(params, stats, features)
            p1, p2 = softmax(z1[B:]), softmax(z2[B:])
            loss = w["disc"] * discrepancy(p1, p2)
            loss += w["entropy"] * (im_entropy(p1) + im_entropy(p2))
            l_gd = sum(
                gd_of_classifier(net, params[n], stats[n], features, y, y_hat) for n in ("f1", "f2")
            )
            loss += w["gd"] * l_gd / 2.0
            return loss, {"g": s_g, "f1": s1, "f2": s2}

        grads, stats = jax.grad(loss_c, has_aux=True)(params["g"])
        params, velocity = _sgd_groups(params, {"g": grads}, velocity, inv_lr(t, CGDM_LR0), {})
        return params, stats, velocity

    params, stats, velocity = jax.lax.fori_loop(0, 2, repeat_c, (params, stats, velocity))
    return params, stats, velocity


# MetaAlign around GVB ----------------------------------------------------------------------


def _head(net, p, stats, images):
    """G then the bridged linear head: features, logits ``fc − gvbg``, bridge, new stats."""
    features, s_g = net.apply_generator(p["g"], stats["g"], images, train=True)
    (logits, bridge), s_f = net.apply_classifier(p["f"], stats["f"], features, train=True)
    return logits, bridge, {**stats, "g": s_g, "f": s_f}


def _gvb_alignment(net, d_params, logits, bridge, t):
    """``(L_trs, mean|b|, mean|z|)``: reversal ``c(t+1)`` on the discriminator's input (the
    class probabilities), ``c(t)`` on the entropy of the per-domain normalised weights."""
    probs = softmax(logits)
    d_out, d_bridge = net.apply_discriminator(d_params, reversal(probs, grl_c(t + 1)), train=True)
    w = jnp.exp(-reversal(row_h(probs), grl_c(t)))
    w = jnp.concatenate([w[:B] / sg(jnp.sum(w[:B])), w[B:] / sg(jnp.sum(w[B:]))])
    q = 1.0 / (1.0 + jnp.exp(-d_out))
    domain = jnp.concatenate([jnp.ones((B,), F64), jnp.zeros((B,), F64)])
    bce = -(domain * jnp.log(q + 1e-8) + (1.0 - domain) * jnp.log(1.0 - q + 1e-8))
    return 0.5 * jnp.sum(w * bce), jnp.mean(jnp.abs(d_bridge)), jnp.mean(jnp.abs(bridge))


def _inner_rates(params, t):
    """α: lr(t) (no group multiplier) × 10 for the head and the discriminator's bridge."""
    lr = inv_lr(t, META_LR0)
    rates = {"g": jax.tree.map(lambda _: lr, params["g"])}
    rates["f"] = jax.tree.map(lambda _: 10.0 * lr, params["f"])
    rates["d"] = {
        k: jax.tree.map(lambda _, k=k: (10.0 if k == "gvbd" else 1.0) * lr, v)
        for k, v in params["d"].items()
    }
    return rates


def _order(grads, second):
    """The inner gradient as is (``second`` = 1) or detached (0): same values."""
    return jax.tree.map(lambda g: second * g + (1.0 - second) * sg(g), grads)


def reference_metaalign(net, align_first, params, stats, velocity, d_fast, t, batch, second, stale):
    """One MetaAlign iteration around GVB; ``second``, ``stale`` are 0/1 floats."""
    xs, y = batch["source_image"], batch["source_label"]
    x = jnp.concatenate([xs, batch["target_image"]], axis=0)
    rates = _inner_rates(params, t)

    def step_to(p, rates, g):
        return jax.tree.map(lambda p, a, g: p - a * g, p, rates, g)

    def cls_first(p):
        core = {k: p[k] for k in ("g", "f")}

        def inner(c):  # source-only forward
            logits, bridge, s1 = _head(net, c, stats, xs)
            cls, gvbg = ce(logits, y), jnp.mean(jnp.abs(bridge))
            return cls + GVBG_WEIGHT * gvbg, (cls + 0.5 * GVBG_WEIGHT * gvbg, s1)

        (_, (tr, s1)), g_in = jax.value_and_grad(inner, has_aux=True)(core)
        fast = step_to(core, {k: rates[k] for k in core}, _order(g_in, second))
        # stale: the forward sees the last fast θ_D, the gradient reaches θ_D unchanged
        d = jax.tree.map(lambda d, df: d + stale * (sg(df) - sg(d)), p["d"], d_fast)
        logits, bridge, s2 = _head(net, fast, s1, x)
        trs, gvbd, gvbg_all = _gvb_alignment(net, d, logits, bridge, t)
        te = GVB_TRADE_OFF * trs + GVBD_WEIGHT * gvbd + 0.5 * GVBG_WEIGHT * gvbg_all
        return tr + te, (s2, d_fast)

    def align_first_(p):
        def inner(q):  # source+target forward, one GVB step of G, f and d
            logits, bridge, s1 = _head(net, q, stats, x)
            trs, gvbd, gvbg_all = _gvb_alignment(net, q["d"], logits, bridge, t)
            return GVB_TRADE_OFF * trs + GVBD_WEIGHT * gvbd + GVBG_WEIGHT * gvbg_all, s1

        (tr, s1), g_in = jax.value_and_grad(inner, has_aux=True)(p)
        fast = step_to(p, rates, _order(g_in, second))
        logits, bridge, s2 = _head(net, fast, s1, xs)
        te = ce(logits, y) + GVBG_WEIGHT * jnp.mean(jnp.abs(bridge))
        return tr + te, (s2, sg(fast["d"]))

    objective = align_first_ if align_first else cls_first
    grads, (stats, d_fast) = jax.grad(objective, has_aux=True)(params)
    params, velocity = _sgd_groups(
        params, grads, velocity, inv_lr(t, META_LR0), {"f": META_F_LR_MULT}
    )
    return params, stats, velocity, d_fast


@functools.cache
def _reference_cgdm_jit():
    net = _network("cgdm")[0]
    return jax.jit(functools.partial(reference_cgdm, net))


@functools.cache
def _reference_metaalign_jit(align_first: bool):
    net = _network("metaalign")[0]
    return jax.jit(functools.partial(reference_metaalign, net, align_first))


# ----------------------------------------------------------------------------- checks


def assert_trees_close(actual, expected, what):
    paths = jax.tree_util.tree_flatten_with_path(actual)[0]
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for (path, a), e in zip(paths, jax.tree.leaves(expected), strict=True):
        name = f"{what}{jax.tree_util.keystr(path)}"
        assert a.dtype == F64, f"{name} is {a.dtype}"
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=RTOL, atol=ATOL, err_msg=name)


def relative_difference(a, b) -> float:
    """``‖a − b‖ / ‖b‖`` over all leaves of two pytrees."""
    pairs = [
        (np.asarray(x), np.asarray(y)) for x, y in zip(*map(jax.tree.leaves, (a, b)), strict=True)
    ]
    diff = sum(np.sum(np.square(x - y)) for x, y in pairs)
    return float(np.sqrt(diff / sum(np.sum(np.square(y)) for _, y in pairs)))


def test_scalars_follow_x64():
    _, ctx, state, _ = _library("metaalign", ())
    step = jnp.asarray(5, jnp.int32)
    for group, optimizer in ctx.optimizers.items():
        assert optimizer.schedule(step).dtype == F64, group
        assert optimizer.learning_rate(step).dtype == F64, group
        np.testing.assert_allclose(
            float(optimizer.schedule(step)), float(inv_lr(5, META_LR0)), rtol=1e-15
        )
    np.testing.assert_allclose(
        float(ctx.optimizers["f"].learning_rate(step)), META_F_LR_MULT * float(inv_lr(5, META_LR0))
    )
    coefficient = domain_losses.grl_coefficient(step, GRL_MAX_ITER, GRL_ALPHA)
    assert coefficient.dtype == F64
    np.testing.assert_allclose(float(coefficient), float(grl_c(5)), rtol=1e-15)
    assert domain_losses.grl_coefficient(step).dtype == F64
    assert all(leaf.dtype == F64 for leaf in jax.tree.leaves(state.params))


# ----------------------------------------------------------------------------- CGDM


def test_cgdm_iteration_matches_the_rederivation():
    method, _, state, step = _library("cgdm", ())
    assert method.config.num_k == 2 and method.config.warmup_steps == 0
    batch = _batch()
    t = 3  # past the warm-up, and lr(t) < lr(0)
    state = state.replace(step=jnp.asarray(t, jnp.int32))
    new_state, metrics = step(state, batch, jax.random.key(2))
    assert int(new_state.step) == t + 1
    assert float(metrics["train/loss_gd"]) > 0.01  # the L_GD term is on

    reference = _reference_cgdm_jit()
    velocity = zeros_like(state.params)
    labels = state.extras["pseudo_labels"]
    weights = {k: jnp.asarray(v, F64) for k, v in CGDM_WEIGHTS.items()}
    params, stats, _ = reference(
        state.params, state.batch_stats, velocity, t, batch, labels, weights
    )
    assert_trees_close(new_state.params, params, "params")
    assert_trees_close(new_state.batch_stats, stats, "batch_stats")
    floats = [
        x for x in jax.tree.leaves(new_state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    assert floats and all(x.dtype == F64 for x in floats)  # the momentum buffers too

    # Teeth: every term moves the parameters far more than the tolerance.
    for term, group, least in (("gd", "g", 1e-6), ("pseudo", None, 1e-6), ("entropy", None, 1e-6)):
        without = reference(
            state.params,
            state.batch_stats,
            velocity,
            t,
            batch,
            labels,
            weights | {term: jnp.asarray(0.0, F64)},
        )[0]
        a, b = (params, without) if group is None else (params[group], without[group])
        assert relative_difference(b, a) > least, term


# ----------------------------------------------------------------------------- MetaAlign


@pytest.mark.parametrize(
    ("order", "stale"), [("first", True), ("second", False)], ids=["first-stale", "second-fresh"]
)
def test_metaalign_iterations_match_the_rederivation(order, stale):
    """Three iterations from step 4: cls first, align first (sets θ'_D), cls first again."""
    overrides = (f"metaalign.order={order}", f"metaalign.stale_discriminator={str(stale).lower()}")
    _, _, state, step = _library("metaalign", overrides)
    batch = _batch()
    t0 = 4
    state = state.replace(step=jnp.asarray(t0, jnp.int32))
    second = jnp.asarray(1.0 if order == "second" else 0.0, F64)
    stale_flag = jnp.asarray(1.0 if stale else 0.0, F64)

    ref = {
        "params": state.params,
        "stats": state.batch_stats,
        "velocity": zeros_like(state.params),
        "d_fast": state.extras["d_fast"],
    }
    for t in range(t0, t0 + 3):
        align_first = t % 2 == 1
        reference = _reference_metaalign_jit(align_first)
        inputs = (ref["params"], ref["stats"], ref["velocity"], ref["d_fast"], t, batch)
        params, stats, velocity, d_fast = reference(*inputs, second, stale_flag)

        state, metrics = step(state, batch, jax.random.key(t))
        assert int(state.step) == t + 1
        assert float(metrics["train/meta_align_first"]) == float(align_first)
        where = f"step {t} ({'align' if align_first else 'cls'} first) "
        assert_trees_close(state.params, params, where + "params")
        assert_trees_close(state.batch_stats, stats, where + "batch_stats")
        assert_trees_close(state.extras["d_fast"], d_fast, where + "d_fast")

        # Teeth: the other order (and, once θ'_D ≠ θ_D, the other discriminator) differs.
        other = reference(*inputs, 1.0 - second, stale_flag)[0]
        assert relative_difference(other, params) > 1e-8, where + "order"
        if t == t0 + 2:
            other = reference(*inputs, second, 1.0 - stale_flag)[0]
            assert relative_difference(other, params) > 1e-8, where + "stale"
        ref = {"params": params, "stats": stats, "velocity": velocity, "d_fast": d_fast}
