"""A backbone of your own: a small flax CNN registered by name and used by CGDM.

Any flax module that maps images ``[batch, H, W, C]`` to features ``[batch, dim]`` can be the
feature extractor G: register it with :func:`uda_jax.models.register_backbone` and name it in
the config (``model.backbone=tiny_cnn``). uda-jax puts the method's heads on top (CGDM: two
classifiers), and every method, the loop, checkpoints and evaluation work unchanged.

    python examples/custom_backbone.py [steps=200]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uda_jax.config import load_config
from uda_jax.models import register_backbone
from uda_jax.models.layers import XLA_OPS, BatchNorm, LayerOps
from uda_jax.train import train_and_evaluate


class TinyCNN(nn.Module):
    """Two 3×3 convolutions with BatchNorm and max-pooling, then a 128-d dense layer."""

    bn_momentum: float = 0.1
    bn_epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: Any = jnp.float32
    ops: LayerOps = XLA_OPS  # the convolution and pooling uda-jax hands in (CPU-tuned on CPU)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for index, width in enumerate((16, 32)):
            x = self.ops.conv(width, (3, 3), dtype=self.dtype, name=f"conv{index}")(x)
            x = BatchNorm(
                self.bn_momentum, self.bn_epsilon, self.unbiased_running_var, name=f"bn{index}"
            )(x, train=train)
            x = self.ops.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(128, dtype=self.dtype, name="fc")(x))


def main(overrides: list[str]) -> float:
    """Trains CGDM with the tiny CNN on mnist5k → ucidigits; returns the target accuracy."""
    register_backbone("tiny_cnn", TinyCNN)
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(
            None,
            [
                "model.backbone=tiny_cnn",
                "steps=200",
                "cgdm.warmup_steps=100",
                "eval_every=0",
                "plots=false",
                "tensorboard=false",
                f"run_dir={run_dir}",
                *overrides,
            ],
        )
        results = train_and_evaluate(config, Path(run_dir))
    accuracy = results["target_accuracy"]
    print(f"CGDM with a custom backbone, mnist5k → ucidigits: target accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(sys.argv[1:])
