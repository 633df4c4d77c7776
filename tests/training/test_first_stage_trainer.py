"""FirstStageTrainer tests on real CelebA faces (8x8 area-downsampled), tiny VQ autoencoders.

The references are built from the definitions (Esser et al. 2021, Eq. 4-7; Keras's Adam
update written out in NumPy; the EMA codebook update of van den Oord et al. 2017, App. A.1;
PSNR from its formula), not by calling the trainer's own step.
"""

import functools
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.data import make_dataset
from t2t_image.layers.patch_discriminator import PatchDiscriminator
from t2t_image.models import ImageTransformer
from t2t_image.models.vq_autoencoder import VQAutoencoder
from t2t_image.training.first_stage_trainer import FirstStageTrainer
from tests.conftest import SHARED_DATA

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = 16
# Adam's epsilon is 1e-3, not 1e-8: the first Adam steps are ~lr * sign(gradient), and biases
# followed by a group norm have a zero gradient up to float noise, whose sign is arbitrary.
LR, BETA1, BETA2, EPS = 3e-3, 0.5, 0.9, 1e-3


def _dataset(npz, split, training, batch_size=4, with_info=False):
    return make_dataset("npz", split, batch_size=batch_size, image_size=8, training=training,
                        seed=1, source_kwargs={"path": str(npz), "image_key": "x32"},
                        with_info=with_info)


def _model_fn(**overrides):
    args = dict(image_height=8, image_width=8, base_channels=8, channel_multipliers=(1, 2),
                num_res_blocks=0, codebook_size=K, code_dim=4, dead_code_threshold=0.0)
    args.update(overrides)
    return functools.partial(VQAutoencoder, **args)


DISCRIMINATOR = functools.partial(PatchDiscriminator, base_channels=8, num_layers=1,
                                  norm="group", norm_groups=8)


def _trainer(model_dir, npz, model_kwargs=None, eval_split="train[8000:8020]", **kwargs):
    args = dict(num_train_steps=1, log_every=1, checkpoint_every=100, learning_rate=LR,
                adam_beta1=BETA1, adam_beta2=BETA2, adam_epsilon=EPS)
    args.update(kwargs)
    eval_fn = (functools.partial(_dataset, npz, eval_split, False, 8) if eval_split else None)
    return FirstStageTrainer(str(model_dir), _model_fn(**(model_kwargs or {})),
                             functools.partial(_dataset, npz, "train[:64]", True), eval_fn, **args)


@pytest.fixture
def npz(shared_data):
    return shared_data / "celeba" / "celeba_train9000_32x32_8x8.npz"


def _on_logged_steps(trainer, callback):
    """Calls ``callback(step, metrics)`` at every logged step (after the step's updates)."""
    original = trainer._train_scalars

    def hook(step, metrics):
        callback(step, dict(metrics))
        return original(step, metrics)

    trainer._train_scalars = hook


def _batches(npz, n):
    """The first n training batches, as the trainer's fresh iterator yields them."""
    iterator = iter(_dataset(npz, "train[:64]", True))
    return [next(iterator)["targets"] for _ in range(n)]


# ----------------------------------------------------------------- references
def _adam(var, grad, m, v, t):
    """Keras Adam's update at iteration t, written out: returns (new var, m, v)."""
    grad = np.asarray(grad, np.float64)
    m = BETA1 * m + (1 - BETA1) * grad
    v = BETA2 * v + (1 - BETA2) * grad**2
    alpha = LR * math.sqrt(1 - BETA2**t) / (1 - BETA1**t)
    return np.asarray(var, np.float64) - alpha * m / (np.sqrt(v) + EPS), m, v


def _numpy(grads, variables):
    # (The codebook's gradient arrives as IndexedSlices from the gather.)
    return [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy().astype(np.float64)
            for g, v in zip(grads, variables)]


def _reference(model, disc, targets, l1_weight=1.0, l2_weight=0.0, disc_weight=0.8):
    """Gradients and statistics of one step at the current weights, from the definitions.

    Returns a dict: ``rec`` / ``gan`` gradients of the model's trainable variables (of
    L1 + L2 + VQ losses and of the generator loss), ``weight`` (the adaptive weight, Eq. 7),
    ``disc`` (hinge-loss gradients of the discriminator), ``counts`` and ``sums``.
    """
    x = tf.cast(targets, tf.float32) / 127.5 - 1.0
    beta = model.commitment_cost
    loss_mode = model.codebook_update == "loss"
    kernel = model.decoder.conv_out.kernel  # the decoder's last layer
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        codebook = tf.convert_to_tensor(model.quantizer.codebook)  # trainable for "loss"
        z = model.encoder(x)
        flat = tf.reshape(z, [-1, model.code_dim])
        # Nearest entry by brute-force distances (no expansion trick).
        distances = tf.reduce_sum(tf.square(flat[:, None, :] - codebook[None]), axis=-1)
        codes = tf.argmin(distances, axis=1)
        nearest = tf.reshape(tf.gather(codebook, codes), tf.shape(z))
        quantized = z + tf.stop_gradient(nearest - z)  # straight-through
        rec = model.decoder(quantized)
        loss = (l1_weight * tf.reduce_mean(tf.abs(x - rec))
                + l2_weight * tf.reduce_mean(tf.square(x - rec))
                + beta * tf.reduce_mean(tf.square(z - tf.stop_gradient(nearest))))
        if loss_mode:
            loss += tf.reduce_mean(tf.square(tf.stop_gradient(z) - nearest))
        if disc is not None:
            gan = -tf.reduce_mean(disc(rec))
    out = {"rec": _numpy(tape.gradient(loss, variables), variables)}
    if disc is not None:
        out["gan"] = _numpy(tape.gradient(gan, variables), variables)
        rec_norm = np.linalg.norm(tape.gradient(loss, kernel).numpy())
        gan_norm = np.linalg.norm(tape.gradient(gan, kernel).numpy())
        out["weight"] = disc_weight * min(rec_norm / (gan_norm + 1e-4), 1e4)
        with tf.GradientTape() as disc_tape:
            real, fake = disc(x), disc(tf.stop_gradient(rec))
            d_loss = 0.5 * (tf.reduce_mean(tf.nn.relu(1.0 - real))
                            + tf.reduce_mean(tf.nn.relu(1.0 + fake)))
        out["disc"] = _numpy(disc_tape.gradient(d_loss, disc.trainable_variables),
                             disc.trainable_variables)
    codes = codes.numpy()
    out["counts"] = np.bincount(codes, minlength=K).astype(np.float64)
    out["sums"] = np.zeros((K, model.code_dim))
    np.add.at(out["sums"], codes, flat.numpy().astype(np.float64))
    return out


def _codebook_update(quantizer, counts, sums):
    """The EMA update (no restarts: dead_code_threshold 0): {variable id: expected value}."""
    q, d, eps = quantizer, quantizer.ema_decay, quantizer.epsilon
    expected = {id(q.usage): d * q.usage.numpy() + (1 - d) * counts}
    if q.codebook_update == "ema":
        n = d * q.ema_counts.numpy() + (1 - d) * counts
        m = d * q.ema_sums.numpy() + (1 - d) * sums
        smoothed = (n + eps) / (n.sum() + K * eps) * n.sum()
        expected.update({id(q.ema_counts): n, id(q.ema_sums): m,
                         id(q.codebook): m / smoothed[:, None]})
    return expected


def _expected_weights(layer, trainable_update, other=None):
    """All of ``layer.weights``: updated trainables, ``other`` updates, the rest unchanged."""
    expected = dict(other or {})
    expected.update({id(v): new for v, new in zip(layer.trainable_variables, trainable_update)})
    return [expected.get(id(v), v.numpy()) for v in layer.weights]


def _assert_weights(variables, expected, atol=1e-5):
    assert len(variables) == len(expected)
    for v, e in zip(variables, expected):
        got = v.numpy() if hasattr(v, "numpy") else v
        np.testing.assert_allclose(got, e, rtol=1e-4, atol=atol, err_msg=getattr(v, "path", ""))


# ---------------------------------------------------------------------- tests
def test_one_step_without_discriminator_equals_hand_computation(tmp_path, npz):
    # "loss" codebook: the codebook is trained by Adam through the codebook loss.
    trainer = _trainer(tmp_path, npz, dict(codebook_update="loss"), eval_split=None,
                       l1_weight=1.0, l2_weight=0.5)
    trainer.build()
    model = trainer.model
    ref = _reference(model, None, _batches(npz, 1)[0], l1_weight=1.0, l2_weight=0.5)
    updated = [_adam(v.numpy(), g, 0, 0, 1)[0]
               for v, g in zip(model.trainable_variables, ref["rec"])]
    expected = _expected_weights(model, updated,
                                 _codebook_update(model.quantizer, ref["counts"], ref["sums"]))
    before = [v.numpy() for v in model.trainable_variables]
    logged = []
    _on_logged_steps(trainer, lambda step, metrics: logged.append(metrics))
    trainer.train()
    assert int(trainer.step.numpy()) == 1
    _assert_weights(model.weights, expected)
    # The weights, the codebook included, really moved: equality is not vacuous. (Biases
    # right before a group norm have zero gradient and stay put.)
    moved = {v.path for v, b in zip(model.trainable_variables, before)
             if np.abs(v.numpy() - b).max() > LR / 10}
    assert model.quantizer.codebook.path in moved
    assert len(moved) >= 0.75 * len(before)
    assert ref["counts"].sum() == 4 * 4 * 4  # 4 images of 4x4 codes
    np.testing.assert_allclose(logged[0]["gradient_norm"],
                               np.sqrt(sum((g**2).sum() for g in ref["rec"])), rtol=1e-4)


def test_discriminator_switches_on_at_its_start_step(tmp_path, npz):
    # Step 1 (step index 0) runs without the adversarial terms, step 2 with them; both
    # steps are checked against the definitions, including Adam's second iteration.
    trainer = _trainer(tmp_path, npz, eval_split=None, num_train_steps=2,
                       discriminator_fn=DISCRIMINATOR, discriminator_start_step=1,
                       discriminator_weight=0.8)
    trainer.build()
    model, disc = trainer.model, trainer.discriminator
    batch1, batch2 = _batches(npz, 2)
    ref1 = _reference(model, disc, batch1)
    gen1 = [_adam(v.numpy(), g, 0, 0, 1) for v, g in zip(model.trainable_variables, ref1["rec"])]
    expected1 = _expected_weights(model, [u[0] for u in gen1],
                                  _codebook_update(model.quantizer, ref1["counts"], ref1["sums"]))
    disc0 = [v.numpy() for v in disc.weights]
    seen = {}

    def at_step(step, metrics):
        seen[step] = {"metrics": metrics, "model": [v.numpy() for v in model.weights],
                      "disc": [v.numpy() for v in disc.weights]}
        if step == 1:  # the expected step 2, from the weights after step 1
            ref2 = _reference(model, disc, batch2)
            grads = [r + 1.0 * ref2["weight"] * g for r, g in zip(ref2["rec"], ref2["gan"])]
            gen2 = [_adam(v.numpy(), g, m, s, 2)[0]
                    for v, g, (_, m, s) in zip(model.trainable_variables, grads, gen1)]
            seen["expected2"] = _expected_weights(
                model, gen2, _codebook_update(model.quantizer, ref2["counts"], ref2["sums"]))
            # The discriminator's Adam saw zero gradients at step 1: m = v = 0, t = 2.
            seen["expected_disc2"] = _expected_weights(
                disc, [_adam(v.numpy(), g, 0, 0, 2)[0]
                       for v, g in zip(disc.trainable_variables, ref2["disc"])])
            seen["ref2"] = ref2

    _on_logged_steps(trainer, at_step)
    trainer.train()
    # Step 1: the generator update is the one without a discriminator, which stays put.
    first = seen[1]
    _assert_weights(first["model"], expected1)
    for a, b in zip(disc0, first["disc"]):
        np.testing.assert_array_equal(a, b)
    assert first["metrics"]["discriminator_factor"] == 0.0
    np.testing.assert_allclose(first["metrics"]["adaptive_weight"], ref1["weight"], rtol=1e-4)
    np.testing.assert_allclose(first["metrics"]["loss"],
                               first["metrics"]["rec_loss"] + first["metrics"]["vq_loss"],
                               rtol=1e-6)
    # Step 2: adversarial terms on, with the adaptive weight of the decoder's last layer.
    second, ref2 = seen[2], seen["ref2"]
    assert second["metrics"]["discriminator_factor"] == 1.0
    assert 0 < ref2["weight"] < 1e4
    np.testing.assert_allclose(second["metrics"]["adaptive_weight"], ref2["weight"], rtol=1e-4)
    _assert_weights(model.weights, seen["expected2"])
    _assert_weights(disc.weights, seen["expected_disc2"])
    assert max(np.abs(a - b).max() for a, b in zip(first["disc"], second["disc"])) > LR / 10
    m = second["metrics"]
    np.testing.assert_allclose(m["loss"], m["rec_loss"] + m["vq_loss"] + ref2["weight"]
                               * m["g_loss"], rtol=1e-4)


def _all_state(trainer):
    """Every checkpointed value: step, model and discriminator weights, both optimizers."""
    state = {"step": np.asarray(trainer.step.numpy())}
    groups = (("model", trainer.model.weights), ("disc", trainer.discriminator.weights),
              ("opt", trainer.optimizer.variables),
              ("disc_opt", trainer.discriminator_optimizer.variables))
    for group, variables in groups:
        for i, v in enumerate(variables):
            # Keyed by position: names carry uniquified model names ("vq_autoencoder_2").
            state[f"{group}/{i}"] = np.asarray(v.numpy())
    return state


# Four steps with restarts of dead codes and the discriminator switched on at step 3.
RUN = dict(model_kwargs=dict(dead_code_threshold=0.5), eval_split=None,
           discriminator_fn=DISCRIMINATOR, discriminator_start_step=2, num_train_steps=4)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted single-device run (shared_data is function-scoped: checked here)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    npz = SHARED_DATA / "celeba" / "celeba_train9000_32x32_8x8.npz"
    trainer = _trainer(tmp_path_factory.mktemp("straight"), npz, **RUN)
    trainer.train()
    return _all_state(trainer)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import pathlib, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {repo!r})
    from tests.training import test_first_stage_trainer as t
    trainer = t._trainer(sys.argv[1], pathlib.Path({npz!r}), strategy="mirrored", **t.RUN)
    assert trainer.strategy.num_replicas_in_sync == 2
    trainer.train()
    np.savez(sys.argv[1] + "/state.npz", **t._all_state(trainer))
""")


def test_mirrored_strategy_matches_single_device(tmp_path, npz, request):
    # Two replicas of 2 images each: gradients, losses and codebook statistics are summed
    # and restart candidates gathered over replicas, so everything must match the
    # single-device run of the same 4 batches (which trains while the subprocess runs).
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT.format(repo=REPO, npz=str(npz)))
    out = tmp_path / "mirrored"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        straight_run = request.getfixturevalue("straight_run")
        log = proc.communicate(timeout=300)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0, log[-3000:]
    with np.load(out / "state.npz") as got:
        assert sorted(got.files) == sorted(straight_run)
        for key, value in straight_run.items():
            assert got[key].shape == value.shape, key
            np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_interrupted_training_matches_uninterrupted(tmp_path, npz, straight_run):
    first = _trainer(tmp_path, npz, **dict(RUN, num_train_steps=2))
    first.train()
    second = _trainer(tmp_path, npz, **RUN)
    second.train()
    state = _all_state(second)
    assert state.keys() == straight_run.keys()
    assert any(k.startswith("disc_opt") for k in state)
    for key, value in straight_run.items():
        assert state[key].shape == value.shape, key
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # The resumed half really changed the state: the codebook EMA and the discriminator.
    after_two = _all_state(first)
    q = second.model.quantizer
    changed = [k for k in state if not np.array_equal(state[k], after_two[k])]
    ema_counts = f"model/{[v.path for v in second.model.weights].index(q.ema_counts.path)}"
    assert ema_counts in changed and any(k.startswith("disc/") for k in changed)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / mse)


def test_training_improves_psnr_and_eval_matches_recomputation(tmp_path, npz):
    trainer = _trainer(tmp_path, npz, dict(dead_code_threshold=0.1), num_train_steps=40,
                       log_every=40, checkpoint_every=40)
    before = trainer.evaluate(initial_weights=True)  # the untrained baseline
    results = trainer.train()
    assert results["step"] == 40 and results["num_examples"] == 20
    assert results["psnr"] > before["psnr"] + 3.0, (before, results)  # about 8 -> 14 dB
    assert results["l1"] < 0.75 * before["l1"]
    assert results["bicubic_psnr"] == before["bicubic_psnr"]  # a property of the data only
    # Independent recomputation over the 20 evaluation images (batches of 8, 8, 4).
    targets = next(iter(_dataset(npz, "train[8000:8020]", False, batch_size=20)))["targets"]
    assert targets.shape[0] == 20
    small = tf.image.resize(tf.cast(targets, tf.float32), [4, 4], method="area")
    big = tf.image.resize(small, [8, 8], method="bicubic").numpy()
    bicubic = np.clip(np.round(big), 0, 255)
    np.testing.assert_allclose(results["bicubic_psnr"], _psnr(targets.numpy(), bicubic).mean(),
                               rtol=1e-5)
    model = trainer.model
    rec = np.asarray(model({"targets": targets}, training=False)["reconstruction"])
    rec_uint8 = np.clip(np.round((rec + 1.0) * 127.5), 0, 255)
    np.testing.assert_allclose(results["psnr"], _psnr(targets.numpy(), rec_uint8).mean(),
                               rtol=1e-5)
    x = targets.numpy().astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(results["l1"], np.abs(x - rec).mean(), rtol=1e-5)
    codes = np.asarray(model.encode_to_codes(targets)).ravel()
    counts = np.bincount(codes, minlength=K)
    assert results["codebook_usage"] == pytest.approx(len(np.unique(codes)) / K)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(results["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    assert 1 < results["perplexity"] <= K


def test_bad_settings_fail_before_training(tmp_path, npz):
    with pytest.raises(ValueError, match="perceptual_weights_path"):
        _trainer(tmp_path, npz, perceptual_weight=0.1)
    with pytest.raises(ValueError, match="l1_weight"):
        _trainer(tmp_path, npz, l1_weight=0.0)
    with pytest.raises(ValueError, match="discriminator_loss.*'foo'"):
        _trainer(tmp_path, npz, discriminator_loss="foo")
    with pytest.raises(ValueError, match="discriminator_start_step"):
        _trainer(tmp_path, npz, discriminator_start_step=-1)
    with pytest.raises(ValueError, match="l2_weight"):
        _trainer(tmp_path, npz, l2_weight=-1.0)
    # An Image Transformer is not a first stage: build() fails, no checkpoint is written.
    trainer = FirstStageTrainer(
        str(tmp_path), functools.partial(ImageTransformer, image_height=8, image_width=8,
                                         hidden_size=8, filter_size=8, num_heads=2,
                                         num_decoder_layers=1, block_length=16),
        functools.partial(_dataset, npz, "train[:8]", True))
    with pytest.raises(ValueError, match="VQAutoencoder.*ImageTransformer"):
        trainer.train()
    with pytest.raises(ValueError, match="mixed_float16"):
        _trainer(tmp_path, npz, precision="mixed_float16").build()
    assert not os.path.exists(tmp_path / "checkpoints")
