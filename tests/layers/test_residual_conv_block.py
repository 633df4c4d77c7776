"""Tests of ResidualConvBlock against a float64 NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.residual_conv_block import ResidualConvBlock
from tests.layers import conv_reference as ref


def images(channels, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, (2, 4, 4, channels)).astype("float32")


@pytest.mark.parametrize("in_channels,filters", [(8, 8), (4, 8)])
def test_matches_numpy_reference(in_channels, filters):
    block = ResidualConvBlock(filters, num_groups=4)
    x = images(in_channels)
    block(x)
    ref.randomize(block)
    assert (block.skip is None) == (in_channels == filters)
    np.testing.assert_allclose(np.asarray(block(x)), ref.residual_block(block, x),
                               rtol=1e-4, atol=1e-4)


def test_group_counts_must_divide_channels():
    with pytest.raises(ValueError, match="num_groups=3"):
        ResidualConvBlock(8, num_groups=3)
    with pytest.raises(ValueError, match="num_groups=4.*6 channels"):
        ResidualConvBlock(8, num_groups=4)(images(6))
    with pytest.raises(ValueError, match="filters"):
        ResidualConvBlock(0)


def test_config_round_trip():
    block = ResidualConvBlock(8, num_groups=2, norm_epsilon=1e-5, name="b")
    x = images(4)
    out = np.asarray(block(x))
    clone = ResidualConvBlock.from_config(block.get_config())
    clone(x)
    clone.set_weights(block.get_weights())
    assert clone.get_config() == block.get_config()
    np.testing.assert_array_equal(np.asarray(clone(x)), out)


def test_xla_matches_eager():
    block = ResidualConvBlock(8, num_groups=4)
    x = images(4)
    eager = np.asarray(block(x))
    np.testing.assert_allclose(tf.function(block, jit_compile=True)(x), eager, atol=1e-5)
