"""Convolution and max-pooling that XLA's CPU backend runs fast, at every order of derivative.

On CPU three of XLA's own choices are slow for these networks; this module replaces them when
:mod:`uda_jax.cpu` turns its kernels on (``cpu_tuning: auto`` on CPU, or ``on``):

* :func:`compiler_options`: recent jaxlib hands CPU convolutions to YNNPACK, with which a
  forward-and-gradients of the digits and ResNet convolutions ran several times slower than
  with XLA's Eigen convolutions (``benchmarks/conv_kernels.py`` measures them; YNNPACK's
  forward alone was faster on 1- and 3-channel inputs). The options keep YNNPACK for matrix
  products and reductions; train and eval steps compile with them. They also keep
  optimisation barriers through fusion, so :func:`pinned` can stop XLA from recomputing a
  convolution's input inside the backward pass's transposes.
* :func:`conv_general_dilated`: ``lax.conv_general_dilated`` with gradients XLA's CPU compiler
  runs fast. JAX's own transposes of a convolution carry dimension orders that XLA reorders into
  NHWC/HWIO outside a loop but, inside a ``while`` body (step C compiled as a loop), leaves on a
  generic loop, many times slower; here a stride-1 convolution's kernel and input gradients are
  plain NHWC/HWIO convolutions (first-order ones: those of a second-order gradient are JAX's
  own, fine outside a loop). A strided convolution's gradients (window- and input-dilated in
  XLA) are matrix products over the patches (im2col, one product per kernel row), and so is a
  convolution whose window is larger than its input (XLA swaps its operands onto the generic
  loop) or whose kernel outweighs its input (:func:`_patches_copy_less`: ResNet-50's last two
  stages on small images, where the kernel's transposed copy dominated). A one-channel
  convolution's value (LeNet's first layer) is a sum of window views times the kernel's taps
  (:func:`_window_sum`). A ``custom_jvp`` whose rule computes its primal output and its
  tangents with the function itself, so ``jax.grad`` of ``jax.grad`` and ``jax.jvp`` are exact
  at every order.
* :func:`max_pool`: the window's maximum through a one-hot mask of its first maximal element
  (PyTorch's and XLA's choice on ties), so the gradient is elementwise, with no
  select-and-scatter (a large share of the digits CGDM step's time otherwise).

The values are the same functions; only floating-point summation order differs (≈1e-7
relative). :data:`OPS` hands them to a backbone as its :class:`~uda_jax.models.layers.LayerOps`.
Elsewhere than on CPU XLA's own ops are the fast ones.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.custom_derivatives import SymbolicZero

from uda_jax.models.layers import LayerOps

NHWC = ("NHWC", "HWIO", "NHWC")
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
PASSES_OPTION = "xla_disable_hlo_passes"
CPU_COMPILER_OPTIONS = {
    # YNNPACK for matrix products and reductions, not convolutions (XLA's own reductions of a
    # batch become reduce-windows, 2-3× slower in a BatchNorm)
    YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    # keep optimisation barriers through fusion (XLA's CPU pipeline drops them before it):
    # see pinned
    PASSES_OPTION: "cse_barrier_expander",
}


def compiler_options() -> dict[str, Any] | None:
    """``jax.jit``'s ``compiler_options`` for steps of a network built with :data:`OPS`:
    :data:`CPU_COMPILER_OPTIONS` on CPU; None off CPU, when the user set the YNNPACK option in
    ``XLA_FLAGS`` (their choice wins) or when this jaxlib lacks it. A user's own
    ``xla_disable_hlo_passes`` also wins (the barriers of :func:`pinned` are then dropped:
    slower, same values)."""
    if jax.default_backend() != "cpu":
        return None
    user_flags = os.environ.get("XLA_FLAGS", "")
    if YNN_OPTION in user_flags or not _cpu_options_supported():
        return None
    options = dict(CPU_COMPILER_OPTIONS)
    if PASSES_OPTION in user_flags:  # the user's list of disabled passes stays whole
        del options[PASSES_OPTION]
    return options


@functools.cache
def _cpu_options_supported() -> bool:
    """Whether this jaxlib's CPU compiler accepts :data:`CPU_COMPILER_OPTIONS` (one tiny
    compile, once per process)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception:  # an older jaxlib: unknown option or enum value
        return False
    return True


def _pairs(padding, spatial: int) -> tuple[tuple[int, int], ...]:
    pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pairs) != spatial:
        raise ValueError(f"expected {spatial} padding pairs, got {padding!r}")
    return pairs


def _windows(x: jax.Array, window, strides, padding, pad_value) -> list[jax.Array]:
    """The ``prod(window)`` strided views ``[N, H', W', C]`` of ``x`` (NHWC), one per window
    offset in row-major order: the columns of im2col."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=pad_value)
    (kh, kw), (sh, sw) = window, strides
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    return [
        lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, x.shape[3]),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _total(arrays) -> jax.Array:
    """The sum of a non-empty iterable of arrays, without Python ``sum``'s leading ``0 +``."""
    return functools.reduce(operator.add, arrays)


def _patch_product(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """The convolution as im2col over the kernel's columns only: the kw strided column views
    side by side ``[N, H, W', kw·cin]``, then one ``[N·H'·W', kw·cin] @ [kw·cin, cout]``
    product per kernel row, summed. kh times smaller than full im2col, and its transposes
    (for either operand) are products and (strided) pads."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    views = _windows(x, (1, kw), (1, sw), padding, 0.0)
    columns = jnp.concatenate(views, axis=-1)
    rows = _windows(columns, (kh, 1), (sh, 1), ((0, 0), (0, 0)), 0.0)
    out_shape = (*rows[0].shape[:3], cout)
    return _total(
        jnp.dot(r.reshape(-1, kw * cin), kernel[i].reshape(kw * cin, cout))
        for i, r in enumerate(rows)
    ).reshape(out_shape)


def _window_exceeds_input(x_shape, kernel_shape) -> bool:
    """Whether the kernel's window is larger than the input in a spatial dimension (ResNet-50's
    last stage on small images: 3×3 over 2×2). XLA's CPU compiler swaps the operands of such a
    convolution into one that runs on its generic loop, far slower."""
    return any(k > size for k, size in zip(kernel_shape[:2], x_shape[1:3], strict=True))


def _patches_copy_less(x_shape, kernel_shape) -> bool:
    """Whether the kernel has more elements than the ``kw`` shifted column views of the input
    that :func:`_patch_product` copies. Then im2col, whose input gradient reads the kernel in
    place, copies less than a convolution, whose input gradient reads a transposed, flipped
    copy of the kernel. On ResNet-50 at 64×64 that is the last two stages, whose 1×1 and 3×3
    convolutions ran faster as products, forward and gradients, and so did the whole training
    steps in an interleaved A/B; one stage earlier, below the threshold, the convolutions were
    faster. A strided convolution's gradients are products anyway; when its kernel outweighs
    its input, its value is too."""
    return math.prod(kernel_shape) > kernel_shape[1] * math.prod(x_shape)


def _use_patches(x_shape, kernel_shape) -> bool:
    """Whether a convolution and its gradients run as :func:`_patch_product`."""
    return _window_exceeds_input(x_shape, kernel_shape) or _patches_copy_less(x_shape, kernel_shape)


def _kernel_gradient(x: jax.Array, g: jax.Array, padding: tuple) -> jax.Array:
    """``∂⟨conv(x, K), g⟩/∂K`` of a stride-1 convolution, ``[kh, kw, cin, cout]``: an NHWC/HWIO
    convolution of the padded input (channels as batch, batch as features) with ``g``."""
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    lhs, rhs = jnp.transpose(padded, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3))
    out = _lax_conv(lhs, rhs, (1, 1), ((0, 0), (0, 0)))
    return jnp.transpose(out, (1, 2, 0, 3))


def _input_gradient(g: jax.Array, kernel: jax.Array, padding: tuple) -> jax.Array:
    """``∂⟨conv(x, K), g⟩/∂x`` of a stride-1 convolution: an NHWC/HWIO convolution of ``g`` with
    the flipped kernel, input and output channels exchanged."""
    kh, kw = kernel.shape[:2]
    full = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding, strict=True))
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    return _lax_conv(g, flipped, (1, 1), full)


def _transposed(gradient, out: jax.Array):
    """The linear map whose transpose is ``gradient`` (a function of ``∂L/∂out``). A tangent
    computed through it makes reverse mode run ``gradient`` itself: a plain NHWC/HWIO
    convolution, where JAX's own transposes carry other dimension orders that XLA's CPU
    compiler leaves on its generic loop inside a ``while`` body (ResNet-50's step C as a
    loop), far slower, though it reorders them elsewhere."""
    transpose = jax.linear_transpose(gradient, jax.ShapeDtypeStruct(out.shape, out.dtype))
    return lambda tangent: transpose(tangent)[0]


def _lax_conv(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """An NHWC/HWIO ``lax`` convolution, differentiated by JAX's own rules."""
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def _window_sum(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """A one-channel convolution (LeNet's first layer) as the sum of its ``kh·kw`` strided
    window views, each times its tap's ``cout`` weights: elementwise work that ran faster than
    XLA's CPU convolution, which contracts over only ``kh·kw``, on every shape measured (and
    the digits CGDM and MetaAlign steps with it). Behind an optimisation barrier, so XLA
    materialises it once rather than fusing the sum into each consumer (BatchNorm statistics,
    max-pool) and recomputing it there."""
    kh, kw, _, cout = kernel.shape
    dtype = x.dtype  # lax requires the kernel's to equal it
    accumulator = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype  # bf16 sums in float32
    views = _windows(x.astype(accumulator), (kh, kw), strides, padding, 0.0)  # [N, H', W', 1]
    taps = kernel.astype(accumulator).reshape(kh * kw, 1, 1, 1, cout)  # no rank promotion
    out = _total(v * taps[i] for i, v in enumerate(views))
    return pinned(out.astype(dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    if _use_patches(x.shape, kernel.shape):
        return _patch_product(x, kernel, strides, padding)
    if kernel.shape[2] == 1:
        return _window_sum(x, kernel, strides, padding)
    return _lax_conv(x, kernel, strides, padding)


def pinned(x: jax.Array) -> jax.Array:
    """``x`` behind an optimisation barrier: one buffer that all its consumers read, where XLA's
    CPU compiler would fuse ``x``'s elementwise producers into each consumer and recompute them
    there. On a convolution's input (in :func:`_conv_jvp`) it stops their recomputation inside
    the kernel gradient's transposes, in transposed order and, through a ResNet's residual adds,
    back through every block of the stage (those transposes were a large share of a ResNet-50
    CGDM step).
    Identity in value and in derivatives of every order; the barrier survives fusion under
    :data:`CPU_COMPILER_OPTIONS` and is dropped (harmless) elsewhere."""
    return lax.optimization_barrier(x)


def _conv_jvp(strides, padding, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    x = pinned(x)
    out = _conv(x, kernel, strides, padding)
    kh, kw = kernel.shape[:2]
    # Strided: XLA's kernel gradient is window-dilated and its input gradient input-dilated,
    # both slow on CPU; as im2col their transposes are products and pads. Stride 1: both
    # gradients as plain convolutions (:func:`_transposed`); im2col where the kernel outweighs
    # the input or such a convolution's window would exceed its input (XLA swaps its operands)
    # or its padding would be negative.
    # Derivatives of the gradients (second order) are JAX's own; all orders are exact.
    im2col = strides != (1, 1) or _use_patches(x.shape, kernel.shape)
    input_im2col = (
        im2col
        or _window_exceeds_input(out.shape, kernel.shape)
        or any(max(pad) > k - 1 for k, pad in zip((kh, kw), padding, strict=True))
    )
    terms = []  # the rule runs only when at least one tangent is not a symbolic zero
    if not isinstance(dkernel, SymbolicZero):
        if im2col:
            terms.append(_patch_product(x, dkernel, strides, padding))
        else:
            terms.append(_transposed(lambda g: _kernel_gradient(x, g, padding), out)(dkernel))
    if not isinstance(dx, SymbolicZero):  # an image input has no tangent: skip it
        if input_im2col:
            terms.append(_patch_product(dx, kernel, strides, padding))
        else:
            terms.append(_transposed(lambda g: _input_gradient(g, kernel, padding), out)(dx))
    return out, _total(terms)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jax.Array:
    """``lax.conv_general_dilated`` for 2-D NHWC/HWIO convolutions whose gradients XLA's CPU
    compiler runs fast, also inside loops: plain convolutions at stride 1, matrix products when
    strided (exact at every order); other forms (dilation, groups, other layouts, negative
    padding, an explicit precision) go to lax unchanged."""
    plain = (
        lhs.ndim == 4
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and precision is None
        and _is_nhwc(dimension_numbers)
        and not kwargs
    )
    if plain:
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):  # "VALID" / "SAME" as lax resolves them
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        padding = _pairs(padding, 2)
        plain = all(p >= 0 for pair in padding for p in pair)
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision, **kwargs,
        )  # fmt: skip
    return _conv(lhs, rhs, strides, padding)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == NHWC


def max_pool(
    x: jax.Array,
    window: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
) -> jax.Array:
    """2-D max-pooling of ``x [N, H, W, C]`` (padding with −inf) whose gradient goes to the
    first maximal element of each window, as ``nn.max_pool``'s and PyTorch's do, as a mask."""
    columns = _windows(x, tuple(window), tuple(strides), _pairs(padding, 2), -jnp.inf)
    stacked = jnp.stack(columns, axis=-1)  # [N, H', W', C, window]
    first = jnp.argmax(stacked, axis=-1)
    # a sum of selected views, not a reduce: XLA's CPU compiler would fuse a reduce with the
    # next convolution into one YNNPACK call, the slower convolution compiler_options avoids
    return _total(jnp.where(first == k, column, 0) for k, column in enumerate(columns))


# The CPU kernels as a backbone's layer ops: one object, so networks built with it compare equal.
OPS = LayerOps(
    conv=functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated),
    max_pool=max_pool,
    # the features as one buffer that every head reads (both CGDM classifiers), not fused into
    # each of them by XLA's CPU compiler: faster, with the same values
    features=pinned,
)
