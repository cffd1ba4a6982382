"""Adversarial alignment pieces: gradient reversal, its schedule, and the domain losses of
DANN, CDAN(+E) and GVB-GD (as in the GVB repository's ``loss.py``).

Domain labels: source = 1, target = 0. ``d_logits`` are the discriminator's logits (before σ).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from uda_jax.losses import row_entropy

BCE_EPS = 1e-8  # GVB's WeightBCE: log(q + 1e-8)


@jax.custom_jvp
def _reverse(x: jax.Array, coeff: jax.Array) -> jax.Array:
    return x


@_reverse.defjvp
def _reverse_jvp(primals, tangents):
    x, coeff = primals
    x_dot, _ = tangents
    # The primal calls the reversal itself, so every further derivative reverses again.
    return _reverse(x, coeff), -coeff * x_dot


def gradient_reversal(x: jax.Array, coeff: jax.Array | float) -> jax.Array:
    """Exactly ``x`` forward, ``−coeff · upstream`` backward, and right at every order.

    A ``custom_jvp`` whose rule computes its primal by calling the reversal again: a second
    derivative reverses each path through the layer, as PyTorch's ``autograd.Function`` does
    under double backprop, and ``jax.jvp`` (cheap Hessian-vector
    products) works. A ``custom_vjp`` that returns ``x`` gets second derivatives wrong, which
    would corrupt exact second-order MetaAlign. ``coeff`` is never differentiated.
    """
    return _reverse(x, jax.lax.stop_gradient(jnp.asarray(coeff, x.dtype)))


def grl_coefficient(
    step: jax.Array,
    max_iter: float = 10000.0,
    alpha: float = 10.0,
    low: float = 0.0,
    high: float = 1.0,
) -> jax.Array:
    """``c(t) = 2(high − low) / (1 + exp(−alpha·t / max_iter)) − (high − low) + low``.

    The official code's ``calc_coeff``: c(0) = 0, c(5000) ≈ 0.987 with the defaults. It is
    computed in the default float type (float64 under ``jax_enable_x64``).
    """
    t = jnp.asarray(step, jnp.result_type(float))
    span = high - low
    return 2.0 * span / (1.0 + jnp.exp(-alpha * t / max_iter)) - span + low


def binary_cross_entropy(probs: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
    """``[batch]`` BCE ``−[y log(q + eps) + (1 − y) log(1 − q + eps)]`` (GVB's ``WeightBCE``)."""
    return -(labels * jnp.log(probs + eps) + (1.0 - labels) * jnp.log(1.0 - probs + eps))


def binary_cross_entropy_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``[batch]`` BCE of ``σ(logits)``, ``y·softplus(−l) + (1 − y)·softplus(l)``.

    ``torch.nn.BCELoss`` on ``σ(l)`` (DANN, CDAN) gives the same value and gradient until σ
    saturates in float32 (|l| ≳ 17); there PyTorch clamps the log at −100 and its gradient
    vanishes, while this form stays exact and finite. Written on probabilities, the clamp
    would give NaN gradients (0 · ∞) in JAX.
    """
    return labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)


def domain_labels(num_source: int, num_target: int, dtype=jnp.float32) -> jax.Array:
    """``[num_source + num_target]``: 1 for source rows, 0 for target rows."""
    return jnp.concatenate([jnp.ones((num_source,), dtype), jnp.zeros((num_target,), dtype)])


def dann_loss(d_logits: jax.Array, num_source: int) -> jax.Array:
    """DANN's domain loss: mean BCE of the discriminator logits ``[2B]`` (source rows first)."""
    labels = domain_labels(num_source, d_logits.shape[0] - num_source, d_logits.dtype)
    return jnp.mean(binary_cross_entropy_with_logits(d_logits, labels))


def multilinear_map(probs: jax.Array, features: jax.Array) -> jax.Array:
    """CDAN's conditioning ``vec(p ⊗ f)``: ``[B, C]``, ``[B, D]`` → ``[B, C·D]``.

    Row i is ``p_i f_iᵀ`` flattened row-major (``torch.bmm(p.unsqueeze(2), f.unsqueeze(1))``).
    The caller detaches ``probs`` as CDAN does.
    """
    return (probs[:, :, None] * features[:, None, :]).reshape(probs.shape[0], -1)


def _entropy_weights(probs, num_source, coeff, offset):
    """Per-domain normalised ``offset + exp(−H)`` with a reversal of ``coeff`` on H."""
    entropy = gradient_reversal(row_entropy(probs), coeff)
    weights = offset + jnp.exp(-entropy)
    source, target = weights[:num_source], weights[num_source:]
    source = source / jax.lax.stop_gradient(jnp.sum(source))
    target = target / jax.lax.stop_gradient(jnp.sum(target))
    return jnp.concatenate([source, target])


def cdan_entropy_loss(
    d_logits: jax.Array, probs: jax.Array, num_source: int, coeff: jax.Array
) -> jax.Array:
    """CDAN+E: ``Σ_i w_i BCE_i / stop_gradient(Σ_i w_i)`` with ``w = 1 + exp(−H(p))``.

    The weights are normalised within each domain, and the entropy passes through a gradient
    reversal with ``coeff`` (``CDAN-GD/loss.py::CDAN`` with ``entropy``).
    """
    weights = _entropy_weights(probs, num_source, coeff, offset=1.0)
    labels = domain_labels(num_source, d_logits.shape[0] - num_source, d_logits.dtype)
    bce = binary_cross_entropy_with_logits(d_logits, labels)
    return jnp.sum(weights * bce) / jax.lax.stop_gradient(jnp.sum(weights))


def gvb_transfer_loss(
    d_logits: jax.Array, probs: jax.Array, num_source: int, coeff: jax.Array
) -> jax.Array:
    """GVB-GD's ``L_trs = ½ Σ_i w_i · BCE(q_i, y_i)`` with ``w = exp(−H(p))`` per-domain
    normalised and reversed by ``coeff`` on H, BCE with ``+1e-8`` in the logs.

    ``d_logits`` are ``d − b``: the discriminator output minus its bridge; the BCE is taken of
    ``σ(d − b)`` with GVB's +1e-8, which keeps it finite.
    """
    weights = _entropy_weights(probs, num_source, coeff, offset=0.0)
    labels = domain_labels(num_source, d_logits.shape[0] - num_source, d_logits.dtype)
    d_probs = jax.nn.sigmoid(d_logits)
    return 0.5 * jnp.sum(weights * binary_cross_entropy(d_probs, labels, eps=BCE_EPS))
