import keras
import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.patch_discriminator import PatchDiscriminator


def _images(shape, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype("float32")


def _conv_same(x, kernel, bias, stride):
    # TF "SAME" rule: out = ceil(in / stride), pad_total = max((out - 1) * stride + k - in, 0),
    # pad_before = pad_total // 2.
    b, h, w, _ = x.shape
    k = kernel.shape[0]
    pads = []
    for size in (h, w):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2, out))
    (pt, pb, oh), (pl, pr, ow) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = np.zeros((b, oh, ow, kernel.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            y[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return y + (0.0 if bias is None else bias)


def _group_norm(x, groups, gamma, beta, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def _reference(disc, images):
    # Independent NumPy forward pass of the pix2pix layer recipe, float64.
    x = images.astype("float64")
    strides = [2] * disc.num_layers + [1]
    for i, conv in enumerate(disc.convs):
        x = _conv_same(x, np.asarray(conv.kernel, "float64"),
                       None if conv.bias is None else np.asarray(conv.bias), strides[i])
        if disc.norm == "group" and i > 0:
            norm = disc.norms[i - 1]
            x = _group_norm(x, disc.norm_groups, np.asarray(norm.gamma), np.asarray(norm.beta))
        x = np.where(x > 0, x, 0.2 * x)
    return _conv_same(x, np.asarray(disc.logits.kernel, "float64"),
                      np.asarray(disc.logits.bias), 1)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_matches_numpy_reference(norm):
    disc = PatchDiscriminator(base_channels=4, num_layers=2, norm=norm, norm_groups=2)
    images = _images((2, 8, 8, 3))
    out = disc(images)
    assert out.dtype == tf.float32 and out.shape == (2, 2, 2, 1)
    # The 0.02-std init gives tiny logits: compare against scale, not just relative.
    want = _reference(disc, images)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    channels = [c.filters for c in disc.convs]
    assert channels == [4, 8, 16]
    assert [c.bias is None for c in disc.convs] == [False, norm == "group", norm == "group"]


@pytest.mark.parametrize("num_layers,size,grid", [(1, 8, 4), (2, 16, 4), (3, 32, 4),
                                                  (3, 8, 1), (2, 12, 3)])
def test_output_grid_per_num_layers(num_layers, size, grid):
    disc = PatchDiscriminator(base_channels=8, num_layers=num_layers, norm_groups=4)
    out = disc(_images((1, size, size + 4, 3)))
    cols = -(-(size + 4) // 2**num_layers)
    assert out.shape == (1, grid, cols, 1)
    assert disc.compute_output_shape((None, size, size + 4, 3)) == (None, grid, cols, 1)
    # Channels double per stride-2 conv and are capped at 8x base.
    assert [c.filters for c in disc.convs] == [8 * min(2**n, 8) for n in range(num_layers + 1)]


def test_channel_cap_at_eight_times_base():
    disc = PatchDiscriminator(base_channels=2, num_layers=5, norm_groups=2)
    disc(_images((1, 32, 32, 3)))
    assert [c.filters for c in disc.convs] == [2, 4, 8, 16, 16, 16]


def test_config_round_trip_reproduces_outputs():
    disc = PatchDiscriminator(base_channels=4, num_layers=2, norm_groups=4, name="disc")
    images = _images((2, 8, 8, 3), seed=1)
    out = np.asarray(disc(images))
    clone = PatchDiscriminator.from_config(disc.get_config())
    assert clone.get_config() == disc.get_config()
    clone.build(images.shape)
    clone.set_weights(disc.get_weights())
    np.testing.assert_allclose(np.asarray(clone(images)), out, rtol=1e-6)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(disc))
    assert isinstance(again, PatchDiscriminator) and again.get_config() == disc.get_config()


def test_tf_checkpoint_covers_every_variable(tmp_path):
    disc = PatchDiscriminator(base_channels=4, num_layers=3, norm_groups=4)
    images = _images((1, 16, 16, 3), seed=2)
    out = np.asarray(disc(images))
    path = tf.train.Checkpoint(model=disc).write(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
    # 4 convs without bias after the first + 3 group norms (2 vars) + logits conv.
    assert len(disc.weights) == 2 + 3 + 3 * 2 + 2
    assert len(saved) == len(disc.weights)
    other = PatchDiscriminator(base_channels=4, num_layers=3, norm_groups=4)
    other.build(images.shape)
    tf.train.Checkpoint(model=other).read(path).assert_consumed()
    np.testing.assert_allclose(np.asarray(other(images)), out, rtol=1e-6)


def test_gradient_reaches_images_and_every_weight():
    disc = PatchDiscriminator(base_channels=4, num_layers=2, norm_groups=4)
    images = tf.constant(_images((2, 8, 8, 3), seed=3))
    with tf.GradientTape() as tape:
        tape.watch(images)
        loss = tf.reduce_sum(disc(images) ** 2)
    grads = tape.gradient(loss, [images] + disc.trainable_variables)
    assert len(disc.trainable_variables) == len(disc.weights)
    for g in grads:
        assert g is not None and np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)


def test_xla_and_mixed_precision_give_float32_logits():
    images = _images((2, 16, 16, 3), seed=4)
    disc = PatchDiscriminator(base_channels=4, num_layers=2, norm_groups=4)
    eager = np.asarray(disc(images))
    compiled = tf.function(disc, jit_compile=True)(images)
    np.testing.assert_allclose(np.asarray(compiled), eager, rtol=1e-4, atol=1e-7)
    mixed = PatchDiscriminator(base_channels=4, num_layers=2, norm_groups=4,
                               dtype="mixed_bfloat16")
    assert mixed(images).dtype == tf.float32


def test_invalid_arguments_and_small_images():
    with pytest.raises(ValueError, match="num_layers=3.*at least 8x8"):
        PatchDiscriminator(base_channels=4, norm_groups=4)(_images((1, 8, 4, 3)))
    with pytest.raises(ValueError, match="norm must be"):
        PatchDiscriminator(norm="batch")
    with pytest.raises(ValueError, match="norm_groups"):
        PatchDiscriminator(base_channels=6, norm_groups=8)
    PatchDiscriminator(base_channels=6, norm="none", norm_groups=8)  # groups unused
    with pytest.raises(ValueError, match="num_layers"):
        PatchDiscriminator(num_layers=0)
    with pytest.raises(ValueError, match="base_channels"):
        PatchDiscriminator(base_channels=0)
