"""MCD (Saito et al., CVPR 2018) as its official code trains, and the joint-batch iteration that
is CGDM's base (and, with CGDM's terms at 0, the ``digits_cgdm_no_terms`` ablation).

- One whole MCD iteration in float64 against a re-derivation written here with plain
  ``jax.grad`` on small functions of the same network (only ``apply_generator`` /
  ``apply_classifier`` are shared with the library): step A on the source batch alone, step B
  with ``G(x_s)`` and ``G(x_t)`` as separate forward passes, step C on the target batch alone,
  the BatchNorm running statistics carried through every pass in order; every parameter and
  running statistic to 1e-10 relative, with SGD + momentum and with the Adam of
  ``configs/digits_mcd.yaml`` (coupled weight decay) written out.
- Step A does not read the target batch, step C not the source batch (the joint base's do).
- ``configs/digits_cgdm_no_terms.yaml`` is ``digits_cgdm.yaml`` with α = β = w_E = 0, and CGDM
  with those weights trains as the joint-batch base.

Dropout is 0 in the float64 iteration, so its keys do not matter there.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import cpu
from uda_jax.config import load_config, to_dict
from uda_jax.experiment import method_network
from uda_jax.methods import StepContext, build_method
from uda_jax.methods.cgdm import CGDM, CgdmConfig
from uda_jax.methods.mcd import MCD, BiClassifier, McdConfig
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState

ROOT = Path(__file__).resolve().parent.parent
F64 = jnp.float64
RTOL, ATOL = 1e-10, 1e-14
# The biases of the layers right before a BatchNorm have only round-off gradients (~1e-17:
# BatchNorm removes the mean), which Adam divides by its eps 1e-8 into updates of ~1e-13 that
# differ with the order of the sums; with Adam these are compared to 1e-10 absolute.
PRE_BATCHNORM = ("['conv1']['bias']", "['conv2']['bias']", "['fc0']['bias']", "['fc1']['bias']")
PRE_BATCHNORM_ATOL = {"sgd": ATOL, "adam": 1e-10}
B = 4  # per domain
CLASSES = 5
NUM_K = 2
WEIGHT_DECAY = 5e-4
SGD_LR, MOMENTUM = 0.05, 0.9
ADAM_LR, B1, B2, EPS = 2e-4, 0.9, 0.999, 1e-8  # the digits config's Adam (torch's defaults)

COMMON = (
    "method.name=mcd",
    f"mcd.num_k={NUM_K}",
    "model.backbone=lenet",
    "model.classifier_widths=[16,16]",
    "model.dropout=0",
    f"data.batch_size={B}",
)
OPTIMIZERS = {
    "sgd": (
        "optimizer.name=sgd",
        f"optimizer.learning_rate={SGD_LR}",
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        f"optimizer.kwargs.momentum={MOMENTUM}",
        f"optimizer.groups.g.kwargs.momentum={MOMENTUM}",
    ),
    "adam": (),  # from configs/digits_mcd.yaml
}


# ----------------------------------------------------------------------------- the library side


def _to_f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, F64), tree)


@functools.cache
def _library(optimizer: str):
    """``(config, ctx, initial float64 state, tuning)`` of the tiny MCD run."""
    path = ROOT / "configs/digits_mcd.yaml" if optimizer == "adam" else None
    config = load_config(path, [*COMMON, *OPTIMIZERS[optimizer]])
    tuning = cpu.tuning(config.cpu_tuning, config.model.backbone)
    network = method_network(config, build_method(config), CLASSES, cpu.layer_ops(tuning))
    with jax.enable_x64(False):  # initialised in float32, as the float64 iteration test does
        params, stats = jax.jit(lambda key: network.init(key, (32, 32, 1)))(jax.random.key(0))
    params, stats = _to_f64(params), _to_f64(stats)
    params["f1"]["out"]["kernel"] = params["f1"]["out"]["kernel"] * 20  # the two classifiers
    params["f2"]["out"]["kernel"] = params["f2"]["out"]["kernel"] * 20  # disagree visibly
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(config.optimizer, masks)
    state = TrainState.create(params, stats, optimizers, jax.random.key(1), {})
    return config, StepContext(network, optimizers), state, tuning


def _compiled_step(method, optimizer: str):
    _, ctx, _, tuning = _library(optimizer)
    return cpu.jit(functools.partial(method.step, ctx), tuning)


@functools.cache
def _batch():
    rng = np.random.default_rng(7)
    return {
        "source_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)), F64),
        "source_label": jnp.asarray(rng.integers(0, CLASSES, B), jnp.int32),
        "target_image": jnp.asarray(rng.normal(size=(B, 32, 32, 1)) * 1.5 + 0.5, F64),
        "target_index": jnp.arange(B, dtype=jnp.int32),
    }


# ----------------------------------------------------------------------------- the re-derivation


def ce(z, labels):
    """Mean softmax cross-entropy, ``log Σ exp z − z_y``."""
    m = jax.lax.stop_gradient(jnp.max(z, axis=1, keepdims=True))
    lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(z - m), axis=1))
    one_hot = (labels[:, None] == jnp.arange(z.shape[1], dtype=labels.dtype)[None, :]).astype(F64)
    return jnp.mean(lse - jnp.sum(one_hot * z, axis=1))


def softmax(z):
    e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=1, keepdims=True)))
    return e / jnp.sum(e, axis=1, keepdims=True)


def discrepancy(z1, z2):
    """The MCD code's ``mean |softmax(z1) − softmax(z2)|``."""
    return jnp.mean(jnp.abs(softmax(z1) - softmax(z2)))


def sgd(params, grads, slots, count):
    """torch.optim.SGD(momentum, weight_decay): ``v ← m·v + g + wd·p``, ``p ← p − lr·v``."""
    del count
    (v,) = slots
    v = jax.tree.map(lambda p, g, v: MOMENTUM * v + g + WEIGHT_DECAY * p, params, grads, v)
    return jax.tree.map(lambda p, v: p - SGD_LR * v, params, v), (v,)


def adam(params, grads, slots, count):
    """torch.optim.Adam(weight_decay): ``g + wd·p`` into the moments, bias-corrected at
    ``count`` (this group's number of updates so far, this one included)."""
    m, v = slots
    g = jax.tree.map(lambda p, g: g + WEIGHT_DECAY * p, params, grads)
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
    c1, c2 = 1 - B1**count, 1 - B2**count

    def update(p, m, v):
        return p - ADAM_LR * (m / c1) / (jnp.sqrt(v / c2) + EPS)

    return jax.tree.map(update, params, m, v), (m, v)


UPDATES = {"sgd": (sgd, 1), "adam": (adam, 2)}


def reference_mcd(net, update, params, stats, batch):
    """One iteration of ``Solver.train`` (MCD_DA ``classification/solver.py``), from zeroed
    optimizer slots: returns the parameters and running statistics after it."""
    xs, y, xt = batch["source_image"], batch["source_label"], batch["target_image"]
    fn, num_slots = update
    slots = {
        k: tuple(jax.tree.map(jnp.zeros_like, p) for _ in range(num_slots))
        for k, p in params.items()
    }
    counts = dict.fromkeys(params, 0)

    def step(group, grads):
        counts[group] += 1
        params[group], slots[group] = fn(params[group], grads, slots[group], counts[group])

    def classifiers(p, s, features):
        """``C1(feat)``, ``C2(feat)`` and their new running statistics."""
        z1, s1 = net.apply_classifier(p["f1"], s["f1"], features, train=True)
        z2, s2 = net.apply_classifier(p["f2"], s["f2"], features, train=True)
        return z1, z2, {"f1": s1, "f2": s2}

    # A: feat_s = G(img_s); loss_s = CE(C1(feat_s)) + CE(C2(feat_s)); G, C1, C2 step.
    def loss_a(p):
        feat_s, s_g = net.apply_generator(p["g"], stats["g"], xs, train=True)
        z1, z2, s_f = classifiers(p, stats, feat_s)
        return ce(z1, y) + ce(z2, y), {"g": s_g, **s_f}

    grads, stats = jax.grad(loss_a, has_aux=True)(dict(params))
    for group in ("g", "f1", "f2"):
        step(group, grads[group])

    # B: feat_s = G(img_s), C1, C2; feat_t = G(img_t), C1, C2; loss_s − d; C1, C2 step (G's
    # gradient is discarded: only the classifiers are differentiated).
    feat_s, s_g = net.apply_generator(params["g"], stats["g"], xs, train=True)
    feat_t, s_g = net.apply_generator(params["g"], s_g, xt, train=True)

    def loss_b(p):
        z1s, z2s, s_f = classifiers(p, stats, feat_s)
        z1t, z2t, s_f = classifiers(p, s_f, feat_t)
        return ce(z1s, y) + ce(z2s, y) - discrepancy(z1t, z2t), s_f

    grads, s_f = jax.grad(loss_b, has_aux=True)({"f1": params["f1"], "f2": params["f2"]})
    stats = {"g": s_g, **s_f}
    for group in ("f1", "f2"):
        step(group, grads[group])

    # C, num_k times: feat_t = G(img_t); d(C1(feat_t), C2(feat_t)); G steps.
    for _ in range(NUM_K):

        def loss_c(g, stats=stats):
            feat_t, s_g = net.apply_generator(g, stats["g"], xt, train=True)
            z1, z2, s_f = classifiers(params, stats, feat_t)
            return discrepancy(z1, z2), {"g": s_g, **s_f}

        grads, stats = jax.grad(loss_c, has_aux=True)(params["g"])
        step("g", grads)
    return params, stats


@functools.cache
def _reference(optimizer: str):
    _, ctx, state, _ = _library(optimizer)
    fn = functools.partial(reference_mcd, ctx.network, UPDATES[optimizer])
    return jax.jit(lambda params, stats, batch: fn(dict(params), dict(stats), batch))(
        state.params, state.batch_stats, _batch()
    )


def _assert_trees_close(actual, expected, what, pre_batchnorm_atol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    paths = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, a), e in zip(paths, jax.tree.leaves(expected), strict=True):
        name = f"{what}{jax.tree_util.keystr(path)}"
        assert a.dtype == F64, f"{name} is {a.dtype}"
        floor = pre_batchnorm_atol if name.endswith(PRE_BATCHNORM) else ATOL
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=RTOL, atol=floor, err_msg=name
        )


def _relative_difference(a, b) -> float:
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    diff = sum(float(jnp.sum(jnp.square(x - y))) for x, y in pairs)
    return float(np.sqrt(diff / sum(float(jnp.sum(jnp.square(y))) for _, y in pairs)))


# ----------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mcd_iteration_matches_the_official_solver_rederived(optimizer):
    config, _, state, _ = _library(optimizer)
    method = build_method(config)
    assert isinstance(method, MCD) and not method.joint_batch
    assert (config.optimizer.name, method.config.entropy_weight) == (optimizer, 0.0)
    new_state, metrics = _compiled_step(method, optimizer)(state, _batch(), jax.random.key(2))
    assert int(new_state.step) == 1
    assert set(metrics) == {f"train/{m}" for m in MCD.metrics}
    params, stats = _reference(optimizer)
    _assert_trees_close(new_state.params, params, "params", PRE_BATCHNORM_ATOL[optimizer])
    _assert_trees_close(new_state.batch_stats, stats, "batch_stats", PRE_BATCHNORM_ATOL[optimizer])
    assert float(metrics["train/disc_max"]) > 0.05  # the classifiers disagree: d has a say

    if optimizer == "sgd":
        # Teeth: the joint-batch iteration (one BatchNorm batch of 2B rows in every sub-step)
        # lands far from the re-derivation, in the parameters and the running statistics.
        joint = BiClassifier(method.config)
        joint_state, _ = _compiled_step(joint, optimizer)(state, _batch(), jax.random.key(2))
        assert _relative_difference(joint_state.params, params) > 1e-6
        assert _relative_difference(joint_state.batch_stats, stats) > 1e-3


def _sub_step(tiny, method, name):
    return tiny.jit(lambda s, b, k: getattr(method, name)(tiny.ctx, s, b, k))


def _replaced(batch, seed, *keys):
    rng = np.random.default_rng(seed)
    changed = {k: jnp.asarray(rng.normal(size=batch[k].shape) + 2.0, batch[k].dtype) for k in keys}
    if "source_image" in keys:
        changed["source_label"] = (batch["source_label"] + 1) % 10
    return batch | changed


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if not np.array_equal(np.asarray(x), np.asarray(y)):
            return False
    return True


def test_step_a_reads_no_target_and_step_c_no_source(tiny_experiment):
    tiny = tiny_experiment("mcd", "model.dropout=0.5")
    state, batch, key = tiny.state, tiny.batch, jax.random.key(5)
    other_target = _replaced(batch, 0, "target_image")
    other_source = _replaced(batch, 1, "source_image")
    joint = BiClassifier(tiny.method.config)
    for method, separate in ((tiny.method, True), (joint, False)):
        step_a, step_b, step_c = (_sub_step(tiny, method, f"step_{s}") for s in "abc")
        a = step_a(state, batch, key)
        assert _same(a, step_a(state, other_target, key)) is separate
        c = step_c(state, batch, key)
        assert _same(c, step_c(state, other_source, key)) is separate
        b = step_b(state, batch, key)  # step B reads both, whichever the batching
        assert not _same(b, step_b(state, other_target, key))
        assert not _same(b, step_b(state, other_source, key))


# ----------------------------------------------------------------------------- the CGDM ablation


def test_cgdm_no_terms_config_is_digits_cgdm_with_its_three_weights_at_zero():
    ablation = load_config(ROOT / "configs/digits_cgdm_no_terms.yaml")
    cgdm = load_config(ROOT / "configs/digits_cgdm.yaml")
    weights = {"pseudo_weight": 0.0, "gd_weight": 0.0, "entropy_weight": 0.0}
    assert ablation.method.name == "cgdm"
    assert ablation.cgdm == dataclasses.replace(cgdm.cgdm, **weights)
    assert {k: v for k, v in to_dict(ablation).items() if k != "cgdm"} == {
        k: v for k, v in to_dict(cgdm).items() if k != "cgdm"
    }
    header = (ROOT / "configs/digits_cgdm_no_terms.yaml").read_text().splitlines()[0]
    assert header.startswith("# Ablation: CGDM without its terms")


def test_cgdm_without_its_terms_trains_as_the_joint_batch_base(tiny_experiment):
    """CGDM with α = β = w_E = 0 and its terms switched on from step 0 (so they are computed,
    at weight 0) against :class:`BiClassifier` with ``joint_batch``: the iteration that
    ``method.name=mcd`` trained before it became Saito's MCD."""
    zero = ("cgdm.gd_weight=0", "cgdm.pseudo_weight=0", "cgdm.entropy_weight=0")
    tiny = tiny_experiment("cgdm", "model.dropout=0.5", *zero)
    assert isinstance(tiny.method, CGDM) and tiny.method.config.warmup_steps == 0
    base = BiClassifier(McdConfig(num_k=tiny.method.config.num_k))
    assert base.joint_batch and CGDM.joint_batch and not MCD.joint_batch
    separate = MCD(base.config)
    results = {}
    for name, method in (("cgdm", tiny.method), ("base", base), ("mcd", separate)):
        step, state = tiny.step_of(method), tiny.state
        for i in range(3):
            state, metrics = step(state, tiny.batch, jax.random.key(i))
        results[name] = (state, metrics)
    (cgdm, m_cgdm), (joint, m_joint), (mcd, _) = (results[k] for k in ("cgdm", "base", "mcd"))
    for a, b in ((cgdm.params, joint.params), (cgdm.batch_stats, joint.batch_stats)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    for name in m_joint:
        np.testing.assert_allclose(m_cgdm[name], m_joint[name], rtol=1e-6, atol=1e-7)
    assert float(m_cgdm["train/loss_pseudo"]) > 0 and float(m_cgdm["train/loss_gd"]) > 0
    assert _relative_difference(mcd.params, joint.params) > 1e-4  # the batching matters


def test_method_classes():
    assert issubclass(MCD, BiClassifier) and issubclass(CGDM, BiClassifier)
    assert not issubclass(CGDM, MCD)
    assert issubclass(CgdmConfig, McdConfig)
    assert MCD.name == "mcd" and BiClassifier.name == ""  # the base is not registered
    assert MCD().domains("a") == ("source",) and MCD().domains("c") == ("target",)
    assert MCD().domains("b") == ("source", "target")
    assert all(BiClassifier().domains(s) == ("source", "target") for s in "abc")
