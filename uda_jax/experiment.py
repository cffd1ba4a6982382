"""An experiment built from a config: domains, network, optimizers, method, initial state and
the compiled step and prediction functions.

Everything that can go wrong with a user's config or data goes wrong here, as a
:class:`uda_jax.errors.UserError`, before anything is written or trained. Research code may pass
its own pieces instead of naming them in the config: in-memory domains
(:func:`uda_jax.data.domains.from_arrays`), an optax transformation and schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from uda_jax import cpu
from uda_jax.config import Config
from uda_jax.data.domains import check_compatible
from uda_jax.data.sources import AnyDomain, load_data_domain, num_examples
from uda_jax.errors import UserError
from uda_jax.methods import Batch, Method, Metrics, StepContext, build_method, predict
from uda_jax.models import build_network
from uda_jax.models.torch_weights import load_pretrained_backbone
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a config before the first step."""

    config: Config
    source: AnyDomain
    target: AnyDomain
    method: Method
    ctx: StepContext
    cpu_tuning: cpu.CpuTuning


def build_experiment(
    config: Config,
    *,
    source: AnyDomain | None = None,
    target: AnyDomain | None = None,
    transformation: optax.GradientTransformation | None = None,
    schedule: optax.Schedule | None = None,
) -> Experiment:
    """Loads the domains (unless given) and builds network, optimizers and method.

    Args:
      config: a validated config.
      source, target: in-memory or loaded domains to use instead of ``config.data``'s names.
      transformation, schedule: your own optax pieces (see
        :func:`uda_jax.optim.build_optimizers`).
    """
    method = build_method(config)
    data = config.data
    source = source if source is not None else load_data_domain(data.source, data)
    target = target if target is not None else load_data_domain(data.target, data)
    check_compatible(source, target)
    for domain in (source, target):
        if data.batch_size > num_examples(domain):
            raise UserError(
                f"data.batch_size={data.batch_size} is larger than domain {domain.name!r} "
                f"({num_examples(domain)} training images); lower data.batch_size"
            )
    tuning = cpu.tuning(config.cpu_tuning, config.model.backbone)
    spec = method.network
    network = build_network(
        config.model,
        source.num_classes,
        spec.num_classifiers,
        head=spec.head,
        bridge=spec.bridge,
        discriminator_input=spec.discriminator_input,
        dtype=jnp.bfloat16 if config.precision == "bf16" else jnp.float32,
        ops=cpu.layer_ops(tuning),
    )
    pretrained_path(config)  # a missing weights file fails here, before anything runs
    params, _ = jax.eval_shape(lambda: network.init(jax.random.key(0), source.image_shape))
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(
        config.optimizer, masks, transformation=transformation, schedule=schedule
    )
    ctx = StepContext(network, optimizers)
    return Experiment(config, source, target, method, ctx, tuning)


def pretrained_path(config: Config) -> Path | None:
    """The backbone's ImageNet weights file (``model.pretrained``), or None.

    A relative path is looked up in the working directory, then under the data root
    (``data.root`` or ``$UDA_DATA_DIR``), so configs can name the torchvision file alone.

    Raises:
      UserError: the file is in neither place.
    """
    if not config.model.pretrained:
        return None
    path = Path(config.model.pretrained).expanduser()
    candidates = [path]
    root = config.data.root or os.environ.get("UDA_DATA_DIR")
    if not path.is_absolute() and root:
        candidates.append(Path(root).expanduser() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"model.pretrained: no weights file at {tried}; download the torchvision file "
        "(see uda_jax/models/torch_weights.py) or set model.pretrained=PATH"
    )


def create_train_state(experiment: Experiment) -> TrainState:
    """The initial state: fresh parameters (the backbone from ``model.pretrained`` when set),
    optimizer states and the method's extras."""
    key = jax.random.key(experiment.config.seed)
    init_key, train_key = jax.random.split(key)
    network = experiment.ctx.network
    params, stats = network.init(init_key, experiment.source.image_shape)
    weights = pretrained_path(experiment.config)
    if weights is not None:
        params, stats = load_pretrained_backbone(weights, params, stats)
        params, stats = jax.tree.map(jnp.asarray, (params, stats))
    extras = experiment.method.init_extras(params, num_examples(experiment.target))
    return TrainState.create(params, stats, experiment.ctx.optimizers, train_key, extras)


def jit(experiment: Experiment, fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` with the experiment's CPU compiler options: the one way
    uda-jax compiles."""
    return cpu.jit(fn, experiment.cpu_tuning, **jit_kwargs)


def compile_train_step(
    experiment: Experiment,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The method's step as ``(state, batch) -> (state, metrics)``, jit-compiled once, donating
    the old state. Its key is ``fold_in(state.key, state.step)``, so any run that reaches a step
    (fresh or resumed, on any device count) draws the same randomness there."""
    step = functools.partial(experiment.method.step, experiment.ctx)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return step(state, batch, jax.random.fold_in(state.key, state.step))

    return jit(experiment, train_step, donate_argnums=0)


def compile_predict(experiment: Experiment):
    """``(params, batch_stats, images) -> (features, logits)`` in eval mode, jit-compiled."""
    return jit(experiment, functools.partial(predict, experiment.ctx.network))
