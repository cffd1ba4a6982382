"""The digits feature extractor of the CGDM code.

``LeNetEncoder``: channel mean → conv 5×5 (32) → BN → ReLU → max-pool 2 → conv 5×5 (48) → BN →
ReLU → max-pool 2 → flatten, 48·5·5 = 1200 features for a 32×32 input. The flatten is
channel-major (PyTorch's NCHW order) so weights import from the PyTorch model unchanged.
``dtype`` is the compute dtype of the convolutions (parameters stay float32); ``ops`` the
convolution, pooling and feature output it is built from (:class:`LayerOps`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uda_jax.models.layers import (
    XLA_OPS,
    BatchNorm,
    LayerOps,
    compute_dtype,
    torch_bias_init,
    torch_uniform_init,
)


class LeNetEncoder(nn.Module):
    """LeNet encoder. Input ``[batch, 32, 32, channels]`` → features ``[batch, 1200]``."""

    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: Any = jnp.float32
    ops: LayerOps = XLA_OPS

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = jnp.mean(x, axis=-1, keepdims=True)  # the CGDM code averages RGB to one channel
        for index, (in_channels, out_channels) in enumerate(((1, 32), (32, 48)), start=1):
            fan_in = 5 * 5 * in_channels
            x = self.ops.conv(
                out_channels,
                (5, 5),
                padding="VALID",
                kernel_init=torch_uniform_init((0, 1, 2)),
                bias_init=torch_bias_init(fan_in),
                dtype=compute_dtype(self.dtype),
                param_dtype=jnp.float32,
                name=f"conv{index}",
            )(x)
            x = BatchNorm(
                self.bn_momentum, self.bn_epsilon, self.unbiased_running_var, name=f"bn{index}"
            )(x, train=train)
            x = self.ops.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = jnp.transpose(x, (0, 3, 1, 2))  # NHWC → NCHW before flattening, as PyTorch does
        x = x.reshape(x.shape[0], -1)
        return self.ops.features(x)  # read by every head (both of CGDM's classifiers)
