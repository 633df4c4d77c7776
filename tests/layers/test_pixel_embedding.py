import numpy as np
import keras
import pytest

from t2t_image.layers.pixel_embedding import PixelEmbedding


def test_channels_interleave_along_width_with_channel_offsets():
    layer = PixelEmbedding(hidden_size=4)
    images = np.random.RandomState(0).randint(0, 256, (2, 3, 5, 3)).astype("uint8")
    out = np.asarray(layer(images))
    assert out.shape == (2, 3, 15, 4)
    table = np.asarray(layer.embeddings)
    for b, y, x, c in [(0, 0, 0, 0), (1, 2, 4, 2), (0, 1, 3, 1)]:
        expected = table[int(images[b, y, x, c]) + 256 * c] * 2.0  # sqrt(4)
        np.testing.assert_allclose(out[b, y, 3 * x + c], expected, rtol=1e-6)


def test_config_round_trip_and_channel_check():
    layer = PixelEmbedding(hidden_size=8, num_channels=3, name="emb")
    clone = PixelEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="num_channels=3"):
        layer(np.zeros((1, 2, 2, 4), "uint8"))
    with pytest.raises(ValueError, match="hidden_size"):
        PixelEmbedding(hidden_size=0)
    assert layer.compute_output_shape((None, 2, 5, 3)) == (None, 2, 15, 8)
    assert isinstance(keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)), PixelEmbedding)
