"""Optimizers and learning-rate schedules: plain optax, one optimizer state per module group.

Each module group (``g``, ``f1``, ``f2``, ``d``, ...) gets its own optimizer state, stepped only
when a sub-step updates that group, as the official code's separate ``optimizer_g`` /
``optimizer_f`` are (CGDM steps F twice per iteration, G five times). A group's update is

    chain(add_decayed_weights(weight_decay),   # coupled L2, as torch.optim.SGD adds it
          <optimizer at learning rate 1>,       # optax.<name>(1.0, **kwargs), or your own
          masked(set_to_zero(), frozen))        # frozen leaves stay bitwise unchanged

scaled by ``schedule(t) · lr_mult`` with ``t`` the training *iteration* (``state.step``), so a
group stepped several times per iteration still follows the iteration-based schedule of the
papers. The schedule is any ``optax.Schedule``; from YAML, ``inv`` (the papers'
``lr0·(1 + gamma·t)^(−power)``), ``constant`` or an optax schedule by name. Scaling the output
of the optimizer at learning rate 1 is exact for optax optimizers whose learning rate is their
final scale (sgd, adam, adamw, lion, rmsprop, ...); :func:`build_optimizers` checks it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uda_jax.config import OptimizerConfig, ScheduleConfig
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


def inv_schedule(init_value: float, gamma: float = 0.001, power: float = 0.75) -> optax.Schedule:
    """The papers' ``lr(t) = init_value · (1 + gamma·t)^(−power)`` as an optax schedule."""

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.result_type(float))
        return init_value * (1.0 + gamma * t) ** (-power)

    return schedule


def _optax_schedules() -> dict[str, Callable[..., optax.Schedule]]:
    return {
        name: fn
        for name, fn in vars(optax.schedules).items()
        if inspect.isfunction(fn)
        and not name.startswith("_")
        and ("schedule" in name or name == "exponential_decay")
        and name != "join_schedules"
    }


def build_schedule(learning_rate: float, config: ScheduleConfig) -> optax.Schedule:
    """The schedule of ``config``: ``constant``, ``inv`` or any optax schedule by name, called
    with ``learning_rate`` as its first argument (unless ``config.kwargs`` sets it).

    Raises:
      UserError: unknown schedule or keyword, or a schedule that fails at iteration 0.
    """
    factories: dict[str, Callable[..., optax.Schedule]] = {
        "constant": optax.constant_schedule,
        "inv": inv_schedule,
        **_optax_schedules(),
    }
    if config.name not in factories:
        hint = did_you_mean(config.name, factories)
        raise UserError(
            f"unknown optimizer.schedule.name {config.name!r}{hint}; "
            f"valid: {', '.join(sorted(factories))}"
        )
    factory = factories[config.name]
    params = list(inspect.signature(factory).parameters)
    kwargs = dict(config.kwargs)
    for key in kwargs:
        if key not in params:
            raise UserError(
                f"optimizer.schedule.kwargs.{key}: {config.name} has no such argument"
                f"{did_you_mean(key, params)}; it takes: {', '.join(params)}"
            )
    kwargs.setdefault(params[0], learning_rate)
    try:
        schedule = as_default_float(factory(**kwargs))
        value = float(schedule(0))
    except (TypeError, ValueError) as err:
        raise UserError(f"optimizer.schedule {config.name} with {kwargs}: {err}") from None
    if not jnp.isfinite(value) or value < 0:
        raise UserError(f"optimizer.schedule {config.name} gives {value} at iteration 0")
    return schedule


def as_default_float(schedule: optax.Schedule) -> optax.Schedule:
    """``schedule`` returning an array of the default float type (float64 under x64).

    It runs under standard dtype promotion: optax's schedules mix Python floats with the int32
    iteration, which a program under strict promotion would otherwise refuse.
    """

    def scheduled(count: jax.Array) -> jax.Array:
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(schedule(count), jnp.result_type(float))

    return scheduled


@dataclasses.dataclass(frozen=True)
class GroupOptimizer:
    """The optimizer of one module group.

    Attributes:
      transformation: the update direction at learning rate 1 (decay, optimizer, frozen mask).
      schedule: the base learning rate by training iteration (an ``optax.Schedule``).
      lr_mult: this group's multiplier of the schedule, or a pytree of multipliers shaped like
        the group's parameters (``optimizer.groups`` entries such as ``g/bottleneck``).
    """

    transformation: optax.GradientTransformation
    schedule: optax.Schedule
    lr_mult: Any = 1.0

    def init(self, params: PyTree) -> optax.OptState:
        """Fresh optimizer state for ``params``."""
        return self.transformation.init(params)

    def learning_rate(self, step: jax.Array) -> Any:
        """This group's learning rate at iteration ``step`` (a pytree with per-leaf multipliers)."""
        base = self.schedule(step)
        return jax.tree.map(lambda mult: base * mult, self.lr_mult)

    def update(
        self, grads: PyTree, state: optax.OptState, params: PyTree, step: jax.Array
    ) -> tuple[PyTree, optax.OptState]:
        """One optimizer step at training iteration ``step``: ``(new_params, new_state)``."""
        with jax.numpy_dtype_promotion("standard"):  # optax mixes floats and int32 counters
            direction, new_state = self.transformation.update(grads, state, params)
        lr = self.learning_rate(step)
        if isinstance(self.lr_mult, float | int):
            updates = jax.tree.map(lambda u: jnp.asarray(lr, u.dtype) * u, direction)
        else:
            updates = jax.tree.map(lambda u, r: jnp.asarray(r, u.dtype) * u, direction, lr)
        return optax.apply_updates(params, updates), new_state


def build_optimizers(
    config: OptimizerConfig,
    frozen: Mapping[str, PyTree],
    *,
    transformation: optax.GradientTransformation | None = None,
    schedule: optax.Schedule | None = None,
) -> dict[str, GroupOptimizer]:
    """One :class:`GroupOptimizer` per group; ``frozen`` maps group name → frozen-leaf mask.

    Args:
      config: the ``optimizer`` section.
      frozen: per group, a pytree of bools, True where the optimizer must not step.
      transformation: your own optax transformation at learning rate 1 (e.g.
        ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1.0))``), used for every
        group instead of ``optax.<config.name>``; the schedule scales its output.
      schedule: your own ``optax.Schedule`` of the iteration, instead of ``config.schedule``.

    Raises:
      UserError: unknown optimizer, keyword or group; weight decay applied twice.
    """
    unknown_groups = {key.split("/")[0] for key in config.groups} - set(frozen)
    if unknown_groups:
        name = sorted(unknown_groups)[0]
        raise UserError(
            f"optimizer.groups.{name}: this method has no module '{name}'; "
            f"its modules are {', '.join(frozen)}"
        )
    if schedule is None:
        schedule = build_schedule(config.learning_rate, config.schedule)
    else:
        schedule = as_default_float(schedule)
    optimizers = {}
    for group, mask in frozen.items():
        group_config = config.groups.get(group)
        lr_mult = _multipliers(config, group, mask)
        direction = transformation
        if direction is None:
            kwargs = dict(config.kwargs) | ({} if group_config is None else group_config.kwargs)
            direction = _named_optimizer(config, kwargs, group)
        chain = optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            direction,
            optax.masked(optax.set_to_zero(), mask),
        )
        optimizers[group] = GroupOptimizer(chain, schedule, lr_mult)
    return optimizers


def _multipliers(config: OptimizerConfig, group: str, mask: PyTree) -> Any:
    """The group's ``lr_mult``: a float, or per leaf the longest matching ``group/path`` entry
    of ``optimizer.groups`` (e.g. ``g/bottleneck``) when the group has such entries."""
    group_config = config.groups.get(group)
    base = 1.0 if group_config is None else group_config.lr_mult
    paths = {k.partition("/")[2]: v for k, v in config.groups.items() if k.startswith(group + "/")}
    if not paths:
        return base
    for key, entry in paths.items():
        if entry.kwargs:
            raise UserError(
                f"optimizer.groups.{group}/{key}.kwargs: optimizer arguments apply to a whole "
                f"module group; set them in optimizer.groups.{group}.kwargs"
            )
    found = set()

    def mult(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        matches = [p for p in paths if name == p or name.startswith(p + "/")]
        if not matches:
            return base
        found.add(max(matches, key=len))
        return paths[max(matches, key=len)].lr_mult

    mults = jax.tree_util.tree_map_with_path(mult, mask)
    for missing in sorted(set(paths) - found):
        raise UserError(
            f"optimizer.groups.{group}/{missing}: no parameters of module '{group}' are under "
            f"'{missing}'; its top-level parts are {', '.join(mask)}"
        )
    return mults


def optimizer_fn(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optax optimizer called ``name`` (e.g. ``sgd``, ``adamw``)."""
    if name not in OPTIMIZERS:
        raise UserError(
            f"unknown optimizer.name {name!r}{did_you_mean(name, OPTIMIZERS)}; "
            f"valid: {', '.join(sorted(OPTIMIZERS))}"
        )
    return OPTIMIZERS[name]


def _named_optimizer(
    config: OptimizerConfig, kwargs: dict[str, Any], group: str
) -> optax.GradientTransformation:
    """``optax.<name>(1.0, **kwargs)`` after checking its keywords, its decay and its scaling."""
    fn = optimizer_fn(config.name)
    accepted = [p for p in inspect.signature(fn).parameters if p != "learning_rate"]
    for key in kwargs:
        if key not in accepted:
            raise UserError(
                f"optax.{config.name} has no argument '{key}'{did_you_mean(key, accepted)}; "
                f"it takes: {', '.join(accepted)}"
            )
    own_decay = kwargs.get("weight_decay", _default(fn, "weight_decay"))
    if config.weight_decay and own_decay:
        raise UserError(
            f"optimizer.weight_decay={config.weight_decay} (coupled L2) and optax.{config.name}'s "
            f"own decoupled weight_decay={own_decay} would decay twice; set "
            "optimizer.weight_decay=0 or optimizer.kwargs.weight_decay=0"
        )
    _check_final_scale(config.name, fn, kwargs, group)
    return fn(learning_rate=1.0, **kwargs)


def _default(fn: Callable, name: str) -> Any:
    parameter = inspect.signature(fn).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def _check_final_scale(name: str, fn: Callable, kwargs: dict[str, Any], group: str) -> None:
    """Two updates of a small vector at learning rates 1 and 0.5: a keyword of the wrong type
    fails here with one line, and so does an optimizer whose learning rate is not its final
    scale (scaling its output by the schedule would then not be that optimizer)."""
    try:
        with jax.numpy_dtype_promotion("standard"):  # optax mixes floats and int32 counters
            params = {"x": jnp.asarray([1.0, -2.0, 0.5])}
            grads = {"x": jnp.asarray([0.3, 0.1, -0.7])}
            outputs = []
            for lr in (1.0, 0.5):
                tx = fn(learning_rate=lr, **kwargs)
                state = tx.init(params)
                for _ in range(2):
                    updates, state = tx.update(grads, state, params)
                outputs.append(updates["x"])
    except (TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"optax.{name} rejects the keyword arguments {kwargs} of group '{group}': {first[:200]}"
        ) from None
    if not jnp.allclose(0.5 * outputs[0], outputs[1], rtol=1e-5, atol=1e-7):
        raise UserError(
            f"optax.{name} uses its learning rate other than as a final scale, which the "
            "iteration-based schedule needs; pass it from Python as your own transformation"
        )
