import numpy as np
import pytest

from t2t_image.layers.multi_head_attention import MultiHeadAttention
from tests.ops import attention_reference as ref


def numpy_attention(layer, x, mask, memory=None):
    """Dense multi-head attention over raster-flattened positions with a boolean mask."""
    batch = x.shape[0]
    source = x if memory is None else memory
    flat = x.reshape(batch, -1, x.shape[-1]).astype(np.float64)
    src = source.reshape(batch, -1, source.shape[-1]).astype(np.float64)
    wq, wk, wv, wo = (np.asarray(d.kernel, np.float64) for d in (
        layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense))
    heads = layer.num_heads

    def split(t):
        return t.reshape(batch, t.shape[1], heads, -1).transpose(0, 2, 1, 3)

    q, k, v = split(flat @ wq), split(src @ wk), split(src @ wv)
    q = q * q.shape[-1] ** -0.5
    logits = q @ k.transpose(0, 1, 3, 2)
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, flat.shape[1], -1)
    return (out @ wo).reshape(x.shape[:-1] + (-1,))


@pytest.mark.parametrize(
    "kwargs,mask_fn",
    [
        (dict(attention_type="local_1d", block_length=5),
         lambda r, c: ref.local_1d_mask(r * c, 5)),
        (dict(attention_type="local_2d", query_shape=(2, 3), memory_flange=(1, 2)),
         lambda r, c: ref.masked_local_2d_mask(r, c, (2, 3), (1, 2))),
        (dict(attention_type="local_2d", masked=False, query_shape=(2, 3), memory_flange=(1, 2)),
         lambda r, c: ref.local_2d_mask(r, c, (2, 3), (1, 2))),
        (dict(attention_type="global"), lambda r, c: ref.causal_mask(r * c)),
        (dict(attention_type="global", masked=False),
         lambda r, c: np.ones((r * c, r * c), bool)),
    ],
)
def test_matches_dense_reference(kwargs, mask_fn):
    layer = MultiHeadAttention(16, 2, key_channels=8, value_channels=12, **kwargs)
    x = np.random.RandomState(0).randn(2, 4, 6, 16).astype("float32")
    got = np.asarray(layer(x))
    expected = numpy_attention(layer, x, mask_fn(4, 6))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_encoder_decoder_attention_reads_the_memory():
    layer = MultiHeadAttention(16, 4, attention_type="global", masked=False)
    rng = np.random.RandomState(1)
    x = rng.randn(2, 3, 6, 16).astype("float32")
    memory = rng.randn(2, 10, 16).astype("float32")
    got = np.asarray(layer(x, memory))
    expected = numpy_attention(layer, x, np.ones((18, 10), bool), memory=memory)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_validation():
    layer = MultiHeadAttention(16, 2, attention_type="local_2d", query_shape=(2, 3),
                               memory_flange=(1, 2), attention_dropout=0.1)
    clone = MultiHeadAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(16, 3)
    with pytest.raises(ValueError, match="attention_type"):
        MultiHeadAttention(16, 2, attention_type="dilated")
    with pytest.raises(ValueError, match="masked=False"):
        MultiHeadAttention(16, 2, attention_type="local_1d", masked=False)
    with pytest.raises(ValueError, match="memory_flange"):
        MultiHeadAttention(16, 2, attention_type="local_2d", memory_flange=(-1, 2))
