"""Your own optax optimizer and schedule, passed from Python.

uda-jax steps each module group with ``transformation`` at learning rate 1 and scales its output
by ``schedule(t)`` (times the group's ``lr_mult``) with ``t`` the training iteration, so any
``optax.GradientTransformation`` and any ``optax.Schedule`` plug in. Here: gradient clipping +
Adam, with a warm-up then cosine decay, for the source-only baseline on the embedded digits.

    python examples/own_optax.py [steps=200]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import optax

from uda_jax.config import load_config
from uda_jax.experiment import build_experiment
from uda_jax.train import train_and_evaluate


def main(overrides: list[str]) -> float:
    """Trains with a clipped Adam and a warm-up cosine schedule; returns the target accuracy."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(
            None,
            [
                "method.name=source_only",
                "steps=200",
                "eval_every=0",
                "plots=false",
                "tensorboard=false",
                "optimizer.weight_decay=0",  # Adam without coupled L2
                f"run_dir={run_dir}",
                *overrides,
            ],
        )
        transformation = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0))
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=1e-3, warmup_steps=20, decay_steps=config.steps
        )
        experiment = build_experiment(config, transformation=transformation, schedule=schedule)
        results = train_and_evaluate(config, Path(run_dir), experiment=experiment)
    accuracy = results["target_accuracy"]
    print(f"source only with clipped Adam + warm-up cosine: target accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(sys.argv[1:])
