import numpy as np

from t2t_image.layers.ordinal_pixel_embedding import OrdinalPixelEmbedding


def test_is_a_relu_of_an_affine_map_of_scaled_channels():
    layer = OrdinalPixelEmbedding(hidden_size=6)
    images = np.random.RandomState(1).randint(0, 256, (2, 3, 4, 3)).astype("uint8")
    out = np.asarray(layer(images))
    assert out.shape == (2, 3, 4, 6)
    kernel = np.asarray(layer.conv.kernel)  # [1, 3, 1, 6]
    bias = np.asarray(layer.conv.bias)
    scaled = images.astype(np.float64) / 127.5 - 1.0
    expected = np.maximum(scaled @ kernel[0, :, 0, :] + bias, 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    clone = OrdinalPixelEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
