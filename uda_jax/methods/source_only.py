"""Source only: train G and one classifier F on labelled source data, ignore the target.

Objective: ``min_{G,F} CE(F(G(x_s)), y_s)``, one optimizer step per iteration. The baseline
every adaptation method has to beat.
"""

from __future__ import annotations

import dataclasses

import jax

from uda_jax.losses import cross_entropy
from uda_jax.methods.api import Batch, Method, Metrics, StepContext, apply_updates, global_norm
from uda_jax.methods.registry import register
from uda_jax.state import TrainState


@register
@dataclasses.dataclass(frozen=True)
class SourceOnly(Method):
    """Source cross-entropy only."""

    name = "source_only"
    metrics = ("loss_cls", "grad_norm")

    def step(
        self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """One optimizer step on the source cross-entropy."""
        network = ctx.network

        def loss_fn(params):
            features, g_stats = network.apply_generator(
                params["g"], state.batch_stats["g"], batch["source_image"], train=True
            )
            logits, f_stats = network.apply_classifier(
                params["f"], state.batch_stats["f"], features, train=True, rng=rng
            )
            return cross_entropy(logits, batch["source_label"]), {"g": g_stats, "f": f_stats}

        trainable = {k: state.params[k] for k in ("g", "f")}
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state
        )
        return new_state, {"train/loss_cls": loss, "train/grad_norm": global_norm(grads)}
