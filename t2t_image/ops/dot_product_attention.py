"""Global (dense) scaled-dot-product attention and the shared softmax core.

Parmar et al. 2018, "Image Transformer", Sec. 3.2 (self-attention) and
Sec. 3.1/3.3 (encoder and encoder-decoder attention); T2T
``common_attention.dot_product_attention``.

The private helpers here (``_attend``, ``_check_rank``, ``NEG_INF``) are shared
by the local attention ops in this package.
"""

import numpy as np
from keras import ops

# Additive bias for masked logits. Logits are float32 (see ``_attend``), where
# -1e9 is representable and exp(-1e9 - max) underflows to exactly 0. Two such
# biases may be summed (-2e9), still finite, so no inf/NaN can appear.
NEG_INF = -1e9


def _check_rank(name, x, rank):
    """Raise ValueError unless ``x`` has static rank ``rank``."""
    if len(x.shape) != rank:
        raise ValueError(
            f"{name} must have rank {rank}, got shape {tuple(x.shape)}."
        )


def _static_dim(name, x, axis):
    """Return ``x.shape[axis]`` as a python int, or raise ValueError if unknown."""
    dim = x.shape[axis]
    if dim is None:
        raise ValueError(
            f"{name} must have a static dimension {axis}, got shape "
            f"{tuple(x.shape)}."
        )
    return int(dim)


def _check_qkv(q, k, v):
    """Shared validation: equal ranks, q/k depths equal, k/v lengths equal."""
    rank = len(q.shape)
    _check_rank("k", k, rank)
    _check_rank("v", v, rank)
    dq, dk = q.shape[-1], k.shape[-1]
    if dq is not None and dk is not None and dq != dk:
        raise ValueError(
            f"q and k must have the same depth, got q.shape={tuple(q.shape)} "
            f"and k.shape={tuple(k.shape)}."
        )
    if k.shape[:-1] != v.shape[:-1]:
        # Compare static shapes only where both are known.
        for a, b in zip(k.shape[:-1], v.shape[:-1]):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    "k and v must agree on all but the last dimension, got "
                    f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)}."
                )


def _attend(q, k, v, bias=None, weights_dropout=None):
    """Softmax attention over the last two axes, with an additive bias.

    Args:
      q: ``[..., num_queries, depth]``, already scaled.
      k: ``[..., num_keys, depth]``.
      v: ``[..., num_keys, depth_v]``.
      bias: None or a float32 tensor/array broadcastable to
        ``[..., num_queries, num_keys]`` (0 = visible, NEG_INF = masked).
      weights_dropout: None or a callable applied to the float32 attention
        weights after the softmax (e.g. a bound keras Dropout layer).

    Returns:
      ``[..., num_queries, depth_v]`` in v's dtype.
    """
    # matmul of a transposed k rather than einsum: the TF graph executor runs
    # einsum's extra transposes (forward + gradient 1.2-1.4x slower).
    logits = ops.matmul(q, ops.swapaxes(k, -1, -2))
    # Softmax in float32 whatever the input dtype (numerics-sensitive).
    logits = ops.cast(logits, "float32")
    if bias is not None:
        logits = logits + bias
    weights = ops.softmax(logits, axis=-1)
    if weights_dropout is not None:
        weights = weights_dropout(weights)
    return ops.matmul(ops.cast(weights, v.dtype), v)


def dot_product_attention(q, k, v, causal=False, bias=None, weights_dropout=None):
    """Dense attention of every query over every key (no scaling of q).

    Used for the encoder self-attention, the encoder-decoder attention and the
    ``global`` decoder self-attention option (Parmar et al. 2018, Sec. 3;
    T2T ``common_attention.dot_product_attention`` with
    ``attention_bias_lower_triangle`` when causal). Like T2T, q is NOT scaled
    here: the caller multiplies it by ``depth_per_head**-0.5``.

    Logits are computed in the input dtype, then cast to float32 for the bias
    and the softmax; the output is cast back to v's dtype.

    Args:
      q: ``[batch, heads, length_q, depth]`` (batch may be unknown).
      k: ``[batch, heads, length_k, depth]``.
      v: ``[batch, heads, length_k, depth_v]`` (depth_v may differ from depth).
      causal: if True, query i only sees keys j <= i (lower-triangular mask,
        diagonal included); requires static ``length_q == length_k``.
      bias: optional extra additive bias broadcastable to
        ``[batch, heads, length_q, length_k]`` (e.g. T2T's padding bias), added
        in float32.
      weights_dropout: optional callable applied to the float32 attention
        weights after the softmax, e.g. ``lambda w: dropout(w, training=True)``
        (T2T's ``dropout_rate`` on the weights); None = no dropout.

    Returns:
      ``[batch, heads, length_q, depth_v]`` in v's dtype.

    Raises:
      ValueError: on rank/shape mismatch, or causal with different lengths.
    """
    _check_rank("q", q, 4)
    _check_qkv(q, k, v)
    total_bias = None
    if causal:
        lq = _static_dim("q", q, 2)
        lk = _static_dim("k", k, 2)
        if lq != lk:
            raise ValueError(
                "causal=True requires length_q == length_k, got "
                f"q.shape={tuple(q.shape)} and k.shape={tuple(k.shape)}."
            )
        visible = np.tril(np.ones((lq, lk), dtype=bool))
        total_bias = ops.convert_to_tensor(
            np.where(visible, 0.0, NEG_INF).astype(np.float32)
        )
    if bias is not None:
        bias = ops.cast(bias, "float32")
        total_bias = bias if total_bias is None else total_bias + bias
    return _attend(q, k, v, total_bias, weights_dropout)


__all__ = ["dot_product_attention"]

