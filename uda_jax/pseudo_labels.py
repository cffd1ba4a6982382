"""CGDM's clustering pseudo-labels for the target domain (``utils.py::obtain_label``, pure jnp).

From eval-mode features ``f_i`` and probabilities ``P_i = softmax(z1 + z2)`` of the whole target
training set: append 1 to each feature and L2-normalise; soft centroids
``c_k = Σ_i P_ik f_i / (1e-8 + Σ_i P_ik)``; assign each sample to the centroid of least cosine
distance; one hard round (centroids of the assigned samples, reassign).

Deliberate difference from the official CGDM code: a class with no members after the soft round
gets a zero centroid, for which the official code's scipy ``cdist`` returns NaN and ``argmin``
then sends *every* sample to that class. Here empty clusters are masked out of the assignment
instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CENTROID_EPS = 1e-8


def _normalise_rows(x: jax.Array) -> jax.Array:
    norms = jnp.linalg.norm(x, axis=1, keepdims=True)
    return x / jnp.where(norms > 0, norms, 1.0)


def nearest_centroid(
    features: jax.Array, centroids: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """``argmin_k cosine_distance(f_i, c_k)`` over the ``valid`` centroids → ``[N]`` int32.

    Args:
      features: ``[N, D]``; centroids: ``[K, D]``; valid: ``[K]`` bool, all True if None.
    """
    similarity = _normalise_rows(features) @ _normalise_rows(centroids).T
    if valid is not None:
        similarity = jnp.where(valid[None, :], similarity, -jnp.inf)
    return jnp.argmax(similarity, axis=1).astype(jnp.int32)


def weighted_centroids(features: jax.Array, weights: jax.Array) -> jax.Array:
    """``c_k = Σ_i w_ik f_i / (1e-8 + Σ_i w_ik)``: ``[N, D]``, ``[N, K]`` → ``[K, D]``."""
    return (weights.T @ features) / (CENTROID_EPS + jnp.sum(weights, axis=0)[:, None])


def cluster_pseudo_labels(features: jax.Array, probs: jax.Array) -> jax.Array:
    """Pseudo-labels ``[N]`` int32 from ``features [N, D]`` and ``probs [N, K]``
    (CGDM's ``obtain_label``)."""
    augmented = jnp.concatenate([features, jnp.ones_like(features[:, :1])], axis=1)
    augmented = _normalise_rows(augmented)
    labels = nearest_centroid(augmented, weighted_centroids(augmented, probs))
    one_hot = jax.nn.one_hot(labels, probs.shape[1], dtype=augmented.dtype)
    non_empty = jnp.sum(one_hot, axis=0) > 0
    return nearest_centroid(augmented, weighted_centroids(augmented, one_hot), non_empty)
