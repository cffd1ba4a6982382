"""MCD: maximum classifier discrepancy with two classifiers (CGDM's base, reference §1.5).

With ``E = Ent(p1_t) + Ent(p2_t)`` (weight ``entropy_weight``, 0 for plain MCD) and
``d = d(p1_t, p2_t)``, one iteration runs, on one source and one target batch concatenated into
one BN batch, with a fresh train-mode forward pass (and dropout mask) in every sub-step:

  A. ``min_{G,F1,F2}  CE(z1_s, y_s) + CE(z2_s, y_s) + w_E·E``              (+ CGDM's extra)
  B. ``min_{F1,F2}    CE(z1_s, y_s) + CE(z2_s, y_s) − w_d·d + w_E·E``
  C. ``min_G          w_d·d + w_E·E`` repeated ``num_k`` times on the same batch (+ CGDM's L_GD)

Steps A and B step the F optimizer state, A and C the G optimizer state. Every forward pass
updates the BatchNorm running statistics, as the reference's does (Part VII §4). The hooks
``extra_a`` / ``extra_c`` let CGDM add its terms without copying the steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from uda_jax.losses import classifier_discrepancy, cross_entropy, information_entropy
from uda_jax.methods.base import (
    Batch,
    Metrics,
    StepContext,
    apply_updates,
    classify,
    source_and_target,
)
from uda_jax.state import TrainState

NUM_CLASSIFIERS = 2
USES_PSEUDO_LABELS = False
CLASSIFIERS = ("f1", "f2")

# extra_a(state, batch, logits) -> (loss, metrics); extra_c(state, batch, features, rng) -> same
ExtraLoss = Callable[..., tuple[jax.Array, Metrics]]


def _split(logits: dict[str, jax.Array], num_source: int):
    """Per classifier: ``(source logits, target probabilities)``."""
    source = {n: z[:num_source] for n, z in logits.items()}
    target_probs = {n: jax.nn.softmax(z[num_source:]) for n, z in logits.items()}
    return source, target_probs


def _common_terms(ctx: StepContext, logits: dict[str, jax.Array], labels: jax.Array):
    """``(Σ_n CE(z_n_s, y_s), d(p1_t, p2_t), Σ_n Ent(p_n_t))`` of one forward pass."""
    source, target_probs = _split(logits, labels.shape[0])
    ce = sum(cross_entropy(source[n], labels) for n in CLASSIFIERS)
    disc = classifier_discrepancy(target_probs["f1"], target_probs["f2"])
    ent = sum(information_entropy(target_probs[n]) for n in CLASSIFIERS)
    return ce, disc, ent


def step_a(state, batch, rng, ctx: StepContext, extra: ExtraLoss | None = None):
    """Step A: G, F1 and F2 descend the source CE (+ entropy, + the method's extra term)."""
    weights = ctx.method
    g_key, f_key = jax.random.split(rng)

    def loss_fn(params):
        features, g_stats = ctx.network.apply_generator(
            params["g"], state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
        )
        logits, f_stats = classify(ctx, params, state.batch_stats, features, f_key)
        ce, _, ent = _common_terms(ctx, logits, batch["source_label"])
        loss = ce + weights.entropy_weight * ent
        metrics = {"train/loss_cls": ce, "train/loss_ent": ent}
        if extra is not None:
            extra_loss, extra_metrics = extra(state, batch, logits)
            loss, metrics = loss + extra_loss, metrics | extra_metrics
        return loss, ({"g": g_stats, **f_stats}, metrics)

    trainable = {k: state.params[k] for k in ("g", *CLASSIFIERS)}
    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    params, opt_state = apply_updates(ctx, state, grads)
    metrics = metrics | {"train/loss_a": loss}
    return state.replace(params=params, opt_state=opt_state, batch_stats=stats), metrics


def step_b(state, batch, rng, ctx: StepContext):
    """Step B: F1 and F2 maximise their target discrepancy while keeping the source CE low."""
    weights = ctx.method
    g_key, f_key = jax.random.split(rng)
    features, g_stats = ctx.network.apply_generator(
        state.params["g"], state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
    )
    features = jax.lax.stop_gradient(features)  # the reference discards G's gradient here

    def loss_fn(params):
        logits, f_stats = classify(ctx, params, state.batch_stats, features, f_key)
        ce, disc, ent = _common_terms(ctx, logits, batch["source_label"])
        loss = ce - weights.discrepancy_weight * disc + weights.entropy_weight * ent
        return loss, (f_stats, {"train/disc_max": disc})

    trainable = {k: state.params[k] for k in CLASSIFIERS}
    (loss, (f_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    params, opt_state = apply_updates(ctx, state, grads)
    metrics = metrics | {"train/loss_b": loss}
    stats = {**state.batch_stats, "g": g_stats, **f_stats}
    return state.replace(params=params, opt_state=opt_state, batch_stats=stats), metrics


def step_c(state, batch, rng, ctx: StepContext, extra: ExtraLoss | None = None):
    """One repeat of step C: G minimises the discrepancy (+ entropy, + the method's extra)."""
    weights = ctx.method
    g_key, f_key = jax.random.split(rng)

    def loss_fn(g_params):
        features, g_stats = ctx.network.apply_generator(
            g_params, state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
        )
        logits, f_stats = classify(ctx, state.params, state.batch_stats, features, f_key)
        _, disc, ent = _common_terms(ctx, logits, batch["source_label"])
        loss = weights.discrepancy_weight * disc + weights.entropy_weight * ent
        metrics = {"train/disc_min": disc}
        if extra is not None:
            extra_loss, extra_metrics = extra(state, batch, features, f_key)
            loss, metrics = loss + extra_loss, metrics | extra_metrics
        return loss, ({"g": g_stats, **f_stats}, metrics)

    (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["g"])
    params, opt_state = apply_updates(ctx, state, {"g": grads})
    metrics = metrics | {"train/loss_c": loss}
    return state.replace(params=params, opt_state=opt_state, batch_stats=stats), metrics


def iteration(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    ctx: StepContext,
    extra_a: ExtraLoss | None = None,
    extra_c: ExtraLoss | None = None,
) -> tuple[TrainState, Metrics]:
    """A, B, then C ``num_k`` times (unrolled unless ``method.unroll_c`` is false), then
    ``step + 1``."""
    key_a, key_b, key_c = jax.random.split(rng, 3)
    state, metrics_a = step_a(state, batch, key_a, ctx, extra_a)
    state, metrics_b = step_b(state, batch, key_b, ctx)

    def repeat_c(carry, key):
        new_state, metrics = step_c(carry, batch, key, ctx, extra_c)
        return new_state, metrics

    # unrolled by default; method.unroll_c=false compiles one loop body instead (big backbones
    # compile num_k x faster). On CPU the digits CGDM step runs as fast either way (300-360 ms,
    # 2026-11-27) since gemm_ops' convolution gradients; it was ~2.5x slower as a loop before.
    keys_c = jax.random.split(key_c, ctx.method.num_k)
    state, metrics_c = jax.lax.scan(repeat_c, state, keys_c, unroll=ctx.method.unroll_c)
    last_c = jax.tree.map(lambda m: m[-1], metrics_c)
    metrics = metrics_a | metrics_b | last_c
    return state.replace(step=state.step + 1), {k: jnp.asarray(v) for k, v in metrics.items()}


def train_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext
) -> tuple[TrainState, Metrics]:
    """One MCD iteration (steps A, B, C×num_k)."""
    return iteration(state, batch, rng, ctx)
