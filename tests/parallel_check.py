"""Run by test_parallel.py in a subprocess with 8 CPU devices: trains a few steps of one config
on a 1-device mesh and on an 8-device mesh with the same global batch, prints the largest
parameter difference relative to the parameters' scale, as JSON."""

import json
import sys

import jax
import numpy as np

from uda_jax.config import load_config
from uda_jax.data.pipeline import DomainPairStream
from uda_jax.experiment import build_experiment, create_train_state, make_step_fn
from uda_jax.parallel import data_mesh, replicate, shard_batch


def train(config, devices, steps):
    experiment = build_experiment(config)
    mesh = data_mesh(devices)
    state = replicate(create_train_state(experiment), mesh)
    state = state.replace(pseudo_labels=state.pseudo_labels * 0 + 1)
    step_fn = make_step_fn(experiment)
    stream = DomainPairStream(experiment.source, experiment.target, config.data.batch_size, 0)
    for step in range(steps):
        state, _ = step_fn(state, shard_batch(next(stream), mesh), step)
    return jax.device_get(state.params), state


def main():
    config_path, steps, *overrides = sys.argv[1:]
    config = load_config(config_path, [*overrides, "run_dir=/tmp/unused"])
    one, _ = train(config, jax.devices()[:1], int(steps))
    eight, state = train(config, jax.devices(), int(steps))
    sharding = state.params["g"]["backbone"]["conv1"]["kernel"].sharding
    worst = 0.0
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight), strict=True):
        scale = max(float(np.max(np.abs(a))), 1e-3)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "replicated": sharding.is_fully_replicated and len(sharding.device_set) == 8,
                "max_relative_difference": worst,
            }
        )
    )


if __name__ == "__main__":
    main()
