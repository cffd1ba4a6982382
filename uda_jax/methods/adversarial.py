"""Shared machinery of the adversarial methods DANN, CDAN(+E) and GVB-GD.

The network is G (backbone + bottleneck) → a linear head ``f`` (with GVB's generator bridge,
``logits = fc(f) − gvbg(f)``) and a domain discriminator ``d`` behind a gradient reversal.
An :class:`Alignment` says what differs between the methods: the discriminator's input and the
transfer loss. One iteration minimises, over G, f and d together,

    L = CE(logits_s, y_s) + trade_off · L_trs + gvbg_weight · mean|z| + gvbd_weight · mean|b|

on one concatenated source+target batch (the bridge terms exist for GVB only). The reversal
makes G and f ascend what d descends. Its coefficient is ``c(t + 1)`` on the discriminator's
input and ``c(t)`` on the entropy weights, as in the official code, with
``c(t) = 2 / (1 + exp(−grl_alpha · t / grl_max_iter)) − 1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from uda_jax import domain_losses
from uda_jax.config import check_range
from uda_jax.losses import cross_entropy
from uda_jax.methods.api import (
    Batch,
    Method,
    Metrics,
    NetworkSpec,
    StepContext,
    apply_updates,
    global_norm,
    source_and_target,
)
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class Alignment:
    """What one adversarial method puts into the discriminator and how it scores it.

    Attributes:
      bridge: GVB's bridges on the head and the discriminator.
      input_width: discriminator input width from ``(feature_dim, num_classes)``.
      d_input: ``(features [2B, D], probs [2B, C]) -> [2B, width]``, before the reversal.
      transfer_loss: ``(domain logits [2B], class probs [2B, C], num_source, entropy coeff)``
        → scalar.
    """

    bridge: bool
    input_width: Callable[[int, int], int]
    d_input: Callable[[jax.Array, jax.Array], jax.Array]
    transfer_loss: Callable[..., jax.Array]

    def network(self, new_layer_init: str) -> NetworkSpec:
        """The heads of a method with this alignment: a linear head and a discriminator,
        initialised as ``new_layer_init`` (see :class:`NetworkSpec`)."""
        return NetworkSpec(1, "linear", self.bridge, self.input_width, new_layer_init)


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """Options of DANN and CDAN(+E) (their own sections ``dann``, ``cdan``, ``cdan_e``)."""

    trade_off: float = 1.0  # weight of the transfer loss L_trs
    # the reversal's schedule c(t) = 2/(1 + exp(−grl_alpha·t/grl_max_iter)) − 1: it reaches
    # 0.76 at t = grl_max_iter/10 and 0.99 at grl_max_iter/2
    grl_max_iter: float = 10000.0
    grl_alpha: float = 10.0

    def validate(self, where: str) -> None:
        """Non-negative ``trade_off``, positive schedule constants."""
        check_range(self, where, positive=("grl_max_iter", "grl_alpha"))
        check_range(self, where, non_negative=("trade_off",))


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


@dataclasses.dataclass(frozen=True)
class Adversarial(Method):
    """Base of the adversarial methods: one forward of source+target, one step of G, f and d.

    A subclass sets ``name``, ``alignment`` and ``network = alignment.network(init)``.
    """

    config: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    config_class = AdversarialConfig
    alignment: ClassVar[Alignment]
    metrics = ("loss_cls", "loss_trs", "grad_norm")
    alignment_metrics = ("loss_trs",)

    def bridge_weights(self) -> tuple[float, float]:
        """``(gvbg_weight, gvbd_weight)``: the bridge penalties' weights (0 without bridges)."""
        return 0.0, 0.0

    def coefficient(self, step: jax.Array) -> jax.Array:
        """The reversal coefficient ``c(step)``."""
        config = self.config
        return domain_losses.grl_coefficient(step, config.grl_max_iter, config.grl_alpha)

    def alignment_terms(
        self, ctx: StepContext, d_params, features, logits, bridge, num_source, step, rng
    ) -> Metrics:
        """``trs`` (transfer loss), ``gvbd`` (mean |b|), ``gvbg_all`` (mean |z|, both domains)."""
        probs = jax.nn.softmax(logits)
        reversed_input = domain_losses.gradient_reversal(
            self.alignment.d_input(features, probs), self.coefficient(step + 1)
        )
        d_logit, d_bridge = ctx.network.apply_discriminator(
            d_params, reversed_input, train=True, rng=rng
        )
        transfer = self.alignment.transfer_loss(d_logit, probs, num_source, self.coefficient(step))
        return {
            "trs": transfer,
            "gvbd": jnp.mean(jnp.abs(d_bridge)),
            "gvbg_all": jnp.mean(jnp.abs(bridge)),
        }

    def alignment_loss(self, terms: Metrics, gvbg_share: float = 1.0) -> jax.Array:
        """``trade_off·L_trs + gvbd_weight·mean|b| + gvbg_share·gvbg_weight·mean|z|``."""
        gvbg_weight, gvbd_weight = self.bridge_weights()
        loss = self.config.trade_off * terms["trs"]
        if self.alignment.bridge:
            loss = loss + gvbd_weight * terms["gvbd"] + gvbg_share * gvbg_weight * terms["gvbg_all"]
        return loss

    def step(
        self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """One iteration: one forward of source+target, one step of G, f and d together."""
        num_source = batch["source_label"].shape[0]
        head_key, d_key = jax.random.split(rng)

        def loss_fn(params):
            features, logits, bridge, stats = self.forward_both(
                ctx, params, state.batch_stats, batch, head_key
            )
            terms = classification_terms(logits[:num_source], bridge, batch["source_label"])
            terms |= self.alignment_terms(
                ctx, params["d"], features, logits, bridge, num_source, state.step, d_key
            )
            loss = terms["cls"] + self.config.trade_off * terms["trs"]
            if self.alignment.bridge:
                gvbg_weight, gvbd_weight = self.bridge_weights()
                loss = loss + gvbg_weight * terms["gvbg_all"] + gvbd_weight * terms["gvbd"]
            return loss, (stats, terms)

        (_, (stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state
        )
        return new_state, self.metrics_of(terms) | {"train/grad_norm": global_norm(grads)}

    def forward_both(self, ctx: StepContext, params, stats, batch: Batch, rng: jax.Array):
        """Train-mode G and head on the source rows then the target rows: one BatchNorm batch,
        or two (``separate_batchnorm`` in the config: the source batch, then the target batch,
        each updating the running statistics). Returns :func:`head_forward`'s outputs."""
        if not getattr(self.config, "separate_batchnorm", False):
            return head_forward(ctx, params, stats, source_and_target(batch), rng)
        key_s, key_t = jax.random.split(rng)
        f_s, z_s, b_s, stats = head_forward(ctx, params, stats, batch["source_image"], key_s)
        f_t, z_t, b_t, stats = head_forward(ctx, params, stats, batch["target_image"], key_t)
        joined = (jnp.concatenate([s, t]) for s, t in ((f_s, f_t), (z_s, z_t), (b_s, b_t)))
        return (*joined, stats)

    def metrics_of(self, terms: Metrics) -> Metrics:
        """The loss terms as ``train/loss_*`` metrics (bridge terms only with bridges)."""
        names = ("cls", "trs", "gvbg_all", "gvbd") if self.alignment.bridge else ("cls", "trs")
        return {f"train/loss_{n}": terms[n] for n in names}
