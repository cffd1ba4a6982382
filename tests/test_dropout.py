"""The dropout layer: flax's ``nn.Dropout`` in distribution and in keys, its mask drawn from
packed random bits (1/32 of the bits for dropout 0.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from uda_jax.models.layers import Dropout, bernoulli_mask

SHAPE = (256, 1000)  # the last dimension not a multiple of 32: the packed words are cut


def _z_score(mask, keep):
    """How many standard errors the mask's mean is from ``keep``."""
    return abs(float(mask.mean()) - keep) / np.sqrt(keep * (1 - keep) / mask.size)


@pytest.mark.parametrize("keep,bits", [(0.5, 1), (0.75, 2), (0.25, 2), (3 / 16, 4), (5 / 256, 8)])
def test_packed_mask_is_bernoulli_with_independent_fields(keep, bits):
    assert float(keep * 2**bits).is_integer()
    mask = np.asarray(bernoulli_mask(jax.random.key(0), keep, SHAPE))
    assert mask.shape == SHAPE and mask.dtype == bool
    assert _z_score(mask, keep) < 5
    # fields of one word, of neighbouring words and of different rows are independent:
    # P(both) = keep² for elements 1 apart (same word) and 32 apart (next word)
    for lag in (1, 32):
        both = mask[:, :-lag] & mask[:, lag:]
        assert _z_score(both, keep**2) < 5, lag
    assert _z_score(mask[:-1] & mask[1:], keep**2) < 5
    # every column (each bit position of the words) has the same probability
    per_column = mask.mean(axis=0)
    assert abs(per_column.mean() - keep) < 0.01
    assert per_column.std() < 4 * np.sqrt(keep * (1 - keep) / SHAPE[0])


def test_packed_mask_draws_a_fresh_mask_per_key_and_one_per_key():
    a = bernoulli_mask(jax.random.key(1), 0.5, SHAPE)
    b = bernoulli_mask(jax.random.key(2), 0.5, SHAPE)
    np.testing.assert_array_equal(a, bernoulli_mask(jax.random.key(1), 0.5, SHAPE))
    assert 0.45 < float(jnp.mean(a != b)) < 0.55


def test_other_probabilities_and_shapes_are_jax_random_bernoulli():
    key = jax.random.key(3)
    for keep, shape in ((0.9, SHAPE), (0.3, SHAPE), (1 / 3, SHAPE), (0.5, ()), (0.5, (0, 7))):
        np.testing.assert_array_equal(
            bernoulli_mask(key, keep, shape), jax.random.bernoulli(key, keep, shape)
        )


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_scales_kept_units_and_gets_flax_keys(rate):
    x = jax.random.normal(jax.random.key(4), (64, 300))
    rngs = {"dropout": jax.random.key(5)}
    ours = Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    flax = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    kept = ours != 0
    np.testing.assert_allclose(ours[kept], x[kept] / (1 - rate), rtol=1e-6)
    assert _z_score(np.asarray(kept), 1 - rate) < 5
    if rate == 0.1:  # not a multiple of 1/2^b: flax's own draw from the same key
        np.testing.assert_array_equal(ours, flax)
    key = nn.Dropout(rate).apply({}, method=lambda m: m.make_rng("dropout"), rngs=rngs)
    mine = Dropout(rate).apply({}, method=lambda m: m.make_rng("dropout"), rngs=rngs)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(mine))
    # the gradient goes through the kept units only, scaled as the values are
    grad = jax.grad(lambda x: jnp.sum(Dropout(rate).apply({}, x, False, rngs=rngs)))(x)
    np.testing.assert_allclose(grad, jnp.where(kept, 1 / (1 - rate), 0.0), rtol=1e-6)


def test_dropout_off_and_edge_rates():
    x = jnp.arange(12.0).reshape(3, 4)
    rngs = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False, rngs=rngs), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, False, rngs=rngs), jnp.zeros_like(x))
    with pytest.raises(ValueError, match="deterministic"):
        Dropout(0.5).apply({}, x, rngs=rngs)
