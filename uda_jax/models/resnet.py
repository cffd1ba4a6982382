"""torchvision's ResNets (v1.5) as NHWC flax modules, without the final fc (the official
CGDM and MetaAlign code's ResNet backbones are torchvision's).

The layer structure, padding, initialisation and parameter count match
``torchvision.models.resnet{18,34,50,101,152}``: conv1 7×7/2 pad 3 → BN → ReLU → max-pool 3×3/2
pad 1 → layer1–4 → global average pool, the stride of a Bottleneck on its 3×3 conv (v1.5).
Submodule names follow torchvision's state-dict keys with ``.`` written as ``_`` (``layer1_0``,
``downsample_0``) so :mod:`uda_jax.models.torch_weights` maps them one to one.

``dtype`` is the compute dtype of the convolutions (``bfloat16`` for ``precision: bf16``);
parameters, BatchNorm statistics and the returned features are float32. ``ops`` is the
convolution and max-pool the network is built from (:class:`LayerOps`).

``init`` compiles one random initialiser per tensor: tens of seconds for ResNet-50 on a small
CPU (the threefry kernels, not the sizes). Where pretrained weights replace them anyway, the
shapes from ``jax.eval_shape(init)`` are enough for
:func:`uda_jax.models.torch_weights.load_pretrained`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uda_jax.models.layers import XLA_OPS, BatchNorm, LayerOps, compute_dtype, full_precision

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), std = √(2 / (out·kh·kw))
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# name → (block kind, blocks per stage)
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


class _Bn(nn.Module):
    """The settings every ResNet module shares: BatchNorm, compute dtype and layer ops."""

    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: Any = jnp.float32
    ops: LayerOps = XLA_OPS

    def conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Module:
        """A bias-free conv with torchvision's padding (kernel // 2) and init."""
        pad = kernel // 2
        return self.ops.conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=CONV_INIT,
            dtype=compute_dtype(self.dtype),
            param_dtype=jnp.float32,
            name=name,
        )

    def bn(self, name: str) -> BatchNorm:
        """A BatchNorm with γ = 1, β = 0 (torchvision's init)."""
        return BatchNorm(self.bn_momentum, self.bn_epsilon, self.unbiased_running_var, name=name)


class BasicBlock(_Bn):
    """ResNet-18/34 block: 3×3 (stride) → BN → ReLU → 3×3 → BN, plus the shortcut; ReLU."""

    planes: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.relu(self.bn("bn1")(self.conv(self.planes, 3, self.stride, "conv1")(x), train=train))
        y = self.bn("bn2")(self.conv(self.planes, 3, 1, "conv2")(y), train=train)
        return nn.relu(y + _shortcut(self, x, self.planes, train))


class BottleneckBlock(_Bn):
    """ResNet-50/101/152 block: 1×1 → BN → ReLU → 3×3 (stride) → BN → ReLU → 1×1 (4·planes) →
    BN, plus the shortcut; ReLU."""

    planes: int = 64
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.relu(self.bn("bn1")(self.conv(self.planes, 1, 1, "conv1")(x), train=train))
        y = nn.relu(self.bn("bn2")(self.conv(self.planes, 3, self.stride, "conv2")(y), train=train))
        y = self.bn("bn3")(self.conv(4 * self.planes, 1, 1, "conv3")(y), train=train)
        return nn.relu(y + _shortcut(self, x, 4 * self.planes, train))


def _shortcut(block: BasicBlock | BottleneckBlock, x: jax.Array, out: int, train: bool):
    """Identity, or torchvision's ``downsample`` (1×1 conv with the block's stride → BN)."""
    if block.stride == 1 and x.shape[-1] == out:
        return x
    y = block.conv(out, 1, block.stride, "downsample_0")(x)
    return block.bn("downsample_1")(y, train=train)


class ResNet(_Bn):
    """A torchvision ResNet without fc. ``[batch, H, W, 3]`` → float32 ``[batch, 512 or 2048]``.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
    """

    depth: int = 50

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        kind, blocks = ARCHITECTURES[f"resnet{self.depth}"]
        block_cls = BasicBlock if kind == "basic" else BottleneckBlock
        x = nn.relu(self.bn("bn1")(self.conv(64, 7, 2, "conv1")(x), train=train))
        x = self.ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        settings = dict(
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            unbiased_running_var=self.unbiased_running_var,
            dtype=self.dtype,
            ops=self.ops,
        )
        for stage, count in enumerate(blocks, start=1):
            planes = 64 * 2 ** (stage - 1)
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                x = block_cls(
                    planes=planes, stride=stride, name=f"layer{stage}_{index}", **settings
                )(x, train=train)
        return jnp.mean(full_precision(x), axis=(1, 2))  # adaptive average pool to 1×1


def make_resnet(depth: int):
    """A constructor of the ResNet of ``depth`` taking the ``Generator``'s keyword arguments."""

    def build(**kwargs: Any) -> ResNet:
        return ResNet(depth=depth, **kwargs)

    build.__name__ = f"resnet{depth}"
    return build
