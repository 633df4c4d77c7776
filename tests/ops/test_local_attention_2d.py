"""Local 2D attention ops, shifts and block order vs NumPy brute force."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from t2t_image.ops.local_attention_2d import (
    block_raster_order,
    local_attention_2d,
    masked_local_attention_2d,
    right_shift_block_raster,
    right_shift_blockwise,
)
from tests.ops import attention_reference as ref

CONFIGS = [
    # (height, width, query_shape, memory_flange)
    (8, 8, (2, 4), (2, 4)),
    (5, 7, (2, 4), (2, 4)),  # padding at the bottom and right
    (8, 8, (2, 4), (0, 0)),  # block only
    (5, 7, (2, 4), (2, 0)),  # top strip only
    (5, 7, (2, 4), (0, 3)),  # left columns only
    (6, 6, (3, 2), (4, 5)),  # flanges larger than the block (several pieces)
    (4, 4, (1, 1), (1, 1)),
    (3, 5, (4, 8), (2, 2)),  # image smaller than one block
    # Flanges of whole blocks take the block-offset path (_block_memory).
    (9, 11, (2, 3), (4, 6)),  # two blocks of flange each way, padding
    (6, 8, (3, 4), (3, 8)),
]


def _qkv(b, n, h, w, d, dv, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, n, h, w, d)).astype(np.float32) * d**-0.5
    k = rng.normal(size=(b, n, h, w, d)).astype(np.float32)
    v = rng.normal(size=(b, n, h, w, dv)).astype(np.float32)
    return q, k, v


# ----------------------------------------------------------------- references


def test_reference_masked_2d_mask_hand_checked():
    mask = ref.masked_local_2d_mask(8, 8, (2, 4), (2, 4))
    # Query (2, 5): block origin (2, 4). Top strip rows 0-1, cols 0..11 -> all
    # 8 columns; left cols 0-3 of rows 2-3; the block's (2, 4), (2, 5).
    want = [r * 8 + c for r in (0, 1) for c in range(8)]
    want += [r * 8 + c for r in (2, 3) for c in range(4)]
    want += [2 * 8 + 4, 2 * 8 + 5]
    assert np.flatnonzero(mask[2 * 8 + 5]).tolist() == sorted(want)
    # Query (0, 0) sees only itself.
    assert np.flatnonzero(mask[0]).tolist() == [0]


@pytest.mark.parametrize("h,w,qs,mf", CONFIGS)
def test_reference_masked_2d_mask_is_causal_in_generation_order(h, w, qs, mf):
    order = ref.generation_order(h, w, qs)
    assert sorted(order.tolist()) == list(range(h * w))
    m = ref.masked_local_2d_mask(h, w, qs, mf)[np.ix_(order, order)]
    assert not np.triu(m, 1).any()
    assert np.diag(m).all()
    # The unmasked region contains the masked one.
    assert not (m & ~ref.local_2d_mask(h, w, qs, mf)[np.ix_(order, order)]).any()


# ---------------------------------------------------------------- attention ops


@pytest.mark.parametrize("h,w,qs,mf", CONFIGS)
@pytest.mark.parametrize("dv", [8, 5])
def test_masked_local_2d_matches_reference(h, w, qs, mf, dv):
    q, k, v = _qkv(2, 2, h, w, 8, dv, seed=h * w + dv)
    out = ops.convert_to_numpy(masked_local_attention_2d(q, k, v, qs, mf))
    want = ref.attention_2d(q, k, v, ref.masked_local_2d_mask(h, w, qs, mf))
    assert out.shape == (2, 2, h, w, dv)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,w,qs,mf", CONFIGS)
@pytest.mark.parametrize("dv", [8, 5])
def test_local_2d_matches_reference(h, w, qs, mf, dv):
    q, k, v = _qkv(2, 2, h, w, 8, dv, seed=h * w + dv + 1)
    out = ops.convert_to_numpy(local_attention_2d(q, k, v, qs, mf))
    want = ref.attention_2d(q, k, v, ref.local_2d_mask(h, w, qs, mf))
    assert out.shape == (2, 2, h, w, dv)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [masked_local_attention_2d, local_attention_2d])
@pytest.mark.parametrize("dtype,atol", [("float16", 5e-3), ("bfloat16", 3e-2)])
def test_half_precision(fn, dtype, atol):
    q, k, v = _qkv(2, 2, 5, 7, 8, 6, seed=11)
    q, k, v = (ops.cast(x, dtype) for x in (q, k, v))
    out = fn(q, k, v, (2, 4), (2, 4))
    assert ops.dtype(out) == dtype
    q32, k32, v32 = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (q, k, v))
    build = ref.masked_local_2d_mask if fn is masked_local_attention_2d else ref.local_2d_mask
    want = ref.attention_2d(q32, k32, v32, build(5, 7, (2, 4), (2, 4)))
    got = ops.convert_to_numpy(ops.cast(out, "float32"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("fn", [masked_local_attention_2d, local_attention_2d])
def test_jit_unknown_batch_matches_eager(fn):
    q, k, v = _qkv(3, 2, 5, 7, 8, 4, seed=12)
    spec = [tf.TensorSpec([None, 2, 5, 7, 8]), tf.TensorSpec([None, 2, 5, 7, 8]),
            tf.TensorSpec([None, 2, 5, 7, 4])]
    jitted = tf.function(lambda a, b, c: fn(a, b, c, (2, 4), (2, 4)),
                         jit_compile=True, input_signature=spec)
    eager = ops.convert_to_numpy(fn(q, k, v, (2, 4), (2, 4)))
    got = jitted(q, k, v).numpy()
    assert got.shape == (3, 2, 5, 7, 4)
    np.testing.assert_allclose(got, eager, atol=1e-6, rtol=0)


def test_masked_output_is_causal_in_generation_order():
    q, k, v = _qkv(1, 2, 5, 7, 8, 8, seed=13)
    order = block_raster_order(5, 7, (2, 4))
    base = ops.convert_to_numpy(masked_local_attention_2d(q, k, v, (2, 4), (2, 4)))
    future = order[20:]
    k2, v2 = k.reshape(1, 2, 35, 8).copy(), v.reshape(1, 2, 35, 8).copy()
    k2[:, :, future] += 3.0
    v2[:, :, future] -= 5.0
    out = masked_local_attention_2d(q, k2.reshape(k.shape), v2.reshape(v.shape),
                                    (2, 4), (2, 4))
    out = ops.convert_to_numpy(out).reshape(1, 2, 35, 8)
    past = order[:20]
    np.testing.assert_array_equal(out[:, :, past], base.reshape(1, 2, 35, 8)[:, :, past])


@pytest.mark.parametrize("fn", [masked_local_attention_2d, local_attention_2d])
def test_invalid_arguments(fn):
    q, k, v = _qkv(1, 1, 4, 4, 4, 4)
    for bad in [(0, 2), (2,), (2, 2, 2), (2.0, 2), "22", None]:
        with pytest.raises(ValueError, match="query_shape"):
            fn(q, k, v, bad, (1, 1))
    for bad in [(-1, 0), (1,), None]:
        with pytest.raises(ValueError, match="memory_flange"):
            fn(q, k, v, (2, 2), bad)
    with pytest.raises(ValueError, match="rank 5"):
        fn(q[0], k[0], v[0], (2, 2), (1, 1))
    with pytest.raises(ValueError, match="height and width"):
        fn(q, k[:, :, :3], v[:, :, :3], (2, 2), (1, 1))


# ------------------------------------------------------- order and the shifts


def test_block_raster_order_hand_checked():
    got = block_raster_order(4, 4, (2, 2))
    assert got.tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert np.issubdtype(got.dtype, np.integer)


@pytest.mark.parametrize("h,w,qs", [(5, 7, (2, 4)), (8, 8, (2, 4)), (3, 5, (4, 8)),
                                    (6, 9, (1, 3)), (7, 2, (3, 1))])
def test_block_raster_order_matches_reference(h, w, qs):
    got = block_raster_order(h, w, qs)
    assert sorted(got.tolist()) == list(range(h * w))
    np.testing.assert_array_equal(got, ref.generation_order(h, w, qs))


def test_block_raster_order_invalid():
    with pytest.raises(ValueError, match="query_shape"):
        block_raster_order(4, 4, (0, 2))
    with pytest.raises(ValueError, match="height, width"):
        block_raster_order(0, 4, (2, 2))


SHIFT_CASES = [(8, 8, (2, 4)), (5, 7, (2, 4)), (4, 4, (2, 2)), (3, 5, (4, 8)),
               (6, 4, (1, 1))]


@pytest.mark.parametrize("h,w,qs", SHIFT_CASES)
def test_right_shift_blockwise(h, w, qs):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
    got = ops.convert_to_numpy(right_shift_blockwise(x, qs))
    np.testing.assert_array_equal(got, ref.right_shift_blockwise(x, qs))


def test_right_shift_blockwise_hand_checked():
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    got = ops.convert_to_numpy(right_shift_blockwise(x, (2, 2)))[0, :, :, 0]
    want = [[0, 1, 0, 3], [2, 5, 4, 7], [0, 9, 0, 11], [10, 13, 12, 15]]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("h,w,qs", SHIFT_CASES)
def test_right_shift_block_raster(h, w, qs):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
    got = ops.convert_to_numpy(right_shift_block_raster(x, qs))
    np.testing.assert_array_equal(got, ref.right_shift_block_raster(x, qs))


def test_right_shift_block_raster_hand_checked():
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    got = ops.convert_to_numpy(right_shift_block_raster(x, (2, 2)))[0, :, :, 0]
    want = [[0, 1, 6, 3], [2, 5, 4, 7], [8, 9, 14, 11], [10, 13, 12, 15]]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fn", [right_shift_blockwise, right_shift_block_raster])
@pytest.mark.parametrize("h,w", [(8, 8), (5, 7)])
def test_shifts_jit_unknown_batch(fn, h, w):
    x = np.random.default_rng(0).normal(size=(3, h, w, 4)).astype(np.float32)
    jitted = tf.function(lambda a: fn(a, (2, 4)), jit_compile=True,
                         input_signature=[tf.TensorSpec([None, h, w, 4])])
    want = getattr(ref, fn.__name__)(x, (2, 4))
    np.testing.assert_array_equal(jitted(x).numpy(), want)
