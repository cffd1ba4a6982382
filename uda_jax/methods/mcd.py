"""MCD-style bi-classifier training (Saito et al., CVPR 2018), the base of CGDM.

With ``E = Ent(p1_t) + Ent(p2_t)`` (weight ``entropy_weight``, 0 for plain MCD) and
``d = d(p1_t, p2_t)`` the mean absolute difference of the two classifiers' target
probabilities, one iteration runs, on one source and one target batch concatenated into one
BatchNorm batch, with a fresh train-mode forward pass (and dropout mask) in every sub-step:

  A. ``min_{G,F1,F2}  CE(z1_s, y_s) + CE(z2_s, y_s) + w_E·E``              (+ CGDM's extra)
  B. ``min_{F1,F2}    CE(z1_s, y_s) + CE(z2_s, y_s) − w_d·d + w_E·E``
  C. ``min_G          w_d·d + w_E·E`` repeated ``num_k`` times on the same batch (+ CGDM's L_GD)

Steps A and B step the F optimizer states, A and C the G optimizer state. Every forward pass
updates the BatchNorm running statistics, as the official CGDM code does. Subclasses add terms
to steps A and C through :meth:`MCD.extra_a` and :meth:`MCD.extra_c` (CGDM does).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.losses import classifier_discrepancy, cross_entropy, information_entropy
from uda_jax.methods.api import (
    Batch,
    Method,
    Metrics,
    NetworkSpec,
    StepContext,
    apply_updates,
    classify,
    global_norm,
    source_and_target,
)
from uda_jax.methods.registry import register
from uda_jax.state import TrainState

CLASSIFIERS = ("f1", "f2")


@dataclasses.dataclass(frozen=True)
class McdConfig:
    """Options of the bi-classifier iteration (section ``mcd``)."""

    num_k: int = 4  # generator repeats of step C
    # compile step C's repeats unrolled (fastest) or as one loop body (about num_k times less
    # to compile: for ResNet backbones, whose unrolled step compiles for minutes)
    unroll_c: bool = True
    discrepancy_weight: float = 1.0  # w_d
    entropy_weight: float = 0.0  # w_E: CGDM's entropy term E in steps A, B, C (0: plain MCD)

    def validate(self, where: str) -> None:
        """Positive ``num_k``, non-negative weights (``where``: the section's key prefix)."""
        weights = ("discrepancy_weight", "entropy_weight")
        check_range(self, where, positive=("num_k",), non_negative=weights)


def _split(logits: dict[str, jax.Array], num_source: int):
    """Per classifier: ``(source logits, target probabilities)``."""
    source = {n: z[:num_source] for n, z in logits.items()}
    target_probs = {n: jax.nn.softmax(z[num_source:]) for n, z in logits.items()}
    return source, target_probs


def discrepancy_key(rng: jax.Array) -> jax.Array:
    """The key a sub-step hands to :meth:`MCD.discrepancy` (apart from its G and F keys)."""
    return jax.random.fold_in(rng, 2)


@register
@dataclasses.dataclass(frozen=True)
class MCD(Method):
    """Bi-classifier discrepancy: steps A, B and C×num_k (see the module docstring)."""

    config: McdConfig = dataclasses.field(default_factory=McdConfig)
    name = "mcd"
    config_class = McdConfig
    network = NetworkSpec(num_classifiers=2, head="mlp")
    metrics = (
        "loss_cls",
        "disc_min",
        "disc_max",
        "loss_ent",
        "loss_a",
        "loss_b",
        "loss_c",
        "grad_norm_a",
        "grad_norm_b",
        "grad_norm_c",
    )
    alignment_metrics = ("disc_min", "disc_max", "loss_c")

    def discrepancy(self, probs1: jax.Array, probs2: jax.Array, rng: jax.Array) -> jax.Array:
        """``d(p1_t, p2_t)`` of two ``[B, C]`` target probability matrices: the mean absolute
        difference (``rng`` is for subclasses with a random discrepancy, such as SWD)."""
        del rng
        return classifier_discrepancy(probs1, probs2)

    def terms(self, logits: dict[str, jax.Array], labels: jax.Array, rng: jax.Array):
        """``(Σ_n CE(z_n_s, y_s), d(p1_t, p2_t), Σ_n Ent(p_n_t))`` of one forward pass."""
        source, target_probs = _split(logits, labels.shape[0])
        ce = sum(cross_entropy(source[n], labels) for n in CLASSIFIERS)
        disc = self.discrepancy(target_probs["f1"], target_probs["f2"], rng)
        ent = sum(information_entropy(target_probs[n]) for n in CLASSIFIERS)
        return ce, disc, ent

    def extra_a(self, ctx, state, batch, logits) -> tuple[jax.Array, Metrics]:
        """A term added to step A's loss, from the classifiers' logits ``[2B, classes]``."""
        del ctx, state, batch
        return jnp.zeros((), next(iter(logits.values())).dtype), {}

    def extra_c(self, ctx, state, batch, features, f_key) -> tuple[jax.Array, Metrics]:
        """A term added to step C's loss, from G's features ``[2B, dim]`` (differentiable) and
        the classifiers' dropout key of that pass."""
        del ctx, state, batch, f_key
        return jnp.zeros((), features.dtype), {}

    def step_a(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """Step A: G, F1 and F2 descend the source CE (+ entropy, + :meth:`extra_a`)."""
        weights = self.config
        g_key, f_key = jax.random.split(rng)

        def loss_fn(params):
            features, g_stats = ctx.network.apply_generator(
                params["g"], state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
            )
            logits, f_stats = classify(ctx, params, state.batch_stats, features, f_key)
            ce, _, ent = self.terms(logits, batch["source_label"], discrepancy_key(rng))
            extra_loss, extra_metrics = self.extra_a(ctx, state, batch, logits)
            loss = ce + weights.entropy_weight * ent + extra_loss
            metrics = {"train/loss_cls": ce, "train/loss_ent": ent} | extra_metrics
            return loss, ({"g": g_stats, **f_stats}, metrics)

        trainable = {k: state.params[k] for k in ("g", *CLASSIFIERS)}
        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_a": loss, "train/grad_norm_a": global_norm(grads)}

    def step_b(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """Step B: F1 and F2 maximise their target discrepancy, keeping the source CE low."""
        weights = self.config
        g_key, f_key = jax.random.split(rng)
        features, g_stats = ctx.network.apply_generator(
            state.params["g"],
            state.batch_stats["g"],
            source_and_target(batch),
            train=True,
            rng=g_key,
        )
        features = jax.lax.stop_gradient(features)  # the official code discards G's gradient

        def loss_fn(params):
            logits, f_stats = classify(ctx, params, state.batch_stats, features, f_key)
            ce, disc, ent = self.terms(logits, batch["source_label"], discrepancy_key(rng))
            loss = ce - weights.discrepancy_weight * disc + weights.entropy_weight * ent
            return loss, (f_stats, {"train/disc_max": disc})

        trainable = {k: state.params[k] for k in CLASSIFIERS}
        (loss, (f_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        params, opt_state = apply_updates(ctx, state, grads)
        stats = {**state.batch_stats, "g": g_stats, **f_stats}
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_b": loss, "train/grad_norm_b": global_norm(grads)}

    def step_c(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """One repeat of step C: G minimises the discrepancy (+ entropy, + :meth:`extra_c`)."""
        weights = self.config
        g_key, f_key = jax.random.split(rng)

        def loss_fn(g_params):
            features, g_stats = ctx.network.apply_generator(
                g_params, state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
            )
            logits, f_stats = classify(ctx, state.params, state.batch_stats, features, f_key)
            _, disc, ent = self.terms(logits, batch["source_label"], discrepancy_key(rng))
            extra_loss, extra_metrics = self.extra_c(ctx, state, batch, features, f_key)
            loss = weights.discrepancy_weight * disc + weights.entropy_weight * ent + extra_loss
            return loss, ({"g": g_stats, **f_stats}, {"train/disc_min": disc} | extra_metrics)

        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["g"]
        )
        params, opt_state = apply_updates(ctx, state, {"g": grads})
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_c": loss, "train/grad_norm_c": global_norm(grads)}

    def step(
        self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """A, B, then C ``num_k`` times (unrolled unless ``unroll_c`` is false); ``step + 1``."""
        key_a, key_b, key_c = jax.random.split(rng, 3)
        state, metrics_a = self.step_a(ctx, state, batch, key_a)
        state, metrics_b = self.step_b(ctx, state, batch, key_b)

        def repeat_c(carry, key):
            return self.step_c(ctx, carry, batch, key)

        keys_c = jax.random.split(key_c, self.config.num_k)
        state, metrics_c = jax.lax.scan(repeat_c, state, keys_c, unroll=self.config.unroll_c)
        last_c = jax.tree.map(lambda m: m[-1], metrics_c)
        metrics = metrics_a | metrics_b | last_c
        return state.replace(step=state.step + 1), {k: jnp.asarray(v) for k, v in metrics.items()}
