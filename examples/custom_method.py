"""A method defined outside uda-jax: entropy minimisation, trained with the standard loop.

Objective: ``min_{G,F} CE(F(G(x_s)), y_s) + weight · H(softmax(F(G(x_t))))``, the source
cross-entropy plus the mean prediction entropy on the unlabelled target (Grandvalet & Bengio,
NeurIPS 2004). The method is a :class:`uda_jax.methods.Method` subclass with its own config
section (``entmin.weight``), registered through the public API and trained on the embedded
digits task by :func:`uda_jax.train.train_and_evaluate`. Run it with

    python examples/custom_method.py [steps=300]

or, without registering it, from the command line by its import path (with ``examples`` on
``PYTHONPATH``):

    python -m uda_jax.train method.name=custom_method:EntropyMinimisation entmin.weight=0.1
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from uda_jax import methods
from uda_jax.config import check_range, load_config
from uda_jax.losses import cross_entropy, row_entropy
from uda_jax.methods import Method, NetworkSpec, StepContext, apply_updates, source_and_target
from uda_jax.state import TrainState
from uda_jax.train import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class EntMinConfig:
    """Options of entropy minimisation (section ``entmin``)."""

    weight: float = 0.1  # weight of the target prediction entropy

    def validate(self, where: str) -> None:
        """A non-negative weight."""
        check_range(self, where, non_negative=("weight",))


@methods.register
@dataclasses.dataclass(frozen=True)
class EntropyMinimisation(Method):
    """Source cross-entropy + target prediction entropy, one optimizer step per iteration."""

    config: EntMinConfig = dataclasses.field(default_factory=EntMinConfig)
    name = "entmin"
    config_class = EntMinConfig
    network = NetworkSpec(num_classifiers=1, head="mlp")
    metrics = ("loss_cls", "loss_ent")
    alignment_metrics = ("loss_ent",)

    def step(self, ctx: StepContext, state: TrainState, batch, rng: jax.Array):
        """One step of G and F on one source+target BatchNorm batch."""
        num_source = batch["source_label"].shape[0]
        g_key, f_key = jax.random.split(rng)

        def loss_fn(params):
            features, g_stats = ctx.network.apply_generator(
                params["g"], state.batch_stats["g"], source_and_target(batch), train=True, rng=g_key
            )
            logits, f_stats = ctx.network.apply_classifier(
                params["f"], state.batch_stats["f"], features, train=True, rng=f_key
            )
            ce = cross_entropy(logits[:num_source], batch["source_label"])
            entropy = jnp.mean(row_entropy(jax.nn.softmax(logits[num_source:])))
            loss = ce + self.config.weight * entropy
            return loss, ({"g": g_stats, "f": f_stats}, ce, entropy)

        (_, (stats, ce, entropy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state
        )
        return new_state, {"train/loss_cls": ce, "train/loss_ent": entropy}


def main(overrides: list[str]) -> float:
    """Trains entropy minimisation on mnist5k → ucidigits and returns the target accuracy."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(
            None,
            [
                "method.name=entmin",
                "steps=300",
                "eval_every=0",
                "plots=false",
                "tensorboard=false",
                f"run_dir={run_dir}",
                *overrides,
            ],
        )
        results = train_and_evaluate(config, Path(run_dir))
    accuracy = results["target_accuracy"]
    print(f"entropy minimisation, mnist5k → ucidigits: target accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(sys.argv[1:])
