"""Data parallelism through sharding (DESIGN principle 5 and 12).

One ``Mesh`` over the devices with a ``data`` axis; batches are split along it, the train state
is replicated, and ``jax.jit`` inserts the collectives. This is the current form of what
``jax.pmap`` did: the same global batch gives the same result on any device count, and
BatchNorm statistics are over the global batch (a mean over a sharded axis is an all-reduce).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uda_jax.errors import UserError

PyTree = Any


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises :class:`UserError` unless each domain's batch splits evenly over the mesh."""
    if batch_size % mesh.size:
        raise UserError(
            f"data.batch_size={batch_size} does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` with every array copied to every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Splits every array of ``batch`` along its first axis over the ``data`` axis.

    ``batch`` holds this process's rows; with several processes each contributes its share of
    the global batch (``jax.make_array_from_process_local_data``).
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
