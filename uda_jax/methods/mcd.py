"""Bi-classifier discrepancy training: Saito et al.'s MCD, and the iteration it shares with CGDM.

Two classifiers ``F1, F2`` on one feature extractor ``G``. With ``d = d(p1_t, p2_t)`` the mean
absolute difference of the two classifiers' target probabilities and ``E = Ent(p1_t) +
Ent(p2_t)`` their entropy (weight ``entropy_weight``, CGDM's term), one iteration runs

  A. ``min_{G,F1,F2}  CE(z1_s, y_s) + CE(z2_s, y_s) [+ w_E·E]``            (+ CGDM's extra)
  B. ``min_{F1,F2}    CE(z1_s, y_s) + CE(z2_s, y_s) − w_d·d [+ w_E·E]``      (G's gradient dropped)
  C. ``min_G          w_d·d [+ w_E·E]``, repeated ``num_k`` times on the same batch (+ CGDM's L_GD)

each sub-step with fresh train-mode forward passes (and dropout masks); every forward pass
updates the BatchNorm running statistics, in the order it runs. Steps A and B step the F
optimizer states, A and C the G optimizer state. The two methods differ in how the domains are
batched (:attr:`BiClassifier.joint_batch`):

- :class:`MCD` (Saito et al., CVPR 2018), faithful to ``Solver.train`` of the official code
  (https://github.com/mil-tokyo/MCD_DA, ``classification/solver.py``): every domain is its own
  forward pass and BatchNorm batch. Step A forwards the source batch alone; step B forwards
  ``feat_s = G(x_s)``, ``F1(feat_s)``, ``F2(feat_s)``, then ``feat_t = G(x_t)``, ``F1(feat_t)``,
  ``F2(feat_t)``; step C forwards the target batch alone. The official code has no entropy
  term: ``w_E`` is 0 by default, and when set it applies to the sub-steps that forward the
  target (B and C).
- :class:`BiClassifier` with ``joint_batch`` (the base of CGDM, :mod:`uda_jax.methods.cgdm`,
  as the official CGDM code runs it, https://github.com/lijin118/CGDM): one source and one
  target batch concatenated into one BatchNorm batch of ``2B`` rows in every sub-step, so
  ``w_E·E`` is in all three. CGDM with its two extra terms at weight 0
  (``configs/digits_cgdm_no_terms.yaml``) is this iteration.

Subclasses add terms to steps A and C through :meth:`BiClassifier.extra_a` and
:meth:`BiClassifier.extra_c` (CGDM does), or change ``d`` through
:meth:`BiClassifier.discrepancy` (SWD does).

References:
  Saito, K., Watanabe, K., Ushiku, Y., Harada, T. Maximum Classifier Discrepancy for
  Unsupervised Domain Adaptation. CVPR 2018. Code: https://github.com/mil-tokyo/MCD_DA
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.errors import UserError
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
SOURCE, TARGET = "source", "target"
# The domains each sub-step forwards when every domain is its own BatchNorm batch (MCD).
SEPARATE_DOMAINS = {"a": (SOURCE,), "b": (SOURCE, TARGET), "c": (TARGET,)}

# {domain: {classifier: logits [B, classes]}}
DomainLogits = dict[str, dict[str, jax.Array]]


# More unrolled repeats of step C than this compile for minutes; a rolled loop takes any number.
MAX_UNROLLED_K = 16


@dataclasses.dataclass(frozen=True)
class McdConfig:
    """Options of the bi-classifier iteration (section ``mcd``; CGDM's and SWD's extend it)."""

    num_k: int = 4  # generator repeats of step C
    # compile step C's repeats unrolled (fastest) or as one loop body (about num_k times less
    # to compile: for ResNet backbones, whose unrolled step compiles for minutes)
    unroll_c: bool = True
    discrepancy_weight: float = 1.0  # w_d
    # w_E: CGDM's entropy term E on the target probabilities, in every sub-step that forwards
    # the target (0: none, as in MCD's official code)
    entropy_weight: float = 0.0

    def validate(self, where: str) -> None:
        """Positive ``num_k`` (at most :data:`MAX_UNROLLED_K` unrolled), non-negative weights
        (``where``: the section's key prefix)."""
        weights = ("discrepancy_weight", "entropy_weight")
        check_range(self, where, positive=("num_k",), non_negative=weights)
        if self.unroll_c and self.num_k > MAX_UNROLLED_K:
            raise UserError(
                f"{where}num_k={self.num_k} would compile {self.num_k} unrolled copies of step "
                f"C; set {where}unroll_c=false (one loop body) or num_k <= {MAX_UNROLLED_K}"
            )


def discrepancy_key(rng: jax.Array) -> jax.Array:
    """The key a sub-step hands to :meth:`BiClassifier.discrepancy` (apart from its G and F
    keys)."""
    return jax.random.fold_in(rng, 2)


def _keys(rng: jax.Array, count: int) -> tuple[jax.Array, ...]:
    """One key per BatchNorm batch of a sub-step: ``rng`` itself when there is one."""
    return (rng,) if count == 1 else tuple(jax.random.split(rng, count))


def source_loss(logits: dict[str, jax.Array], labels: jax.Array) -> jax.Array:
    """``Σ_n CE(z_n_s, y_s)`` over both classifiers' source logits."""
    return sum(cross_entropy(logits[n], labels) for n in CLASSIFIERS)


@dataclasses.dataclass(frozen=True)
class BiClassifier(Method):
    """Steps A, B and C×num_k of two classifiers (see the module docstring): the base of
    :class:`MCD` (separate domains) and of CGDM (``joint_batch``), not registered itself.

    Metrics: ``loss_cls`` from step A, ``disc_max`` and ``loss_b`` from B, ``disc_min`` and
    ``loss_c`` from the last repeat of C; ``loss_ent`` (E, whatever its weight) from the first
    sub-step that forwards the target, A with joint batches and B without."""

    config: McdConfig = dataclasses.field(default_factory=McdConfig)
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
    # How the domains are batched: True, the source and target batches concatenated into one
    # forward pass (one BatchNorm batch) in every sub-step, as the CGDM code; False, each domain
    # its own forward pass, and only the domains a sub-step needs (SEPARATE_DOMAINS), as MCD's.
    joint_batch: ClassVar[bool] = True

    # ------------------------------------------------------------------ forward passes

    def domains(self, sub_step: str) -> tuple[str, ...]:
        """The domains sub-step ``a``, ``b`` or ``c`` forwards, in order."""
        return (SOURCE, TARGET) if self.joint_batch else SEPARATE_DOMAINS[sub_step]

    def inputs(self, batch: Batch, domains: tuple[str, ...]) -> tuple[jax.Array, ...]:
        """The image batches G sees, in order, each its own BatchNorm batch."""
        if self.joint_batch:
            return (source_and_target(batch),)
        return tuple(batch[f"{domain}_image"] for domain in domains)

    def generate(
        self, ctx: StepContext, g_params, g_stats, batch: Batch, domains, rng: jax.Array
    ) -> tuple[tuple[jax.Array, ...], dict]:
        """G in train mode on each batch of :meth:`inputs`, the running statistics carried from
        one pass to the next: ``(features per batch, G's new batch_stats)``."""
        inputs = self.inputs(batch, domains)
        features = []
        for images, key in zip(inputs, _keys(rng, len(inputs)), strict=True):
            out, g_stats = ctx.network.apply_generator(
                g_params, g_stats, images, train=True, rng=key
            )
            features.append(out)
        return tuple(features), g_stats

    def heads(
        self, ctx: StepContext, params, stats, features: tuple[jax.Array, ...], rng: jax.Array
    ) -> tuple[tuple[dict[str, jax.Array], ...], dict]:
        """Both classifiers on each features batch in turn (:func:`classify`), the running
        statistics carried: ``(logits per batch, the classifiers' new batch_stats)``."""
        logits = []
        for batch_features, key in zip(features, _keys(rng, len(features)), strict=True):
            out, new_stats = classify(ctx, params, stats, batch_features, key)
            stats = {**stats, **new_stats}
            logits.append(out)
        return tuple(logits), new_stats

    @staticmethod
    def by_domain(
        logits: tuple[dict[str, jax.Array], ...], domains: tuple[str, ...], num_source: int
    ) -> DomainLogits:
        """``{domain: {classifier: logits}}`` from the logits of each forward pass."""
        if len(logits) == len(domains):
            return dict(zip(domains, logits, strict=True))
        (joint,) = logits  # one pass over source rows, then target rows
        return {
            SOURCE: {n: z[:num_source] for n, z in joint.items()},
            TARGET: {n: z[num_source:] for n, z in joint.items()},
        }

    # ------------------------------------------------------------------ losses

    def discrepancy(self, probs1: jax.Array, probs2: jax.Array, rng: jax.Array) -> jax.Array:
        """``d(p1_t, p2_t)`` of two ``[B, C]`` target probability matrices: the mean absolute
        difference (``rng`` is for subclasses with a random discrepancy, such as SWD)."""
        del rng
        return classifier_discrepancy(probs1, probs2)

    def target_terms(
        self, logits: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(d(p1_t, p2_t), Σ_n Ent(p_n_t))`` of both classifiers' target logits."""
        probs = {n: jax.nn.softmax(z) for n, z in logits.items()}
        disc = self.discrepancy(probs["f1"], probs["f2"], rng)
        ent = sum(information_entropy(probs[n]) for n in CLASSIFIERS)
        return disc, ent

    def extra_a(self, ctx, state, batch, logits: DomainLogits) -> tuple[jax.Array, Metrics]:
        """A term added to step A's loss, from the classifiers' logits by domain."""
        del ctx, state, batch
        return jnp.zeros((), logits[SOURCE]["f1"].dtype), {}

    def extra_c(self, ctx, state, batch, features, f_key) -> tuple[jax.Array, Metrics]:
        """A term added to step C's loss, from G's features (a tuple, one ``[rows, dim]`` array
        per BatchNorm batch, differentiable) and the sub-step's classifier dropout key."""
        del ctx, state, batch, f_key
        return jnp.zeros((), features[0].dtype), {}

    # ------------------------------------------------------------------ sub-steps

    def step_a(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """Step A: G, F1 and F2 descend the source CE (+ entropy, + :meth:`extra_a`)."""
        weights = self.config
        g_key, f_key = jax.random.split(rng)
        domains = self.domains("a")

        def loss_fn(params):
            features, g_stats = self.generate(
                ctx, params["g"], state.batch_stats["g"], batch, domains, g_key
            )
            logits, f_stats = self.heads(ctx, params, state.batch_stats, features, f_key)
            logits = self.by_domain(logits, domains, batch["source_label"].shape[0])
            ce = source_loss(logits[SOURCE], batch["source_label"])
            loss, metrics = ce, {"train/loss_cls": ce}
            if TARGET in logits:
                _, ent = self.target_terms(logits[TARGET], discrepancy_key(rng))
                loss = loss + weights.entropy_weight * ent
                metrics["train/loss_ent"] = ent
            extra_loss, extra_metrics = self.extra_a(ctx, state, batch, logits)
            return loss + extra_loss, ({"g": g_stats, **f_stats}, metrics | extra_metrics)

        trainable = {k: state.params[k] for k in ("g", *CLASSIFIERS)}
        (loss, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(params=params, opt_state=opt_state, batch_stats=stats)
        return new_state, metrics | {"train/loss_a": loss, "train/grad_norm_a": global_norm(grads)}

    def step_b(self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array):
        """Step B: F1 and F2 maximise their target discrepancy, keeping the source CE low."""
        weights = self.config
        g_key, f_key = jax.random.split(rng)
        domains = self.domains("b")
        features, g_stats = self.generate(
            ctx, state.params["g"], state.batch_stats["g"], batch, domains, g_key
        )
        features = jax.lax.stop_gradient(features)  # the official codes discard G's gradient

        def loss_fn(params):
            logits, f_stats = self.heads(ctx, params, state.batch_stats, features, f_key)
            logits = self.by_domain(logits, domains, batch["source_label"].shape[0])
            ce = source_loss(logits[SOURCE], batch["source_label"])
            disc, ent = self.target_terms(logits[TARGET], discrepancy_key(rng))
            loss = ce - weights.discrepancy_weight * disc + weights.entropy_weight * ent
            return loss, (f_stats, {"train/disc_max": disc, "train/loss_ent": ent})

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
        domains = self.domains("c")

        def loss_fn(g_params):
            features, g_stats = self.generate(
                ctx, g_params, state.batch_stats["g"], batch, domains, g_key
            )
            logits, f_stats = self.heads(ctx, state.params, state.batch_stats, features, f_key)
            logits = self.by_domain(logits, domains, batch["source_label"].shape[0])
            disc, ent = self.target_terms(logits[TARGET], discrepancy_key(rng))
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
        # loss_ent: step A's where A sees the target (joint batches), else step B's
        metrics = metrics_b | metrics_a | last_c
        return state.replace(step=state.step + 1), {k: jnp.asarray(v) for k, v in metrics.items()}


@register
@dataclasses.dataclass(frozen=True)
class MCD(BiClassifier):
    """Saito et al.'s MCD: each domain its own forward pass and BatchNorm batch; step A on the
    source batch alone, step C on the target batch alone (see the module docstring)."""

    config: McdConfig = dataclasses.field(default_factory=McdConfig)
    name = "mcd"
    config_class = McdConfig
    joint_batch = False
