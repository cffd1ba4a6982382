"""MetaAlign (Wei et al., CVPR 2021) around DANN, CDAN(+E) or GVB-GD (reference Part II §2.3).

One task is meta-train, the other meta-test; with θ' = θ − α ⊙ ∇L_tr(θ) the objective is

    min_θ  L_tr(θ) + L_te(θ')

and its gradient is ``g_tr(θ) + g_te(θ') − H_tr(θ)·(α ⊙ g_te(θ'))`` (α per leaf).
``metaalign.order: second`` differentiates through the inner update (Hessian-vector products
included); ``first`` detaches the inner gradient, as the official code does, giving
``g_tr(θ) + g_te(θ')``.

Roles (``metaalign.roles``): the official code alternates every ``period`` iterations between

- *cls first* (even): L_tr = source CE (+ GVB-G source penalty) on a source-only forward,
  inner step over G and the head; L_te = alignment at θ' on a source+target forward;
- *align first* (odd): L_tr = alignment (trade_off·L_trs + GVB penalties), inner step over G,
  the head and the discriminator (GRL-reversed, i.e. one adversarial baseline step);
  L_te = source CE (+ GVB-G source penalty at θ').

GVB's bridge penalty splits as the README run (``--gvbg``) does: in *cls first* the outer
objective has ``0.5·(mean|z_s|(θ) + mean|z|(θ'))``. Inner step α_p = meta_lr · lr(t) · m_p with
m_p from ``metaalign.inner_mult`` (10 for the head and the bridges, 1 otherwise).

BatchNorm: the two forward passes are train-mode, batch statistics; the running statistics are
updated by the first and then the second, as the reference's twice-per-iteration update.

The reference's stale discriminator (``metaalign.stale_discriminator``, on by default): in *cls
first* the discriminator runs with the fast weights θ'_D of the last *align first* iteration,
while its gradient reaches θ_D through an identity map (Part II §2.4). Off: θ_D itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from uda_jax.config import MetaAlignConfig
from uda_jax.methods import adversarial
from uda_jax.methods.adversarial import Alignment, alignment_terms, classification_terms
from uda_jax.methods.base import Batch, Metrics, StepContext, apply_updates, source_and_target
from uda_jax.optim import learning_rate_at
from uda_jax.state import TrainState

BASE = ("g", "f")


def inner_multipliers(params, inner_mult: dict[str, float]):
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
      order: ``first`` detaches the inner gradient (the reference), ``second`` does not.

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


def _cls_first(state, batch, rng, ctx, alignment, config: MetaAlignConfig, alphas):
    method = ctx.method
    num_source = batch["source_label"].shape[0]
    k_tr, k_te, k_d = jax.random.split(rng, 3)

    def objective(params):
        others = {k: v for k, v in params.items() if k not in BASE}

        def inner_loss(base):
            _, logits, bridge, stats = adversarial.head_forward(
                ctx, base | others, state.batch_stats, batch["source_image"], k_tr
            )
            terms = classification_terms(logits, bridge, batch["source_label"])
            inner = terms["cls"] + method.gvbg_weight * terms["gvbg_source"]
            outer = terms["cls"] + 0.5 * method.gvbg_weight * terms["gvbg_source"]
            return inner, (outer, (stats, terms))

        def outer_loss(fast, aux):
            stats, tr_terms = aux
            d_params = params["d"]
            if config.stale_discriminator:
                d_params = _with_identity_gradient(state.extras["d_fast"], params["d"])
            features, logits, bridge, stats = adversarial.head_forward(
                ctx, fast | others, stats, source_and_target(batch), k_te
            )
            terms = alignment_terms(
                ctx, alignment, d_params, features, logits, bridge, num_source, state.step, k_d
            )
            value = (
                method.trade_off * terms["trs"]
                + method.gvbd_weight * terms["gvbd"]
                + 0.5 * method.gvbg_weight * terms["gvbg_all"]
            )
            return value, (stats, tr_terms | terms)

        base = {k: params[k] for k in BASE}
        value, (aux, _) = meta_objective(
            base, inner_loss, outer_loss, {k: alphas[k] for k in BASE}, config.order
        )
        return value, aux

    (_, (stats, terms)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return grads, stats, terms, state.extras


def _align_first(state, batch, rng, ctx, alignment, config: MetaAlignConfig, alphas):
    method = ctx.method
    num_source = batch["source_label"].shape[0]
    k_tr, k_d, k_te = jax.random.split(rng, 3)

    def inner_loss(params):
        features, logits, bridge, stats = adversarial.head_forward(
            ctx, params, state.batch_stats, source_and_target(batch), k_tr
        )
        terms = alignment_terms(
            ctx, alignment, params["d"], features, logits, bridge, num_source, state.step, k_d
        )
        value = (
            method.trade_off * terms["trs"]
            + method.gvbd_weight * terms["gvbd"]
            + method.gvbg_weight * terms["gvbg_all"]
        )
        return value, (value, (stats, terms))

    def outer_loss(fast, aux):
        stats, tr_terms = aux
        _, logits, bridge, stats = adversarial.head_forward(
            ctx, fast, stats, batch["source_image"], k_te
        )
        terms = classification_terms(logits, bridge, batch["source_label"])
        value = terms["cls"] + method.gvbg_weight * terms["gvbg_source"]
        return value, (stats, tr_terms | terms)

    def objective(params):
        value, (aux, fast) = meta_objective(params, inner_loss, outer_loss, alphas, config.order)
        return value, (aux, jax.lax.stop_gradient(fast["d"]))

    (_, ((stats, terms), d_fast)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return grads, stats, terms, {**state.extras, "d_fast": d_fast}


def align_first_now(step, config: MetaAlignConfig):
    """Whether iteration ``step`` runs the *align first* branch (a Python bool for an int step,
    a traced bool inside jit)."""
    if config.roles != "alternate":
        return config.roles == "align_first"
    return (step // config.period) % 2 == 1


def branch_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext, align_first: bool
) -> tuple[TrainState, Metrics]:
    """One MetaAlign iteration with the roles fixed by the Python bool ``align_first``.

    The training loop compiles one of these per role and picks it on the host: on CPU, XLA runs
    convolutions inside ``lax.cond`` several times slower than outside.
    """
    from uda_jax.methods import METHODS  # the registry imports the method modules

    alignment: Alignment = METHODS[ctx.method.name].ALIGNMENT
    config = ctx.metaalign
    lr = learning_rate_at(ctx.optimizers["g"].config, state.step)
    mults = inner_multipliers(state.params, dict(config.inner_mult))
    alphas = jax.tree.map(lambda m: config.meta_lr * lr * m, mults)
    branch = _align_first if align_first else _cls_first
    grads, stats, terms, extras = branch(state, batch, rng, ctx, alignment, config, alphas)
    params, opt_state = apply_updates(ctx, state, grads)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state, extras=extras
    )
    metrics = adversarial.metrics_of(terms, alignment) | {
        "train/meta_align_first": jnp.asarray(float(align_first), jnp.float32)
    }
    return new_state, metrics


def train_step(
    state: TrainState, batch: Batch, rng: jax.Array, *, ctx: StepContext
) -> tuple[TrainState, Metrics]:
    """One MetaAlign iteration around ``ctx.method.name``; the roles follow ``state.step``."""
    return jax.lax.cond(
        align_first_now(state.step, ctx.metaalign),
        lambda s: branch_step(s, batch, rng, ctx=ctx, align_first=True),
        lambda s: branch_step(s, batch, rng, ctx=ctx, align_first=False),
        state,
    )


def init_extras(params) -> dict:
    """MetaAlign's extra state: the discriminator's last fast weights, θ_D at the start."""
    return {"d_fast": jax.tree.map(jnp.copy, params["d"])}
