"""Data parallelism through sharding, on one host or several.

One ``Mesh`` over the devices with a ``data`` axis; batches are split along it, the train state
is replicated, and ``jax.jit`` inserts the collectives. This is the current form of what
``jax.pmap`` did: the same global batch gives the same result on any device count, and
BatchNorm statistics are over the global batch (a mean over a sharded axis is an all-reduce).

Several hosts: every process calls :func:`initialize_distributed` before any other JAX call,
then builds the same mesh over all devices of all processes (:func:`data_mesh`). Each process
feeds only the rows of the global batch that its own devices hold (:func:`host_rows`);
:func:`shard_batch` assembles the global array from them
(``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uda_jax.errors import UserError

PyTree = Any

# Read by initialize_distributed when none of its three arguments is given. JAX itself reads only
# JAX_COORDINATOR_ADDRESS; the other two make a plain launcher (ssh, a shell loop) enough.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``).

    Call it once per process, before any other JAX call. Give all three arguments, or none:

    * all three: process ``process_id`` of ``num_processes``; process 0 serves the coordinator
      at ``coordinator_address`` (``host:port``, reachable from every host);
    * none: taken from the environment variables ``JAX_COORDINATOR_ADDRESS``,
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when all three are set, otherwise detected by
      JAX from the cluster (Cloud TPU, SLURM, Open MPI).

    On CPU, cross-process collectives use gloo over TCP (JAX's CPU backend has none otherwise;
    a setting of ``jax_cpu_collectives_implementation`` made before, e.g. ``mpi``, is kept), and
    the processes connect here with one small all-reduce, which starts JAX's backend: set any
    other JAX option before this call.
    Raises :class:`UserError` for inconsistent arguments, a second call, or a call after JAX
    has started.
    """
    if coordinator_address is None and num_processes is None and process_id is None:
        env = [os.environ.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)]
        if all(env):
            coordinator_address = env[0]
            num_processes = _env_int(ENV_NUM_PROCESSES, env[1])
            process_id = _env_int(ENV_PROCESS_ID, env[2])
    explicit = not (coordinator_address is None and num_processes is None and process_id is None)
    if explicit:
        _check_distributed_args(coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():
        raise UserError("jax.distributed is already initialized; call initialize_distributed once")
    _enable_cpu_collectives()
    try:
        if explicit:
            jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
        else:
            jax.distributed.initialize()
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise UserError(
                "initialize_distributed must run before any other JAX call "
                "(computations, jax.devices(), device_put)"
            ) from e
        raise
    except ValueError as e:
        if explicit:
            raise
        raise UserError(  # auto-detection found no cluster
            f"no cluster detected for jax.distributed ({e}); give coordinator_address, "
            f"num_processes and process_id, or set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} "
            f"and {ENV_PROCESS_ID}"
        ) from e
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        _connect_cpu_collectives()


def _connect_cpu_collectives() -> None:
    """Runs one all-reduce over :func:`data_mesh` now, while the processes are in step.

    jaxlib connects the gloo processes at the first collective over a set of devices and gives
    up if a peer is more than 30 s late (``GetKeyValue() timed out``, not configurable in JAX
    0.10.2), e.g. while it still compiles a large train step. Once connected, later collectives
    over the same devices wait for late peers. Measured: without this, two processes whose first
    step compiles 40 s apart fail; with it, they train.
    """
    mesh = data_mesh()
    ones = np.ones(_local_mesh_size(mesh), np.float32)
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("data")), ones, (mesh.size,)
    )
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
    if int(total) != mesh.size:
        raise RuntimeError(f"cross-process all-reduce gave {total}, expected {mesh.size}")


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer") from None


def _check_distributed_args(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Raises :class:`UserError` unless the three arguments are all given and consistent."""
    names = ("coordinator_address", "num_processes", "process_id")
    values = (coordinator_address, num_processes, process_id)
    missing = [n for n, v in zip(names, values, strict=True) if v is None]
    if missing:
        raise UserError(
            f"initialize_distributed: {', '.join(missing)} missing; give all of "
            f"{', '.join(names)}, or none to detect them from the cluster"
        )
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"coordinator_address={coordinator_address!r} is not host:port "
            "(e.g. 10.0.0.1:1234, the address of process 0)"
        )
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise UserError(f"{name}={value!r} is not an integer")
    if num_processes < 1:
        raise UserError(f"num_processes={num_processes} must be at least 1")
    if not 0 <= process_id < num_processes:
        raise UserError(
            f"process_id={process_id} is outside 0..{num_processes - 1} (num_processes="
            f"{num_processes}); give each process a distinct id in that range"
        )


def _enable_cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend: gloo unless another choice was made.

    JAX 0.10 names the option ``jax_cpu_collectives_implementation`` (default already gloo);
    older versions had the boolean ``jax_cpu_enable_gloo_collectives``.
    """
    values = jax.config.values
    if "jax_cpu_collectives_implementation" in values:
        if values["jax_cpu_collectives_implementation"] is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    elif "jax_cpu_enable_gloo_collectives" in values:
        jax.config.update("jax_cpu_enable_gloo_collectives", True)


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over ``devices`` (default: all devices of all processes).

    The default lists each process's devices together, in process order, so that each process
    holds one contiguous block of rows of a batch (:func:`host_rows`).
    """
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises :class:`UserError` unless each domain's batch splits evenly over the mesh.

    With several processes it also checks the mesh (:func:`check_mesh`) and that the batch
    splits evenly over the processes.
    """
    if batch_size % mesh.size:
        raise UserError(
            f"data.batch_size={batch_size} does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )
    processes = jax.process_count()
    if processes > 1:
        if batch_size % processes:
            raise UserError(
                f"data.batch_size={batch_size} does not split over {processes} processes; "
                f"use a multiple of {processes}"
            )
        check_mesh(mesh)


def check_mesh(mesh: Mesh) -> None:
    """Raises :class:`UserError` unless ``mesh`` suits data-parallel training here.

    A 1-D ``data`` mesh; with several processes it holds every device of every process, and
    each process's devices are adjacent (so each process feeds one block of rows).
    """
    if mesh.axis_names != ("data",):
        raise UserError(f"the mesh has axes {mesh.axis_names}; data parallelism needs ('data',)")
    if jax.process_count() == 1:
        return
    devices = list(mesh.devices.flat)
    if len(set(devices)) != len(devices) or set(devices) != set(jax.devices()):
        raise UserError(
            f"the mesh has {len(devices)} devices but this {jax.process_count()}-process run has "
            f"{jax.device_count()}; a multi-process run trains on all devices (data_mesh())"
        )
    owners = [d.process_index for d in devices]
    blocks = [p for i, p in enumerate(owners) if i == 0 or p != owners[i - 1]]
    if len(blocks) != len(set(blocks)):
        raise UserError(
            "the mesh interleaves the devices of different processes; list each process's "
            "devices together (data_mesh() does)"
        )


def host_rows(global_batch_size: int, mesh: Mesh) -> slice:
    """The rows ``[start, stop)`` of a global batch that this process's devices hold.

    A process that loads its own data loads only these rows; every process passes its rows to
    :func:`shard_batch` with ``process_local=True``. One process: all rows.
    """
    if global_batch_size % mesh.size:
        raise UserError(
            f"a batch of {global_batch_size} rows does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )
    per_device = global_batch_size // mesh.size
    me = jax.process_index()
    positions = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == me]
    if not positions:
        raise UserError(f"the mesh holds none of the devices of process {me}")
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise UserError(
            f"the devices of process {me} are not adjacent in the mesh; list each process's "
            "devices together (data_mesh() does)"
        )
    return slice(positions[0] * per_device, (positions[-1] + 1) * per_device)


def host_share(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, np.ndarray]:
    """This process's rows (:func:`host_rows`) of every array of the global ``batch``."""
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
        raise UserError(f"the batch's arrays have different numbers of rows: {sorted(sizes)}")
    rows = host_rows(sizes.pop(), mesh)
    return {k: v[rows] for k, v in batch.items()}


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """``tree`` with every array copied to every device of ``mesh``.

    With several processes every process must pass the same values (they do when each builds
    the state from the same seed).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # device_put refuses committed arrays for devices of other processes: build each global
    # array from this process's copy instead (no cross-process traffic).
    return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


def _replicate_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _replicate_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, *, process_local: bool = False
) -> dict[str, jax.Array]:
    """Global arrays split along their first axis over the mesh's ``data`` axis.

    ``batch`` is the global batch, the same on every process (a deterministic
    :class:`~uda_jax.data.pipeline.PairStream` built with its default ``process_count=1``
    yields it on every host): one process places it on its devices; with several, each keeps
    its own rows (:func:`host_share`) and the global arrays are assembled from all processes'
    rows.

    ``process_local=True``: ``batch`` holds only this process's rows (:func:`host_rows` of the
    global batch), for hosts that load only their share; the global batch has
    ``len(rows) * process_count`` rows. With one process both forms are the same.
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    if process_local:
        local = batch
        rows = next(iter(batch.values())).shape[0] if batch else 0
        rows_all = rows * mesh.size // _local_mesh_size(mesh)
    else:
        local = host_share(batch, mesh)
        rows_all = next(iter(batch.values())).shape[0] if batch else 0
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (rows_all, *v.shape[1:]))
        for k, v in local.items()
    }


def _local_mesh_size(mesh: Mesh) -> int:
    me = jax.process_index()
    return sum(d.process_index == me for d in mesh.devices.flat)


def max_over_processes(value: int) -> int:
    """The largest ``value`` any process holds (itself with one process). A collective (an
    all-gather of one integer per process), so every process must call it at the same point."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def process_0_decides(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (itself with one process).

    For a branch that leads into a collective (an Orbax checkpoint manager, a save): a file
    check can come out differently in each process when another process is creating the file at
    that moment, and processes that take different branches wait for each other forever.
    A collective, so every process must call it at the same point.
    """
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def process_summary() -> dict[str, Any]:
    """Which process this is and what it runs on, for the run summary."""
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
        "platform": jax.default_backend(),
    }


def peak_memory_bytes() -> int | None:
    """Peak device memory in use, the largest over this process's devices.

    ``None`` where the backend keeps no such statistic (CPU); GPU and TPU report
    ``peak_bytes_in_use``.
    """
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def host_peak_rss_bytes() -> int:
    """Peak resident memory of this process (``getrusage``; Linux counts kilobytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
