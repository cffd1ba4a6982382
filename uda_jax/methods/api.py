"""The method protocol: what a method is, and the pieces every method's step shares.

A method is a frozen dataclass subclass of :class:`Method` holding its own config section
(``self.config``), registered by name (:func:`uda_jax.methods.register`). It says

- ``name``: its registered name, which is also the name of its config section;
- ``config_class``: the frozen dataclass of that section (fields with defaults; an optional
  ``validate(where)`` raising :class:`uda_jax.errors.UserError`);
- ``network``: the heads it needs (:class:`NetworkSpec`);
- ``metrics``: the names of the ``train/`` metrics its step returns, most telling first (the
  progress bar shows the first four); ``alignment_metrics`` marks the domain-alignment ones,
  plotted in their own panel;
- ``step(ctx, state, batch, rng) -> (state, metrics)``: one pure training iteration, which
  advances ``state.step`` by one; the loop binds ``ctx`` and jit-compiles it once;
- optionally ``init_extras`` (method state kept in ``state.extras``), ``warmup_steps``,
  ``warnings(steps)`` (what never acts in a run of that length), and a
  host-side hook (``hook_due(step)`` / ``hook(state, predict)``), run by the loop before the
  iterations it names — CGDM's pseudo-label refresh is one.

A batch is a dict of arrays: ``source_image [B, H, W, C]``, ``source_label [B]``,
``target_image [B, H, W, C]`` and ``target_index [B]`` (rows of the target training set, for
per-example state such as pseudo-labels; target labels never reach training).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from uda_jax.models import Network
from uda_jax.state import TrainState

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# predict(domain, split) -> (features [N, dim], logits [N, classes]) in eval mode, numpy arrays
Predict = Callable[[str, str], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The heads a method trains on top of the feature extractor G.

    Attributes:
      num_classifiers: 1 (params group ``f``) or more (``f1``, ``f2``, ...).
      head: ``mlp`` (CGDM's three-layer classifier) or ``linear`` (the adversarial methods' fc).
      bridge: GVB's bridges on the linear head and the discriminator.
      discriminator_input: the domain discriminator's input width from
        ``(feature_dim, num_classes)``; None for no discriminator (params group ``d``).
      new_layer_init: how the Linear layers the method adds (bottleneck, linear head,
        discriminator) start, following the method's official code: ``reference`` (the CGDM
        code's: bottleneck N(0, 0.005²) with bias 0.1, linear head N(0, 0.01²), discriminator
        Xavier), ``xavier`` (the CDAN code's ``init_weights``) or ``kaiming`` (the GVB-GD and
        MetaAlign code's); the mlp head follows ``model.classifier_init``.
    """

    num_classifiers: int = 1
    head: str = "mlp"
    bridge: bool = False
    discriminator_input: Callable[[int, int], int] | None = None
    new_layer_init: typing.Literal["reference", "xavier", "kaiming"] = "reference"


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The config section of a method without options."""


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step needs besides its method's config: the network and per-group optimizers
    (:class:`uda_jax.optim.GroupOptimizer`, each with ``update`` and ``learning_rate``)."""

    network: Network
    optimizers: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class of every method (see the module docstring for the protocol)."""

    config: Any = dataclasses.field(default_factory=NoOptions)

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = NoOptions
    network: ClassVar[NetworkSpec] = NetworkSpec()
    metrics: ClassVar[tuple[str, ...]] = ("loss_cls",)
    alignment_metrics: ClassVar[tuple[str, ...]] = ()

    def step(
        self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """One training iteration; returns the new state (``step + 1``) and ``train/`` metrics."""
        raise NotImplementedError(f"{type(self).__name__} does not define step()")

    def init_extras(self, params: PyTree, num_target: int) -> PyTree:
        """The method's own state at step 0 (``state.extras``), e.g. per-target-example data."""
        del params, num_target
        return {}

    @property
    def warmup_steps(self) -> int:
        """Iterations before the method's adaptation terms switch on (0: from the start)."""
        return 0

    def warnings(self, steps: int) -> tuple[str, ...]:
        """What in a run of ``steps`` iterations keeps part of the method from ever acting;
        training prints each as a ``warning:`` line when it starts."""
        if self.warmup_steps < steps:
            return ()
        return (
            f"{self.name}'s warm-up ({self.warmup_steps} steps) is not shorter than the run "
            f"(steps={steps}): its adaptation terms never switch on",
        )

    def hook_due(self, step: int) -> bool:
        """Whether :meth:`hook` runs before iteration ``step`` (host side, outside jit)."""
        del step
        return False

    def hook(self, state: TrainState, predict: Predict) -> TrainState:
        """Host-side work between iterations, e.g. recomputing pseudo-labels from ``predict``."""
        del predict
        return state

    @classmethod
    def sections_for(cls, raw: Mapping[str, Any]) -> dict[str, type]:
        """The config sections this method reads, by name, given the raw config data."""
        del raw
        return {cls.name: cls.config_class}

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]) -> Method:
        """The method built from its validated config sections."""
        return cls(sections[cls.name])


def apply_updates(
    ctx: StepContext, state: TrainState, grads: dict[str, PyTree]
) -> tuple[dict[str, PyTree], dict[str, PyTree]]:
    """Steps the optimizer of each group in ``grads`` at iteration ``state.step``; other groups
    are left as they are. Returns the new ``(params, opt_state)`` dicts."""
    params, opt_state = dict(state.params), dict(state.opt_state)
    for group, group_grads in grads.items():
        params[group], opt_state[group] = ctx.optimizers[group].update(
            group_grads, state.opt_state[group], state.params[group], state.step
        )
    return params, opt_state


def global_norm(tree: PyTree) -> jax.Array:
    """``sqrt(Σ x²)`` over every leaf of ``tree``: the size of a gradient, for the metrics."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def classify(
    ctx: StepContext,
    params: dict[str, PyTree],
    stats: dict[str, PyTree],
    features: jax.Array,
    rng: jax.Array,
) -> tuple[dict[str, jax.Array], dict[str, PyTree]]:
    """Every classifier on ``features`` in train mode, each with its own dropout key.

    Returns ``({name: logits [batch, classes]}, {name: new batch_stats})``.
    """
    names = ctx.network.classifier_names
    keys = jax.random.split(rng, len(names))
    logits, new_stats = {}, {}
    for name, key in zip(names, keys, strict=True):
        logits[name], new_stats[name] = ctx.network.apply_classifier(
            params[name], stats[name], features, train=True, rng=key
        )
    return logits, new_stats


def source_and_target(batch: Batch) -> jax.Array:
    """``concat(source_image, target_image)``: one BatchNorm batch for both domains, as the
    official code forwards them."""
    return jnp.concatenate([batch["source_image"], batch["target_image"]], axis=0)


def predict(
    network: Network, params: PyTree, stats: PyTree, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eval-mode ``(features [batch, dim], logits [batch, classes])``.

    With several classifiers the logits are their sum, the prediction of the CGDM code.
    """
    features, _ = network.apply_generator(params["g"], stats["g"], images, train=False)
    outputs = [
        network.apply_classifier(params[n], stats[n], features, train=False)[0]
        for n in network.classifier_names
    ]
    # A bridged head returns (logits, bridge); its prediction is the logits.
    logits = sum(out[0] if isinstance(out, tuple) else out for out in outputs)
    return features, logits
