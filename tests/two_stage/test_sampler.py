"""Two-stage sampling: the prior's codes (cached or sliding-window sampler), decoded by the first stage."""

import numpy as np
import pytest

from t2t_image.models import ImageTransformer
from t2t_image.models import VQAutoencoder
from t2t_image.sampling import sample
from t2t_image.sampling import sample_sliding_window
from t2t_image.two_stage import check_two_stage
from t2t_image.two_stage import grid_size
from t2t_image.two_stage import sample_two_stage

K = 16


def first_stage():
    model = VQAutoencoder(image_height=8, image_width=8, base_channels=8,
                          channel_multipliers=(1, 2), codebook_size=K, code_dim=4)
    model({"targets": np.zeros((1, 8, 8, 3), "int32")})
    return model


def prior(**overrides):
    args = dict(image_height=4, image_width=4, num_channels=1, vocab_size=K, hidden_size=16,
                filter_size=16, num_heads=2, num_decoder_layers=1, block_length=8,
                layer_prepostprocess_dropout=0.0)
    args.update(overrides)
    model = ImageTransformer(**args)
    model({"targets": np.zeros((1, 4, 4, 1), "int32")})
    return model


@pytest.fixture(scope="module")
def stages():
    return prior(), first_stage()


def test_training_size_equals_the_cached_sampler_then_the_decoder(stages):
    p, fs = stages
    images, codes = sample_two_stage(p, fs, 3, seed=7, temperature=0.9, top_k=5)
    expected = np.asarray(sample(p, 3, temperature=0.9, seed=7, top_k=5))[..., 0]
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(images, np.asarray(fs.images_from_codes(expected)))
    assert images.shape == (3, 8, 8, 3) and images.min() >= 0 and images.max() <= 255


def test_larger_grid_uses_the_sliding_window_and_decodes_to_a_larger_image(stages):
    p, fs = stages
    images, codes = sample_two_stage(p, fs, 2, height=8, width=8, seed=3)
    expected = np.asarray(sample_sliding_window(p, 2, 8, 8, seed=3))[..., 0]
    np.testing.assert_array_equal(codes, expected)
    assert codes.shape == (2, 8, 8) and codes.min() >= 0 and codes.max() < K
    assert images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(images, np.asarray(fs.images_from_codes(codes)))


def test_mismatched_stages_and_sizes_are_refused(stages):
    p, fs = stages
    with pytest.raises(ValueError, match="vocab_size=32 differs from the first stage's "
                                         "codebook_size=16"):
        check_two_stage(prior(vocab_size=32), fs)
    with pytest.raises(ValueError, match="num_channels=1"):
        check_two_stage(ImageTransformer(image_height=4, image_width=4, hidden_size=8,
                                         filter_size=8, num_heads=1, num_decoder_layers=1), fs)
    with pytest.raises(ValueError, match="smaller than the prior's 4x4"):
        sample_two_stage(p, fs, 1, height=2, width=4)
    assert grid_size(fs, 16, 24, "pixels") == (8, 12)
    assert grid_size(fs, 16, 24, "codes") == (16, 24)
    with pytest.raises(ValueError, match="downsamples by 2"):
        grid_size(fs, 15, 16, "pixels")
    with pytest.raises(ValueError, match="units must be one of"):
        grid_size(fs, 16, 16, "inches")
