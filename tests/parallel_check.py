"""Run by test_parallel.py in a subprocess with 8 CPU devices: trains a few steps of one config
on a 1-device mesh and on an 8-device mesh with the same global batch, prints the largest
parameter difference relative to the parameters' scale, as JSON."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.config import load_config
from uda_jax.data.pipeline import PairStream
from uda_jax.experiment import build_experiment, compile_train_step, create_train_state
from uda_jax.parallel import data_mesh, replicate, shard_batch


def initial_state(experiment):
    """The initial state; CGDM's pseudo-labels all 1, so its pseudo-label and L_GD terms have
    labels to work with from the first step (no clustering needed)."""
    state = create_train_state(experiment)
    if "pseudo_labels" in state.extras:
        labels = jnp.ones_like(state.extras["pseudo_labels"])
        state = state.replace(extras={**state.extras, "pseudo_labels": labels})
    return state


def train(config, devices, steps):
    experiment = build_experiment(config)
    mesh = data_mesh(devices)
    state = replicate(initial_state(experiment), mesh)
    train_step = compile_train_step(experiment)
    with PairStream(experiment.source, experiment.target, config.data.batch_size, 0) as stream:
        for _ in range(steps):
            state, _ = train_step(state, shard_batch(next(stream), mesh))
    assert int(state.step) == steps
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
