"""dot_product_attention vs dense NumPy brute force (tests/ops/attention_reference)."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from t2t_image.ops.dot_product_attention import dot_product_attention
from tests.ops import attention_reference as ref


def _qkv(b, n, lq, lk, d, dv, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, n, lq, d)).astype(np.float32) * d**-0.5
    k = rng.normal(size=(b, n, lk, d)).astype(np.float32)
    v = rng.normal(size=(b, n, lk, dv)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("lq,lk,d,dv", [(6, 9, 8, 8), (7, 7, 8, 5), (1, 4, 4, 3)])
def test_global_matches_reference(lq, lk, d, dv):
    q, k, v = _qkv(2, 3, lq, lk, d, dv)
    out = ops.convert_to_numpy(dot_product_attention(q, k, v))
    want = ref.attention(q, k, v, np.ones((lq, lk), dtype=bool))
    assert out.shape == (2, 3, lq, dv)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length,dv", [(1, 8), (9, 8), (12, 5)])
def test_causal_matches_reference(length, dv):
    q, k, v = _qkv(2, 2, length, length, 8, dv, seed=1)
    out = ops.convert_to_numpy(dot_product_attention(q, k, v, causal=True))
    want = ref.attention(q, k, v, ref.causal_mask(length))
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
    # The first query can only see the first key.
    np.testing.assert_allclose(out[:, :, 0], v[:, :, 0], atol=1e-6, rtol=0)


def test_extra_bias_masks_keys():
    q, k, v = _qkv(2, 2, 5, 6, 8, 4, seed=2)
    visible = np.array([True, True, False, True, False, True])
    bias = np.where(visible, 0.0, -1e9).astype(np.float32)[None, None, None, :]
    out = ops.convert_to_numpy(dot_product_attention(q, k, v, bias=bias))
    mask = np.broadcast_to(visible, (5, 6))
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask), atol=1e-5, rtol=0)


def test_causal_plus_bias():
    q, k, v = _qkv(1, 2, 6, 6, 8, 8, seed=3)
    visible = np.array([True, False, True, True, True, True])
    bias = np.where(visible, 0.0, -1e9).astype(np.float32)
    out = ops.convert_to_numpy(dot_product_attention(q, k, v, causal=True, bias=bias))
    mask = ref.causal_mask(6) & visible[None, :]
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype,atol", [("float16", 5e-3), ("bfloat16", 3e-2)])
def test_half_precision(dtype, atol):
    q, k, v = _qkv(2, 2, 9, 9, 8, 6, seed=4)
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    out = dot_product_attention(q, k, v, causal=True)
    assert ops.dtype(out) == dtype
    q32, k32, v32 = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (q, k, v))
    want = ref.attention(q32, k32, v32, ref.causal_mask(9))
    got = ops.convert_to_numpy(ops.cast(out, "float32"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def test_jit_unknown_batch_matches_eager():
    q, k, v = _qkv(3, 2, 8, 8, 8, 4, seed=5)
    spec = [tf.TensorSpec([None, 2, 8, 8]), tf.TensorSpec([None, 2, 8, 8]),
            tf.TensorSpec([None, 2, 8, 4])]
    fn = tf.function(lambda a, b, c: dot_product_attention(a, b, c, causal=True),
                     jit_compile=True, input_signature=spec)
    eager = ops.convert_to_numpy(dot_product_attention(q, k, v, causal=True))
    np.testing.assert_allclose(fn(q, k, v).numpy(), eager, atol=1e-6, rtol=0)


def test_invalid_arguments():
    q, k, v = _qkv(1, 1, 4, 5, 8, 8)
    with pytest.raises(ValueError, match="causal"):
        dot_product_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="q must have rank 4"):
        dot_product_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="same depth"):
        dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="k and v"):
        dot_product_attention(q, k, v[:, :, :3])


def test_weights_dropout_callable_applied_to_weights():
    q, k, v = _qkv(2, 2, 5, 6, 8, 4, seed=6)
    keep = np.random.default_rng(0).random((5, 6)) > 0.3
    seen = []

    def dropout(w):
        seen.append(ops.dtype(w))
        return w * keep.astype(np.float32) / 0.7

    out = ops.convert_to_numpy(dot_product_attention(q, k, v, weights_dropout=dropout))
    logits = q.astype(np.float64) @ np.swapaxes(k, -1, -2)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = (w * keep / 0.7) @ v
    assert seen == ["float32"]
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)
