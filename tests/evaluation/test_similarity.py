"""Tests of the bicubic consistency and the MS-SSIM copying check (Section 5.3)."""

import numpy as np
import pytest
from PIL import Image

from t2t_image.evaluation import bicubic_consistency
from t2t_image.evaluation import bicubic_downsample
from t2t_image.evaluation import consistency
from t2t_image.evaluation import ms_ssim
from t2t_image.evaluation import nearest_training_ms_ssim
from t2t_image.evaluation import nearest_upsample
from t2t_image.evaluation.similarity import POWER_FACTORS_3


def images(n, size, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3)).astype("uint8")


def test_bicubic_downsample_matches_pillow_on_uint8_up_to_rounding():
    x = images(2, 32, seed=1)
    ours = bicubic_downsample(x, 8)
    assert ours.shape == (2, 8, 8, 3)
    pillow = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BICUBIC))
                       for im in x]).astype(np.float64)
    # Pillow rounds (and clips) its uint8 result; ours keeps the float.
    assert np.max(np.abs(ours - pillow)) <= 1.0


def test_bicubic_consistency_of_a_flat_upsampling_is_zero_and_of_an_offset_its_square():
    low = np.full((2, 8, 8, 3), 100, np.uint8)
    samples = nearest_upsample(low, 4)
    np.testing.assert_allclose(bicubic_consistency(low, samples), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(bicubic_consistency(low, samples + 51), [0.04, 0.04],
                               rtol=1e-6)  # (51 / 255) ** 2
    # The box consistency of a box-downsample round trip is exactly 0 (textured images).
    low = images(3, 8, seed=2)
    np.testing.assert_array_equal(consistency(low, nearest_upsample(low, 4)), np.zeros(3))


def test_bicubic_consistency_checks_the_sizes():
    with pytest.raises(ValueError, match="integer factor"):
        bicubic_consistency(images(1, 8), images(1, 30))


def test_ms_ssim_is_one_for_identical_images_and_lower_for_noise():
    x = images(3, 32, seed=3)
    np.testing.assert_allclose(ms_ssim(x, x), [1.0, 1.0, 1.0], atol=1e-5)
    other = ms_ssim(x, images(3, 32, seed=4))
    assert other.shape == (3,) and np.all(other < 0.2)
    assert abs(sum(POWER_FACTORS_3) - 1.0) < 1e-12


def test_ms_ssim_refuses_scales_the_image_cannot_hold():
    x = images(1, 32)
    with pytest.raises(ValueError, match="filter_size=11"):
        ms_ssim(x, x, power_factors=(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), filter_size=11)


def test_nearest_training_ms_ssim_finds_the_copied_training_image():
    train = images(20, 32, seed=5)
    train_low = np.round(
        train.astype(np.float64).reshape(20, 8, 4, 8, 4, 3).mean(axis=(2, 4))).astype(np.uint8)
    samples = train[[7, 3]]  # exact copies of training images 7 and 3
    out = nearest_training_ms_ssim(samples, train_low, train)
    np.testing.assert_array_equal(out["index"], [7, 3])
    np.testing.assert_allclose(out["ms_ssim"], [1.0, 1.0], atol=1e-5)
    assert np.all(out["l2"] < 0.5 * np.sqrt(192))  # only the rounding of the 8x8 versions
