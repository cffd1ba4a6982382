"""SWD: sliced Wasserstein discrepancy (Lee et al., CVPR 2019).

MCD's two classifiers and three steps (:mod:`uda_jax.methods.mcd`), with the discrepancy
between the classifiers' target probabilities ``P1, P2 [B, C]`` measured by the sliced
Wasserstein discrepancy instead of the mean absolute difference:

  ``SWD(P1, P2) = (1/(B·M)) Σ_m Σ_i (sort(P1 u_m)_i − sort(P2 u_m)_i)²``

over ``M = num_projections`` random unit directions ``u_m = v_m / ‖v_m‖``, ``v_m ~ N(0, I_C)``,
drawn fresh in every sub-step from that sub-step's key; ``sort`` orders the ``B`` projected
values of a direction (the 1-D optimal transport of two empirical distributions pairs them
in sorted order). Steps B (classifiers maximise it) and C (``num_k`` generator steps
minimise it) use it; step A is MCD's.

References:
  Lee, C.-Y., Batra, T., Baig, M. H., Ulbricht, D. Sliced Wasserstein Discrepancy for
  Unsupervised Domain Adaptation. CVPR 2019. Code: https://github.com/apple/ml-cvpr2019-swd
  (``sliced_wasserstein_discrepancy`` in its ``swd.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.losses import cross_entropy, information_entropy
from uda_jax.methods.api import (
    Batch,
    StepContext,
    apply_updates,
    classify,
    global_norm,
    source_and_target,
)
from uda_jax.methods.mcd import CLASSIFIERS, MCD, McdConfig
from uda_jax.methods.registry import register
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class SwdConfig(McdConfig):
    """Options of SWD (section ``swd``): MCD's, plus the number of random projections."""

    num_projections: int = 128  # M: random directions of the sliced Wasserstein discrepancy

    def validate(self, where: str) -> None:
        """MCD's checks and a positive number of projections."""
        super().validate(where)
        check_range(self, where, positive=("num_projections",))


def random_projections(rng: jax.Array, num_classes: int, num_projections: int, dtype) -> jax.Array:
    """``[C, M]`` unit columns ``v / ‖v‖``, ``v ~ N(0, I_C)``: uniform random directions."""
    v = jax.random.normal(rng, (num_classes, num_projections), dtype)
    return v / jnp.sqrt(jnp.sum(jnp.square(v), axis=0, keepdims=True))


def sliced_wasserstein_discrepancy(
    probs1: jax.Array, probs2: jax.Array, projections: jax.Array
) -> jax.Array:
    """``mean_{i,m} (sort_i(P1 u_m) − sort_i(P2 u_m))²`` for ``[B, C]`` inputs and ``[C, M]``
    unit projections: 0 for identical inputs (or equal up to a permutation of the rows)."""
    p1 = jnp.sort(probs1 @ projections, axis=0)
    p2 = jnp.sort(probs2 @ projections, axis=0)
    return jnp.mean(jnp.square(p1 - p2))


@register
@dataclasses.dataclass(frozen=True)
class SWD(MCD):
    """MCD with the sliced Wasserstein discrepancy in steps B and C."""

    config: SwdConfig = dataclasses.field(default_factory=SwdConfig)
    name = "swd"
    config_class = SwdConfig

    def _terms(self, logits: dict[str, jax.Array], labels: jax.Array, rng: jax.Array):
        """``(Σ_n CE(z_n_s, y_s), SWD(p1_t, p2_t), Σ_n Ent(p_n_t))`` of one forward pass."""
        num_source = labels.shape[0]
        ce = sum(cross_entropy(logits[n][:num_source], labels) for n in CLASSIFIERS)
        probs = {n: jax.nn.softmax(logits[n][num_source:]) for n in CLASSIFIERS}
        first = probs["f1"]
        projections = random_projections(
            rng, first.shape[1], self.config.num_projections, first.dtype
        )
        disc = sliced_wasserstein_discrepancy(first, probs["f2"], projections)
        ent = sum(information_entropy(probs[n]) for n in CLASSIFIERS)
        return ce, disc, ent

    def step_b(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """Step B: F1 and F2 maximise their target SWD, keeping the source CE low."""
        weights = self.config
        g_key, f_key, p_key = jax.random.split(rng, 3)
        features, g_stats = ctx.network.apply_generator(
            state.params["g"],
            state.batch_stats["g"],
            source_and_target(batch),
            train=True,
            rng=g_key,
        )
        features = jax.lax.stop_gradient(features)

        def loss_fn(params):
            logits, f_stats = classify(ctx, params, state.batch_stats, features, f_key)
            ce, disc, ent = self._terms(logits, batch["source_label"], p_key)
            loss = ce - weights.discrepancy_weight * disc + weights.entropy_weight * ent
            return loss, (f_stats, {"train/disc_max": disc})

        trainable = {k: state.params[k] for k in CLASSIFIERS}
        (loss, (f_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        params, opt_state = apply_updates(ctx, state, grads)
        stats = {**state.batch_stats, "g": g_stats, **f_stats}
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_b": loss, "train/grad_norm_b": global_norm(grads)}

    def step_c(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """One repeat of step C: G minimises the target SWD (+ entropy, + :meth:`extra_c`)."""
        weights = self.config
        g_key, f_key, p_key = jax.random.split(rng, 3)

        def loss_fn(g_params):
            features, g_stats = ctx.network.apply_generator(
                g_params, state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
            )
            logits, f_stats = classify(ctx, state.params, state.batch_stats, features, f_key)
            _, disc, ent = self._terms(logits, batch["source_label"], p_key)
            extra_loss, extra_metrics = self.extra_c(ctx, state, batch, features, f_key)
            loss = weights.discrepancy_weight * disc + weights.entropy_weight * ent + extra_loss
            return loss, ({"g": g_stats, **f_stats}, {"train/disc_min": disc} | extra_metrics)

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["g"]
        )
        params, opt_state = apply_updates(ctx, state, {"g": grads})
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_c": loss, "train/grad_norm_c": global_norm(grads)}
