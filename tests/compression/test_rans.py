"""The rANS coder: NumPy encoder against the keras.ops decoder, frequencies, DMOL tables."""

import numpy as np
from keras import ops

from t2t_image.compression import rans
from t2t_image.ops.dmol import (
    discretized_mix_logistic_channel_log_probs,
    discretized_mix_logistic_loss,
)


def _random_frequencies(rng, count, batch, vocab):
    """Frequency tables summing to TOTAL, from near-uniform to one symbol taking nearly all."""
    logits = rng.normal(size=(count, batch, vocab)) * rng.choice([0.1, 3.0, 30.0],
                                                                  size=(count, batch, 1))
    freq, start = rans.frequencies(ops.convert_to_tensor(
        logits.reshape(-1, vocab).astype(np.float32)))
    return (np.asarray(freq).reshape(count, batch, vocab),
            np.asarray(start).reshape(count, batch, vocab))


def _decode_all(freq, start, streams):
    count, batch, _ = freq.shape
    payload = np.zeros((batch, rans.max_stream_bytes(count)), np.int32)
    for b, stream in enumerate(streams):
        payload[b, :len(stream)] = np.frombuffer(stream, np.uint8)
    payload = ops.convert_to_tensor(payload)
    state, position = rans.start_state(payload)
    symbols = []
    for i in range(count):
        symbol, state, position = rans.decode_symbol(
            ops.convert_to_tensor(freq[i]), ops.convert_to_tensor(start[i]), state, position,
            payload)
        symbols.append(np.asarray(symbol))
    return np.stack(symbols), np.asarray(state), np.asarray(position)


def test_frequencies_every_symbol_at_least_one_count_summing_to_total():
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(5, 256)).astype(np.float32) * np.array([[0], [1], [10], [100],
                                                                      [1000]], np.float32)
    freq, start = (np.asarray(a) for a in rans.frequencies(ops.convert_to_tensor(logits)))
    assert freq.min() >= 1 and (freq.sum(-1) == rans.TOTAL).all()
    np.testing.assert_array_equal(start, np.cumsum(freq, -1) - freq)
    # Uniform logits: 1 + floor(65280 / 256) = 256 counts each, none left over.
    np.testing.assert_array_equal(freq[0], np.full(256, 256))
    # The counts follow the probabilities to within a count (the argmax takes the rest).
    p = np.exp(logits[1] - logits[1].max())
    p /= p.sum()
    rest = np.arange(256) != np.argmax(p)
    assert np.abs(freq[1][rest] - (1 + p[rest] * (rans.TOTAL - 256))).max() <= 1.0


def test_round_trip_and_cost_of_random_streams():
    rng = np.random.RandomState(1)
    count, batch = 300, 3
    freq, start = _random_frequencies(rng, count, batch, 256)
    # Symbols drawn from the tables themselves, plus the rarest symbols (1 count) now and then.
    symbols = np.array([[rng.choice(256, p=freq[i, b] / rans.TOTAL) for b in range(batch)]
                        for i in range(count)])
    symbols[::37, 0] = np.argmin(freq[::37, 0], -1)
    pick = symbols[..., None]
    f = np.take_along_axis(freq, pick, -1)[..., 0]
    s = np.take_along_axis(start, pick, -1)[..., 0]
    streams = rans.encode(s, f)
    decoded, state, position = _decode_all(freq, start, streams)
    np.testing.assert_array_equal(decoded, symbols)
    np.testing.assert_array_equal(state, rans.LOWER)  # every stream ends where it began
    np.testing.assert_array_equal(position, [len(x) for x in streams])
    ideal = -np.log2(f / rans.TOTAL).sum(0)  # bits
    bits = 8 * np.array([len(x) for x in streams])
    assert (bits >= ideal).all() and (bits <= ideal + 32 + 8 + 0.001 * ideal).all()


def test_empty_and_extreme_streams():
    assert rans.encode(np.zeros((0, 2)), np.ones((0, 2))) == [bytes([0, 128, 0, 0])] * 2
    # The most likely symbol of a nearly certain table costs almost nothing.
    freq = np.full((20000, 1), rans.TOTAL - 255)
    stream, = rans.encode(np.zeros((20000, 1)), freq)
    ideal = -20000 * np.log2(freq[0, 0] / rans.TOTAL)  # 112.5 bits
    assert ideal <= 8 * len(stream) <= ideal + 40


def test_dmol_channel_tables_chain_to_the_pixel_likelihood():
    rng = np.random.RandomState(2)
    pred = rng.normal(size=(6, 30)).astype(np.float32)  # 6 pixels, 3 mixtures
    pixels = rng.randint(0, 256, (6, 3))
    pixels[0] = [0, 255, 128]  # the edge bins
    tables = [np.asarray(discretized_mix_logistic_channel_log_probs(pred, pixels, c))
              for c in range(3)]
    rows = np.arange(6)
    # The last channel's table at the true value is the joint log-probability of the pixel.
    nll = np.asarray(discretized_mix_logistic_loss(pred, pixels / 127.5 - 1.0))
    np.testing.assert_allclose(tables[2][rows, pixels[:, 2]], -nll, rtol=1e-5, atol=1e-5)
    # Each table sums (nearly: mid-point bins) to the previous channel's value at the truth.
    for c in (1, 2):
        total = np.logaddexp.reduce(tables[c], axis=-1)
        np.testing.assert_allclose(total, tables[c - 1][rows, pixels[:, c - 1]], atol=0.05)
    np.testing.assert_allclose(np.logaddexp.reduce(tables[0], axis=-1), 0.0, atol=0.05)
    # The table of a channel does not read the channels after it.
    other = pixels.copy()
    other[:, 1:] = 7
    np.testing.assert_array_equal(
        np.asarray(discretized_mix_logistic_channel_log_probs(pred, other, 0)), tables[0])
