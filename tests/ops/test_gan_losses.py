import numpy as np
import pytest
import tensorflow as tf

from t2t_image.ops.gan_losses import adaptive_weight
from t2t_image.ops.gan_losses import discriminator_factor
from t2t_image.ops.gan_losses import generator_loss
from t2t_image.ops.gan_losses import hinge_discriminator_loss
from t2t_image.ops.gan_losses import vanilla_discriminator_loss


def _logits(seed, shape=(2, 3, 3, 1)):
    return (np.random.RandomState(seed).randn(*shape) * 3.0).astype("float32")


def _softplus(x):
    x = x.astype("float64")
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def test_hinge_and_vanilla_losses_match_numpy():
    real, fake = _logits(0), _logits(1)
    hinge = 0.5 * (np.mean(np.maximum(0.0, 1.0 - real)) + np.mean(np.maximum(0.0, 1.0 + fake)))
    np.testing.assert_allclose(float(hinge_discriminator_loss(real, fake)), hinge, rtol=1e-6)
    # Vanilla = mean binary cross-entropy of sigmoid(logit), written from the definition.
    sig = lambda x: 1.0 / (1.0 + np.exp(-x.astype("float64")))  # noqa: E731
    bce = 0.5 * (np.mean(-np.log(sig(real))) + np.mean(-np.log(1.0 - sig(fake))))
    np.testing.assert_allclose(float(vanilla_discriminator_loss(real, fake)), bce, rtol=1e-5)
    np.testing.assert_allclose(float(generator_loss(fake)), -np.mean(fake), rtol=1e-6)


def test_losses_are_float32_and_stable_for_large_half_precision_logits():
    real = np.array([[200.0, -200.0]], "float16")
    fake = np.array([[-300.0, 300.0]], "float16")
    loss = vanilla_discriminator_loss(real, fake)
    assert loss.dtype == tf.float32
    expected = 0.5 * (np.mean(_softplus(-real)) + np.mean(_softplus(fake)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert hinge_discriminator_loss(real, fake).dtype == tf.float32
    assert generator_loss(fake).dtype == tf.float32


def test_adaptive_weight_clips_and_stops_gradient():
    rec = np.array([0.0, 1.0, 3.0, 1e6], "float32")
    gan = np.array([1.0, 0.5, 0.0, 1e-3], "float32")
    expected = np.clip(rec / (gan + 1e-4), 0.0, 1e4)
    np.testing.assert_allclose(np.asarray(adaptive_weight(rec, gan)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(adaptive_weight(2.0, 1.0, delta=1.0, max_weight=0.5)), 0.5)
    x = tf.Variable(2.0)
    with tf.GradientTape() as tape:
        w = adaptive_weight(x, 1.0)
    assert tape.gradient(w, x) is None
    with pytest.raises(ValueError, match="delta"):
        adaptive_weight(1.0, 1.0, delta=0.0)
    with pytest.raises(ValueError, match="max_weight"):
        adaptive_weight(1.0, 1.0, max_weight=-1.0)


def test_discriminator_factor_switches_on_at_start_step_under_xla():
    fn = tf.function(discriminator_factor, jit_compile=True)
    for step in [0, 9, 10, 11]:
        expected = 0.8 if step >= 10 else 0.0
        got = fn(tf.constant(step, tf.int64), tf.constant(10), tf.constant(0.8))
        assert got.dtype == tf.float32
        np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    assert float(discriminator_factor(5, 0)) == 1.0


def test_losses_compile_with_xla():
    real, fake = _logits(2), _logits(3)

    @tf.function(jit_compile=True)
    def all_losses(r, f):
        return (hinge_discriminator_loss(r, f), vanilla_discriminator_loss(r, f),
                generator_loss(f), adaptive_weight(tf.reduce_sum(r ** 2), tf.reduce_sum(f ** 2)))

    got = [float(v) for v in all_losses(real, fake)]
    want = [float(hinge_discriminator_loss(real, fake)),
            float(vanilla_discriminator_loss(real, fake)), float(generator_loss(fake)),
            float(np.clip(np.sum(real ** 2) / (np.sum(fake ** 2) + 1e-4), 0, 1e4))]
    np.testing.assert_allclose(got, want, rtol=1e-5)
