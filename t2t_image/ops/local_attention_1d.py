"""Masked local 1D attention (Parmar et al. 2018, Sec. 3.2, "Local 1D Attention").

T2T ``common_attention.masked_local_attention_1d``. Also holds the private
block/window extraction helper shared with ``local_attention_2d``.
"""

import numpy as np
from keras import ops

from t2t_image.ops.dot_product_attention import (
    NEG_INF,
    _attend,
    _check_qkv,
    _check_rank,
    _static_dim,
    dot_product_attention,
)


def _reshape_keep_batch(x, new_tail):
    """Reshape ``x`` to ``[batch] + new_tail`` with a possibly unknown batch."""
    return ops.reshape(x, (-1,) + tuple(new_tail))


def _extract_windows(x, axis, num_blocks, stride, start, size):
    """Overlapping strided windows along one static axis.

    Window ``b`` covers positions ``[start + b*stride, start + b*stride + size)``
    of ``x`` along ``axis``; positions outside ``x`` read zeros (callers mask
    them). The covered range is padded, cut into pieces of ``stride`` and
    window ``b`` gathers pieces ``b .. b + ceil(size / stride) - 1`` with
    static indices. (Static slices + concat give the same result, but in the
    TF graph executor their gradient, one pad per slice, is about 2x slower
    than the gather's segment sum; under XLA both are cheap.)

    Args:
      x: tensor whose ``axis`` (> 0) has a static length; axis 0 is the
        (possibly unknown) batch axis.
      axis: the axis to window.
      num_blocks: number of windows.
      stride: distance between window starts.
      start: offset of window 0 (may be negative).
      size: window length.

    Returns:
      ``x`` with ``axis`` replaced by two axes ``[num_blocks, size]``.
    """
    length = _static_dim("x", x, axis)
    n_pieces = -(-size // stride)
    end = start + (num_blocks - 1 + n_pieces) * stride
    pad_lo = max(0, -start)
    pad_hi = max(0, end - length)
    if pad_lo or pad_hi:
        pad = [[0, 0]] * len(x.shape)
        pad[axis] = [pad_lo, pad_hi]
        x = ops.pad(x, pad)
    lo, hi = start + pad_lo, end + pad_lo
    if (lo, hi) != (0, x.shape[axis]):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(lo, hi)
        x = x[tuple(index)]
    shape = list(ops.shape(x))
    total = num_blocks - 1 + n_pieces
    x = _reshape_keep_batch(x, shape[1:axis] + [total, stride] + shape[axis + 1 :])
    if n_pieces > 1:
        pieces = np.arange(num_blocks)[:, None] + np.arange(n_pieces)[None, :]
        x = ops.take(x, ops.convert_to_tensor(pieces.astype(np.int32)), axis=axis)
        x = _reshape_keep_batch(
            x, shape[1:axis] + [num_blocks, n_pieces * stride] + shape[axis + 1 :]
        )
    if n_pieces * stride != size:
        index = [slice(None)] * len(x.shape)
        index[axis + 1] = slice(0, size)
        x = x[tuple(index)]
    return x


def masked_local_attention_1d(q, k, v, block_length):
    """Causal attention restricted to the current and previous block.

    The (padded) sequence is split into blocks of ``block_length``; block 0
    attends causally to itself (diagonal included); block j >= 1 attends to
    all of block j-1 plus the causal part of block j. If
    ``length < 2 * block_length`` the whole sequence is one causal block (T2T
    sets ``block_length = length`` then). Zero padding up to a multiple of
    ``block_length`` comes after every real position, so the causal mask hides
    it from real queries. Padded query rows are dropped. q is NOT scaled.

    Parmar et al. 2018, Sec. 3.2 (local 1D attention); T2T
    ``common_attention.masked_local_attention_1d``. Unlike T2T, all blocks are
    computed in one batched matmul against ``[previous, current]`` memory (the
    missing previous block of block 0 is masked) instead of a separate first
    block; the result is the same.

    Args:
      q: ``[batch, heads, length, depth]`` (batch may be unknown; length and
        depth static).
      k: ``[batch, heads, length, depth]``.
      v: ``[batch, heads, length, depth_v]``.
      block_length: positive python int.

    Returns:
      ``[batch, heads, length, depth_v]`` in v's dtype.

    Raises:
      ValueError: on a non-positive ``block_length`` or mismatched shapes.
    """
    if isinstance(block_length, bool) or not isinstance(
        block_length, (int, np.integer)
    ) or block_length < 1:
        raise ValueError(
            f"block_length must be a positive int, got {block_length!r}."
        )
    _check_rank("q", q, 4)
    _check_qkv(q, k, v)
    length = _static_dim("q", q, 2)
    block_length = int(block_length)
    if length < 2 * block_length:
        # One causal block over the whole sequence (T2T: block_length = length).
        return dot_product_attention(q, k, v, causal=True)

    num_blocks = -(-length // block_length)
    padded = num_blocks * block_length
    heads = ops.shape(q)[1]
    depth = _static_dim("q", q, 3)
    depth_v = _static_dim("v", v, 3)

    def pad(x):
        if padded == length:
            return x
        return ops.pad(x, [[0, 0], [0, 0], [0, padded - length], [0, 0]])

    q_blocks = _reshape_keep_batch(
        pad(q), (heads, num_blocks, block_length, depth)
    )
    # Memory of block b: positions [(b-1)*bl, (b+1)*bl) -> [.., nb, 2*bl, d].
    k_mem = _extract_windows(
        pad(k), 2, num_blocks, block_length, -block_length, 2 * block_length
    )
    v_mem = _extract_windows(
        pad(v), 2, num_blocks, block_length, -block_length, 2 * block_length
    )

    # Static masks. Query i of a block sees memory slot j iff j <= i + bl
    # (key position <= query position); block 0's previous block is absent.
    i = np.arange(block_length)[:, None]
    j = np.arange(2 * block_length)[None, :]
    band_bias = np.where(j <= i + block_length, 0.0, NEG_INF)  # [bl, 2bl]
    key_pos = (
        (np.arange(num_blocks) - 1)[:, None] * block_length
        + np.arange(2 * block_length)[None, :]
    )
    key_bias = np.where(key_pos >= 0, 0.0, NEG_INF)[:, None, :]  # [nb,1,2bl]
    bias = ops.convert_to_tensor(band_bias.astype(np.float32)) + (
        ops.convert_to_tensor(key_bias.astype(np.float32))
    )  # [nb, bl, 2bl]

    out = _attend(q_blocks, k_mem, v_mem, bias)  # [b, h, nb, bl, dv]
    out = _reshape_keep_batch(out, (heads, padded, depth_v))
    return out[:, :, :length, :]


__all__ = ["masked_local_attention_1d"]
