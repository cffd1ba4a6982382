"""CGDM: cross-domain gradient discrepancy minimisation (Du et al., CVPR 2021; reference Part I).

MCD's three steps (:mod:`uda_jax.methods.mcd`) with two additions, switched on once
``step >= warmup_steps`` (the reference's warm-up epoch) and the pseudo-labels exist:

  A. ``+ α · Σ_n L^W(z_n_t, ŷ_t)``  pseudo-label weighted CE (§1.4), α = ``pseudo_weight``
  C. ``+ β · L_GD``                 gradient discrepancy (§1.6), β = ``gd_weight``

``L_GD = ½ Σ_n mean_P (1 − cos(∂CE(z_n_s, y_s)/∂P, ∂L^W(z_n_t, ŷ_t)/∂P))`` over the parameter
tensors P of classifier n (row-wise cosine for weight matrices). Both gradients are taken with
``jax.vjp`` of the Step-C classifier forward (same dropout mask, BN over all 2B rows) and the
loss is differentiated with respect to G through them: a gradient of a gradient. The pseudo-labels ŷ
come from :func:`uda_jax.pseudo_labels.cluster_pseudo_labels`, refreshed by the training loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from uda_jax.losses import cross_entropy, gradient_discrepancy, weighted_cross_entropy
from uda_jax.methods import mcd
from uda_jax.methods.base import Batch, Metrics, StepContext
from uda_jax.state import TrainState

NUM_CLASSIFIERS = 2
USES_PSEUDO_LABELS = True


def target_pseudo_labels(state: TrainState, batch: Batch) -> jax.Array:
    """The pseudo-labels ``[B]`` of the batch's target rows (0 before the first refresh)."""
    return jnp.maximum(state.pseudo_labels[batch["target_index"]], 0)


def is_active(state: TrainState, ctx: StepContext) -> jax.Array:
    """Whether the pseudo-label and gradient-discrepancy terms are on at this step."""
    return state.step >= ctx.method.warmup_steps


def classifier_gradient_discrepancy(
    apply_classifier,
    params: dict,
    features: jax.Array,
    source_labels: jax.Array,
    target_labels: jax.Array,
) -> jax.Array:
    """``mean_P (1 − cos(g_s[P], g_t[P]))`` of one classifier, differentiable in ``features``.

    Args:
      apply_classifier: ``(params, features) -> logits [2B, classes]`` (a fixed dropout key and
        batch statistics over all rows).
      params: the classifier's parameters.
      features: ``[2B, dim]``, source rows first.
      source_labels, target_labels: ``[B]`` labels and pseudo-labels.
    """
    num_source = source_labels.shape[0]
    logits, vjp = jax.vjp(lambda p: apply_classifier(p, features), params)
    cot_s = jax.grad(lambda z: cross_entropy(z[:num_source], source_labels))(logits)
    cot_t = jax.grad(lambda z: weighted_cross_entropy(z[num_source:], target_labels))(logits)
    (grads_s,) = vjp(cot_s)
    (grads_t,) = vjp(cot_t)
    return gradient_discrepancy(grads_s, grads_t)


def gradient_discrepancy_loss(
    ctx: StepContext, state: TrainState, batch: Batch, features: jax.Array, rng: jax.Array
) -> jax.Array:
    """``L_GD = (gm_1 + gm_2) / 2`` over both classifiers (§1.6).

    ``rng`` is the classifiers' dropout key of the Step-C forward pass, split the same way as
    :func:`uda_jax.methods.base.classify` splits it, so the masks are those of that pass.
    """
    names = ctx.network.classifier_names
    keys = jax.random.split(rng, len(names))
    target_labels = target_pseudo_labels(state, batch)
    total = 0.0
    for name, key in zip(names, keys, strict=True):

        def apply(params, features, key=key, name=name):
            return ctx.network.apply_classifier(
                params, state.batch_stats[name], features, train=True, rng=key
            )[0]

        total = total + classifier_gradient_discrepancy(
            apply, state.params[name], features, batch["source_label"], target_labels
        )
    return total / len(names)


def _iteration(
    state: TrainState, batch: Batch, rng: jax.Array, ctx: StepContext, active: bool | None
) -> tuple[TrainState, Metrics]:
    """Steps A (+ pseudo-label CE), B, C×num_k (+ L_GD). ``active``: ``None`` follows
    ``state.step`` on the device; a Python bool fixes the warm-up switch when tracing."""
    weights = ctx.method

    def pseudo_label_term(state, batch, logits):
        if active is False:
            zero = jnp.zeros((), jnp.float32)
            return zero, {"train/loss_pseudo": zero}
        num_source = batch["source_label"].shape[0]
        labels = target_pseudo_labels(state, batch)
        loss = sum(weighted_cross_entropy(z[num_source:], labels) for z in logits.values())
        if active:
            return weights.pseudo_weight * loss, {"train/loss_pseudo": loss}
        on = is_active(state, ctx).astype(loss.dtype)  # 0 before the first pseudo-labels
        return weights.pseudo_weight * on * loss, {"train/loss_pseudo": on * loss}

    def gd_term(state, batch, features, f_key):
        if active is False:
            loss = jnp.zeros((), features.dtype)
        elif active:
            loss = gradient_discrepancy_loss(ctx, state, batch, features, f_key)
        else:
            loss = jax.lax.cond(
                is_active(state, ctx),
                lambda f: gradient_discrepancy_loss(ctx, state, batch, f, f_key),
                lambda f: jnp.zeros((), f.dtype),
                features,
            )
        return weights.gd_weight * loss, {"train/loss_gd": loss}

    return mcd.iteration(state, batch, rng, ctx, extra_a=pseudo_label_term, extra_c=gd_term)


def train_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext
) -> tuple[TrainState, Metrics]:
    """One CGDM iteration: steps A (+ pseudo-label CE), B, C×num_k (+ L_GD).

    The warm-up switch follows ``state.step`` (``lax.cond`` around L_GD), so one compiled
    function serves every step. The training loop uses :func:`branch_step` instead.
    """
    return _iteration(state, batch, rng, ctx, active=None)


def branch_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext, active: bool
) -> tuple[TrainState, Metrics]:
    """One CGDM iteration with the warm-up switch fixed by the Python bool ``active``.

    The same iteration as :func:`train_step` at a step where :func:`is_active` equals
    ``active``. The training loop compiles one per value and picks it on the host
    (:func:`step_variants`): without the ``lax.cond``, XLA merges L_GD's classifier forward
    passes with step C's (24 of the digits step's 338 matrix products go) and schedules across
    them; the digits CGDM step is about 12 % faster on CPU.
    """
    return _iteration(state, batch, rng, ctx, active=active)


def step_variants(ctx: StepContext) -> tuple[dict[bool, Callable], Callable[[int], bool]]:
    """``(steps, active_at)``: :func:`branch_step` for the warm-up (``False``) and after it
    (``True``), and ``active_at(step)``, the one that runs iteration ``step``."""
    steps = {flag: functools.partial(branch_step, active=flag) for flag in (False, True)}
    return steps, lambda step: step >= ctx.method.warmup_steps
