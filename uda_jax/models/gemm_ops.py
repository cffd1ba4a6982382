"""Convolution and max-pooling whose gradients are matrix products and masks (fast on CPU).

XLA's CPU backend runs a convolution's forward pass well, but its kernel gradient (a
"convolution" with a window as large as the output) and max-pooling's gradient (a
select-and-scatter) are several times slower than the forward pass; on the digits CGDM step they
were two thirds of the time. These drop-in replacements compute the same functions with
gradients XLA's CPU backend runs fast:

* :func:`conv_general_dilated`: the forward pass is ``lax.conv_general_dilated``; a
  ``custom_jvp`` writes the kernel's tangent as one matrix product with the input's patches
  (im2col), so its transpose, the kernel gradient, is one matrix product too. The input's
  tangent stays XLA's convolution, except for strided convolutions and windows wider than
  their output, whose XLA input gradient takes a slow generic path on CPU: those use im2col as
  well. The rule calls the function itself for its primal output, so every order of
  differentiation (``jax.grad`` of ``jax.grad``, ``jax.jvp``) is exact.
* :func:`max_pool`: the window's maximum through a one-hot mask of its first maximal element
  (PyTorch's and XLA's choice on ties), so the gradient is elementwise, with no scatter.

The values are the same functions; only floating-point summation order differs (≈1e-7
relative). ``model.kernels: xla`` keeps XLA's own ops; ``auto`` (the default) uses these on
CPU and XLA's elsewhere, where its convolutions and pooling gradients are fast.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax
from jax.custom_derivatives import SymbolicZero

KERNELS = ("auto", "gemm", "xla")
NHWC = ("NHWC", "HWIO", "NHWC")


def use_gemm_kernels(kernels: str) -> bool:
    """Whether ``model.kernels`` selects this module's ops on the default backend."""
    if kernels not in KERNELS:
        raise ValueError(f"model.kernels must be one of {KERNELS}, got {kernels!r}")
    return kernels == "gemm" or (kernels == "auto" and jax.default_backend() == "cpu")


def conv_for(gemm_kernels: bool):
    """The ``conv_general_dilated`` argument of ``nn.Conv``: this module's, or None (lax's)."""
    return conv_general_dilated if gemm_kernels else None


def max_pool_for(gemm_kernels: bool):
    """``(x, window, strides, padding) -> pooled``: this module's max-pool or ``nn.max_pool``."""
    return max_pool if gemm_kernels else nn.max_pool


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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def _conv_jvp(strides, padding, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    out = _conv(x, kernel, strides, padding)
    kh, kw, cin, cout = kernel.shape

    def patch_product(inputs, weights):  # im2col: [N·H'·W', kh·kw·cin] @ [kh·kw·cin, cout]
        patches = jnp.stack(_windows(inputs, (kh, kw), strides, padding, 0.0), axis=3)
        flat = patches.reshape(-1, kh * kw * cin)  # the kernel's (i, j, c) order
        return jnp.dot(flat, weights.reshape(kh * kw * cin, cout)).reshape(out.shape)

    terms = []  # the rule runs only when at least one tangent is not a symbolic zero
    if not isinstance(dkernel, SymbolicZero):
        terms.append(patch_product(x, dkernel))
    if not isinstance(dx, SymbolicZero):  # an image input has no tangent: skip it
        # XLA's input gradient of a strided convolution (an input-dilated convolution) and of
        # a window wider than its output run on a slow generic path on CPU; as im2col their
        # transpose is a matrix product and (strided) pads. Otherwise XLA's own is faster.
        if strides != (1, 1) or min(out.shape[1:3]) < max(kh, kw):
            terms.append(patch_product(dx, kernel))
        else:
            terms.append(
                lax.conv_general_dilated(dx, kernel, strides, padding, dimension_numbers=NHWC)
            )
    return out, sum(terms[1:], terms[0])


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
    """``lax.conv_general_dilated`` for 2-D NHWC/HWIO convolutions with its kernel gradient as
    one matrix product; other forms (dilation, groups, other layouts, an explicit precision) go
    to lax unchanged."""
    plain = (
        lhs.ndim == 4
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and precision is None
        and _is_nhwc(dimension_numbers)
        and not kwargs
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, precision=precision, **kwargs,
        )  # fmt: skip
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):  # "VALID" / "SAME" as lax resolves them
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    return _conv(lhs, rhs, strides, _pairs(padding, 2))


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
    offsets = jnp.arange(len(columns)).reshape((1,) * (stacked.ndim - 1) + (len(columns),))
    first_max = jnp.argmax(stacked, axis=-1, keepdims=True) == offsets
    return jnp.sum(jnp.where(first_max, stacked, 0), axis=-1)
