"""Shared machinery of the adversarial methods DANN, CDAN(+E) and GVB-GD (reference §2.5).

The network is G (backbone + bottleneck) → a linear head ``f`` (with GVB's generator bridge,
``logits = fc(f) − gvbg(f)``) and a domain discriminator ``d`` behind a gradient reversal.
An :class:`Alignment` says what differs between the methods: the discriminator's input and the
transfer loss. One iteration of a baseline minimises, over G, f and d together,

    L = CE(logits_s, y_s) + trade_off · L_trs + gvbg_weight · mean|z| + gvbd_weight · mean|b|

on one concatenated source+target batch (the bridge terms exist for GVB only). The reversal
makes G and f ascend what d descends. Its coefficient is ``c(t + 1)`` on the discriminator's
input and ``c(t)`` on the entropy weights, as in the reference (Part VII §5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from uda_jax import adversarial as adv
from uda_jax.losses import cross_entropy
from uda_jax.methods.base import Batch, Metrics, StepContext, apply_updates, source_and_target
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class Alignment:
    """What one adversarial method puts into the discriminator and how it scores it.

    Attributes:
      name: the method name.
      bridge: GVB's bridges on the head and the discriminator.
      input_width: discriminator input width from ``(feature_dim, num_classes)``.
      d_input: ``(features [2B, D], probs [2B, C]) -> [2B, width]``, before the reversal.
      transfer_loss: ``(domain logits [2B], class probs [2B, C], num_source, entropy coeff)``
        → scalar.
    """

    name: str
    bridge: bool
    input_width: Callable[[int, int], int]
    d_input: Callable[[jax.Array, jax.Array], jax.Array]
    transfer_loss: Callable[..., jax.Array]

    def network_kwargs(self) -> dict:
        """Keyword arguments of :func:`uda_jax.models.build_network` for this method."""
        return {"head": "linear", "bridge": self.bridge, "discriminator_input": self.input_width}


def head_forward(ctx: StepContext, params, stats, images: jax.Array, rng: jax.Array):
    """Train-mode G and head: ``(features, logits, bridge z, new batch_stats)``."""
    g_key, f_key = jax.random.split(rng)
    features, g_stats = ctx.network.apply_generator(
        params["g"], stats["g"], images, train=True, rng=g_key
    )
    (logits, bridge), f_stats = ctx.network.apply_classifier(
        params["f"], stats["f"], features, train=True, rng=f_key
    )
    return features, logits, bridge, {**stats, "g": g_stats, "f": f_stats}


def classification_terms(logits: jax.Array, bridge: jax.Array, labels: jax.Array) -> Metrics:
    """``cls``: source CE; ``gvbg_source``: mean |z| of the source rows' generator bridge."""
    return {"cls": cross_entropy(logits, labels), "gvbg_source": jnp.mean(jnp.abs(bridge))}


def alignment_terms(
    ctx: StepContext,
    alignment: Alignment,
    d_params,
    features: jax.Array,
    logits: jax.Array,
    bridge: jax.Array,
    num_source: int,
    step: jax.Array,
    rng: jax.Array,
) -> Metrics:
    """``trs`` (transfer loss), ``gvbd`` (mean |b|), ``gvbg_all`` (mean |z| over both domains)."""
    method = ctx.method
    coeff = lambda t: adv.grl_coefficient(t, method.grl_max_iter, method.grl_alpha)
    probs = jax.nn.softmax(logits)
    inputs = adv.gradient_reversal(alignment.d_input(features, probs), coeff(step + 1))
    d_logit, d_bridge = ctx.network.apply_discriminator(d_params, inputs, train=True, rng=rng)
    transfer = alignment.transfer_loss(d_logit, probs, num_source, coeff(step))
    return {
        "trs": transfer,
        "gvbd": jnp.mean(jnp.abs(d_bridge)),
        "gvbg_all": jnp.mean(jnp.abs(bridge)),
    }


def train_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext, alignment: Alignment
) -> tuple[TrainState, Metrics]:
    """One iteration of the baseline: one forward of source+target, one step of G, f and d."""
    method = ctx.method
    num_source = batch["source_label"].shape[0]
    head_key, d_key = jax.random.split(rng)

    def loss_fn(params):
        features, logits, bridge, stats = head_forward(
            ctx, params, state.batch_stats, source_and_target(batch), head_key
        )
        terms = classification_terms(logits[:num_source], bridge, batch["source_label"])
        terms |= alignment_terms(
            ctx, alignment, params["d"], features, logits, bridge, num_source, state.step, d_key
        )
        loss = (
            terms["cls"]
            + method.trade_off * terms["trs"]
            + method.gvbg_weight * terms["gvbg_all"]
            + method.gvbd_weight * terms["gvbd"]
        )
        return loss, (stats, terms)

    (_, (stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = apply_updates(ctx, state, grads)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state
    )
    return new_state, metrics_of(terms, alignment)


def bind(alignment: Alignment):
    """The public ``train_step(state, batch, rng, *, ctx)`` of the method of ``alignment``."""

    def bound_train_step(
        state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext
    ) -> tuple[TrainState, Metrics]:
        return train_step(state, batch, rng, ctx=ctx, alignment=alignment)

    bound_train_step.__name__ = bound_train_step.__qualname__ = "train_step"
    bound_train_step.__doc__ = f"One {alignment.name} iteration: see :func:`train_step`."
    return bound_train_step


def metrics_of(terms: Metrics, alignment: Alignment) -> Metrics:
    """The loss terms as ``train/loss_*`` metrics (bridge terms only for GVB)."""
    names = ("cls", "trs", "gvbg_all", "gvbd") if alignment.bridge else ("cls", "trs")
    return {f"train/loss_{n}": terms[n] for n in names}
