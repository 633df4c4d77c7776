"""Tests for t2t_image.ops.categorical: log-probabilities, tempered sampling,
explicit stateless seeds, XLA compilation."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.ops.categorical import (
    categorical_log_prob,
    check_top_k,
    sample_categorical,
    stateless_uniform,
    top_k_logits,
)


def log_softmax(a, axis=-1):
    """float64 NumPy log-softmax (the reference)."""
    a = np.asarray(a, np.float64)
    shifted = a - np.max(a, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(a, axis=-1):
    return np.exp(log_softmax(a, axis))


LOGITS = np.array([1.0, -0.5, 0.3, 2.0, -1.2], np.float32)
NUM_SAMPLES = 50_000  # per-class frequency standard error <= sqrt(0.25 / n) = 0.0022


def frequencies(samples, num_classes):
    return (
        np.bincount(np.asarray(samples).ravel(), minlength=num_classes) / np.asarray(samples).size
    )


def test_log_prob_matches_reference_and_sums_to_one():
    logits = np.random.default_rng(0).normal(0.0, 3.0, (4, 6, 9)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 9, (4, 6))
    got = categorical_log_prob(logits, labels).numpy()
    reference = log_softmax(logits.astype(np.float64), -1)
    assert got.dtype == np.float32 and got.shape == (4, 6)
    np.testing.assert_allclose(
        got, np.take_along_axis(reference, labels[..., None], -1)[..., 0], atol=1e-5
    )
    # Every class of every position: probabilities sum to 1.
    all_labels = np.broadcast_to(np.arange(9), (4, 6, 9))
    tiled = np.broadcast_to(logits[..., None, :], (4, 6, 9, 9))
    total = np.exp(categorical_log_prob(tiled, all_labels).numpy().astype(np.float64)).sum(-1)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_log_prob_is_float32_for_low_precision_logits(dtype):
    logits = tf.cast(tf.constant(LOGITS[None]), dtype)
    got = categorical_log_prob(logits, tf.constant([3]))
    assert got.dtype == tf.float32
    expected = log_softmax(tf.cast(logits, tf.float32).numpy().astype(np.float64), -1)[0, 3]
    np.testing.assert_allclose(got.numpy()[0], expected, atol=1e-6)


def test_log_prob_extreme_logits_are_finite():
    logits = np.array([[1e4, -1e4, 0.0]], np.float32)
    got = categorical_log_prob(np.repeat(logits, 3, 0), np.arange(3)).numpy()
    np.testing.assert_allclose(got, [0.0, -2e4, -1e4], rtol=1e-6)


@pytest.mark.parametrize(
    "temperature, expected_logits",
    [(1.0, LOGITS), (0.5, 2.0 * LOGITS), (tf.constant(0.5), 2.0 * LOGITS), (2.0, 0.5 * LOGITS)],
)
def test_tempered_sample_frequencies(temperature, expected_logits):
    logits = np.broadcast_to(LOGITS, (NUM_SAMPLES, 5))
    samples = sample_categorical(logits, (7, 3), temperature=temperature).numpy()
    assert samples.dtype == np.int32 and samples.shape == (NUM_SAMPLES,)
    expected = softmax(expected_logits.astype(np.float64))
    assert np.max(np.abs(frequencies(samples, 5) - expected)) < 0.01
    # Not vacuous: the untempered softmax is far from the tempered one.
    if temperature is not None and not np.allclose(expected_logits, LOGITS):
        assert np.max(np.abs(frequencies(samples, 5) - softmax(LOGITS.astype(np.float64)))) > 0.05


@pytest.mark.parametrize("temperature", [0.0, 0, tf.constant(0.0)])
def test_temperature_zero_is_argmax(temperature):
    logits = np.random.default_rng(2).normal(0.0, 1.0, (3, 16, 10)).astype(np.float32)
    got = sample_categorical(logits, (1, 1), temperature=temperature).numpy()
    np.testing.assert_array_equal(got, np.argmax(logits, -1))


def test_seed_reproducibility_and_accepted_seed_types():
    logits = np.zeros((4, 64, 10), np.float32)
    first = sample_categorical(logits, (1, 2)).numpy()
    for same in ([1, 2], np.array([1, 2]), tf.constant([1, 2], tf.int32)):
        np.testing.assert_array_equal(first, sample_categorical(logits, same).numpy())
    assert np.mean(first != sample_categorical(logits, (1, 3)).numpy()) > 0.5
    assert np.mean(first != sample_categorical(logits, (2, 2)).numpy()) > 0.5
    int64_seed = sample_categorical(logits, tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(
        int64_seed, sample_categorical(logits, tf.constant([1, 2], tf.int64)).numpy()
    )
    # A Python int s means (s, 0).
    np.testing.assert_array_equal(
        sample_categorical(logits, 9).numpy(), sample_categorical(logits, (9, 0)).numpy()
    )


def test_stateless_uniform_range_and_reproducibility():
    u = stateless_uniform((1000,), (3, 4)).numpy()
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u, stateless_uniform((1000,), (3, 4)).numpy())
    assert abs(u.mean() - 0.5) < 0.05


def test_compiled_with_tensor_temperature_and_while_loop():
    sampler = tf.function(sample_categorical, jit_compile=True)
    logits = tf.constant(np.broadcast_to(LOGITS, (NUM_SAMPLES, 5)))
    seed = tf.constant([11, 12], tf.int32)
    hot = sampler(logits, seed, tf.constant(0.5)).numpy()
    np.testing.assert_array_equal(hot, sampler(logits, seed, tf.constant(0.5)).numpy())
    expected = softmax(2.0 * LOGITS.astype(np.float64))
    assert np.max(np.abs(frequencies(hot, 5) - expected)) < 0.01
    np.testing.assert_array_equal(
        sampler(logits, seed, tf.constant(0.0)).numpy(), np.full(NUM_SAMPLES, 3)
    )

    @tf.function(jit_compile=True)
    def loop(seed, temperature):
        # A per-step seed derived from the loop counter, as an autoregressive sampler would.
        def body(step, counts):
            step_seed = seed + tf.stack([0, step])
            drawn = sample_categorical(logits[:1000], step_seed, temperature)
            return step + 1, counts + tf.reduce_sum(tf.one_hot(drawn, 5, dtype=tf.int32), 0)

        return tf.while_loop(
            lambda step, _: step < 10, body, (tf.constant(0), tf.zeros(5, tf.int32))
        )[1]

    counts = loop(seed, tf.constant(1.0)).numpy()
    assert counts.sum() == 10_000
    assert np.max(np.abs(counts / 10_000 - softmax(LOGITS.astype(np.float64)))) < 0.02
    np.testing.assert_array_equal(counts, loop(seed, tf.constant(1.0)).numpy())


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        sample_categorical(LOGITS, (1, 2, 3))
    with pytest.raises(ValueError, match="seed"):
        sample_categorical(LOGITS, tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="seed"):
        sample_categorical(LOGITS, "seed")
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(LOGITS, (1, 2), temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        sample_categorical(LOGITS, (1, 2), temperature=tf.constant([1.0, 2.0]))
    with pytest.raises(ValueError, match="labels"):
        categorical_log_prob(np.zeros((2, 3, 4)), np.zeros((2,), np.int32))


# ------------------------------------------------------------------------ top-k
LOGITS8 = np.array([0.3, 1.4, -0.2, 1.1, 0.9, -1.0, 0.0, 1.25], np.float32)


def chi_square_limit(df, z=4.75):
    """Wilson-Hilferty approximation of the chi-square quantile at one-sided z (p ~ 1e-6)."""
    return df * (1.0 - 2.0 / (9 * df) + z * np.sqrt(2.0 / (9 * df))) ** 3


@pytest.mark.parametrize("top_k,temperature", [(3, 1.0), (5, 0.7), (3, tf.constant(2.0))])
def test_top_k_draws_only_the_k_largest_with_renormalised_frequencies(top_k, temperature):
    logits = np.broadcast_to(LOGITS8, (NUM_SAMPLES, 8))
    samples = sample_categorical(logits, (5, 9), temperature=temperature, top_k=top_k).numpy()
    allowed = np.argsort(-LOGITS8)[:top_k]
    assert np.isin(samples, allowed).all()
    t = float(temperature)
    expected = softmax(LOGITS8[allowed].astype(np.float64) / t)  # renormalised over the top k
    counts = np.bincount(samples, minlength=8)[allowed]
    chi2 = np.sum((counts - NUM_SAMPLES * expected) ** 2 / (NUM_SAMPLES * expected))
    assert chi2 < chi_square_limit(top_k - 1)
    # Not vacuous: every one of the k allowed values is drawn.
    assert (counts > 0).all()


def test_top_k_one_is_argmax_and_full_k_changes_nothing():
    logits = np.random.default_rng(3).normal(0.0, 1.0, (4, 32, 10)).astype(np.float32)
    for temperature in (1.0, 5.0):
        got = sample_categorical(logits, (2, 2), temperature=temperature, top_k=1).numpy()
        np.testing.assert_array_equal(got, np.argmax(logits, -1))
    free = sample_categorical(logits, (2, 2)).numpy()
    assert (free != np.argmax(logits, -1)).any()
    # top_k = num_classes (and 0 / None) keeps the same noise: identical draws.
    for off in (10, 0, None):
        np.testing.assert_array_equal(sample_categorical(logits, (2, 2), top_k=off).numpy(), free)


def test_top_k_logits_reference_and_ties():
    logits = np.random.default_rng(4).normal(0.0, 1.0, (3, 7)).astype(np.float32)
    got = top_k_logits(logits, 2).numpy()
    kth = np.sort(logits, -1)[:, -2:-1]
    np.testing.assert_array_equal(got, np.where(logits >= kth, logits, -np.inf))
    assert (np.isfinite(got).sum(-1) == 2).all()
    # Values tied with the k-th largest are all kept.
    tied = top_k_logits(np.array([[1.0, 3.0, 1.0, 0.0]], np.float32), 2).numpy()
    np.testing.assert_array_equal(tied, [[1.0, 3.0, 1.0, -np.inf]])
    low = top_k_logits(tf.constant(logits, tf.bfloat16), 3)
    assert low.dtype == tf.float32


def test_top_k_compiles_with_xla_in_a_while_loop():
    sampler = tf.function(sample_categorical, jit_compile=True)
    logits = tf.constant(np.broadcast_to(LOGITS8, (1000, 8)))

    @tf.function(jit_compile=True)
    def loop(seed):
        def body(step, counts):
            drawn = sampler(logits, seed + tf.stack([0, step]), tf.constant(1.0), top_k=2)
            return step + 1, counts + tf.reduce_sum(tf.one_hot(drawn, 8, dtype=tf.int32), 0)

        return tf.while_loop(lambda step, _: step < 5, body,
                             (tf.constant(0), tf.zeros(8, tf.int32)))[1]

    counts = loop(tf.constant([3, 4])).numpy()
    assert counts.sum() == 5000 and set(np.nonzero(counts)[0]) == {1, 7}
    expected = softmax(LOGITS8[[1, 7]].astype(np.float64))
    assert np.max(np.abs(counts[[1, 7]] / 5000 - expected)) < 0.03


@pytest.mark.parametrize("bad", [-1, 9, 2.0, True, "3", tf.constant(2)])
def test_invalid_top_k_raises(bad):
    with pytest.raises(ValueError, match="top_k"):
        sample_categorical(LOGITS8, (1, 2), top_k=bad)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        check_top_k(9, 8)
    assert check_top_k(None) == 0 and check_top_k(np.int64(4), 8) == 4
