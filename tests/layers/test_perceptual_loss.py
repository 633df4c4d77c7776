import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.perceptual_loss import PerceptualLoss

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A Keras 3 .weights.h5 of a randomly initialised keras.applications VGG16 (no download)."""
    keras.utils.set_random_seed(1)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_random.weights.h5"
    vgg.save_weights(str(path))
    convs = [layer for layer in vgg.layers if isinstance(layer, keras.layers.Conv2D)]
    arrays = [(keras.ops.convert_to_numpy(c.kernel), keras.ops.convert_to_numpy(c.bias))
              for c in convs]
    # Random biases, so that the reference also checks them (VGG16 initialises them to 0).
    rng = np.random.RandomState(0)
    arrays = [(k, rng.uniform(-0.1, 0.1, b.shape).astype("float32")) for k, b in arrays]
    for conv, (k, b) in zip(convs, arrays):
        conv.bias.assign(b)
    vgg.save_weights(str(path))
    return path, arrays


def _conv_names():
    return [f"block{s + 1}_conv{i + 1}" for s, w in enumerate(STAGES) for i in range(len(w))]


def _write_legacy(path, arrays, skip=None, bad_shape=None):
    # The layout of keras.applications' vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.
    names = ["input_1"]
    convs = iter(_conv_names())
    for s, widths in enumerate(STAGES):
        names += [next(convs) for _ in widths] + [f"block{s + 1}_pool"]
    names = [n for n in names if n != skip]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        weights = dict(zip(_conv_names(), arrays))
        for name in names:
            group = f.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = []
                continue
            kernel, bias = weights[name]
            if name == bad_shape:
                kernel = kernel[:, :, :, :-1]
            wn = [f"{name}_W_1:0", f"{name}_b_1:0"]
            group.attrs["weight_names"] = [n.encode() for n in wn]
            group.create_dataset(wn[0], data=kernel)
            group.create_dataset(wn[1], data=bias)


def _images(seed, shape=(2, 32, 32, 3)):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype("float32")


def _reference(arrays, a, b, eps=1e-10):
    # Independent NumPy LPIPS-baseline: Caffe preprocessing, VGG16 convs via im2col,
    # channel-normalised stage features, channel sum, spatial mean, stage sum.
    def features(x):
        x = (x.astype("float64") + 1.0) * 127.5
        x = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
        out, it = [], iter(arrays)
        for s, widths in enumerate(STAGES):
            if s:
                n, h, w, c = x.shape
                x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
            for _ in widths:
                kernel, bias = next(it)
                n, h, w, c = x.shape
                xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
                cols = np.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], 3)
                x = np.maximum(cols.reshape(n, h, w, 9 * c) @ kernel.reshape(9 * c, -1) + bias, 0)
            out.append(x / np.sqrt((x * x).sum(-1, keepdims=True) + eps**2))
        return out

    return sum(((fa - fb) ** 2).sum(-1).mean((1, 2)) for fa, fb in zip(features(a), features(b)))


def test_distance_matches_numpy_reference_zero_and_symmetric(vgg_weights):
    path, arrays = vgg_weights
    loss = PerceptualLoss(weights_path=path)
    a, b = _images(0, (2, 16, 16, 3)), _images(1, (2, 16, 16, 3))
    b[1] = a[1] * 0.9  # a closer pair
    d_ab = np.asarray(loss(a, b))
    assert d_ab.shape == (2,) and loss(a, b).dtype == tf.float32
    want = _reference(arrays, a, b)
    np.testing.assert_allclose(d_ab, want, rtol=2e-4)
    assert np.all(d_ab > 0) and d_ab[1] < d_ab[0]
    np.testing.assert_allclose(np.asarray(loss(b, a)), d_ab, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(loss(a, a)), [0.0, 0.0])
    # 32x32 (stage 5 at 2x2) against the reference too, one pair.
    big_a, big_b = _images(8, (1, 32, 32, 3)), _images(9, (1, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(loss(big_a, big_b)),
                               _reference(arrays, big_a, big_b), rtol=2e-4)
    assert loss.trainable_weights == [] and len(loss.non_trainable_weights) == 26


def test_legacy_notop_layout_loads_the_same_weights(vgg_weights, tmp_path):
    path, arrays = vgg_weights
    legacy = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_legacy(legacy, arrays)
    a, b = _images(2, (1, 16, 16, 3)), _images(3, (1, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(PerceptualLoss(weights_path=str(legacy))(a, b)),
                               np.asarray(PerceptualLoss(weights_path=path)(a, b)), rtol=1e-6)


def test_missing_or_mismatched_weights_raise_naming_the_path(vgg_weights, tmp_path):
    _, arrays = vgg_weights
    with pytest.raises(ValueError, match="weights_path.*optional"):
        PerceptualLoss()
    missing = tmp_path / "nope.h5"
    with pytest.raises(ValueError, match="not found.*nope.h5"):
        PerceptualLoss(weights_path=missing)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5.*not a readable HDF5"):
        PerceptualLoss(weights_path=text)
    skipped = tmp_path / "skipped.h5"
    _write_legacy(skipped, arrays, skip="block4_conv2")
    with pytest.raises(ValueError, match="skipped.h5.*no layer 'block4_conv2'"):
        PerceptualLoss(weights_path=skipped)
    bad = tmp_path / "bad.h5"
    _write_legacy(bad, arrays, bad_shape="block2_conv1")
    with pytest.raises(ValueError, match=r"bad.h5.*block2_conv1 has kernel \(3, 3, 64, 127\)"):
        PerceptualLoss(weights_path=bad)
    small = tmp_path / "small.weights.h5"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]).save_weights(small)
    with pytest.raises(ValueError, match="small.weights.h5.*13 conv layers"):
        PerceptualLoss(weights_path=small)


def test_shapes_config_and_gradients(vgg_weights):
    path, _ = vgg_weights
    loss = PerceptualLoss(weights_path=path, name="lpips")
    with pytest.raises(ValueError, match="at least 16x16"):
        loss(_images(0, (1, 8, 8, 3)), _images(1, (1, 8, 8, 3)))
    with pytest.raises(ValueError, match="one shape"):
        loss(_images(0, (1, 16, 16, 3)), _images(1, (1, 32, 16, 3)))
    clone = PerceptualLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    a = tf.constant(_images(4, (1, 16, 16, 3)))
    b = _images(5, (1, 16, 16, 3))
    with tf.GradientTape() as tape:
        tape.watch(a)
        d = loss(a, b)
    grad = np.asarray(tape.gradient(d, a))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    np.testing.assert_allclose(np.asarray(clone(a, b)), np.asarray(d), rtol=1e-6)


def test_builds_and_compiles_inside_xla(vgg_weights):
    path, _ = vgg_weights
    a, b = _images(6, (1, 16, 16, 3)), _images(7, (1, 16, 16, 3))
    loss = PerceptualLoss(weights_path=path)
    assert loss.built  # built on construction, so never while tracing
    compiled = tf.function(loss, jit_compile=True)(a, b)
    eager = loss(a, b)
    np.testing.assert_allclose(np.asarray(compiled), np.asarray(eager), rtol=1e-4)
