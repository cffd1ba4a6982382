"""Run by test_distributed.py: trains a few steps of some configs either as one of several
processes joined by ``jax.distributed`` (one global mesh over all their devices) or as a single
process on one device, from the same global batches.

    distributed_check.py OUT CASES_JSON STEPS [COORDINATOR NUM_PROCESSES PROCESS_ID]

``CASES_JSON`` maps a case name to ``[config_path, [overrides]]``. Process 0 (or the single
process) writes ``OUT/<case>.npz`` with the final parameters, keyed by their tree paths; every
process of a multi-process run also writes ``OUT/process<i>.json`` with what it checked.
"""

import json
import sys
from pathlib import Path

import numpy as np

from uda_jax.parallel import initialize_distributed


def main():
    out, cases, steps, *dist = sys.argv[1:]
    if dist:  # before any other JAX call
        coordinator, num_processes, process_id = dist
        initialize_distributed(coordinator, int(num_processes), int(process_id))
    import jax

    from uda_jax.parallel import data_mesh, process_summary

    out = Path(out)
    mesh = data_mesh() if dist else data_mesh(jax.devices()[:1])
    report = {"summary": process_summary(), "cases": {}}
    for name, (config_path, overrides) in json.loads(cases).items():
        params, replicated = train(config_path, overrides, mesh, int(steps))
        report["cases"][name] = {"replicated_on": replicated}
        if jax.process_index() == 0:
            np.savez(out / f"{name}.npz", **params)
    if dist:
        report.update(probe(mesh))
        (out / f"process{jax.process_index()}.json").write_text(json.dumps(report))


def train(config_path, overrides, mesh, steps):
    """Final parameters (path → array) after ``steps`` steps, and on how many devices they are."""
    import jax
    import jax.numpy as jnp

    from uda_jax.config import load_config
    from uda_jax.data.pipeline import PairStream
    from uda_jax.experiment import build_experiment, compile_train_step, create_train_state
    from uda_jax.parallel import check_batch_size, replicate, shard_batch

    config = load_config(config_path, [*overrides, "run_dir=/tmp/unused"])
    check_batch_size(config.data.batch_size, mesh)
    experiment = build_experiment(config)
    state = create_train_state(experiment)
    if "pseudo_labels" in state.extras:  # CGDM: labels for its terms without clustering
        labels = jnp.ones_like(state.extras["pseudo_labels"])
        state = state.replace(extras={**state.extras, "pseudo_labels": labels})
    state = replicate(state, mesh)
    train_step = compile_train_step(experiment)
    # the whole global batch on every process (process_count=1); shard_batch keeps each
    # process's rows
    with PairStream(experiment.source, experiment.target, config.data.batch_size, 0) as stream:
        for _ in range(steps):
            state, metrics = train_step(state, shard_batch(next(stream), mesh))
    jax.block_until_ready(metrics)
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    params = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
    first = leaves[0][1].sharding
    replicated = len(first.device_set) if first.is_fully_replicated else 0
    return params, replicated


def probe(mesh):
    """What the multi-process helpers do here: rows, batch assembly, and the UserErrors."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from uda_jax.errors import UserError
    from uda_jax.parallel import (
        check_batch_size,
        data_mesh,
        host_peak_rss_bytes,
        host_rows,
        peak_memory_bytes,
        shard_batch,
    )

    size = 2 * mesh.size
    batch = {"x": np.arange(size * 3, dtype=np.float32).reshape(size, 3)}
    rows = host_rows(size, mesh)
    gather = jax.jit(lambda b: b, out_shardings=NamedSharding(mesh, PartitionSpec()))
    from_global = np.asarray(gather(shard_batch(batch, mesh))["x"])
    local = {"x": batch["x"][rows]}
    from_local = np.asarray(gather(shard_batch(local, mesh, process_local=True))["x"])
    errors = {}
    by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    interleaved = data_mesh(by_process[::2] + by_process[1::2])
    for name, call in {
        "batch_not_split": lambda: check_batch_size(mesh.size + 2, mesh),
        "local_mesh": lambda: check_batch_size(size, data_mesh(jax.local_devices())),
        "interleaved_mesh": lambda: check_batch_size(size, interleaved),
        "interleaved_rows": lambda: host_rows(size, interleaved),
    }.items():
        try:
            call()
            errors[name] = None
        except UserError as e:
            errors[name] = str(e)
    return {
        "rows": [rows.start, rows.stop],
        "global_batch_ok": bool(np.array_equal(from_global, batch["x"])),
        "local_batch_ok": bool(np.array_equal(from_local, batch["x"])),
        "errors": errors,
        "peak_memory_bytes": peak_memory_bytes(),
        "host_peak_rss_bytes": host_peak_rss_bytes(),
    }


if __name__ == "__main__":
    main()
