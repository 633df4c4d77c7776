"""A byte-wise range asymmetric numeral system (rANS) coder with 16-bit frequencies.

The entropy coder of ``t2t-image-compress``. Every coded symbol has an integer
frequency ``freq[s] >= 1`` out of ``TOTAL = 2**16`` (``frequencies``), so no
value is ever impossible and a symbol costs at most 16 bits. The state ``x``
stays in ``[LOWER, 256 * LOWER) = [2**23, 2**31)``: every intermediate fits a
signed 32-bit integer, so the decoder (``decode_symbol``) is written with
``keras.ops`` and runs inside the compiled decoding loop of both backends
(JAX has no 64-bit integers by default), one symbol per image of the batch
per step, with no round trip to the host. The encoder (``encode``) is NumPy:
rANS encodes in reverse order, after the model has produced every symbol's
frequency.

Duda, "Asymmetric numeral systems: entropy coding combining speed of Huffman
coding with compression rate of arithmetic coding" (2013), Sec. 3 (rANS);
renormalisation by bytes as in Giesen's ``rans_byte`` (public domain). Not a
T2T function.

Stream layout of one image: the encoder's final state (4 bytes, big-endian),
then the renormalisation bytes in the order the decoder reads them. The
decoder starts from those 4 bytes and ends in state ``LOWER`` having read
every byte, which ``decode`` checks.
"""

import numpy as np
from keras import ops

PRECISION = 16
TOTAL = 1 << PRECISION
LOWER = 1 << 23
_STATE_BYTES = 4


def frequencies(logits):
    """Integer frequencies of every symbol from logits, the same way everywhere.

    ``1 + floor(p * (TOTAL - V))`` for the softmax probabilities ``p`` of the
    ``V`` symbols, and what is left of ``TOTAL`` to the most likely symbol:
    every symbol gets at least one count, the counts sum to ``TOTAL``.
    Encoder and decoder call this inside the same compiled function, so equal
    logits give equal frequencies.

    Args:
        logits: float tensor `[batch, V]` (unnormalised log-probabilities),
            ``V <= 4096``.

    Returns:
        ``(freq, start)``: int32 `[batch, V]`, each symbol's count and the
        sum of the counts of the symbols before it.
    """
    vocab = logits.shape[-1]
    # Probabilities are numerics-sensitive: float32 whatever the policy.
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    freq = ops.cast(ops.floor(probs * float(TOTAL - vocab)), "int32") + 1
    left = TOTAL - ops.sum(freq, axis=-1)
    freq = freq + ops.one_hot(ops.argmax(probs, axis=-1), vocab, dtype="int32") * left[:, None]
    start = ops.cumsum(freq, axis=-1) - freq
    return freq, start


def start_state(payload):
    """The decoder's state and read position from the first 4 bytes of each stream.

    Args:
        payload: int32 `[batch, N]`, byte values of each image's stream.

    Returns:
        ``(state, position)``: int32 `[batch]` each.
    """
    state = payload[:, 0]
    for i in range(1, _STATE_BYTES):
        state = state * 256 + payload[:, i]
    return state, ops.full_like(state, _STATE_BYTES)


def decode_symbol(freq, start, state, position, payload):
    """Decodes one symbol per stream (rANS decoding step and renormalisation).

    Args:
        freq, start: int32 `[batch, V]` from ``frequencies``.
        state: int32 `[batch]`.
        position: int32 `[batch]`, next byte to read.
        payload: int32 `[batch, N]`.

    Returns:
        ``(symbol, state, position)``, int32 `[batch]` each.
    """
    slot = ops.mod(state, TOTAL)
    ends = start + freq
    symbol = ops.sum(ops.cast(ends <= slot[:, None], "int32"), axis=-1)
    f = ops.take_along_axis(freq, symbol[:, None], axis=-1)[:, 0]
    s = ops.take_along_axis(start, symbol[:, None], axis=-1)[:, 0]
    state = f * ops.floor_divide(state, TOTAL) + slot - s
    last = payload.shape[1] - 1
    # The state is >= 1 here, so three bytes bring it back to >= LOWER.
    for _ in range(3):
        need = state < LOWER
        byte = ops.take_along_axis(payload, ops.minimum(position, last)[:, None], axis=-1)[:, 0]
        state = ops.where(need, state * 256 + byte, state)
        position = position + ops.cast(need, "int32")
    return symbol, state, position


def max_stream_bytes(num_symbols):
    """Longest possible stream for ``num_symbols`` symbols: 2 bytes each plus the state."""
    return 2 * int(num_symbols) + _STATE_BYTES


def encode(start, freq):
    """Encodes one stream per image: symbol ``i`` of image ``b`` has ``start[i, b], freq[i, b]``.

    Args:
        start: integer array `[num_symbols, batch]`.
        freq: integer array `[num_symbols, batch]`, all in ``[1, TOTAL]``.

    Returns:
        list of ``batch`` ``bytes`` objects, the streams.
    """
    start = np.asarray(start, np.int64)
    freq = np.asarray(freq, np.int64)
    num_symbols, batch = freq.shape
    if num_symbols and (freq.min() < 1 or freq.max() > TOTAL):
        raise ValueError(f"frequencies must be in [1, {TOTAL}], got [{freq.min()}, {freq.max()}].")
    out = np.zeros((batch, max_stream_bytes(num_symbols)), np.uint8)
    length = np.zeros(batch, np.int64)
    rows = np.arange(batch)
    state = np.full(batch, LOWER, np.int64)
    bound = (LOWER >> PRECISION) << 8  # state < bound * freq before the coding step
    for i in range(num_symbols - 1, -1, -1):
        f, s = freq[i], start[i]
        for _ in range(2):
            move = state >= bound * f
            if not move.any():
                break
            out[rows[move], length[move]] = state[move] & 255
            length += move
            state = np.where(move, state >> 8, state)
        state = (state // f) * TOTAL + state % f + s
    streams = []
    for b in range(batch):
        head = int(state[b]).to_bytes(_STATE_BYTES, "big")
        streams.append(head + out[b, :length[b]][::-1].tobytes())
    return streams
