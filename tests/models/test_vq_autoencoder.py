"""Tests of VQAutoencoder: wiring, straight-through gradient, codebook updates, I/O, overfit."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from t2t_image.models.vq_autoencoder import VQAutoencoder
from t2t_image.ops.image_metrics import psnr

H = W = 8


def tiny(**overrides):
    args = dict(image_height=H, image_width=W, base_channels=16, channel_multipliers=(1, 2),
                num_res_blocks=1, codebook_size=32, code_dim=8, dead_code_threshold=0.05)
    args.update(overrides)
    return VQAutoencoder(**args)


def random_images(n=2, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, H, W, 3)).astype("uint8")


def numpy_outputs(out):
    return {k: np.asarray(v) for k, v in out.items()}


def test_outputs_are_wired_from_the_parts():
    model = tiny(commitment_cost=0.5)
    images = random_images()
    out = numpy_outputs(model({"targets": images}))
    assert out["reconstruction"].shape == (2, H, W, 3) and out["reconstruction"].dtype == "float32"
    assert out["codes"].shape == (2, 4, 4) and out["codes"].dtype == "int32"
    assert model.code_grid_shape == (4, 4) and model.downsample_factor == 2
    z = np.asarray(model.encoder(images.astype("float32") / 127.5 - 1.0)).reshape(-1, 8)
    np.testing.assert_allclose(out["latents"], z, atol=1e-6)
    codebook = model.quantizer.codebook.numpy().astype(np.float64)
    codes = ((z[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(axis=1)
    np.testing.assert_array_equal(out["codes"].ravel(), codes)
    np.testing.assert_array_equal(np.asarray(model.encode_to_codes(images)), out["codes"])
    np.testing.assert_allclose(out["commitment_loss"], 0.5 * ((z - codebook[codes]) ** 2).mean(),
                               rtol=1e-5)
    assert out["codebook_loss"] == 0.0
    np.testing.assert_array_equal(out["counts"], np.bincount(codes, minlength=32))
    decoded = np.asarray(model.decode_codes(out["codes"]))
    np.testing.assert_allclose(decoded, out["reconstruction"], atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(model.decoder(codebook[codes].reshape(2, 4, 4, 8).astype("float32"))),
        out["reconstruction"], atol=1e-5)
    ints = np.asarray(model.images_from_codes(out["codes"]))
    assert ints.dtype == np.int32
    np.testing.assert_array_equal(ints, np.clip(np.round((decoded + 1) * 127.5), 0, 255))


def test_loss_mode_codebook_loss_and_trainable_codebook():
    model = tiny(codebook_update="loss", commitment_cost=0.25)
    out = model({"targets": random_images()})
    np.testing.assert_allclose(float(out["codebook_loss"]), 4 * float(out["commitment_loss"]),
                               rtol=1e-6)
    assert any(v is model.quantizer.codebook for v in model.trainable_variables)
    assert model.last_layer_kernel is model.decoder.conv_out.kernel
    assert tuple(model.last_layer_kernel.shape) == (3, 3, 16, 3)
    assert model.last_layer_kernel.trainable


def test_straight_through_gradient_reaches_the_encoder():
    model = tiny()
    images = random_images()
    target = tf.constant(random_images(seed=1).astype("float32") / 127.5 - 1.0)
    x = tf.constant(images.astype("float32") / 127.5 - 1.0)
    model({"targets": images})
    with tf.GradientTape() as tape:
        z = model.encoder(x)
        tape.watch(z)
        quantized = model.quantizer(z)["quantized"]
        loss = tf.reduce_mean(tf.abs(model.decoder(quantized) - target))
    grad_z = tape.gradient(loss, z)
    q = tf.constant(quantized)
    with tf.GradientTape() as tape:
        tape.watch(q)
        loss_q = tf.reduce_mean(tf.abs(model.decoder(q) - target))
    np.testing.assert_allclose(float(loss_q), float(loss), rtol=1e-6)
    np.testing.assert_allclose(grad_z, tape.gradient(loss_q, q), rtol=1e-6, atol=1e-9)
    assert np.abs(grad_z.numpy()).max() > 0
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(model({"targets": images})["reconstruction"] - target))
    grads = tape.gradient(loss, model.encoder.trainable_variables)
    assert all(g is not None for g in grads)
    assert all(np.abs(g.numpy()).max() > 0 for g in grads)


def test_update_codebook_delegates_to_the_quantizer():
    model = tiny(dead_code_threshold=0.2)
    images = random_images(4)
    out = model({"targets": images})
    model.quantizer.usage.assign(np.tile([1.0, 0.0], 16))  # half the codes are alive
    clone = VQAutoencoder.from_config(model.get_config())
    clone({"targets": images})
    clone.set_weights(model.get_weights())
    restarted = model.update_codebook(out, (5, 6))
    clone.quantizer.update_codebook(out["counts"], out["sums"], out["latents"], (5, 6))
    assert 0 < int(restarted) < 32
    for a, b in zip(model.quantizer.weights, clone.quantizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    dead = model.quantizer.usage.numpy() == np.float32(0.2)
    latents = np.asarray(out["latents"])
    for row in model.quantizer.codebook.numpy()[dead]:
        assert np.any(np.all(latents == row, axis=1))


def test_code_grid_divisibility_is_validated():
    assert VQAutoencoder().code_grid_shape == (8, 8)
    assert VQAutoencoder().downsample_factor == 4
    with pytest.raises(ValueError, match=r"image_height=10 .* downsample factor 4"):
        VQAutoencoder(image_height=10, image_width=8, channel_multipliers=(1, 2, 2))


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(image_width=0), "image_width"),
        (dict(num_res_blocks=-1), "num_res_blocks"),
        (dict(channel_multipliers=(1, 0)), "channel_multipliers"),
        (dict(codebook_size=0), "codebook_size"),
        (dict(codebook_update="gumbel"), "codebook_update"),
        (dict(ema_decay=0.0), "ema_decay"),
        (dict(dead_code_threshold=-1), "dead_code_threshold"),
        (dict(commitment_cost=-1), "commitment_cost"),
    ],
)
def test_invalid_configuration_names_the_parameter(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**overrides)


def test_wrong_shapes_name_the_settings():
    model = tiny()
    with pytest.raises(ValueError, match="image_height=8"):
        model({"targets": np.zeros((1, 16, 16, 3), "uint8")})
    with pytest.raises(ValueError, match="'targets'"):
        model({"inputs": random_images()})
    model({"targets": random_images()})
    with pytest.raises(ValueError, match=r"codes must have shape \[batch, rows, cols\]"):
        model.decode_codes(np.zeros((1, 4), "int32"))
    # Any grid decodes (the decoder is convolutional): 2x2 codes -> 4x4 pixels (f=2),
    # the larger grids of sliding-window sampling alike.
    f = model.downsample_factor
    assert model.decode_codes(np.zeros((1, 2, 2), "int32")).shape == (1, 2 * f, 2 * f, 3)


def test_config_keras_file_and_tf_checkpoint_round_trip(tmp_path):
    model = tiny(codebook_update="ema", ema_decay=0.9, commitment_cost=0.3)
    features = {"targets": random_images(4)}
    model.update_codebook(model(features), (1, 1))  # non-trivial non-trainable state
    out = numpy_outputs(model(features))
    clone = VQAutoencoder.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for key, value in numpy_outputs(loaded(features)).items():
        np.testing.assert_allclose(value, out[key], atol=1e-6, err_msg=key)
    for a, b in zip(model.quantizer.weights, loaded.quantizer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # tf.train.Checkpoint (the trainer's format) must see every variable.
    ckpt = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(ckpt) if n.startswith("model/")]
    assert len(saved) == len(model.variables)
    fresh = VQAutoencoder.from_config(model.get_config())
    fresh(features)
    tf.train.Checkpoint(model=fresh).read(ckpt).assert_consumed()
    for key, value in numpy_outputs(fresh(features)).items():
        np.testing.assert_allclose(value, out[key], atol=1e-6, err_msg=key)


def bicubic_baseline(images, grid_shape):
    """Area-downsample to the code grid, bicubic upsample back, round to 0..255."""
    small = tf.image.resize(tf.cast(images, tf.float32), grid_shape, method="area")
    up = tf.image.resize(small, images.shape[1:3], method="bicubic")
    return tf.cast(tf.clip_by_value(tf.round(up), 0.0, 255.0), tf.int32)


def overfit(model, images, steps, learning_rate=3e-3):
    """Adam on L1 + codebook + commitment losses, with update_codebook after every step."""
    features = {"targets": tf.constant(images)}
    model(features)
    target = tf.constant(images.astype("float32") / 127.5 - 1.0)
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)  # outside tf.function: one trace only

    @tf.function
    def train_step(step):
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            loss = (tf.reduce_mean(tf.abs(out["reconstruction"] - target))
                    + out["codebook_loss"] + out["commitment_loss"])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        model.update_codebook(out, tf.stack([step, 0]))

    for step in range(steps):
        train_step(tf.constant(step))


def test_overfits_four_celeba_images_beyond_bicubic_upsampling(shared_data):
    images = np.load(shared_data / "celeba" / "celeba_train9000_32x32_8x8.npz")["x8"][:4]
    model = tiny()
    before = float(np.mean(psnr(images, model.images_from_codes(model.encode_to_codes(images)))))
    overfit(model, images, steps=100)  # ~2 s of steps; tracing the step costs ~4 s more
    after = float(np.mean(psnr(images, model.images_from_codes(model.encode_to_codes(images)))))
    baseline = float(np.mean(psnr(images, bicubic_baseline(images, model.code_grid_shape))))
    # Measured: 7.9 dB before training, 37.5 dB after; the bicubic baseline is 20.7 dB.
    assert after > baseline + 10.0 and after > before + 20.0, (before, after, baseline)
    usage = float(model.quantizer.codebook_usage())
    assert usage > 0.3, usage
    print(f"codebook usage {usage:.3f}; PSNR before {before:.2f} dB, after {after:.2f} dB, bicubic baseline {baseline:.2f} dB")


def test_mixed_precision_keeps_float32_outputs_and_state():
    model = tiny(dtype="mixed_bfloat16")
    out = model({"targets": random_images()})
    for key in ("reconstruction", "codebook_loss", "commitment_loss", "counts", "sums", "latents"):
        assert out[key].dtype == "float32", key
        assert np.all(np.isfinite(np.asarray(out[key]))), key
    assert model.quantizer.codebook.dtype == "float32"
    assert model.encoder.res_blocks[0].norm1.compute_dtype == "float32"
