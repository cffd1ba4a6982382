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
        ``fold_in(key, step)``, so a resumed run and any device count draw the same keys.
      params: ``{group: pytree}`` with groups ``g``, ``f`` or ``f1``/``f2``.
      batch_stats: BatchNorm running statistics, grouped like ``params``.
      opt_state: ``{group: optax state}``, one optimizer state per module group.
      key: the run's base PRNG key.
      extras: method-specific state, a dict pytree (CGDM keeps its target pseudo-labels here,
        MetaAlign its last fast discriminator weights); empty for most methods.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    key: jax.Array
    extras: PyTree = dataclasses.field(default_factory=dict)

    @classmethod
    def create(
        cls,
        params: PyTree,
        batch_stats: PyTree,
        optimizers: dict[str, Any],
        key: jax.Array,
        extras: PyTree | None = None,
    ) -> TrainState:
        """Step 0 with a fresh state of every group's optimizer (``optimizers[g].init``)."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state={g: opt.init(params[g]) for g, opt in optimizers.items()},
            key=key,
            extras={} if extras is None else extras,
        )

    def replace(self, **changes: Any) -> TrainState:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
