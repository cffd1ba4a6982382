"""MetaAlign (Wei et al., CVPR 2021): meta-learned coordination of alignment and
classification, a wrapper around any adversarial method (DANN, CDAN(+E), GVB-GD).

Around GVB-GD it follows the official code; around DANN and CDAN(+E) it is our extension (the
official code implements MetaAlign for GVB-GD only).

One task is meta-train, the other meta-test; with θ' = θ − α ⊙ ∇L_tr(θ) the objective is

    min_θ  L_tr(θ) + L_te(θ')

and its gradient is ``g_tr(θ) + g_te(θ') − H_tr(θ)·(α ⊙ g_te(θ'))`` (α per leaf).
``order: second`` differentiates through the inner update (Hessian-vector products included);
``first`` detaches the inner gradient, as the official code does, giving ``g_tr(θ) + g_te(θ')``.

Roles (``roles``): the official code alternates every ``period`` iterations between

- *cls first* (even): L_tr = source CE (+ GVB-G source penalty) on a source-only forward,
  inner step over G and the head; L_te = alignment at θ' on a source+target forward;
- *align first* (odd): L_tr = alignment (trade_off·L_trs + GVB penalties), inner step over G,
  the head and the discriminator (GRL-reversed, i.e. one adversarial baseline step);
  L_te = source CE (+ GVB-G source penalty at θ').

The role is one traced branch (``lax.cond`` on the iteration), so one compiled step serves both.
GVB's bridge penalty splits as in the official GVB run: in *cls first* the outer objective has
``0.5·(mean|z_s|(θ) + mean|z|(θ'))``. Inner step α_p = meta_lr · lr(t) · m_p with m_p from
``inner_mult`` (longest matching parameter-path prefix; 10 for the head and the bridges).

BatchNorm: both forward passes are train-mode with batch statistics; the running statistics are
updated by the first and then the second, as the official code's twice-per-iteration update.

The official code's stale discriminator (``stale_discriminator``, on by default): in *cls first*
the discriminator runs with the fast weights θ'_D of the last *align first* iteration, while its
gradient reaches θ_D through an identity map. Off: θ_D itself.

References:
  Wei, G., Lan, C., Zeng, W., Chen, Z. MetaAlign: Coordinating Domain Alignment and
  Classification for Unsupervised Domain Adaptation. CVPR 2021.
  Code: https://github.com/microsoft/MetaAlign (built on https://github.com/cuishuhao/GVB)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from uda_jax.config import check_range
from uda_jax.errors import UserError
from uda_jax.methods.adversarial import Adversarial, classification_terms, head_forward
from uda_jax.methods.api import (
    Batch,
    Method,
    Metrics,
    NetworkSpec,
    StepContext,
    apply_updates,
    global_norm,
    source_and_target,
)
from uda_jax.methods.registry import lookup, names, register
from uda_jax.state import TrainState

BASE = ("g", "f")


@dataclasses.dataclass(frozen=True)
class MetaAlignConfig:
    """Options of MetaAlign (section ``metaalign``); the base method keeps its own section."""

    base: str = "gvb"  # the adversarial method it wraps: dann | cdan | cdan_e | gvb
    # first: the official code (inner gradient detached); second: exact meta-gradient
    order: typing.Literal["first", "second"] = "first"
    meta_lr: float = 1.0  # inner step α_p = meta_lr · lr(t) · inner_mult[p]
    period: int = 1  # the two role assignments alternate every `period` iterations
    roles: typing.Literal["alternate", "align_first", "cls_first"] = "alternate"
    # Multipliers of the inner step by parameter path prefix (longest match, default 1): the
    # official code gives 10 to names with 'fc' or 'gvb' (the head, both bridges), 1 to the rest.
    inner_mult: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"f": 10.0, "d/gvbd": 10.0}
    )
    stale_discriminator: bool = True  # faithful: cls-first uses the last align-first fast θ_D

    def validate(self, where: str) -> None:
        """Non-negative ``meta_lr`` and multipliers, positive ``period``."""
        check_range(self, where, positive=("period",), non_negative=("meta_lr",))
        for prefix, value in self.inner_mult.items():
            if value < 0:
                raise UserError(f"{where}inner_mult.{prefix} must be >= 0, got {value}")


def inner_multipliers(params, inner_mult: Mapping[str, float]):
    """Pytree of floats over ``params``: the longest ``inner_mult`` prefix of each leaf's path
    ``group/module/.../name`` (default 1)."""

    def mult(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        matches = [p for p in inner_mult if name == p or name.startswith(p + "/")]
        return float(inner_mult[max(matches, key=len)]) if matches else 1.0

    return jax.tree_util.tree_map_with_path(mult, params)


def inner_update(params, grads, alphas):
    """``θ' = θ − α ⊙ g`` leaf by leaf."""
    return jax.tree.map(lambda p, g, a: p - a * g, params, grads, alphas)


def meta_objective(params, inner_loss, outer_loss, alphas, order: str = "first"):
    """``L_tr(θ) + L_te(θ − α ⊙ ∇L_tr(θ))`` for any two losses of a params pytree.

    Args:
      params: θ, the parameters the inner step adapts.
      inner_loss: ``θ -> (inner value, (outer L_tr value, aux))``; its gradient makes the inner
        step, the second output enters the objective (they differ only for GVB's split penalty).
      outer_loss: ``(θ', aux) -> (value, aux_out)``.
      alphas: per-leaf step sizes, same structure as ``params``.
      order: ``first`` detaches the inner gradient (the official code), ``second`` does not.

    Returns:
      ``(objective, (aux_out, θ'))``.
    """
    (_, (tr_value, aux)), grads = jax.value_and_grad(inner_loss, has_aux=True)(params)
    if order == "first":
        grads = jax.lax.stop_gradient(grads)
    fast = inner_update(params, grads, alphas)
    te_value, aux_out = outer_loss(fast, aux)
    return tr_value + te_value, (aux_out, fast)


def _with_identity_gradient(value, params):
    """``value`` in the forward pass, the identity map to ``params`` in the backward pass."""
    return jax.tree.map(lambda v, p: v + (p - jax.lax.stop_gradient(p)), value, params)


def align_first_now(step, config: MetaAlignConfig):
    """Whether iteration ``step`` runs the *align first* branch (a Python bool for an int step,
    a traced bool inside jit)."""
    if config.roles != "alternate":
        return config.roles == "align_first"
    return (step // config.period) % 2 == 1


@register
@dataclasses.dataclass(frozen=True)
class MetaAlign(Method):
    """MetaAlign around the adversarial method ``base`` (see the module docstring)."""

    config: MetaAlignConfig = dataclasses.field(default_factory=MetaAlignConfig)
    base: Adversarial | None = None
    name = "metaalign"
    config_class = MetaAlignConfig

    @property
    def network(self) -> NetworkSpec:  # type: ignore[override]
        """The base method's heads."""
        return self.base.network

    @property
    def metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """The base method's loss metrics, then the meta-gradient's norm and the role."""
        base = tuple(m for m in self.base.metrics if m != "grad_norm")
        return (*base, "meta_grad_norm", "meta_align_first")

    @property
    def alignment_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """The base method's alignment metrics."""
        return self.base.alignment_metrics

    @classmethod
    def sections_for(cls, raw: Mapping[str, Any]) -> dict[str, type]:
        """``metaalign`` and the sections of the base method it names."""
        section = raw.get(cls.name) if isinstance(raw.get(cls.name), Mapping) else {}
        base = section.get("base", MetaAlignConfig().base)
        return {cls.name: MetaAlignConfig, **_base_class(base).sections_for(raw)}

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]) -> MetaAlign:
        """MetaAlign with its base method built from the base's own section."""
        config = sections[cls.name]
        return cls(config, base=_base_class(config.base).from_sections(sections))

    def warnings(self, steps: int) -> tuple[str, ...]:
        """The base method's, and alternating roles that never alternate in ``steps``."""
        period = self.config.period
        if self.config.roles != "alternate" or period < steps:
            return self.base.warnings(steps)
        return (
            *self.base.warnings(steps),
            f"metaalign.period={period} is not shorter than the run (steps={steps}): the roles "
            "never alternate and only cls-first trains (metaalign.roles=cls_first says so)",
        )

    def init_extras(self, params, num_target: int) -> dict:
        """The discriminator's last fast weights (θ_D at the start) and the base's extras."""
        extras = self.base.init_extras(params, num_target)
        return {**extras, "d_fast": jax.tree.map(jnp.copy, params["d"])}

    def step(
        self, ctx: StepContext, state: TrainState, batch: Batch, rng: jax.Array
    ) -> tuple[TrainState, Metrics]:
        """One MetaAlign iteration; the roles follow ``state.step`` (one traced branch)."""
        config = self.config
        lr = ctx.optimizers["g"].schedule(state.step)
        mults = inner_multipliers(state.params, dict(config.inner_mult))
        alphas = jax.tree.map(lambda m: config.meta_lr * lr * m, mults)
        align_first = align_first_now(state.step, config)
        if isinstance(align_first, bool):
            branch = self._align_first if align_first else self._cls_first
            grads, stats, terms, extras = branch(ctx, state, batch, rng, alphas)
        else:
            grads, stats, terms, extras = jax.lax.cond(
                align_first,
                lambda: self._align_first(ctx, state, batch, rng, alphas),
                lambda: self._cls_first(ctx, state, batch, rng, alphas),
            )
        params, opt_state = apply_updates(ctx, state, grads)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=stats,
            opt_state=opt_state,
            extras=extras,
        )
        metrics = self.base.metrics_of(terms) | {
            "train/meta_grad_norm": global_norm(grads),
            "train/meta_align_first": jnp.asarray(align_first, jnp.float32),
        }
        return new_state, metrics

    def _cls_first(self, ctx, state, batch, rng, alphas):
        """Meta-train the classification, meta-test the alignment at θ'."""
        base, config = self.base, self.config
        gvbg_weight, _ = base.bridge_weights()
        num_source = batch["source_label"].shape[0]
        k_tr, k_te, k_d = jax.random.split(rng, 3)

        def objective(params):
            others = {k: v for k, v in params.items() if k not in BASE}

            def inner_loss(core):
                _, logits, bridge, stats = head_forward(
                    ctx, core | others, state.batch_stats, batch["source_image"], k_tr
                )
                terms = classification_terms(logits, bridge, batch["source_label"])
                inner = terms["cls"] + gvbg_weight * terms["gvbg_source"]
                outer = terms["cls"] + 0.5 * gvbg_weight * terms["gvbg_source"]
                return inner, (outer, (stats, terms))

            def outer_loss(fast, aux):
                stats, tr_terms = aux
                d_params = params["d"]
                if config.stale_discriminator:
                    d_params = _with_identity_gradient(state.extras["d_fast"], params["d"])
                features, logits, bridge, stats = head_forward(
                    ctx, fast | others, stats, source_and_target(batch), k_te
                )
                terms = base.alignment_terms(
                    ctx, d_params, features, logits, bridge, num_source, state.step, k_d
                )
                return base.alignment_loss(terms, gvbg_share=0.5), (stats, tr_terms | terms)

            core = {k: params[k] for k in BASE}
            value, (aux, _) = meta_objective(
                core, inner_loss, outer_loss, {k: alphas[k] for k in BASE}, config.order
            )
            return value, aux

        (_, (stats, terms)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return grads, stats, terms, state.extras

    def _align_first(self, ctx, state, batch, rng, alphas):
        """Meta-train the alignment (one baseline step), meta-test the classification at θ'."""
        base, config = self.base, self.config
        gvbg_weight, _ = base.bridge_weights()
        num_source = batch["source_label"].shape[0]
        k_tr, k_d, k_te = jax.random.split(rng, 3)

        def inner_loss(params):
            features, logits, bridge, stats = head_forward(
                ctx, params, state.batch_stats, source_and_target(batch), k_tr
            )
            terms = base.alignment_terms(
                ctx, params["d"], features, logits, bridge, num_source, state.step, k_d
            )
            value = base.alignment_loss(terms)
            return value, (value, (stats, terms))

        def outer_loss(fast, aux):
            stats, tr_terms = aux
            _, logits, bridge, stats = head_forward(ctx, fast, stats, batch["source_image"], k_te)
            terms = classification_terms(logits, bridge, batch["source_label"])
            value = terms["cls"] + gvbg_weight * terms["gvbg_source"]
            return value, (stats, tr_terms | terms)

        def objective(params):
            value, (aux, fast) = meta_objective(
                params, inner_loss, outer_loss, alphas, config.order
            )
            return value, (aux, jax.lax.stop_gradient(fast["d"]))

        (_, ((stats, terms), d_fast)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        return grads, stats, terms, {**state.extras, "d_fast": d_fast}


def _base_class(name: str) -> type:
    """The adversarial method class ``name``; a one-line error for any other method."""
    try:
        cls = lookup(name)
    except UserError:
        cls = None
    if cls is None or not issubclass(cls, Adversarial):
        valid = [n for n in names() if issubclass(lookup(n), Adversarial)]
        raise UserError(
            f"metaalign.base must be an adversarial method ({', '.join(valid)}), not {name!r}"
        )
    return cls
