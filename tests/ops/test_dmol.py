"""Tests for t2t_image.ops.dmol: DMOL likelihood (vs a float64 NumPy reference,
normalisation over all 256^3 pixel values) and sampling (temperature, seeds,
empirical distribution vs the likelihood)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.ops.dmol import discretized_mix_logistic_loss, sample_discretized_mix_logistic

VALUES = np.arange(256, dtype=np.float64) / 127.5 - 1.0  # the 256 pixel values in [-1, 1]


def log_sigmoid(z):
    """float64 log(sigmoid(z)) without overflow."""
    return -np.logaddexp(0.0, -z)


def logsumexp(a, axis=-1, keepdims=False):
    peak = np.max(a, axis=axis, keepdims=True)
    out = peak + np.log(np.sum(np.exp(a - peak), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


# ----------------------------------------------------------------------------- helpers


def random_pixel(num_mixtures, seed, log_scale_range=(-4.5, -0.5)):
    """Random DMOL parameters of one pixel, float32 [10K] in the T2T layout."""
    rng = np.random.default_rng(seed)
    k = num_mixtures
    return np.concatenate(
        [
            rng.normal(0.0, 1.0, k),  # mixture logits
            rng.uniform(-1.1, 1.1, 3 * k),  # means, [K, 3] row-major
            rng.uniform(*log_scale_range, 3 * k),  # log-scales
            rng.normal(0.0, 1.0, 3 * k),  # raw coefficients (tanh applied by the op)
        ]
    ).astype(np.float32)


def split_np(pred):
    """NumPy split of [..., 10K] into logits [..., K], means/log_scales/coeffs [..., K, 3]."""
    pred = np.asarray(pred, np.float64)
    k = pred.shape[-1] // 10
    lead = pred.shape[:-1]
    logits = pred[..., :k]
    means = pred[..., k : 4 * k].reshape(lead + (k, 3))
    log_scales = np.maximum(pred[..., 4 * k : 7 * k].reshape(lead + (k, 3)), -7.0)
    coeffs = np.tanh(pred[..., 7 * k :].reshape(lead + (k, 3)))
    return logits, means, log_scales, coeffs


def reference_nll(pred, labels):
    """Float64 NumPy DMOL NLL written from the PixelCNN++ definition."""
    logits, means, log_scales, coeffs = split_np(pred)
    x = np.asarray(labels, np.float64)[..., None, :]  # [..., 1, 3]
    mu = means.copy()
    mu[..., 1] += coeffs[..., 0] * x[..., 0]
    mu[..., 2] += coeffs[..., 1] * x[..., 0] + coeffs[..., 2] * x[..., 1]
    s = np.exp(log_scales)
    upper = (x + 1.0 / 255.0 - mu) / s
    lower = (x - 1.0 / 255.0 - mu) / s
    bin_prob = np.exp(log_sigmoid(upper)) - np.exp(log_sigmoid(lower))
    z = (x - mu) / s
    # log of the logistic density at the bin centre times the bin width 2/255.
    log_mid = -z - log_scales - 2.0 * np.logaddexp(0.0, -z) + math.log(2.0 / 255.0)
    with np.errstate(divide="ignore"):
        log_interior = np.where(bin_prob > 1e-5, np.log(bin_prob), log_mid)
    log_p = np.where(
        x < -0.999,
        log_sigmoid(upper),
        np.where(x > 0.999, log_sigmoid(-lower), log_interior),
    )
    log_mix = log_p.sum(-1) + logits - logsumexp(logits, axis=-1, keepdims=True)
    return -logsumexp(log_mix, axis=-1), bin_prob, x, log_p


def nll(pred, labels):
    return discretized_mix_logistic_loss(
        tf.constant(pred, tf.float32), tf.constant(labels, tf.float32)
    ).numpy()


GRID_CONTEXTS = (
    1024  # conditioning contexts per per-channel check (one compiled shape for all checks)
)
_compiled_loss = tf.function(discretized_mix_logistic_loss, jit_compile=True)


def channel_sums(pred, labels):
    """Runs the (XLA-compiled) op on K=1 `pred` [n, 1, 1, 10] and `labels` [n, 256, 1, 3]
    with n <= GRID_CONTEXTS (rows repeated up to that size so every call has the same
    shape) and returns sum over the 256 labels of exp(-nll) per row, float64 [n]."""
    n = pred.shape[0]
    rows = np.arange(GRID_CONTEXTS) % n
    pred = np.broadcast_to(pred, (n, 1, 1, 10))[rows]
    labels = np.broadcast_to(labels, (n, 256, 1, 3))[rows]
    out = _compiled_loss(tf.constant(pred, tf.float32), tf.constant(labels, tf.float32)).numpy()
    return np.exp(-out.astype(np.float64)).sum(axis=(1, 2))[:n]


def component_pred(pixel, k, mean_override=None, pin=()):
    """K=1 parameters [10] of component k of `pixel`.

    `pin` channels get mean -100 and log-scale -3: with label value 0 their
    log-probability is exactly 0 (the value-0 edge holds all the mass), so the
    op's NLL then only counts the other channels.
    """
    num = pixel.shape[-1] // 10
    means = pixel[num : 4 * num].reshape(num, 3)[k].astype(np.float64)
    log_scales = pixel[4 * num : 7 * num].reshape(num, 3)[k].astype(np.float64)
    coeffs = pixel[7 * num :].reshape(num, 3)[k].astype(np.float64)
    if mean_override is not None:
        means = np.broadcast_to(means, mean_override.shape).copy()
        log_scales = np.broadcast_to(log_scales, mean_override.shape).copy()
        coeffs = np.broadcast_to(coeffs, mean_override.shape).copy()
        means[...] = mean_override
    else:
        means, log_scales, coeffs = means[None], log_scales[None], coeffs[None]
    for c in pin:
        means[..., c] = -100.0
        log_scales[..., c] = -3.0
    logits = np.zeros(means.shape[:-1] + (1,))
    return np.concatenate([logits, means, log_scales, coeffs], -1).astype(np.float32)


_ALL_LABELS_CHUNK = 16  # R values per call: 16 * 256 * 256 labels


@tf.function(jit_compile=True)
def _chunk_nll(pixel, r_values):
    grid = tf.stack(
        tf.meshgrid(r_values, VALUES.astype(np.float32), VALUES.astype(np.float32), indexing="ij"),
        -1,
    )
    return discretized_mix_logistic_loss(tf.reshape(pixel, [1, 1, 1, -1]), grid)


def all_label_probabilities(pixel):
    """exp(-op) for all 256^3 labels of one pixel, returned as the total and the
    three per-channel marginals (float64)."""
    total, marg_r, marg_g, marg_b = 0.0, np.zeros(256), np.zeros(256), np.zeros(256)
    values32 = VALUES.astype(np.float32)
    for start in range(0, 256, _ALL_LABELS_CHUNK):
        chunk = _chunk_nll(
            tf.constant(pixel), tf.constant(values32[start : start + _ALL_LABELS_CHUNK])
        )
        prob = np.exp(-chunk.numpy().astype(np.float64))  # [16 r, 256 g, 256 b]
        total += prob.sum()
        marg_r[start : start + _ALL_LABELS_CHUNK] = prob.sum((1, 2))
        marg_g += prob.sum((0, 2))
        marg_b += prob.sum((0, 1))
    return total, (marg_r, marg_g, marg_b)


@pytest.fixture(scope="module")
def k3_pixel_probabilities():
    """One random K=3 pixel and the op's probabilities over all 256^3 labels."""
    pixel = random_pixel(3, seed=0)
    return pixel, all_label_probabilities(pixel)


def empirical_marginals(samples):
    """samples int [n, 3] -> per-channel frequencies [3, 256]."""
    return np.stack(
        [np.bincount(samples[:, c], minlength=256) / samples.shape[0] for c in range(3)]
    )


# ------------------------------------------------------------------- likelihood tests


def test_probabilities_of_all_256_cubed_labels_sum_to_one(k3_pixel_probabilities):
    # The op itself, evaluated on all 16,777,216 labels of one K=3 pixel.
    _, (total, marginals) = k3_pixel_probabilities
    assert abs(total - 1.0) < 1e-4
    for marginal in marginals:
        assert marginal.min() >= 0.0
        np.testing.assert_allclose(marginal.sum(), 1.0, atol=1e-4)


@pytest.mark.parametrize("num_mixtures", [3, 10])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_probabilities_sum_to_one_factorised(num_mixtures, seed):
    """The joint is sum_k pi_k p_k(r) p_k(g|r) p_k(b|r,g): check with the op that
    pi sums to 1 and the mixture is combined from the components, and that each
    component's per-channel conditionals sum to 1 over the 256 values (R; G for
    every R context; B for a dense grid of its conditional mean), so the joint
    sums to 1 within 3 * 3e-5 < 1e-4."""
    pixel = random_pixel(num_mixtures, seed)
    logits, means, log_scales, coeffs = split_np(pixel)
    values32 = VALUES.astype(np.float32)
    edge = np.full(
        256, -1.0, np.float32
    )  # label value 0, where pinned channels hold all their mass

    # Mixture combination: op(K components) == -log sum_k softmax(logits)_k exp(-op(component k)).
    rng = np.random.default_rng(seed)
    labels = VALUES[rng.integers(0, 256, size=(500, 1, 1, 3))]
    mixture = nll(np.broadcast_to(pixel, (1, 1, 1, pixel.size)), labels)
    per_component = np.stack(
        [nll(component_pred(pixel, k).reshape(1, 1, 1, 10), labels) for k in range(num_mixtures)],
        -1,
    ).astype(np.float64)
    log_pi = logits - logsumexp(logits)
    np.testing.assert_allclose(np.exp(log_pi).sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        mixture, -logsumexp(log_pi - per_component, axis=-1), rtol=1e-5, atol=1e-5
    )

    for k in range(num_mixtures):
        # R: labels (r, 0, 0) with G and B pinned.
        r_labels = np.stack([values32, edge, edge], -1).reshape(1, 256, 1, 3)
        sum_r = channel_sums(component_pred(pixel, k, pin=(1, 2)).reshape(1, 1, 1, 10), r_labels)
        assert abs(sum_r[0] - 1.0) < 3e-5

        # G given R = r (all 256 contexts): the effective mean mu_G(r) = m_G + c0 * x_r is
        # realised with R pinned at value 0 (x_r = -1) by setting m_G' = mu_G(r) + c0.
        mu_g = means[k, 1] + coeffs[k, 0] * VALUES
        override = np.tile(means[k], (256, 1))
        override[:, 1] = mu_g + coeffs[k, 0]
        g_pred = component_pred(pixel, k, mean_override=override, pin=(0, 2)).reshape(256, 1, 1, 10)
        sums_g = channel_sums(g_pred, np.stack([edge, values32, edge], -1).reshape(1, 256, 1, 3))
        assert np.max(np.abs(sums_g - 1.0)) < 3e-5

        # B given (R, G): mu_B = m_B + c1 * x_r + c2 * x_g covers [lo, hi]; check a grid
        # of 1024 means (spacing < 1/255, half a bin) with R and G pinned (x_r = x_g = -1).
        corners = (
            means[k, 2]
            + coeffs[k, 1] * np.array([-1, -1, 1, 1])
            + coeffs[k, 2] * np.array([-1, 1, -1, 1])
        )
        mu_b = np.linspace(corners.min(), corners.max(), GRID_CONTEXTS)
        override = np.tile(means[k], (GRID_CONTEXTS, 1))
        override[:, 2] = mu_b + coeffs[k, 1] + coeffs[k, 2]
        b_pred = component_pred(pixel, k, mean_override=override, pin=(0, 1)).reshape(
            GRID_CONTEXTS, 1, 1, 10
        )
        sums_b = channel_sums(b_pred, np.stack([edge, edge, values32], -1).reshape(1, 256, 1, 3))
        assert np.max(np.abs(sums_b - 1.0)) < 3e-5


def test_matches_float64_reference_including_mid_point_branch():
    rng = np.random.default_rng(7)
    k = 4
    pred = np.concatenate(
        [
            rng.normal(0, 2, (3, 4, 4, k)),
            rng.uniform(-1.2, 1.2, (3, 4, 4, 3 * k)),
            rng.uniform(-6.5, 0.5, (3, 4, 4, 3 * k)),
            rng.normal(0, 1, (3, 4, 4, 3 * k)),
        ],
        -1,
    ).astype(np.float32)
    pixels = rng.integers(0, 256, (3, 4, 4, 3))
    pixels[0, 0] = [0, 255, 0]
    pixels[0, 1] = [255, 0, 255]
    pixels[0, 2] = [1, 254, 128]
    labels = (pixels / 127.5 - 1.0).astype(np.float32)
    expected, bin_prob, x, _ = reference_nll(pred, labels)
    interior = np.broadcast_to((x >= -0.999) & (x <= 0.999), bin_prob.shape)
    mid_point = interior & (bin_prob <= 1e-5)
    # Both interior branches and both edges are exercised.
    assert mid_point.mean() > 0.1 and (interior & ~mid_point).mean() > 0.1
    assert (x < -0.999).any() and (x > 0.999).any()
    got = nll(pred, labels)
    assert got.shape == (3, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pixel_value", [(0, 255, 128), (255, 0, 1), (1, 254, 0)])
def test_edge_value_formulas(pixel_value):
    # K=1, written out with the math module: value 0 -> log sigmoid((x + 1/255 - mu) / s),
    # value 255 -> log(1 - sigmoid((x - 1/255 - mu) / s)), else log of the bin's CDF difference.
    means, log_scales, raw_coeffs = [0.1, -0.3, 0.4], [-1.5, -2.0, -1.0], [0.3, -0.2, 0.5]
    pred = np.array([0.7] + means + log_scales + raw_coeffs, np.float32).reshape(1, 1, 1, 10)
    x = [v / 127.5 - 1.0 for v in pixel_value]
    c = [math.tanh(v) for v in raw_coeffs]
    mu = [means[0], means[1] + c[0] * x[0], means[2] + c[1] * x[0] + c[2] * x[1]]

    def sigmoid(z):
        return 1.0 / (1.0 + math.exp(-z))

    log_p = 0.0
    for ch in range(3):
        s = math.exp(log_scales[ch])
        if pixel_value[ch] == 0:
            log_p += math.log(sigmoid((x[ch] + 1 / 255 - mu[ch]) / s))
        elif pixel_value[ch] == 255:
            log_p += math.log(1.0 - sigmoid((x[ch] - 1 / 255 - mu[ch]) / s))
        else:
            log_p += math.log(
                sigmoid((x[ch] + 1 / 255 - mu[ch]) / s) - sigmoid((x[ch] - 1 / 255 - mu[ch]) / s)
            )
    got = nll(pred, np.array(x, np.float32).reshape(1, 1, 1, 3))
    np.testing.assert_allclose(got[0, 0, 0], -log_p, rtol=1e-5)


def test_gradient_matches_finite_differences_of_reference():
    # Central differences of the float64 reference vs the op's gradient, at a point
    # away from branch switches (moderate scales, labels near the means).
    pred = random_pixel(2, seed=9, log_scale_range=(-3.0, -1.0)).reshape(1, 1, 1, 20)
    labels = np.array([[[[100, 140, 90]]]]) / 127.5 - 1.0
    eps = 1e-5
    numeric = np.zeros(20)
    for i in range(20):
        step = np.zeros(20)
        step[i] = eps
        plus = reference_nll(pred.astype(np.float64) + step, labels)[0]
        minus = reference_nll(pred.astype(np.float64) - step, labels)[0]
        numeric[i] = (plus - minus).item() / (2 * eps)
    pred_t = tf.constant(pred)
    with tf.GradientTape() as tape:
        tape.watch(pred_t)
        loss = discretized_mix_logistic_loss(pred_t, tf.constant(labels, tf.float32))
    grad = tape.gradient(loss, pred_t).numpy().reshape(20)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=2e-3 * np.abs(numeric).max())


def test_extreme_parameters_give_finite_values_and_gradients():
    k = 3
    rng = np.random.default_rng(3)
    n = 64
    logits = rng.choice([-1e4, 0.0, 1e4], (n, 1, 1, k))
    means = rng.choice([-100.0, -1.0, 0.0, 1.0, 100.0], (n, 1, 1, 3 * k))
    log_scales = rng.choice([-50.0, -7.0, 0.0, 50.0], (n, 1, 1, 3 * k))
    coeffs = rng.choice([-1e3, 0.0, 1e3], (n, 1, 1, 3 * k))
    pred = tf.constant(np.concatenate([logits, means, log_scales, coeffs], -1), tf.float32)
    labels = tf.constant(VALUES[rng.choice([0, 1, 127, 254, 255], (n, 1, 1, 3))], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(pred)
        loss = discretized_mix_logistic_loss(pred, labels)
    grad = tape.gradient(loss, pred)
    assert np.all(np.isfinite(loss.numpy()))
    assert np.all(np.isfinite(grad.numpy()))
    # Still a valid NLL: >= 0 up to float32 rounding.
    assert loss.numpy().min() > -1e-5


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_pred_gives_float32_nll(dtype):
    pred = tf.cast(tf.constant(random_pixel(2, seed=5).reshape(1, 1, 1, 20)), dtype)
    labels = tf.constant(VALUES[[[[[10, 128, 250]]]]], tf.float32)
    got = discretized_mix_logistic_loss(pred, labels)
    assert got.dtype == tf.float32
    expected = discretized_mix_logistic_loss(tf.cast(pred, tf.float32), labels)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="pred"):
        discretized_mix_logistic_loss(
            np.zeros((1, 2, 2, 15), np.float32), np.zeros((1, 2, 2, 3), np.float32)
        )
    with pytest.raises(ValueError, match="labels"):
        discretized_mix_logistic_loss(
            np.zeros((1, 2, 2, 10), np.float32), np.zeros((1, 2, 2, 1), np.float32)
        )
    with pytest.raises(ValueError, match="labels"):
        discretized_mix_logistic_loss(
            np.zeros((1, 2, 2, 10), np.float32), np.zeros((1, 3, 2, 3), np.float32)
        )
    with pytest.raises(ValueError, match="pred"):
        sample_discretized_mix_logistic(np.zeros((1, 2, 2, 7), np.float32), (1, 2))
    with pytest.raises(ValueError, match="temperature"):
        sample_discretized_mix_logistic(
            np.zeros((1, 2, 2, 10), np.float32), (1, 2), temperature=-1.0
        )
    with pytest.raises(ValueError, match="seed"):
        sample_discretized_mix_logistic(np.zeros((1, 2, 2, 10), np.float32), (1, 2, 3))


# --------------------------------------------------------------------- sampling tests


def reference_mode(pred):
    """Temperature-0 sample: rounded coefficient-adjusted mean of the argmax component."""
    logits, means, _, coeffs = split_np(pred)
    best = np.argmax(logits, -1)[..., None, None]
    mu = np.take_along_axis(means, best, -2)[..., 0, :]
    c = np.take_along_axis(coeffs, best, -2)[..., 0, :]
    r = np.clip(mu[..., 0], -1, 1)
    g = np.clip(mu[..., 1] + c[..., 0] * r, -1, 1)
    b = np.clip(mu[..., 2] + c[..., 1] * r + c[..., 2] * g, -1, 1)
    return np.round((np.stack([r, g, b], -1) + 1.0) * 127.5).astype(np.int32)


@pytest.mark.parametrize("temperature", [0.0, 0, tf.constant(0.0)])
def test_temperature_zero_gives_rounded_mean_of_argmax_component(temperature):
    rng = np.random.default_rng(11)
    pred = rng.normal(0.0, 1.0, (2, 5, 5, 40)).astype(np.float32)
    got = sample_discretized_mix_logistic(pred, (4, 2), temperature=temperature).numpy()
    assert got.dtype == np.int32 and got.shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(got, reference_mode(pred))


def test_samples_match_likelihood_marginals(k3_pixel_probabilities):
    pixel, (_, marginals) = k3_pixel_probabilities
    n = 50_000
    samples = sample_discretized_mix_logistic(np.broadcast_to(pixel, (n, 1, 1, 30)), (3, 5)).numpy()
    assert samples.min() >= 0 and samples.max() <= 255
    empirical = empirical_marginals(samples.reshape(n, 3))
    # Per-bin standard error <= sqrt(0.25 / n) = 0.0022.
    assert np.max(np.abs(empirical - np.stack(marginals))) < 0.01


def test_temperature_half_matches_tempered_likelihood():
    # tau scales the mixture logits by 1/tau and the logistic scales by tau: compare
    # samples at tau=0.5 with the op's R and G marginals for (2 * logits, log_scales + log 0.5).
    pixel = random_pixel(2, seed=4, log_scale_range=(-3.5, -1.0))
    tempered = pixel.copy()
    tempered[:2] *= 2.0
    tempered[8:14] += math.log(0.5)
    values32 = VALUES.astype(np.float32)
    grid = np.stack(
        np.meshgrid(values32, values32, np.full(1, -1.0, np.float32), indexing="ij"), -1
    )
    # B pinned (its log-prob is exactly 0 at value 0) -> exp(-op) is the joint of (R, G).
    pinned = tempered.copy()
    pinned[4:8:3] = -100.0
    joint_rg = np.exp(-nll(pinned.reshape(1, 1, 1, 20), grid).astype(np.float64))[..., 0]
    np.testing.assert_allclose(joint_rg.sum(), 1.0, atol=1e-5)
    expected = np.stack([joint_rg.sum(1), joint_rg.sum(0)])
    n = 50_000
    samples = sample_discretized_mix_logistic(
        np.broadcast_to(pixel, (n, 1, 1, 20)), (8, 1), temperature=0.5
    )
    empirical = empirical_marginals(samples.numpy().reshape(n, 3))[:2]
    assert np.max(np.abs(empirical - expected)) < 0.01
    # The untempered distribution is clearly different (the check is not vacuous).
    untempered = sample_discretized_mix_logistic(
        np.broadcast_to(pixel, (n, 1, 1, 20)), (8, 1), temperature=1.0
    )
    assert (
        np.max(np.abs(empirical_marginals(untempered.numpy().reshape(n, 3))[:2] - expected)) > 0.03
    )


def test_seed_reproducibility():
    pred = np.random.default_rng(2).normal(0.0, 1.0, (2, 8, 8, 30)).astype(np.float32)
    first = sample_discretized_mix_logistic(pred, (1, 2)).numpy()
    np.testing.assert_array_equal(first, sample_discretized_mix_logistic(pred, (1, 2)).numpy())
    np.testing.assert_array_equal(
        first, sample_discretized_mix_logistic(pred, tf.constant([1, 2], tf.int32)).numpy()
    )
    other = sample_discretized_mix_logistic(pred, (1, 3)).numpy()
    assert np.mean(first != other) > 0.3


def test_compiled_sampler_takes_seed_and_temperature_tensors():
    pred = np.random.default_rng(6).normal(0.0, 1.0, (2, 8, 8, 20)).astype(np.float32)
    sampler = tf.function(sample_discretized_mix_logistic, jit_compile=True)
    seed = tf.constant([5, 6], tf.int32)
    hot = sampler(tf.constant(pred), seed, tf.constant(1.0))
    np.testing.assert_array_equal(
        hot.numpy(), sampler(tf.constant(pred), seed, tf.constant(1.0)).numpy()
    )
    # Same trace, tau = 0 -> the deterministic mode.
    cold = sampler(tf.constant(pred), seed, tf.constant(0.0))
    np.testing.assert_array_equal(cold.numpy(), reference_mode(pred))
    assert np.mean(hot.numpy() != cold.numpy()) > 0.3
