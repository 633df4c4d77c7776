import numpy as np
import pytest

from t2t_image.layers.image_transformer_block import ImageTransformerBlock


def layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(norm.gamma) + np.asarray(norm.beta)


def ffn(block, x):
    h = np.maximum(x @ np.asarray(block.ffn_hidden.kernel) + np.asarray(block.ffn_hidden.bias), 0)
    return h @ np.asarray(block.ffn_output.kernel) + np.asarray(block.ffn_output.bias)


def test_post_norm_dan_sequence():
    block = ImageTransformerBlock(16, 24, 2, attention_type="global", masked=False,
                                  layer_prepostprocess_dropout=0.5)
    x = np.random.RandomState(0).randn(2, 3, 4, 16).astype("float32")
    got = np.asarray(block(x))  # inference: dropout off
    att = np.asarray(block.self_attention(x))
    y = layer_norm(x + att, block.norms[0])
    expected = layer_norm(y + ffn(block, y), block.norms[1])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert block.norms[0].epsilon == 1e-6


def test_pre_norm_n_da_sequence_with_cross_attention():
    block = ImageTransformerBlock(16, 24, 2, attention_type="local_1d", block_length=4,
                                  cross_attention=True, layer_preprocess_sequence="n",
                                  layer_postprocess_sequence="da")
    rng = np.random.RandomState(1)
    x = rng.randn(2, 3, 4, 16).astype("float32")
    memory = rng.randn(2, 5, 16).astype("float32")
    got = np.asarray(block(x, memory))
    # Norm order: self-attention pre, enc-dec pre, ffn pre.
    n_self, n_encdec, n_ffn = block.norms
    y = x + np.asarray(block.self_attention(layer_norm(x, n_self).astype("float32")))
    y = y + np.asarray(block.encdec_attention(layer_norm(y, n_encdec).astype("float32"), memory))
    expected = y + ffn(block, layer_norm(y, n_ffn))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_config_round_trip_and_validation():
    block = ImageTransformerBlock(16, 24, 2, attention_type="local_2d", query_shape=(2, 2),
                                  memory_flange=(1, 1), layer_preprocess_sequence="n",
                                  layer_postprocess_sequence="da")
    clone = ImageTransformerBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    with pytest.raises(ValueError, match="layer_preprocess_sequence"):
        ImageTransformerBlock(16, 24, 2, layer_preprocess_sequence="an")
    with pytest.raises(ValueError, match="hidden_size"):
        ImageTransformerBlock(18, 24, 4)
    with pytest.raises(ValueError, match="needs a memory"):
        ImageTransformerBlock(16, 24, 2, attention_type="global", cross_attention=True)(
            np.zeros((1, 2, 2, 16), "float32"))
