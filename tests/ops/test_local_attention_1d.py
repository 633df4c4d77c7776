"""masked_local_attention_1d vs dense NumPy brute force with local_1d_mask."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from t2t_image.ops.local_attention_1d import masked_local_attention_1d
from tests.ops import attention_reference as ref


def _qkv(b, n, length, d, dv, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, n, length, d)).astype(np.float32) * d**-0.5
    k = rng.normal(size=(b, n, length, d)).astype(np.float32)
    v = rng.normal(size=(b, n, length, dv)).astype(np.float32)
    return q, k, v


def test_reference_mask_hand_checked():
    mask = ref.local_1d_mask(7, 2)  # blocks {0,1} {2,3} {4,5} {6}
    assert np.flatnonzero(mask[0]).tolist() == [0]
    assert np.flatnonzero(mask[1]).tolist() == [0, 1]
    assert np.flatnonzero(mask[2]).tolist() == [0, 1, 2]
    assert np.flatnonzero(mask[5]).tolist() == [2, 3, 4, 5]
    assert np.flatnonzero(mask[6]).tolist() == [4, 5, 6]
    # length < 2 * block_length: one causal block.
    np.testing.assert_array_equal(ref.local_1d_mask(7, 4), ref.causal_mask(7))


@pytest.mark.parametrize(
    "length,block_length",
    [
        (16, 4),  # divisible
        (15, 4),  # padding
        (13, 3),  # padding
        (8, 4),  # exactly 2 blocks
        (7, 4),  # length < 2 * block_length -> one causal block
        (5, 8),  # length < block_length
        (9, 1),  # block_length 1: each position sees itself and the previous
        (1, 1),
    ],
)
@pytest.mark.parametrize("dv", [8, 5])
def test_matches_reference(length, block_length, dv):
    q, k, v = _qkv(2, 3, length, 8, dv, seed=length + block_length)
    out = ops.convert_to_numpy(masked_local_attention_1d(q, k, v, block_length))
    want = ref.attention(q, k, v, ref.local_1d_mask(length, block_length))
    assert out.shape == (2, 3, length, dv)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


def test_output_is_causal():
    q, k, v = _qkv(1, 2, 14, 8, 8, seed=7)
    base = ops.convert_to_numpy(masked_local_attention_1d(q, k, v, 4))
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 9:] += 3.0
    v2[:, :, 9:] -= 5.0
    changed = ops.convert_to_numpy(masked_local_attention_1d(q, k2, v2, 4))
    np.testing.assert_array_equal(changed[:, :, :9], base[:, :, :9])


@pytest.mark.parametrize("dtype,atol", [("float16", 5e-3), ("bfloat16", 3e-2)])
def test_half_precision(dtype, atol):
    q, k, v = _qkv(2, 2, 11, 8, 6, seed=3)
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    out = masked_local_attention_1d(q, k, v, 3)
    assert ops.dtype(out) == dtype
    q32, k32, v32 = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (q, k, v))
    want = ref.attention(q32, k32, v32, ref.local_1d_mask(11, 3))
    got = ops.convert_to_numpy(ops.cast(out, "float32"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def test_jit_unknown_batch_matches_eager():
    q, k, v = _qkv(3, 2, 13, 8, 4, seed=4)
    spec = [tf.TensorSpec([None, 2, 13, 8]), tf.TensorSpec([None, 2, 13, 8]),
            tf.TensorSpec([None, 2, 13, 4])]
    fn = tf.function(lambda a, b, c: masked_local_attention_1d(a, b, c, 4),
                     jit_compile=True, input_signature=spec)
    eager = ops.convert_to_numpy(masked_local_attention_1d(q, k, v, 4))
    got = fn(q, k, v).numpy()
    assert got.shape == (3, 2, 13, 4)
    np.testing.assert_allclose(got, eager, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got, ref.attention(q, k, v, ref.local_1d_mask(13, 4)),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("block_length", [0, -2, 2.5, True, None])
def test_invalid_block_length(block_length):
    q, k, v = _qkv(1, 1, 8, 4, 4)
    with pytest.raises(ValueError, match="block_length"):
        masked_local_attention_1d(q, k, v, block_length)


def test_invalid_shapes():
    q, k, v = _qkv(1, 1, 8, 4, 4)
    with pytest.raises(ValueError, match="rank 4"):
        masked_local_attention_1d(q[0], k[0], v[0], 2)
    with pytest.raises(ValueError, match="same depth"):
        masked_local_attention_1d(q, k[..., :2], v, 2)
