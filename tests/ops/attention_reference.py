"""NumPy brute-force references for the attention ops, built from the definitions.

Masks are boolean ``[num_queries, num_keys]`` arrays in raster index space
(``index = row * width + col`` for images): ``mask[i, j]`` is True when query
i may see key j. ``attention`` is dense softmax attention over the whole
flattened sequence with such a mask, in float64. Nothing here shares code with
``t2t_image.ops``; other tests (e.g. model causality tests) reuse the masks
and ``generation_order``.
"""

import numpy as np


def causal_mask(length):
    """bool[L, L]: query i sees key j iff j <= i."""
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    return j <= i


def local_1d_mask(length, block_length):
    """bool[L, L] for masked local 1D attention (T2T masked_local_attention_1d).

    Query i sees key j iff j <= i and j's block is i's block or the one before;
    if length < 2 * block_length the whole sequence is one causal block.
    """
    if length < 2 * block_length:
        return causal_mask(length)
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    bi, bj = i // block_length, j // block_length
    return (j <= i) & ((bj == bi) | (bj == bi - 1))


def _coords(height, width):
    """Query (column vectors) and key (row vectors) row/col coordinates."""
    r, c = np.divmod(np.arange(height * width), width)
    return r[:, None], c[:, None], r[None, :], c[None, :]


def masked_local_2d_mask(height, width, query_shape, memory_flange):
    """bool[h*w, h*w] for masked local 2D attention, from the definition.

    With (r0, c0) the top-left corner of the query's block, a key is visible
    iff it lies in the strip of f0 rows above the block spanning columns
    [c0 - f1, c0 + qw + f1), or in the f1 columns left of the block over the
    block's rows, or in the block itself at a block-local raster index <= the
    query's. Only real image positions exist as keys.
    """
    qh, qw = query_shape
    f0, f1 = memory_flange
    qr, qc, kr, kc = _coords(height, width)
    r0, c0 = (qr // qh) * qh, (qc // qw) * qw
    top = (kr >= r0 - f0) & (kr < r0) & (kc >= c0 - f1) & (kc < c0 + qw + f1)
    left = (kr >= r0) & (kr < r0 + qh) & (kc >= c0 - f1) & (kc < c0)
    same_block = (kr // qh == qr // qh) & (kc // qw == qc // qw)
    local_q = (qr - r0) * qw + (qc - c0)
    local_k = (kr - r0) * qw + (kc - c0)
    center = same_block & (local_k <= local_q)
    return top | left | center


def local_2d_mask(height, width, query_shape, memory_flange):
    """bool[h*w, h*w] for unmasked local 2D attention, from the definition.

    A key is visible iff it lies in the query's block grown by f0 rows above
    and below and f1 columns left and right.
    """
    qh, qw = query_shape
    f0, f1 = memory_flange
    qr, qc, kr, kc = _coords(height, width)
    r0, c0 = (qr // qh) * qh, (qc // qw) * qw
    return (
        (kr >= r0 - f0)
        & (kr < r0 + qh + f0)
        & (kc >= c0 - f1)
        & (kc < c0 + qw + f1)
    )


def generation_order(height, width, query_shape):
    """Raster indices in local_2d generation order (explicit loops).

    Blocks in raster order, raster order inside each block, positions outside
    the image skipped.
    """
    qh, qw = query_shape
    order = []
    for br in range(0, height, qh):
        for bc in range(0, width, qw):
            for r in range(br, br + qh):
                for c in range(bc, bc + qw):
                    if r < height and c < width:
                        order.append(r * width + c)
    return np.array(order, dtype=np.int64)


def attention(q, k, v, mask):
    """Dense softmax attention in float64 with a boolean mask (no scaling).

    Args:
      q: [..., Lq, d]; k: [..., Lk, d]; v: [..., Lk, dv]; mask: bool[Lq, Lk].

    Returns:
      float64 [..., Lq, dv].
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    logits = q @ np.swapaxes(k, -1, -2)
    logits = np.where(mask, logits, -np.inf)
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def attention_2d(q, k, v, mask):
    """``attention`` on [b, n, h, w, d] images with a raster-space mask."""
    b, n, h, w, _ = q.shape

    def flat(x):
        return np.asarray(x).reshape(b, n, h * w, x.shape[-1])

    out = attention(flat(q), flat(k), flat(v), mask)
    return out.reshape(b, n, h, w, -1)


def right_shift_blockwise(x, query_shape):
    """T2T right_shift_blockwise on [b, h, w, c], with explicit loops.

    On the zero-padded grid each position takes the value of the previous
    position in its block's local raster order; block starts get zeros.
    """
    qh, qw = query_shape
    b, h, w, c = x.shape
    hp, wp = -(-h // qh) * qh, -(-w // qw) * qw
    padded = np.zeros((b, hp, wp, c), dtype=x.dtype)
    padded[:, :h, :w] = x
    out = np.zeros_like(padded)
    for br in range(0, hp, qh):
        for bc in range(0, wp, qw):
            cells = [(r, cc) for r in range(br, br + qh) for cc in range(bc, bc + qw)]
            for prev, cur in zip(cells[:-1], cells[1:]):
                out[:, cur[0], cur[1]] = padded[:, prev[0], prev[1]]
    return out[:, :h, :w]


def right_shift_block_raster(x, query_shape):
    """Shift by one along ``generation_order``; the first position gets zeros."""
    b, h, w, c = x.shape
    order = generation_order(h, w, query_shape)
    flat = x.reshape(b, h * w, c)
    out = np.zeros_like(flat)
    for prev, cur in zip(order[:-1], order[1:]):
        out[:, cur] = flat[:, prev]
    return out.reshape(b, h, w, c)
