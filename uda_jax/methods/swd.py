"""SWD: sliced Wasserstein discrepancy (Lee et al., CVPR 2019).

Saito et al.'s MCD (:class:`uda_jax.methods.mcd.MCD`: two classifiers, three steps, each domain
its own forward pass and BatchNorm batch), with the discrepancy between the classifiers' target
probabilities ``P1, P2 [B, C]`` measured by the sliced Wasserstein discrepancy instead of the
mean absolute difference:

  ``SWD(P1, P2) = (1/(B·M)) Σ_m Σ_i (sort(P1 u_m)_i − sort(P2 u_m)_i)²``

over ``M = num_projections`` random unit directions ``u_m = v_m / ‖v_m‖``, ``v_m ~ N(0, I_C)``,
drawn fresh in every sub-step from that sub-step's key; ``sort`` orders the ``B`` projected
values of a direction (the 1-D optimal transport of two empirical distributions pairs them
in sorted order). Steps B (classifiers maximise it) and C (``num_k`` generator steps
minimise it) use it; step A is MCD's.

Built on the faithful MCD, as the paper builds on MCD's three steps. The official code is a
toy two-moons demo without BatchNorm; it too forwards the source and the target in separate
passes (``toyNet(X)`` and ``toyNet(X_target)``), never one concatenated batch. (It runs the
source, classifier and generator updates of one iteration as one grouped TensorFlow step on
the same forward passes; here they are MCD's sequential steps A, B and C×``num_k``.)

References:
  Lee, C.-Y., Batra, T., Baig, M. H., Ulbricht, D. Sliced Wasserstein Discrepancy for
  Unsupervised Domain Adaptation. CVPR 2019. Code: https://github.com/apple/ml-cvpr2019-swd
  (``discrepancy_slice_wasserstein`` in its ``swd.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.methods.mcd import MCD, McdConfig
from uda_jax.methods.registry import register


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

    def discrepancy(self, probs1: jax.Array, probs2: jax.Array, rng: jax.Array) -> jax.Array:
        """The sliced Wasserstein discrepancy on ``num_projections`` fresh random directions."""
        projections = random_projections(
            rng, probs1.shape[1], self.config.num_projections, probs1.dtype
        )
        return sliced_wasserstein_discrepancy(probs1, probs2, projections)
