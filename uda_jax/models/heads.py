"""Heads on top of a backbone: the bottleneck and CGDM's classifier (``models/basenet.py``).

Each head's ``dtype`` is the compute dtype of its matrix products (``bfloat16`` for
``precision: bf16``); parameters, biases, BatchNorm and every output are float32 (see
:class:`uda_jax.models.layers.Dense`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uda_jax.models.layers import (
    BatchNorm,
    Dense,
    Dropout,
    normal_init,
    torch_bias_init,
    torch_uniform_init,
)

# torch.nn.init's xavier_normal_ and kaiming_normal_ draw from an untruncated normal; flax's
# xavier_normal() truncates at two standard deviations.
XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def new_layer_inits(scheme: str, reference_kernel, reference_bias):
    """``(kernel_init, bias_init)`` of a Linear layer a method adds, for the method's
    ``NetworkSpec.new_layer_init``: ``xavier`` (the CDAN code's ``init_weights``:
    ``xavier_normal_``, zero bias), ``kaiming`` (the GVB-GD and MetaAlign code's:
    ``kaiming_normal_``, an untruncated N(0, 2/fan_in), zero bias), or ``reference`` (the given
    CGDM-code initialisers)."""
    if scheme == "xavier":
        return XAVIER_NORMAL, nn.initializers.zeros
    if scheme == "kaiming":
        return KAIMING_NORMAL, nn.initializers.zeros
    if scheme == "reference":
        return reference_kernel, reference_bias
    raise ValueError(f"unknown new-layer init {scheme!r}; valid: reference, xavier, kaiming")


class Bottleneck(nn.Module):
    """Linear(in → dim), no activation. Init ``reference``: N(0, 0.005²) and bias 0.1 (CGDM's
    ``ResBottle``); else see :func:`new_layer_inits`."""

    features: int
    dtype: Any = jnp.float32
    init_scheme: str = "reference"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_init, bias_init = new_layer_inits(
            self.init_scheme, normal_init(0.0, 0.005), nn.initializers.constant(0.1)
        )
        return Dense(
            self.features, kernel_init=kernel_init, bias_init=bias_init, dtype=self.dtype, name="fc"
        )(x)


def _dense_inits(init: str, fan_in: int):
    """(kernel_init, bias_init) of the classifier's Linear layers for ``model.classifier_init``."""
    if init == "reference":  # CGDM's utils.py::weights_init: N(0, 0.01²) for W and b
        return normal_init(0.0, 0.01), normal_init(0.0, 0.01)
    if init == "xavier":  # CGDM's digits main.py (commit 7c2fccf): init_weights_xavier_normal
        return XAVIER_NORMAL, nn.initializers.zeros
    return torch_uniform_init((0,)), torch_bias_init(fan_in)


class Classifier(nn.Module):
    """CGDM's ``ResClassifier``: per hidden width, dropout → Linear → BN → ReLU; then Linear.

    With widths (1000, 1000) this is exactly CGDM's (``num_layer=2``, ``middle=1000``): 10
    parameter tensors. Input
    ``features: [batch, dim]`` → ``logits: [batch, num_classes]``.
    """

    num_classes: int
    widths: Sequence[int] = (1000, 1000)
    dropout: float = 0.5
    init_scheme: str = "reference"
    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        reference = self.init_scheme == "reference"
        bn_scale_init = normal_init(1.0, 0.01) if reference else nn.initializers.ones
        for index, width in enumerate(self.widths):
            x = Dropout(self.dropout, deterministic=not train)(x)
            kernel_init, bias_init = _dense_inits(self.init_scheme, x.shape[-1])
            x = Dense(
                width,
                kernel_init=kernel_init,
                bias_init=bias_init,
                dtype=self.dtype,
                name=f"fc{index}",
            )(x)
            x = BatchNorm(
                self.bn_momentum,
                self.bn_epsilon,
                self.unbiased_running_var,
                scale_init=bn_scale_init,
                name=f"bn{index}",
            )(x, train=train)
            x = nn.relu(x)
        kernel_init, bias_init = _dense_inits(self.init_scheme, x.shape[-1])
        return Dense(
            self.num_classes,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name="out",
        )(x)


class BridgedClassifier(nn.Module):
    """A linear classifier ``y = fc(f)`` with an optional GVB-G bridge ``z = gvbg(f)``.

    Returns ``(logits, bridge)`` with ``logits = y − z`` (GVB-GD, Cui et al., CVPR 2020) and
    ``bridge = z`` (zeros without a bridge). The layer names contain ``fc`` / ``gvb`` like the
    official code's, whose inner MetaAlign step gives them a 10× multiplier. Init
    (``init_scheme``, :func:`new_layer_inits`): ``reference`` N(0, 0.01²) weights and zero
    biases; ``xavier``; ``kaiming``.
    """

    num_classes: int
    bridge: bool = False
    dtype: Any = jnp.float32
    init_scheme: str = "reference"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        del train
        kernel_init, bias_init = new_layer_inits(
            self.init_scheme, normal_init(0.0, 0.01), nn.initializers.zeros
        )
        dense = lambda name: Dense(
            self.num_classes,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name=name,
        )
        y = dense("fc")(x)
        if not self.bridge:
            return y, jnp.zeros_like(y)
        z = dense("gvbg")(x)
        return y - z, z


class Discriminator(nn.Module):
    """The official code's ``AdversarialNetwork``: Linear → ReLU → Dropout → Linear → ReLU →
    Dropout, then ``d = ad_layer3(h)`` and, with a GVB-D bridge, ``b = gvbd(h)``.

    Returns ``(domain logit d − b [batch], bridge b [batch])``; the probability is its sigmoid.
    Init (``init_scheme``, :func:`new_layer_inits`): ``reference`` and ``xavier`` Xavier-normal
    weights and zero biases (the CDAN code's ``init_weights``); ``kaiming`` the GVB-GD code's.
    """

    hidden: int = 1024
    dropout: float = 0.5
    bridge: bool = False
    dtype: Any = jnp.float32
    init_scheme: str = "reference"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        kernel_init, bias_init = new_layer_inits(
            self.init_scheme, XAVIER_NORMAL, nn.initializers.zeros
        )
        dense = lambda width, name: Dense(
            width,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=self.dtype,
            name=name,
        )
        for index in (1, 2):
            x = nn.relu(dense(self.hidden, f"ad_layer{index}")(x))
            x = Dropout(self.dropout, deterministic=not train)(x)
        d = dense(1, "ad_layer3")(x)[:, 0]
        if not self.bridge:
            return d, jnp.zeros_like(d)
        b = dense(1, "gvbd")(x)[:, 0]
        return d - b, b
