"""Tests of t2t_image.ops.image_metrics.psnr against the NumPy formula."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.ops.image_metrics import psnr


def numpy_psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10.0 * np.log10(255.0 ** 2 / mse)


def test_matches_numpy_formula_on_uint8_and_int32_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 5, 4, 3)).astype(np.uint8)
    b = np.clip(a + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    got = psnr(a, b)
    assert got.dtype == "float32" and got.shape == (3,)
    np.testing.assert_allclose(got, numpy_psnr(a, b), rtol=1e-5)
    np.testing.assert_allclose(psnr(a.astype(np.int32), b.astype(np.int32)), got, rtol=1e-6)
    # uint8 differences must not wrap around: 0 vs 255 is the worst case, 0 dB.
    np.testing.assert_allclose(psnr(np.zeros((1, 2, 2, 3), np.uint8),
                                    np.full((1, 2, 2, 3), 255, np.uint8)), [0.0], atol=1e-6)


def test_identical_images_give_infinity_and_xla_compiles():
    a = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    b = a.copy()
    b[1, 0, 0, 0] ^= 1  # one sub-pixel off by 1: MSE 1/48
    got = tf.function(psnr, jit_compile=True)(a, b).numpy()
    assert np.isposinf(got[0])
    np.testing.assert_allclose(got[1], 10 * np.log10(255.0 ** 2 * 48), rtol=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((3,)), np.zeros((3,)))
