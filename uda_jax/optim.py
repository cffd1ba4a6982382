"""Optimizers from the config: any optax optimizer by name, per module group.

Each module group (``g``, ``f1``, ``f2``, ...) gets its own optimizer state, stepped only when a
sub-step updates that group, as the reference's separate ``optimizer_g`` / ``optimizer_f`` are
(CGDM steps F twice per iteration, G five times; reference Part VII §3). The transformation is

    chain(add_decayed_weights(weight_decay),          # coupled L2, as torch.optim.SGD
          inject_hyperparams(optax.<name>)(learning_rate, **kwargs),
          masked(set_to_zero(), frozen))              # frozen leaves stay bitwise unchanged

and the learning rate of the injected optimizer is set before every update to
``learning_rate · schedule(t) · lr_mult`` with ``t`` the training iteration, so a module stepped
several times per iteration still follows the iteration-based schedule of the reference.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uda_jax.config import OptimizerConfig
from uda_jax.errors import UserError, did_you_mean

PyTree = Any

_NOT_OPTIMIZERS = {"lbfgs", "scale_by_learning_rate", "scale_by_rprop"}

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    name: fn
    for name, fn in vars(optax).items()
    if inspect.isfunction(fn)
    and not name.startswith("_")
    and name not in _NOT_OPTIMIZERS
    and next(iter(inspect.signature(fn).parameters), None) == "learning_rate"
}


def learning_rate_at(config: OptimizerConfig, step: jax.Array) -> jax.Array:
    """The base learning rate at iteration ``step``: constant, or ``lr0·(1 + γ·t)^(−power)``."""
    lr0 = jnp.asarray(config.learning_rate, jnp.float32)
    if config.schedule == "inv":
        t = jnp.asarray(step, jnp.float32)
        return lr0 * (1.0 + config.schedule_gamma * t) ** (-config.schedule_power)
    return lr0


@dataclasses.dataclass(frozen=True)
class ModuleOptimizer:
    """The optimizer of one module group; ``update`` applies one step to its params."""

    config: OptimizerConfig
    lr_mult: float
    transformation: optax.GradientTransformation

    def init(self, params: PyTree) -> optax.OptState:
        """Fresh optimizer state for ``params``."""
        return self.transformation.init(params)

    def update(
        self, grads: PyTree, state: optax.OptState, params: PyTree, step: jax.Array
    ) -> tuple[PyTree, optax.OptState]:
        """One optimizer step at training iteration ``step``: ``(new_params, new_state)``."""
        lr = learning_rate_at(self.config, step) * self.lr_mult
        decay_state, injected, mask_state = state
        hyperparams = dict(injected.hyperparams, learning_rate=lr)
        injected = injected._replace(hyperparams=hyperparams)
        updates, new_state = self.transformation.update(
            grads, (decay_state, injected, mask_state), params
        )
        return optax.apply_updates(params, updates), new_state


def build_optimizers(
    config: OptimizerConfig, groups: dict[str, PyTree]
) -> dict[str, ModuleOptimizer]:
    """One :class:`ModuleOptimizer` per group; ``groups`` maps group name → frozen mask.

    Raises:
      UserError: unknown optimizer name, keyword argument or group name.
    """
    fn = optimizer_fn(config.name)
    unknown_groups = set(config.groups) - set(groups)
    if unknown_groups:
        name = sorted(unknown_groups)[0]
        raise UserError(
            f"optimizer.groups.{name}: this method has no module '{name}'; "
            f"its modules are {', '.join(groups)}"
        )
    optimizers = {}
    for group, frozen in groups.items():
        group_config = config.groups.get(group)
        kwargs = dict(config.kwargs)
        lr_mult = 1.0
        if group_config is not None:
            kwargs.update(group_config.kwargs)
            lr_mult = group_config.lr_mult
        _check_kwargs(config.name, fn, kwargs)
        _try_kwargs(config.name, fn, kwargs, group)
        transformation = optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.inject_hyperparams(fn)(learning_rate=config.learning_rate, **kwargs),
            optax.masked(optax.set_to_zero(), frozen),
        )
        optimizers[group] = ModuleOptimizer(config, lr_mult, transformation)
    return optimizers


def optimizer_fn(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optax optimizer called ``name`` (e.g. ``sgd``, ``adamw``)."""
    if name not in OPTIMIZERS:
        raise UserError(
            f"unknown optimizer.name {name!r}{did_you_mean(name, OPTIMIZERS)}; "
            f"valid: {', '.join(sorted(OPTIMIZERS))}"
        )
    return OPTIMIZERS[name]


def _try_kwargs(name: str, fn: Callable, kwargs: dict[str, Any], group: str) -> None:
    """One update of a 2-vector, so a keyword of the wrong type fails here with one line."""
    try:
        # standard promotion: optax mixes Python floats and int32 counters internally
        with jax.numpy_dtype_promotion("standard"):
            params = {"x": jnp.ones(2)}
            transformation = fn(learning_rate=0.1, **kwargs)
            transformation.update(params, transformation.init(params), params)
    except (TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"optax.{name} rejects the keyword arguments {kwargs} of group '{group}': {first[:200]}"
        ) from None


def _check_kwargs(name: str, fn: Callable, kwargs: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(fn).parameters if p != "learning_rate"]
    for key in kwargs:
        if key not in accepted:
            raise UserError(
                f"optax.{name} has no argument '{key}'{did_you_mean(key, accepted)}; "
                f"it takes: {', '.join(accepted)}"
            )
