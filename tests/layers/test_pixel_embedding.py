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


def test_vocab_size_sets_the_table_rows_and_channel_offsets():
    layer = PixelEmbedding(hidden_size=4, num_channels=2, vocab_size=5)
    codes = np.random.RandomState(1).randint(0, 5, (2, 3, 4, 2)).astype("int32")
    out = np.asarray(layer(codes))
    table = np.asarray(layer.embeddings)
    assert table.shape == (10, 4) and out.shape == (2, 3, 8, 4)
    expected = table[codes + 5 * np.arange(2)] * 2.0  # row v + vocab_size * c, sqrt(4)
    np.testing.assert_allclose(out, expected.reshape(2, 3, 8, 4), rtol=1e-6)
    # One channel of codes (a code prior's input).
    single = PixelEmbedding(hidden_size=4, num_channels=1, vocab_size=7)
    assert tuple(single(np.zeros((1, 2, 2, 1), "int32")).shape) == (1, 2, 2, 4)
    assert tuple(single.embeddings.shape) == (7, 4)


def test_vocab_size_config_and_validation():
    layer = PixelEmbedding(hidden_size=8, num_channels=1, vocab_size=1024)
    config = layer.get_config()
    assert config["vocab_size"] == 1024
    assert PixelEmbedding.from_config(config).vocab_size == 1024
    del config["vocab_size"]  # a config saved before vocab_size existed
    assert PixelEmbedding.from_config(config).vocab_size == 256
    for bad in (1, 0, 2.5, True, "256"):
        with pytest.raises(ValueError, match="vocab_size"):
            PixelEmbedding(hidden_size=8, vocab_size=bad)
