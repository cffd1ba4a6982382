"""An experiment built from a config: domains, network, optimizers, method and initial state.

Everything that can go wrong with a user's config or data goes wrong here, as a
:class:`uda_jax.errors.UserError`, before anything is written or trained.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from uda_jax.config import Config
from uda_jax.data.domains import check_compatible
from uda_jax.data.sources import AnyDomain, load_data_domain, num_examples
from uda_jax.errors import UserError
from uda_jax.methods import METHODS, get_method, metaalign, supports_metaalign
from uda_jax.methods.base import StepContext, compile_loop_step
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
    ctx: StepContext
    method: Any


def build_experiment(config: Config) -> Experiment:
    """Loads the domains and builds network, optimizers and method; all user errors happen here."""
    method = get_method(config.method.name)
    data = config.data
    source = load_data_domain(data.source, data)
    target = load_data_domain(data.target, data)
    check_compatible(source, target)
    for domain in (source, target):
        if data.batch_size > num_examples(domain):
            raise UserError(
                f"data.batch_size={data.batch_size} is larger than domain {domain.name!r} "
                f"({num_examples(domain)} training images); lower data.batch_size"
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
        dtype=jnp.bfloat16 if config.precision == "bf16" else jnp.float32,
        **getattr(method, "NETWORK", {}),
    )
    pretrained_path(config)  # a missing weights file fails here, before anything runs
    params, _ = jax.eval_shape(lambda: network.init(jax.random.key(0), source.image_shape))
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(config.optimizer, masks)
    metaalign_config = config.metaalign if config.metaalign.enabled else None
    ctx = StepContext(network, optimizers, config.method, metaalign_config)
    return Experiment(config, source, target, ctx, method)


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
    """The initial state: fresh parameters (the backbone from ``model.pretrained`` when set)
    and optimizer states, pseudo-labels all −1."""
    key = jax.random.key(experiment.config.seed)
    init_key, train_key = jax.random.split(key)
    network = experiment.ctx.network
    params, stats = network.init(init_key, experiment.source.image_shape)
    weights = pretrained_path(experiment.config)
    if weights is not None:
        params, stats = load_pretrained_backbone(weights, params, stats)
        params, stats = jax.tree.map(jnp.asarray, (params, stats))
    num_target = num_examples(experiment.target)
    extras = metaalign.init_extras(params) if experiment.ctx.metaalign else {}
    return TrainState.create(
        params,
        stats,
        experiment.ctx.optimizers,
        jnp.full((num_target,), -1, jnp.int32),
        train_key,
        extras,
    )


def step_roles(experiment: Experiment):
    """``(train_steps, role_at)``: the train step function(s) the loop compiles, by role, and
    ``role_at(step)``, the role that runs iteration ``step``.

    One role (``None``) for most methods. With MetaAlign, one per role assignment
    (``align_first`` False/True); a method with ``step_variants`` (CGDM: warm-up or not) gives
    its own. Chosen on the host, since a ``lax.cond`` in the step costs time: XLA on CPU runs
    convolutions inside one several times slower, and fuses nothing across its boundary.
    A role's function is compiled the first time it runs (:func:`make_step_fn`).
    """
    ctx = experiment.ctx
    if ctx.metaalign:
        steps = {
            flag: functools.partial(metaalign.branch_step, align_first=flag)
            for flag in (False, True)
        }
        return steps, lambda step: bool(metaalign.align_first_now(step, ctx.metaalign))
    variants = getattr(experiment.method, "step_variants", None)
    if variants is not None:
        return variants(ctx)
    return {None: experiment.method.train_step}, lambda step: None


class StepFunction:
    """``(state, batch, step) -> (state, metrics)``: the compiled step for iteration ``step``
    (one jit-compiled function per role of :func:`step_roles`, compiled at its first call)."""

    def __init__(self, experiment: Experiment) -> None:
        train_steps, self._role_at = step_roles(experiment)
        self._fns = {
            role: compile_loop_step(fn, experiment.ctx) for role, fn in train_steps.items()
        }
        self._ran: set[Any] = set()

    def compiles(self, step: int) -> bool:
        """Whether calling iteration ``step`` compiles: its role has not run yet."""
        return self._role_at(step) not in self._ran

    def __call__(self, state: TrainState, batch: dict, step: int) -> tuple[TrainState, dict]:
        role = self._role_at(step)
        self._ran.add(role)
        return self._fns[role](state, batch)


def make_step_fn(experiment: Experiment) -> StepFunction:
    """The training loop's step function, ``(state, batch, step) -> (state, metrics)``."""
    return StepFunction(experiment)
