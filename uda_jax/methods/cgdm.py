"""CGDM: cross-domain gradient discrepancy minimisation (Du et al., CVPR 2021).

The bi-classifier iteration of :mod:`uda_jax.methods.mcd` as the official CGDM code runs it
(:class:`~uda_jax.methods.mcd.BiClassifier` with ``joint_batch``: source and target batches
concatenated into one BatchNorm batch in every sub-step, entropy term ``w_E·E`` in steps A, B
and C) with two additions, switched on once ``step >= warmup_steps`` (the official code's
warm-up epoch):

  A. ``+ α · Σ_n L^W(z_n_t, ŷ_t)``  pseudo-label weighted cross-entropy, α = ``pseudo_weight``
  C. ``+ β · L_GD``                 gradient discrepancy, β = ``gd_weight``

``L_GD = ½ Σ_n mean_P (1 − cos(∂CE(z_n_s, y_s)/∂P, ∂L^W(z_n_t, ŷ_t)/∂P))`` over the parameter
tensors P of classifier n (row-wise cosine for weight matrices). Both gradients are taken with
``jax.vjp`` of the step-C classifier forward (same dropout mask, BatchNorm over all 2B rows) and
the loss is differentiated with respect to G through them: a gradient of a gradient.

With ``pseudo_weight``, ``gd_weight`` and ``entropy_weight`` at 0 the iteration is the joint-batch
base alone (``configs/digits_cgdm_no_terms.yaml``, an ablation).

The warm-up switch is data: the two terms are multiplied by ``step >= warmup_steps`` (0 or 1),
so one compiled iteration serves every step. The pseudo-labels ŷ live in ``state.extras`` and
are recomputed by :meth:`CGDM.hook` (:func:`uda_jax.pseudo_labels.cluster_pseudo_labels`)
every ``pseudo_interval`` iterations from ``warmup_steps`` on.

References:
  Du, Z., Li, J., Su, H., Zhu, L., Lu, K. Cross-Domain Gradient Discrepancy Minimization for
  Unsupervised Domain Adaptation. CVPR 2021. Code: https://github.com/lijin118/CGDM
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.losses import cross_entropy, gradient_discrepancy, weighted_cross_entropy
from uda_jax.methods.api import Batch, Metrics, Predict, StepContext
from uda_jax.methods.mcd import TARGET, BiClassifier, McdConfig
from uda_jax.methods.registry import register
from uda_jax.pseudo_labels import cluster_pseudo_labels
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class CgdmConfig(McdConfig):
    """Options of CGDM (section ``cgdm``): the bi-classifier iteration's, plus its pseudo-label
    and L_GD terms."""

    entropy_weight: float = 0.01  # w_E of the entropy term E in steps A, B, C
    pseudo_weight: float = 0.01  # α: pseudo-label weighted cross-entropy in step A
    gd_weight: float = 0.01  # β: gradient discrepancy loss in step C
    warmup_steps: int = 200  # steps before pseudo-labels and L_GD switch on
    pseudo_interval: int = 100  # recompute the target pseudo-labels every this many steps

    def validate(self, where: str) -> None:
        """The bi-classifier checks, non-negative α, β and warm-up, positive refresh interval."""
        super().validate(where)
        weights = ("pseudo_weight", "gd_weight", "warmup_steps")
        check_range(self, where, positive=("pseudo_interval",), non_negative=weights)


def target_pseudo_labels(state: TrainState, batch: Batch) -> jax.Array:
    """The pseudo-labels ``[B]`` of the batch's target rows (0 before the first refresh)."""
    return jnp.maximum(state.extras["pseudo_labels"][batch["target_index"]], 0)


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
    """``L_GD = (gm_1 + gm_2) / 2`` over both classifiers.

    ``rng`` is the classifiers' dropout key of the step-C forward pass, split the same way as
    :func:`uda_jax.methods.api.classify` splits it, so the masks are those of that pass.
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


@register
@dataclasses.dataclass(frozen=True)
class CGDM(BiClassifier):
    """The joint-batch bi-classifier iteration + pseudo-label cross-entropy (step A) + gradient
    discrepancy (step C)."""

    config: CgdmConfig = dataclasses.field(default_factory=CgdmConfig)
    name = "cgdm"
    config_class = CgdmConfig
    joint_batch = True  # one BatchNorm batch of source + target rows in every sub-step
    metrics = (
        "loss_cls",
        "disc_min",
        "loss_gd",
        "loss_ent",
        "loss_pseudo",
        "disc_max",
        "loss_a",
        "loss_b",
        "loss_c",
        "grad_norm_a",
        "grad_norm_b",
        "grad_norm_c",
    )
    alignment_metrics = ("disc_min", "disc_max", "loss_gd", "loss_c")

    @property
    def warmup_steps(self) -> int:
        """Iterations before the pseudo-label and L_GD terms switch on."""
        return self.config.warmup_steps

    def _active(self, state: TrainState, dtype) -> jax.Array:
        """1 once ``step >= warmup_steps``, else 0: the switch of both terms, as data."""
        return (state.step >= self.config.warmup_steps).astype(dtype)

    def extra_a(self, ctx, state, batch, logits) -> tuple[jax.Array, Metrics]:
        """``α · on · Σ_n L^W(z_n_t, ŷ_t)``."""
        labels = target_pseudo_labels(state, batch)
        loss = sum(weighted_cross_entropy(z, labels) for z in logits[TARGET].values())
        loss = self._active(state, loss.dtype) * loss
        return self.config.pseudo_weight * loss, {"train/loss_pseudo": loss}

    def extra_c(self, ctx, state, batch, features, f_key) -> tuple[jax.Array, Metrics]:
        """``β · on · L_GD`` on the features of the joint source + target pass."""
        (joint,) = features
        loss = gradient_discrepancy_loss(ctx, state, batch, joint, f_key)
        loss = self._active(state, loss.dtype) * loss
        return self.config.gd_weight * loss, {"train/loss_gd": loss}

    def init_extras(self, params, num_target: int) -> dict[str, jax.Array]:
        """Pseudo-labels of every target training example, −1 before the first refresh."""
        del params
        return {"pseudo_labels": jnp.full((num_target,), -1, jnp.int32)}

    def hook_due(self, step: int) -> bool:
        """Every ``pseudo_interval`` iterations from ``warmup_steps`` on."""
        warmup, interval = self.config.warmup_steps, self.config.pseudo_interval
        return step >= warmup and (step - warmup) % interval == 0

    def hook(self, state: TrainState, predict: Predict) -> TrainState:
        """Recomputes the pseudo-labels by clustering the eval-mode target training features."""
        features, logits = predict("target", "train")
        probs = jax.nn.softmax(jnp.asarray(logits))
        labels = cluster_pseudo_labels(jnp.asarray(features), probs)
        return state.replace(extras={**state.extras, "pseudo_labels": labels})
