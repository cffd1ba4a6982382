"""The train state: everything a training step changes, as one pytree."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: training iterations done so far (int32 scalar); the per-step RNG key is
        ``fold_in(key, step)`` (DESIGN principle 10).
      params: ``{group: pytree}`` with groups ``g``, ``f`` or ``f1``/``f2``.
      batch_stats: BatchNorm running statistics, grouped like ``params``.
      opt_state: ``{group: optax state}``, one optimizer state per module group.
      pseudo_labels: ``[num_target_train]`` int32 target pseudo-labels (−1 before the first
        refresh); training batches look them up by ``target_index``.
      key: the run's base PRNG key.
      extras: method-specific state, a dict pytree (MetaAlign keeps its last fast
        discriminator weights here); empty for most methods.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    pseudo_labels: jax.Array
    key: jax.Array
    extras: PyTree = dataclasses.field(default_factory=dict)

    @classmethod
    def create(
        cls,
        params: PyTree,
        batch_stats: PyTree,
        optimizers: dict[str, Any],
        pseudo_labels: jax.Array,
        key: jax.Array,
        extras: PyTree | None = None,
    ) -> TrainState:
        """Step 0 with a fresh state of every group's optimizer (``optimizers[g].init``)."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state={g: opt.init(params[g]) for g, opt in optimizers.items()},
            pseudo_labels=pseudo_labels,
            key=key,
            extras={} if extras is None else extras,
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
