"""The PyTorch-numerics layers that are not covered elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from uda_jax.models.layers import max_pool_2x2


def test_max_pool_2x2_equals_flax_max_pool_in_value_and_gradient():
    x = jax.random.normal(jax.random.key(0), (3, 8, 6, 5))  # no ties
    weights = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))

    def reference(x):
        return jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) * weights)

    def ours(x):
        return jnp.sum(max_pool_2x2(x) * weights)

    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(reference)(x))
    # after a ReLU the tied windows are all-zero and neither version passes gradient through
    relu_grad = jax.grad(lambda x: jnp.sum(max_pool_2x2(nn.relu(x)) * weights))
    negative = -jnp.abs(x)
    assert not np.any(relu_grad(negative))
