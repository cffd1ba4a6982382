"""Layers with PyTorch's numerics, so a faithful run matches the official PyTorch code
(BatchNorm's running variance, PyTorch's default initialisers), and :class:`LayerOps`, the
convolution and pooling a backbone is built from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

ModuleDef = Any  # a flax module class, or a functools.partial of one


def identity(x: jax.Array) -> jax.Array:
    return x


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """The convolution and pooling a backbone is built from, passed in as module arguments the
    way flax's ResNet example passes ``conv: ModuleDef``. The backbones name no implementation;
    :data:`XLA_OPS` (the default) is flax's and lax's own, and :func:`uda_jax.cpu.layer_ops`
    gives the same functions written for XLA's CPU compiler.

    Attributes:
      conv: called like ``nn.Conv(features, kernel_size, strides=..., padding=..., ...,
        name=...)``: ``nn.Conv`` or a ``functools.partial`` of it.
      max_pool: ``(x, window, strides[, padding]) -> pooled``, like ``nn.max_pool``.
      features: applied to the output features of a backbone that several heads read (LeNet's,
        which both of CGDM's classifiers read); identity in value and derivatives.
    """

    conv: ModuleDef = nn.Conv
    max_pool: Callable[..., jax.Array] = nn.max_pool
    features: Callable[[jax.Array], jax.Array] = identity


XLA_OPS = LayerOps()


def compute_dtype(dtype: Any) -> Any:
    """The dtype a layer casts its inputs and weights to: ``dtype`` when it is a low precision
    (bfloat16), else None, meaning "as given", so float32 runs stay exactly as they were and
    float64 tests keep float64."""
    return dtype if dtype is not None and jnp.dtype(dtype) in LOW_PRECISION else None


def full_precision(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is in a low precision, else unchanged (float32/float64)."""
    return x.astype(jnp.float32) if x.dtype in LOW_PRECISION else x


def torch_uniform_init(fan_in_axes: tuple[int, ...]) -> nn.initializers.Initializer:
    """PyTorch's default Linear/Conv init: U(−1/√fan_in, 1/√fan_in) (kaiming_uniform, a=√5).

    ``fan_in_axes`` are the axes of the flax kernel that make up fan_in ((0,) for a Dense kernel
    [in, out]; (0, 1, 2) for a Conv kernel [h, w, in, out]).
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        fan_in = math.prod(shape[a] for a in fan_in_axes)
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init, U(−1/√fan_in, 1/√fan_in); fan_in comes from the kernel."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_init(mean: float, std: float) -> nn.initializers.Initializer:
    """N(mean, std²), e.g. the official CGDM classifier init N(0, 0.01²) or BN γ ~ N(1, 0.01²)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


# The collection in which train-mode BatchNorm layers report their batch's first two moments.
MOMENTS = "batchnorm_moments"


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, with PyTorch's conventions.

    Train mode normalises with the biased batch variance and updates the running statistics as
    ``running ← (1 − momentum)·running + momentum·batch``; with ``unbiased_running_var`` the
    variance that enters the running average is the unbiased one (n/(n−1)), as
    ``torch.nn.BatchNorm*d`` does. Eval mode uses the running statistics.
    The variance is computed in two passes, (x − mean)², for accuracy. A bfloat16 input is
    normalised in float32 (statistics and running averages stay float32) and the output is cast
    back to bfloat16.

    Attributes:
      momentum: PyTorch's momentum (0.1 by default; flax's ``momentum`` is 1 minus this).
      epsilon: added to the variance.
      unbiased_running_var: PyTorch's running-variance update (True) or flax's (False).
      scale_init, bias_init: initialisers of γ and β.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        in_dtype = x.dtype
        x = full_precision(x)
        features = x.shape[-1]
        shape = (1,) * (x.ndim - 1) + (features,)  # explicit broadcasting over the batch axes
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", self.bias_init, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
            # Stored only when the caller makes the collection mutable (AdaBN's pass over the
            # target domain, uda_jax.evaluation.adapt_batchnorm); free otherwise.
            self.sow(MOMENTS, "moments", {"mean": mean, "square": var + jnp.square(mean)})
            if not self.is_initializing():
                count = x.size // features
                correction = count / max(count - 1, 1) if self.unbiased_running_var else 1.0
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
                running_var.value = (1 - m) * running_var.value + m * jax.lax.stop_gradient(
                    var * correction
                )
        else:
            mean, var = running_mean.value, running_var.value
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        out = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
        return out.astype(in_dtype)


class Dense(nn.Module):
    """``x @ kernel + bias`` (flax's ``nn.Dense`` parameters: kernel ``[in, out]``, bias).

    With a bfloat16 ``dtype`` the product runs in bfloat16 and accumulates in float32; the bias
    is added and the result returned in float32. So a bias that feeds a BatchNorm gets its
    analytically zero gradient to float32 round-off, not bfloat16's, which keeps CGDM's cosines
    of those gradients (zero but for round-off, so round-off decides them) quiet in bfloat16
    too. With float32 it is ``nn.Dense``.
    """

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        low = compute_dtype(self.dtype)
        if low is None:
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
            y = jnp.matmul(x, kernel)
        else:
            y = jnp.matmul(x.astype(low), kernel.astype(low), preferred_element_type=jnp.float32)
        return y + bias.reshape((1,) * (y.ndim - 1) + (self.features,))


def _field_bits(keep: float) -> int | None:
    """The fewest random bits per element (1, 2, 4 or 8) that give probability ``keep``
    exactly (``keep · 2^bits`` an integer), or None."""
    for bits in (1, 2, 4, 8):
        if float(keep * 2**bits).is_integer():
            return bits
    return None


def bernoulli_mask(key: jax.Array, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """A boolean mask, each element True with probability ``keep``, independently.

    Where ``keep`` is a multiple of 1/2^b for b ≤ 8 (dropout 0.5: one bit), each 32-bit random
    word gives ``32/b`` elements, each True when its b-bit field is below ``keep · 2^b``: the
    exact Bernoulli(keep) from 1/32 (b = 1) of the random bits of ``jax.random.bernoulli``, which
    draws a float32 uniform per element. On CPU those bits are most of dropout's cost (threefry,
    11 % of the digits CGDM step). Other ``keep`` values use ``jax.random.bernoulli``.
    Placement-independent like ``jax.random.bits``: the same mask on one device or sharded.
    """
    bits = _field_bits(keep)
    if bits is None or not shape or math.prod(shape) == 0:  # no last axis to pack along
        return jax.random.bernoulli(key, keep, shape)
    per_word = 32 // bits
    *lead, last = shape
    words = jax.random.bits(key, (*lead, -(-last // per_word)), jnp.uint32)
    shifts = jnp.arange(0, 32, bits, dtype=jnp.uint32).reshape((1,) * len(shape) + (per_word,))
    fields = (words[..., None] >> shifts) & jnp.uint32(2**bits - 1)
    fields = fields.reshape(*lead, -1)[..., :last]  # the last word's spare fields cut off
    return fields < jnp.uint32(int(keep * 2**bits))


class Dropout(nn.Module):
    """``nn.Dropout`` (zero each element with probability ``rate``, scale the rest by
    ``1/(1 − rate)``, off when ``deterministic``) with its mask from :func:`bernoulli_mask`: the
    same distribution, drawn from fewer random bits. Named like flax's, so its keys
    (``make_rng("dropout")`` at ``Dropout_<i>``) are the ones ``nn.Dropout`` would get."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:  # no division by zero (and no NaN gradient)
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        mask = bernoulli_mask(self.make_rng(self.rng_collection), keep, x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
