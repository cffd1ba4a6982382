"""Loss functions, each a small pure function with the formula it computes.

Conventions: ``logits: [batch, classes]``, ``probs: [batch, classes]`` (rows sum to 1),
``labels: [batch]`` int. The equations are CGDM's (Du et al., CVPR 2021) as the official code
(https://github.com/lijin118/CGDM, ``utils.py``) computes them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

ENTROPY_EPS = 1e-5  # the official code adds 1e-5 inside every log of a probability
COSINE_EPS = 1e-8


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy, ``mean_i −log p(y_i | x_i)`` (``nn.CrossEntropyLoss``)."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def per_example_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``[batch]`` cross-entropies ``−log p(y_i | x_i)``."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def classifier_discrepancy(probs1: jax.Array, probs2: jax.Array) -> jax.Array:
    """MCD's discrepancy ``d(p1, p2) = (1/(B·C)) Σ_i Σ_k |p1_ik − p2_ik|`` (``discrepancy``)."""
    return jnp.mean(jnp.abs(probs1 - probs2))


def row_entropy(probs: jax.Array) -> jax.Array:
    """``[batch]`` entropies ``H(p_i) = −Σ_k p_ik log(p_ik + 1e-5)``."""
    return -jnp.sum(probs * jnp.log(probs + ENTROPY_EPS), axis=1)


def conditional_entropy(probs: jax.Array) -> jax.Array:
    """``H_c(p) = mean_i H(p_i)`` (``Entropy_condition``)."""
    return jnp.mean(row_entropy(probs))


def diversity(probs: jax.Array) -> jax.Array:
    """Negative marginal entropy ``D(p) = Σ_k p̄_k log p̄_k``, ``p̄ = mean_i p_i + 1e-5``.

    (``Entropy_div``): minimising it balances the batch-mean prediction over classes.
    """
    mean_probs = jnp.mean(probs, axis=0) + ENTROPY_EPS
    return jnp.sum(mean_probs * jnp.log(mean_probs))


def information_entropy(probs: jax.Array) -> jax.Array:
    """The IM loss ``Ent(p) = H_c(p) + D(p)`` (``Entropy``), confident and diverse predictions."""
    return conditional_entropy(probs) + diversity(probs)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """CGDM's entropy-weighted CE on pseudo-labels (``utils.py::Weighted_CrossEntropy``).

    ``w_i = 1 + exp(−H(p_i))``, ``w̃_i = w_i / stop_gradient(Σ_j w_j)``,
    ``L^W = (1/B) Σ_i w̃_i · CE_i``. Only the normaliser is detached, so gradient flows through
    ``w_i`` into ``H``; the 1/B makes it B times smaller than a plain CE (as in the official code).
    """
    weights = 1.0 + jnp.exp(-row_entropy(jax.nn.softmax(logits)))
    weights = weights / jax.lax.stop_gradient(jnp.sum(weights))
    return jnp.mean(weights * per_example_cross_entropy(logits, labels))


def safe_cosine(x: jax.Array, y: jax.Array, axis: int = -1) -> jax.Array:
    """Cosine similarity ``x·y / sqrt(max(Σx²·Σy², ε²))``, ε = 1e-8, along ``axis``.

    The PyTorch 1.6 formula the official CGDM code ran with: ≈ 0 when either vector
    is ≈ 0 (the round-off gradients of a Linear bias before BN), and never NaN, also in its
    gradient: below ε² the ``maximum`` passes no gradient to the norms.
    """
    dot = jnp.sum(x * y, axis=axis)
    squared_norms = jnp.sum(jnp.square(x), axis=axis) * jnp.sum(jnp.square(y), axis=axis)
    return dot / jnp.sqrt(jnp.maximum(squared_norms, COSINE_EPS**2))


def tensor_gradient_cosine(grad_s: jax.Array, grad_t: jax.Array) -> jax.Array:
    """Cosine between two gradients of one parameter tensor, as ``F.cosine_similarity`` in
    CGDM's ``utils.py::gradient_discrepancy_loss_margin``.

    A weight matrix (flax kernel ``[in, out]``, PyTorch's ``[out, in]`` transposed) gives one
    cosine per output unit over its input weights, averaged; a vector gives one cosine.
    """
    if grad_s.ndim == 1:
        return safe_cosine(grad_s, grad_t)
    if grad_s.ndim == 2:
        return jnp.mean(safe_cosine(grad_s, grad_t, axis=0))
    raise ValueError(f"gradient discrepancy expects 1-D or 2-D tensors, got shape {grad_s.shape}")


def gradient_discrepancy(grads_s: PyTree, grads_t: PyTree) -> jax.Array:
    """``mean over parameter tensors P of (1 − cos(g_s[P], g_t[P]))`` for one classifier
    (CGDM's ``gradient_discrepancy_loss_margin``).

    Args:
      grads_s: gradient of the source loss w.r.t. the classifier's parameters (a pytree).
      grads_t: gradient of the pseudo-labelled target loss, same structure.
    """
    cosines = jax.tree.leaves(jax.tree.map(tensor_gradient_cosine, grads_s, grads_t))
    return jnp.mean(1.0 - jnp.stack(cosines))
