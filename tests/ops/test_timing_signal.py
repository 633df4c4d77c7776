"""Tests for t2t_image.ops.timing_signal against a NumPy reference built from
T2T's definition of the n-dimensional sinusoid."""

import math

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.ops.timing_signal import add_timing_signal_nd, get_timing_signal_nd


def reference_signal(spatial, channels, min_timescale=1.0, max_timescale=1.0e4):
    """float64 [d1, ..., dn, channels], one element at a time from the definition."""
    n = len(spatial)
    num_timescales = channels // (2 * n)
    increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
    inv_timescales = [min_timescale * math.exp(-j * increment) for j in range(num_timescales)]
    signal = np.zeros(tuple(spatial) + (channels,))
    for position in np.ndindex(*spatial):
        for dim in range(n):
            for j, inv in enumerate(inv_timescales):
                base = 2 * num_timescales * dim
                signal[position + (base + j,)] = math.sin(position[dim] * inv)
                signal[position + (base + num_timescales + j,)] = math.cos(position[dim] * inv)
    return signal


@pytest.mark.parametrize(
    "shape",
    [
        (2, 9, 11),  # 1-D, 11 channels: 5 timescales, 1 zero channel
        (2, 5, 6, 13),  # 2-D, 13 channels: 3 timescales per dim, 1 zero channel
        (1, 3, 4, 5, 14),  # 3-D, 14 channels: 2 timescales per dim, 2 zero channels
        (1, 4, 3, 7),  # 2-D, 7 channels: 1 timescale (increment divides by max(0, 1))
    ],
)
def test_add_timing_signal_matches_reference(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = add_timing_signal_nd(tf.constant(x)).numpy()
    expected = x + reference_signal(shape[1:-1], shape[-1])[None]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    n = len(shape) - 2
    leftover = shape[-1] - 2 * n * (shape[-1] // (2 * n))
    if leftover:
        np.testing.assert_array_equal(got[..., -leftover:], x[..., -leftover:])


def test_custom_timescales_and_get_signal_shape():
    signal = get_timing_signal_nd((6, 5), 16, min_timescale=2.0, max_timescale=500.0).numpy()
    assert signal.shape == (1, 6, 5, 16) and signal.dtype == np.float32
    np.testing.assert_allclose(signal[0], reference_signal((6, 5), 16, 2.0, 500.0), atol=1e-5)


def test_fewer_channels_than_two_per_dim_gives_zero_signal():
    x = tf.ones((1, 2, 2, 2, 5))  # 3-D: needs 6 channels per timescale
    np.testing.assert_array_equal(add_timing_signal_nd(x).numpy(), np.ones((1, 2, 2, 2, 5)))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_keeps_dtype_of_x(dtype):
    x = tf.zeros((1, 4, 4, 8), dtype)
    got = add_timing_signal_nd(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(
        tf.cast(got, tf.float32).numpy()[0], reference_signal((4, 4), 8), atol=1e-2
    )


def test_dynamic_spatial_shape_in_compiled_function():
    fn = tf.function(
        add_timing_signal_nd, input_signature=[tf.TensorSpec([None, None, None, 12], tf.float32)]
    )
    x = np.zeros((2, 3, 7, 12), np.float32)
    np.testing.assert_allclose(fn(x).numpy()[1], reference_signal((3, 7), 12), atol=1e-5)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="x"):
        add_timing_signal_nd(tf.zeros((2, 8)))
    with pytest.raises(ValueError, match="min_timescale"):
        add_timing_signal_nd(tf.zeros((1, 2, 2, 8)), min_timescale=0.0)
    with pytest.raises(ValueError, match="max_timescale"):
        get_timing_signal_nd((2, 2), 8, max_timescale=-1.0)
    with pytest.raises(ValueError, match="channels"):
        get_timing_signal_nd((2, 2), 0)
    with pytest.raises(ValueError, match="shape_dims"):
        get_timing_signal_nd((), 8)
