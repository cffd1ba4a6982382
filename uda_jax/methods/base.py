"""What every method shares: the step context, forward passes and optimizer updates.

A method module defines ``NUM_CLASSIFIERS``, ``USES_PSEUDO_LABELS`` and a pure
``train_step(state, batch, rng, *, ctx) -> (state, metrics)``; :func:`compile_train_step` binds
the context and jit-compiles it once with the old state's buffers donated (STYLE rule 13).
It may also define ``step_variants(ctx) -> (steps by role, role_at(step))``: versions of the
step with a switch fixed on the host, which the training loop uses instead (CGDM's warm-up).

A batch is a dict of arrays: ``source_image [B, H, W, C]``, ``source_label [B]``,
``target_image [B, H, W, C]`` and ``target_index [B]`` (rows of the target training set, used
to look up pseudo-labels; target labels never reach training).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from uda_jax.config import MetaAlignConfig, MethodConfig
from uda_jax.models import Network, gemm_ops
from uda_jax.optim import ModuleOptimizer
from uda_jax.state import TrainState

PyTree = Any
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """The static parts a train step needs: network, per-group optimizers, method settings."""

    network: Network
    optimizers: dict[str, ModuleOptimizer]
    method: MethodConfig
    metaalign: MetaAlignConfig | None = None


def compile_train_step(train_step: Callable, ctx: StepContext) -> TrainStep:
    """``train_step`` with ``ctx`` bound, ``jax.jit``-compiled, donating the input state."""
    return jit_for(ctx.network, functools.partial(train_step, ctx=ctx), donate_argnums=0)


def jit_for(network: Network, fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` with the compiler options of ``network``'s kernels
    (:func:`uda_jax.models.gemm_ops.compiler_options`: XLA's own convolutions on CPU)."""
    options = gemm_ops.compiler_options(network.generator.gemm_kernels)
    return jax.jit(fn, compiler_options=options, **jit_kwargs)


def compile_loop_step(train_step: Callable, ctx: StepContext):
    """``(state, batch) -> (state, metrics)`` for the training loop, jit-compiled and donating.

    The step's key is ``fold_in(state.key, state.step)`` (DESIGN principle 10), so any run that
    reaches a step (fresh or resumed, on any device count) draws the same randomness there.
    """
    bound = functools.partial(train_step, ctx=ctx)

    def loop_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return bound(state, batch, jax.random.fold_in(state.key, state.step))

    return jit_for(ctx.network, loop_step, donate_argnums=0)


def apply_updates(
    ctx: StepContext, state: TrainState, grads: dict[str, PyTree]
) -> tuple[dict[str, PyTree], dict[str, PyTree]]:
    """Steps the optimizer of each group in ``grads``; other groups are left as they are.

    Returns the new ``(params, opt_state)`` dicts.
    """
    params, opt_state = dict(state.params), dict(state.opt_state)
    for group, group_grads in grads.items():
        params[group], opt_state[group] = ctx.optimizers[group].update(
            group_grads, state.opt_state[group], state.params[group], state.step
        )
    return params, opt_state


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
    """``concat(source_image, target_image)``: one BN batch for both domains, as the reference."""
    return jnp.concatenate([batch["source_image"], batch["target_image"]], axis=0)


def predict(
    network: Network, params: PyTree, stats: PyTree, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Eval-mode ``(features [batch, dim], logits [batch, classes])``.

    With two classifiers the logits are their sum, the reference's prediction (§1.3.2).
    """
    features, _ = network.apply_generator(params["g"], stats["g"], images, train=False)
    outputs = [
        network.apply_classifier(params[n], stats[n], features, train=False)[0]
        for n in network.classifier_names
    ]
    # A bridged head returns (logits, bridge); its prediction is the logits.
    logits = sum(out[0] if isinstance(out, tuple) else out for out in outputs)
    return features, logits
