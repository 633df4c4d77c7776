"""Local 2D attention over query blocks (Parmar et al. 2018, Sec. 3.2, "Local 2D").

T2T ``common_attention.masked_local_attention_2d``,
``common_attention.local_attention_2d`` and
``common_attention.right_shift_blockwise``, plus the block-raster generation
order helpers used by the model and the cached sampler.

Layout: the image is zero-padded at the bottom/right to a multiple of
``query_shape``; query blocks tile it in row-major block order, row-major
inside each block. Memory regions are cut with pad/reshape and gathers of
static indices (whole query blocks when the flanges are multiples of the
query shape, as in the paper's models; strided windows otherwise) and every
block is processed in one batched matmul.
"""

import numpy as np
from keras import ops

from t2t_image.ops.dot_product_attention import (
    NEG_INF,
    _attend,
    _check_qkv,
    _check_rank,
    _static_dim,
)
from t2t_image.ops.local_attention_1d import _extract_windows, _reshape_keep_batch


def _check_pair(name, value, minimum):
    """Validate a pair of python ints >= minimum; return it as a tuple."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool)
            for x in value
        )
        and all(x >= minimum for x in value)
    )
    if not ok:
        raise ValueError(
            f"{name} must be a pair of ints >= {minimum}, got {value!r}."
        )
    return int(value[0]), int(value[1])


def _grid(height, width, query_shape):
    """Number of query blocks along height and width."""
    return -(-height // query_shape[0]), -(-width // query_shape[1])


def _region(x, query_shape, region):
    """Cut one memory region per query block out of ``x``.

    Args:
      x: ``[batch, heads, height, width, depth]``.
      query_shape: (qh, qw).
      region: (row_start, rows, col_start, cols) relative to each block's
        top-left corner.

    Returns:
      ``[batch, heads, num_blocks, rows * cols, depth]``, blocks in raster
      order, region positions in raster order; out-of-image positions are 0.
    """
    qh, qw = query_shape
    row_start, rows, col_start, cols = region
    nbh, nbw = _grid(x.shape[2], x.shape[3], query_shape)
    y = _extract_windows(x, 2, nbh, qh, row_start, rows)  # [b,n,nbh,rows,W',d]
    y = _extract_windows(y, 4, nbw, qw, col_start, cols)  # [b,n,nbh,rows,nbw,cols,d]
    y = ops.transpose(y, (0, 1, 2, 4, 3, 5, 6))
    shape = ops.shape(y)
    return _reshape_keep_batch(y, (shape[1], nbh * nbw, rows * cols, shape[6]))


def _region_valid(height, width, query_shape, region):
    """NumPy bool ``[num_blocks, rows * cols]``: region slot inside the image."""
    qh, qw = query_shape
    row_start, rows, col_start, cols = region
    nbh, nbw = _grid(height, width, query_shape)
    r = np.arange(nbh)[:, None] * qh + row_start + np.arange(rows)[None, :]
    c = np.arange(nbw)[:, None] * qw + col_start + np.arange(cols)[None, :]
    r_ok = (r >= 0) & (r < height)  # [nbh, rows]
    c_ok = (c >= 0) & (c < width)  # [nbw, cols]
    valid = r_ok[:, None, :, None] & c_ok[None, :, None, :]  # [nbh,nbw,rows,cols]
    return valid.reshape(nbh * nbw, rows * cols)


def _blocks_to_image(x, height, width, query_shape):
    """``[b, n, num_blocks, qh*qw, d]`` -> ``[b, n, height, width, d]``."""
    qh, qw = query_shape
    nbh, nbw = _grid(height, width, query_shape)
    shape = ops.shape(x)
    x = _reshape_keep_batch(x, (shape[1], nbh, nbw, qh, qw, shape[4]))
    x = ops.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    x = _reshape_keep_batch(x, (shape[1], nbh * qh, nbw * qw, shape[4]))
    return x[:, :, :height, :width, :]


def _aligned(query_shape, regions):
    """True when every region is a whole number of query blocks on the grid."""
    qh, qw = query_shape
    return all(
        r0 % qh == 0 and rows % qh == 0 and c0 % qw == 0 and cols % qw == 0
        for r0, rows, c0, cols in regions
    )


def _block_offsets(query_shape, regions):
    """(block-row, block-col) offsets of the blocks making up aligned regions."""
    qh, qw = query_shape
    offsets = []
    for r0, rows, c0, cols in regions:
        offsets.append([
            (di, dj)
            for di in range(r0 // qh, (r0 + rows) // qh)
            for dj in range(c0 // qw, (c0 + cols) // qw)
        ])
    return offsets


def _to_blocks(x, query_shape, pad_blocks):
    """``[b, n, h, w, d]`` -> ``[b, n, NBH, NBW, qh*qw, d]`` on a padded grid.

    ``pad_blocks`` = (top, bottom, left, right) extra whole blocks of zeros
    around the image's own (bottom/right zero-padded) block grid.
    """
    qh, qw = query_shape
    height, width = x.shape[2], x.shape[3]
    nbh, nbw = _grid(height, width, query_shape)
    top, bottom, left, right = pad_blocks
    pad_h = (top * qh, (nbh + bottom) * qh - height)
    pad_w = (left * qw, (nbw + right) * qw - width)
    if any(pad_h) or any(pad_w):
        x = ops.pad(x, [[0, 0], [0, 0], list(pad_h), list(pad_w), [0, 0]])
    rows, cols = nbh + top + bottom, nbw + left + right
    shape = ops.shape(x)
    x = _reshape_keep_batch(x, (shape[1], rows, qh, cols, qw, shape[4]))
    x = ops.transpose(x, (0, 1, 2, 4, 3, 5, 6))
    return _reshape_keep_batch(x, (shape[1], rows, cols, qh * qw, shape[4]))


def _block_memory(x, query_shape, offsets):
    """Memory ``[b, n, num_blocks, len(offsets) * qh*qw, d]`` of whole blocks.

    Block (i, j)'s memory is blocks (i + di, j + dj) in ``offsets`` order,
    zeros off the grid: one blocking transpose, then one gather of whole
    blocks with static indices. (Static slices + concat give the same result,
    but in the TF graph executor their gradient, one pad per slice, made the
    cut 3.5x slower than the gather's segment sum.)
    """
    height, width = x.shape[2], x.shape[3]
    nbh, nbw = _grid(height, width, query_shape)
    rows = [di for di, _ in offsets]
    cols = [dj for _, dj in offsets]
    top, bottom = max(0, -min(rows)), max(0, max(rows))
    left, right = max(0, -min(cols)), max(0, max(cols))
    blocks = _to_blocks(x, query_shape, (top, bottom, left, right))
    if offsets == [(0, 0)]:
        shape = ops.shape(blocks)
        return _reshape_keep_batch(blocks, (shape[1], nbh * nbw, shape[4], shape[5]))
    padded_w = nbw + left + right
    i = np.arange(nbh)[:, None, None]
    j = np.arange(nbw)[None, :, None]
    di = np.array(rows)[None, None, :]
    dj = np.array(cols)[None, None, :]
    index = ((top + i + di) * padded_w + left + j + dj).reshape(-1)
    shape = ops.shape(blocks)
    flat = _reshape_keep_batch(
        blocks, (shape[1], shape[2] * shape[3], shape[4], shape[5])
    )
    out = ops.take(flat, ops.convert_to_tensor(index.astype(np.int32)), axis=2)
    return _reshape_keep_batch(
        out, (shape[1], nbh * nbw, len(offsets) * shape[4], shape[5])
    )


def _block_valid(height, width, query_shape, offsets):
    """NumPy bool ``[num_blocks, len(offsets) * qh*qw]`` for ``_block_memory``."""
    qh, qw = query_shape
    nbh, nbw = _grid(height, width, query_shape)
    bi = np.arange(nbh)[:, None, None, None, None, None]
    bj = np.arange(nbw)[None, :, None, None, None, None]
    di = np.array([o[0] for o in offsets])[None, None, :, None, None, None]
    dj = np.array([o[1] for o in offsets])[None, None, :, None, None, None]
    r = np.arange(qh)[None, None, None, :, None, None]
    c = np.arange(qw)[None, None, None, None, :, None]
    row = (bi + di) * qh + r
    col = (bj + dj) * qw + c
    valid = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    valid = np.broadcast_to(valid, (nbh, nbw, len(offsets), qh, qw, 1))
    return valid.reshape(nbh * nbw, len(offsets) * qh * qw)


def _local_2d(q, k, v, query_shape, regions, center_causal):
    """Shared body: attend each query block to the concatenated regions.

    ``regions`` is a list of static (row_start, rows, col_start, cols); when
    ``center_causal`` the last region must be the block itself and gets a
    lower-triangular mask in block-local raster order.
    """
    _check_rank("q", q, 5)
    _check_qkv(q, k, v)
    height = _static_dim("q", q, 2)
    width = _static_dim("q", q, 3)
    for name, x in (("k", k), ("v", v)):
        if (x.shape[2], x.shape[3]) != (height, width):
            raise ValueError(
                f"{name} must have the same height and width as q, got "
                f"q.shape={tuple(q.shape)} and {name}.shape={tuple(x.shape)}."
            )
    _static_dim("q", q, 4)
    _static_dim("v", v, 4)
    block = (0, query_shape[0], 0, query_shape[1])
    if _aligned(query_shape, regions):
        # Regions of whole blocks (e.g. the paper's query (8, 16), flange
        # (8, 32)): memory keys in block order instead of region-raster order.
        # Attention does not depend on the order of its keys; the static bias
        # follows the same order.
        offsets = _block_offsets(query_shape, regions)
        q_blocks = _block_memory(q, query_shape, [(0, 0)])
        flat = [o for group in offsets for o in group]
        k_mem = _block_memory(k, query_shape, flat)
        v_mem = _block_memory(v, query_shape, flat)
        valid = _block_valid(height, width, query_shape, flat)
    else:
        q_blocks = _region(q, query_shape, block)  # [b, n, nb, Q, d]
        k_mem = ops.concatenate([_region(k, query_shape, r) for r in regions], axis=3)
        v_mem = ops.concatenate([_region(v, query_shape, r) for r in regions], axis=3)
        valid = np.concatenate(
            [_region_valid(height, width, query_shape, r) for r in regions], axis=1
        )
    # Static bias: key slot outside the image ([nb, 1, M]) plus, for the
    # masked version, the causal mask of the center block ([Q, M]).
    bias = ops.convert_to_tensor(
        np.where(valid, 0.0, NEG_INF).astype(np.float32)[:, None, :]
    )
    if center_causal:
        num_q = query_shape[0] * query_shape[1]
        flange = valid.shape[1] - num_q
        visible = np.concatenate(
            [
                np.ones((num_q, flange), dtype=bool),
                np.tril(np.ones((num_q, num_q), dtype=bool)),
            ],
            axis=1,
        )
        bias = bias + ops.convert_to_tensor(
            np.where(visible, 0.0, NEG_INF).astype(np.float32)
        )
    nbw = _grid(height, width, query_shape)[1]
    top = regions[0]
    skip = top[1] * top[3] if center_causal and len(regions) > 1 and top[0] + top[1] <= 0 else 0
    if skip and _static_dim("q", q_blocks, 2) > nbw:
        # The first block row's top strip lies wholly above the image (all its
        # keys masked, softmax weight exactly 0): attend that row without it
        # instead of computing masked logits (saves work, same result).
        # Cut with split, not slicing: in the TF graph executor a slice's
        # gradient writes a zero-padded copy of the whole memory tensor.
        q_first, q_rest = ops.split(q_blocks, [nbw], axis=2)
        k_first, k_rest = ops.split(k_mem, [nbw], axis=2)
        v_first, v_rest = ops.split(v_mem, [nbw], axis=2)
        k_first = ops.split(k_first, [skip], axis=3)[1]
        v_first = ops.split(v_first, [skip], axis=3)[1]
        first = _attend(q_first, k_first, v_first, bias[:nbw, :, skip:])
        rest = _attend(q_rest, k_rest, v_rest, bias[nbw:])
        out = ops.concatenate([first, rest], axis=2)  # [b, n, nb, Q, dv]
    else:
        out = _attend(q_blocks, k_mem, v_mem, bias)  # [b, n, nb, Q, dv]
    return _blocks_to_image(out, height, width, query_shape)


def masked_local_attention_2d(q, k, v, query_shape, memory_flange):
    """Causal local 2D attention (decoder self-attention, ``local_2d``).

    Each query block of ``query_shape`` (blocks in raster order over the
    zero-padded grid, raster order inside a block) attends to, in this memory
    order: the strip ``memory_flange[0]`` rows high directly above the block,
    spanning the block's columns plus ``memory_flange[1]`` columns on each
    side; then the ``memory_flange[1]`` columns left of the block over the
    block's own rows; then the block itself under a lower-triangular mask
    (diagonal included) in block-local raster order. Every one of these is
    already generated in block-raster order (see ``block_raster_order``).
    q is NOT scaled.

    Parmar et al. 2018, Sec. 3.2 (local 2D attention, Fig. 2 right); T2T
    ``common_attention.masked_local_attention_2d`` (memory layout of
    ``get_memory_region``). Difference from T2T: any key position outside the
    real image (above row 0, left of column 0, right of the last column, or in
    the bottom/right padding, including padding inside the center block) is
    masked by a static bias from the shapes. T2T instead masks flange keys
    whose vector is all zeros (``embedding_to_padding``) and leaves zero-padded
    keys inside the center block visible.

    Args:
      q: ``[batch, heads, height, width, depth]`` (batch may be unknown;
        height, width, depth static).
      k: ``[batch, heads, height, width, depth]``.
      v: ``[batch, heads, height, width, depth_v]``.
      query_shape: (qh, qw) positive ints.
      memory_flange: (f0, f1) non-negative ints.

    Returns:
      ``[batch, heads, height, width, depth_v]`` in v's dtype.

    Raises:
      ValueError: on invalid ``query_shape``/``memory_flange`` or shapes.
    """
    qh, qw = _check_pair("query_shape", query_shape, 1)
    f0, f1 = _check_pair("memory_flange", memory_flange, 0)
    regions = []
    if f0 > 0:
        regions.append((-f0, f0, -f1, qw + 2 * f1))  # top strip
    if f1 > 0:
        regions.append((0, qh, -f1, f1))  # left of the block
    regions.append((0, qh, 0, qw))  # the block itself (causal)
    return _local_2d(q, k, v, (qh, qw), regions, center_causal=True)


def local_attention_2d(q, k, v, query_shape, memory_flange):
    """Unmasked local 2D attention (e.g. an image encoder).

    Each query block attends to itself grown by ``memory_flange[0]`` rows
    above and below and ``memory_flange[1]`` columns left and right (memory in
    raster order over that window); positions outside the real image are
    masked. q is NOT scaled.

    Parmar et al. 2018, Sec. 3.2; T2T ``common_attention.local_attention_2d``.
    Differences from T2T: out-of-image keys are masked by a static bias (T2T
    masks all-zero key vectors), and the flange is symmetric as documented
    (T2T pads ``[memory_flange[0], memory_flange[1]]`` on both spatial axes,
    which only agrees when the two flanges are equal).

    Args:
      q: ``[batch, heads, height, width, depth]`` (batch may be unknown).
      k: ``[batch, heads, height, width, depth]``.
      v: ``[batch, heads, height, width, depth_v]``.
      query_shape: (qh, qw) positive ints.
      memory_flange: (f0, f1) non-negative ints.

    Returns:
      ``[batch, heads, height, width, depth_v]`` in v's dtype.

    Raises:
      ValueError: on invalid ``query_shape``/``memory_flange`` or shapes.
    """
    qh, qw = _check_pair("query_shape", query_shape, 1)
    f0, f1 = _check_pair("memory_flange", memory_flange, 0)
    regions = [(-f0, qh + 2 * f0, -f1, qw + 2 * f1)]
    return _local_2d(q, k, v, (qh, qw), regions, center_causal=False)


def block_raster_order(height, width, query_shape):
    """Generation order of the local_2d decoder as raster indices.

    Blocks of ``query_shape`` in raster order over the padded grid, raster
    order inside each block, padding positions skipped.

    Parmar et al. 2018, Sec. 3.2 / Fig. 2 (order in which local 2D attention
    generates pixels).

    Args:
      height: positive int.
      width: positive int.
      query_shape: (qh, qw) positive ints.

    Returns:
      NumPy int64 array of length ``height * width``: ``order[t]`` is the
      raster index ``row * width + col`` of the t-th generated position (a
      permutation of ``range(height * width)``).

    Raises:
      ValueError: on non-positive sizes.
    """
    height, width = _check_pair("(height, width)", (height, width), 1)
    qh, qw = _check_pair("query_shape", query_shape, 1)
    nbh, nbw = _grid(height, width, (qh, qw))
    rows = np.arange(nbh * qh)
    cols = np.arange(nbw * qw)
    index = rows[:, None] * width + cols[None, :]
    real = (rows[:, None] < height) & (cols[None, :] < width)
    index = np.where(real, index, -1)
    index = index.reshape(nbh, qh, nbw, qw).transpose(0, 2, 1, 3).reshape(-1)
    return index[index >= 0].astype(np.int64)


def _image_to_blocks(x, query_shape):
    """``[b, h, w, c]`` -> zero-padded ``[b, num_blocks * qh * qw, c]``."""
    qh, qw = query_shape
    height, width = _static_dim("x", x, 1), _static_dim("x", x, 2)
    channels = ops.shape(x)[3]
    nbh, nbw = _grid(height, width, query_shape)
    pad_h, pad_w = nbh * qh - height, nbw * qw - width
    if pad_h or pad_w:
        x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    x = _reshape_keep_batch(x, (nbh, qh, nbw, qw, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return _reshape_keep_batch(x, (nbh * nbw * qh * qw, channels))


def _blocks_to_image_4d(x, height, width, query_shape):
    """Inverse of ``_image_to_blocks`` (padding removed)."""
    qh, qw = query_shape
    nbh, nbw = _grid(height, width, query_shape)
    channels = ops.shape(x)[2]
    x = _reshape_keep_batch(x, (nbh, nbw, qh, qw, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = _reshape_keep_batch(x, (nbh * qh, nbw * qw, channels))
    return x[:, :height, :width, :]


def _check_image(x):
    _check_rank("x", x, 4)
    return _static_dim("x", x, 1), _static_dim("x", x, 2)


def right_shift_blockwise(x, query_shape):
    """Shift right by one inside every query block (local_2d decoder input).

    On the zero-padded grid, inside each block in block-local raster order,
    every element takes the previous element's value and the first element of
    each block gets zeros (so a position after a padding column inside a
    block receives the padding's zeros, as in T2T).

    T2T ``common_attention.right_shift_blockwise`` (used by
    ``image_transformer_2d.prepare_decoder`` for local_2d).

    Args:
      x: ``[batch, height, width, channels]`` (batch may be unknown).
      query_shape: (qh, qw) positive ints.

    Returns:
      Tensor of x's shape and dtype.
    """
    qh, qw = _check_pair("query_shape", query_shape, 1)
    height, width = _check_image(x)
    nbh, nbw = _grid(height, width, (qh, qw))
    channels = ops.shape(x)[3]
    flat = _image_to_blocks(x, (qh, qw))
    blocks = _reshape_keep_batch(flat, (nbh * nbw, qh * qw, channels))
    blocks = ops.pad(blocks, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1, :]
    flat = _reshape_keep_batch(blocks, (nbh * nbw * qh * qw, channels))
    return _blocks_to_image_4d(flat, height, width, (qh, qw))


def right_shift_block_raster(x, query_shape):
    """Shift right by one along the whole block-raster generation order.

    Position ``order[t]`` (see ``block_raster_order``) gets the value of
    ``order[t - 1]``; only the very first position gets zeros; padding is
    skipped. Unlike ``right_shift_blockwise``, every position sees the
    previous generated pixel, also at block starts.

    No T2T counterpart (alternative to ``right_shift_blockwise``; equals
    T2T ``shift_right`` applied in generation order).

    Args:
      x: ``[batch, height, width, channels]`` (batch may be unknown).
      query_shape: (qh, qw) positive ints.

    Returns:
      Tensor of x's shape and dtype.
    """
    qh, qw = _check_pair("query_shape", query_shape, 1)
    height, width = _check_image(x)
    if height % qh == 0 and width % qw == 0:
        # No padding: generation order is the blocked layout; pure reshapes.
        flat = _image_to_blocks(x, (qh, qw))
        flat = ops.pad(flat, [[0, 0], [1, 0], [0, 0]])[:, :-1, :]
        return _blocks_to_image_4d(flat, height, width, (qh, qw))
    # Padding would interleave with real positions in the blocked layout, so
    # take the previous real position through one static-index gather
    # (memory-bound, done once on the decoder input).
    order = block_raster_order(height, width, (qh, qw))
    num = height * width
    source = np.empty(num, dtype=np.int32)
    source[order[1:]] = order[:-1]
    source[order[0]] = num  # points at the appended zero row
    channels = ops.shape(x)[3]
    flat = _reshape_keep_batch(x, (num, channels))
    flat = ops.pad(flat, [[0, 0], [0, 1], [0, 0]])
    flat = ops.take(flat, ops.convert_to_tensor(source), axis=1)
    return _reshape_keep_batch(flat, (height, width, channels))


__all__ = [
    "block_raster_order",
    "local_attention_2d",
    "masked_local_attention_2d",
    "right_shift_block_raster",
    "right_shift_blockwise",
]
