"""Tests of ConvEncoder against a float64 NumPy reference of the conv stack."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.conv_encoder import ConvEncoder
from tests.layers import conv_reference as ref


def tiny(**overrides):
    args = dict(base_channels=4, channel_multipliers=(1, 2, 2), num_res_blocks=1, code_dim=3,
                num_groups=2)
    args.update(overrides)
    return ConvEncoder(**args)


def images(seed=0, size=8):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (2, size, size, 3)).astype("float32")


@pytest.mark.parametrize("multipliers,blocks", [((1, 2, 2), 1), ((2, 1), 2)])
def test_matches_numpy_reference(multipliers, blocks):
    encoder = tiny(channel_multipliers=multipliers, num_res_blocks=blocks)
    x = images()
    encoder(x)
    ref.randomize(encoder)
    out = np.asarray(encoder(x))
    f = 2 ** (len(multipliers) - 1)
    assert encoder.downsample_factor == f
    assert out.shape == (2, 8 // f, 8 // f, 3)
    np.testing.assert_allclose(out, ref.encoder(encoder, x), rtol=1e-4, atol=1e-4)
    assert len(encoder.downsamples) == len(multipliers) - 1
    assert len(encoder.res_blocks) == len(multipliers) * blocks


def test_settings_are_validated():
    with pytest.raises(ValueError, match="num_groups=3"):
        tiny(num_groups=3)
    with pytest.raises(ValueError, match="channel_multipliers"):
        tiny(channel_multipliers=())
    with pytest.raises(ValueError, match="code_dim"):
        tiny(code_dim=0)
    with pytest.raises(ValueError, match="height 6 is not divisible by the downsample factor 4"):
        tiny()(np.zeros((1, 6, 8, 3), "float32"))


def test_config_round_trip_and_checkpoint_coverage(tmp_path):
    encoder = tiny(num_res_blocks=2)
    x = images()
    out = np.asarray(encoder(x))
    clone = ConvEncoder.from_config(encoder.get_config())
    clone(x)
    clone.set_weights(encoder.get_weights())
    assert clone.get_config() == encoder.get_config()
    np.testing.assert_array_equal(np.asarray(clone(x)), out)
    path = tf.train.Checkpoint(layer=encoder).write(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("layer/")]
    assert len(saved) == len(encoder.weights)


def test_xla_matches_eager():
    encoder = tiny()
    x = images()
    eager = np.asarray(encoder(x))
    np.testing.assert_allclose(tf.function(encoder, jit_compile=True)(x), eager, atol=1e-5)
