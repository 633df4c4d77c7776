"""N-dimensional sinusoidal position signals (T2T ``common_attention.add_timing_signal_nd``).

The Image Transformer adds a fixed sinusoid position encoding to the pixel
embeddings (Parmar et al. 2018, Sec. 3.1 "Positional encodings": "we use
sine and cosine functions of different frequencies" with ``d/2`` channels
for the row and ``d/2`` for the column coordinate).  T2T generalises this to
``n`` spatial dimensions: each dimension gets ``2 * num_timescales`` channels
(all sines, then all cosines), laid out one dimension after another, and any
leftover channels are zero.
"""

import math

import keras
from keras import ops


def _validate_timescales(min_timescale, max_timescale):
    if not min_timescale > 0:
        raise ValueError(f"min_timescale must be > 0, got min_timescale={min_timescale!r}")
    if not max_timescale > 0:
        raise ValueError(f"max_timescale must be > 0, got max_timescale={max_timescale!r}")


def get_timing_signal_nd(shape_dims, channels, min_timescale=1.0, max_timescale=1.0e4):
    """Returns the n-dimensional sinusoid position signal.

    For ``n = len(shape_dims)`` spatial dimensions, ``num_timescales =
    channels // (2 * n)``, ``log_timescale_increment = log(max_timescale /
    min_timescale) / max(num_timescales - 1, 1)`` and ``inv_timescales[j] =
    min_timescale * exp(-j * log_timescale_increment)``.  For dimension ``i``
    (0-based), channels ``[2*nt*i, 2*nt*i + nt)`` hold ``sin(pos_i *
    inv_timescales)`` and channels ``[2*nt*i + nt, 2*nt*(i+1))`` hold
    ``cos(pos_i * inv_timescales)``, where ``pos_i`` is the 0-based position
    along dimension ``i``.  Channels ``[2*nt*n, channels)`` are zero.

    Corresponds to the signal built inside T2T's
    ``common_attention.add_timing_signal_nd``; Parmar et al. 2018, Sec. 3.1.

    Args:
        shape_dims: sequence of the ``n >= 1`` spatial sizes ``(d1, ..., dn)``.
            Entries may be Python ints or scalar int tensors (dynamic sizes).
        channels: Python int >= 1, the number of channels of the signal.
        min_timescale: float > 0, the smallest timescale.
        max_timescale: float > 0, the largest timescale.

    Returns:
        A float32 tensor of shape ``[1, d1, ..., dn, channels]``.

    Raises:
        ValueError: if ``shape_dims`` is empty, ``channels`` is not a positive
            int, or a timescale is not positive.
    """
    shape_dims = tuple(shape_dims)
    if len(shape_dims) < 1:
        raise ValueError(
            f"shape_dims must name at least one spatial dimension, got shape_dims={shape_dims!r}"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive Python int, got channels={channels!r}")
    _validate_timescales(min_timescale, max_timescale)
    num_dims = len(shape_dims)
    num_timescales = channels // (2 * num_dims)
    log_timescale_increment = math.log(float(max_timescale) / float(min_timescale)) / max(
        num_timescales - 1, 1
    )
    # Position signals are computed in float32 whatever the dtype policy.
    inv_timescales = float(min_timescale) * ops.exp(
        ops.arange(num_timescales, dtype="float32") * -log_timescale_increment
    )
    signal = None
    for dim, length in enumerate(shape_dims):
        position = ops.cast(ops.arange(length), "float32")
        scaled_time = ops.expand_dims(position, 1) * ops.expand_dims(inv_timescales, 0)
        dim_signal = ops.concatenate([ops.sin(scaled_time), ops.cos(scaled_time)], axis=1)
        prepad = dim * 2 * num_timescales
        postpad = channels - (dim + 1) * 2 * num_timescales
        dim_signal = ops.pad(dim_signal, [[0, 0], [prepad, postpad]])
        # Broadcast shape [1, 1, .., length, .., 1, channels] (length at axis 1 + dim).
        broadcast_shape = [1] * (num_dims + 1) + [channels]
        broadcast_shape[1 + dim] = length
        dim_signal = ops.reshape(dim_signal, broadcast_shape)
        signal = dim_signal if signal is None else signal + dim_signal
    return signal


def add_timing_signal_nd(x, min_timescale=1.0, max_timescale=1.0e4):
    """Adds the n-dimensional sinusoid position signal to ``x``.

    See :func:`get_timing_signal_nd` for the definition of the signal.  The
    signal is computed in float32 and cast to ``x``'s dtype before the sum.

    Corresponds to T2T's ``common_attention.add_timing_signal_nd``; Parmar et
    al. 2018, Sec. 3.1 (positional encodings).

    Args:
        x: tensor ``[batch, d1, ..., dn, channels]`` with ``n >= 1`` and a
            static ``channels`` size.
        min_timescale: float > 0, the smallest timescale.
        max_timescale: float > 0, the largest timescale.

    Returns:
        ``x + signal``, same shape and dtype as ``x``.

    Raises:
        ValueError: if ``x`` has rank < 3, an unknown channel size, or a
            timescale is not positive.
    """
    x = ops.convert_to_tensor(x)
    static_shape = tuple(x.shape)
    if len(static_shape) < 3:
        raise ValueError(
            "x must have shape [batch, d1, ..., dn, channels] (rank >= 3), "
            f"got x.shape={static_shape}"
        )
    channels = static_shape[-1]
    if channels is None:
        raise ValueError(f"x must have a static channel dimension, got x.shape={static_shape}")
    _validate_timescales(min_timescale, max_timescale)
    # ops.shape gives Python ints for static dims and scalar tensors for dynamic ones.
    spatial = tuple(ops.shape(x)[1:-1])
    signal = get_timing_signal_nd(spatial, int(channels), min_timescale, max_timescale)
    return x + ops.cast(signal, keras.backend.standardize_dtype(x.dtype))
