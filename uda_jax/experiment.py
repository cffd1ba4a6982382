"""An experiment built from a config: domains, network, optimizers, method and initial state.

Everything that can go wrong with a user's config or data goes wrong here, as a
:class:`uda_jax.errors.UserError`, before anything is written or trained.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from uda_jax.config import Config
from uda_jax.data.domains import DomainData, check_compatible, load_domain
from uda_jax.errors import UserError
from uda_jax.methods import METHODS, get_method, metaalign, supports_metaalign
from uda_jax.methods.base import StepContext, compile_loop_step
from uda_jax.models import build_network
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a config before the first step."""

    config: Config
    source: DomainData
    target: DomainData
    ctx: StepContext
    method: Any


def build_experiment(config: Config) -> Experiment:
    """Loads the domains and builds network, optimizers and method; all user errors happen here."""
    method = get_method(config.method.name)
    data = config.data
    kwargs = dict(
        image_size=data.image_size, test_fraction=data.test_fraction, split_seed=data.split_seed
    )
    source = load_domain(data.source, **kwargs)
    target = load_domain(data.target, **kwargs)
    check_compatible(source, target)
    for domain in (source, target):
        if data.batch_size > len(domain.train_labels):
            raise UserError(
                f"data.batch_size={data.batch_size} is larger than domain {domain.name!r} "
                f"({len(domain.train_labels)} training images); lower data.batch_size"
            )
    if config.metaalign.enabled and not supports_metaalign(config.method.name):
        valid = ", ".join(n for n in METHODS if supports_metaalign(n))
        raise UserError(
            f"metaalign.enabled needs an adversarial method ({valid}), not {config.method.name!r}"
        )
    network = build_network(
        config.model,
        source.num_classes,
        method.NUM_CLASSIFIERS,
        **getattr(method, "NETWORK", {}),
    )
    params, _ = jax.eval_shape(lambda: network.init(jax.random.key(0), source.image_shape))
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(config.optimizer, masks)
    metaalign_config = config.metaalign if config.metaalign.enabled else None
    ctx = StepContext(network, optimizers, config.method, metaalign_config)
    return Experiment(config, source, target, ctx, method)


def create_train_state(experiment: Experiment) -> TrainState:
    """The initial state: fresh parameters and optimizer states, pseudo-labels all −1."""
    key = jax.random.key(experiment.config.seed)
    init_key, train_key = jax.random.split(key)
    network = experiment.ctx.network
    params, stats = network.init(init_key, experiment.source.image_shape)
    opt_state = {g: opt.init(params[g]) for g, opt in experiment.ctx.optimizers.items()}
    num_target = len(experiment.target.train_labels)
    extras = metaalign.init_extras(params) if experiment.ctx.metaalign else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=opt_state,
        pseudo_labels=jnp.full((num_target,), -1, jnp.int32),
        key=train_key,
        extras=extras,
    )


def make_step_fn(experiment: Experiment):
    """``(state, batch, step) -> (state, metrics)``: the compiled step for iteration ``step``.

    With MetaAlign, each of its two role assignments is compiled on its own and chosen here on
    the host (XLA on CPU runs convolutions inside ``lax.cond`` several times slower).
    """
    ctx = experiment.ctx
    if ctx.metaalign:
        fns = {
            flag: compile_loop_step(functools.partial(metaalign.branch_step, align_first=flag), ctx)
            for flag in (False, True)
        }
        return lambda state, batch, step: fns[bool(metaalign.align_first_now(step, ctx.metaalign))](
            state, batch
        )
    fn = compile_loop_step(experiment.method.train_step, ctx)
    return lambda state, batch, step: fn(state, batch)
