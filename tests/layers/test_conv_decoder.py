"""Tests of ConvDecoder against a float64 NumPy reference of the conv stack."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.conv_decoder import ConvDecoder
from tests.layers import conv_reference as ref


def tiny(**overrides):
    args = dict(base_channels=4, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                output_channels=3, num_groups=2)
    args.update(overrides)
    return ConvDecoder(**args)


def latents(seed=0, size=2, depth=5):
    return np.random.default_rng(seed).normal(0.0, 1.0, (2, size, size, depth)).astype("float32")


@pytest.mark.parametrize("multipliers,blocks", [((1, 2, 2), 1), ((2, 1), 2)])
def test_matches_numpy_reference(multipliers, blocks):
    decoder = tiny(channel_multipliers=multipliers, num_res_blocks=blocks)
    z = latents()
    decoder(z)
    ref.randomize(decoder)
    out = np.asarray(decoder(z))
    f = 2 ** (len(multipliers) - 1)
    assert decoder.upsample_factor == f
    assert out.shape == (2, 2 * f, 2 * f, 3)
    np.testing.assert_allclose(out, ref.decoder(decoder, z), rtol=1e-4, atol=1e-4)
    assert len(decoder.upsample_convs) == len(multipliers) - 1


def test_settings_are_validated():
    with pytest.raises(ValueError, match="num_groups=3"):
        tiny(num_groups=3)
    with pytest.raises(ValueError, match="output_channels"):
        tiny(output_channels=0)
    with pytest.raises(ValueError, match="num_res_blocks"):
        tiny(num_res_blocks=-1)


def test_config_round_trip_and_checkpoint_coverage(tmp_path):
    decoder = tiny(num_res_blocks=2)
    z = latents()
    out = np.asarray(decoder(z))
    clone = ConvDecoder.from_config(decoder.get_config())
    clone(z)
    clone.set_weights(decoder.get_weights())
    assert clone.get_config() == decoder.get_config()
    np.testing.assert_array_equal(np.asarray(clone(z)), out)
    path = tf.train.Checkpoint(layer=decoder).write(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("layer/")]
    assert len(saved) == len(decoder.weights)


def test_xla_matches_eager():
    decoder = tiny()
    z = latents()
    eager = np.asarray(decoder(z))
    np.testing.assert_allclose(tf.function(decoder, jit_compile=True)(z), eager, atol=1e-5)
