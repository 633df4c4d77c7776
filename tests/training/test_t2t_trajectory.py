"""30 training steps of the port's Trainer against a NumPy reference of T2T's update.

The reference is written from T2T's formulas, not from the port's trainer:
  * loss: T2T's image top with ``weights_all``, the summed per-sub-pixel
    cross-entropy (or DMOL NLL) over the batch divided by batch * dims (nats/dim);
  * schedule: ``legacy_learning_rate_schedule`` with the "noam" scheme,
    ``learning_rate * 0.002 * 5000 * d**-0.5 * min((s+1) * w**-1.5, (s+1)**-0.5)``
    at global step s (before the step's increment), "Adam" correction 0.002;
  * clipping: ``tf.contrib.layers.optimize_loss(clip_gradients=c)``, i.e.
    ``clip_by_global_norm``: g * c / max(||g||, c);
  * optimizer: TF1 ``AdamOptimizer`` (T2T's LazyAdam sees dense gradients here:
    the pixel table is scaled before its gather), epsilon outside the square root
    after bias correction: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t),
    w -= lr_t * m / (sqrt(v) + eps), with T2T's image settings b1 0.9, b2 0.98, eps 1e-9.
The only thing taken from the port is the gradient oracle: the gradient of the
summed NLL of a batch with respect to the weights, from a separate copy of the
model and ``tf.GradientTape``. The optimizer math runs in float64 NumPy.

Compared: the loss at every step and each variable's CHANGE over the 30 steps
(at warm-up learning rates the weights move ~1e-3 relative, so comparing
weights alone could not see a wrong update).
"""

import functools
import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.models import ImageTransformer
from t2t_image.training.trainer import Trainer

STEPS = 30
BATCH = 4
# Measured (2 configs): loss <= 3e-7, norm <= 2e-6, change <= 4.7e-4 (an FFN kernel under
# clipping; float32 rounding differences between the graph and the eager oracle).
LOSS_RTOL = 2e-6  # per-step loss, relative
NORM_RTOL = 1e-4  # per-step global gradient norm, relative
CHANGE_RTOL = 2e-3  # ||port change - reference change|| / ||reference change||, per variable
CONFIGS = {
    # Class-conditional, learned position tables (the x sqrt(d) path), clipping active.
    "cat_pos_emb_conditional": dict(
        model=dict(num_classes=10, pos="emb", block_length=48),
        trainer=dict(learning_rate=0.002, warmup_steps=10, clip_gradient_norm=0.26)),
    # DMOL likelihood, 2D local attention, no clipping.
    "dmol_local_2d": dict(
        model=dict(likelihood="dmol", dec_attention_type="local_2d", query_shape=(2, 4),
                   memory_flange=(2, 4)),
        trainer=dict(learning_rate=0.004, warmup_steps=8, clip_gradient_norm=0.0)),
}


def _model_fn(config, dtype=None):
    return ImageTransformer(
        image_height=8, image_width=8, hidden_size=32, filter_size=64, num_heads=2,
        num_decoder_layers=2, layer_prepostprocess_dropout=0.0, dtype=dtype,
        **config["model"])


def _batches(shared_data, conditional):
    data = np.load(shared_data / "cifar10" / "cifar10_train_exact.npz")
    images = data["x"][: STEPS * BATCH, ::4, ::4]  # 8x8, real pixel statistics
    labels = data["y"][: STEPS * BATCH].astype("int32")
    batches = []
    for i in range(STEPS):
        batch = {"targets": images[i * BATCH:(i + 1) * BATCH]}
        if conditional:
            batch["labels"] = labels[i * BATCH:(i + 1) * BATCH]
        batches.append(batch)
    return batches


def _dataset_fn(batches, with_info=False):
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    return tf.data.Dataset.from_tensor_slices(stacked)


def _scalars(model_dir, tag):
    points = {}
    for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    points[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return [points[s] for s in sorted(points)]


def t2t_reference(model, initial, batches, num_dims, hidden_size, learning_rate, warmup_steps,
                  clip, beta1=0.9, beta2=0.98, epsilon=1e-9):
    """T2T's training update in NumPy; ``model`` is only the gradient oracle."""
    weights = [w.astype(np.float64) for w in initial]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    losses, norms = [], []
    for step, batch in enumerate(batches):
        model.set_weights([w.astype(np.float32) for w in weights])
        with tf.GradientTape() as tape:
            total_nll = -tf.reduce_sum(model.log_prob(batch))  # nats over the batch
        grads = tape.gradient(total_nll, model.trainable_weights)
        normaliser = len(batch["targets"]) * num_dims  # weights_all: every sub-pixel
        losses.append(float(total_nll) / normaliser)
        g = [np.asarray(tf.convert_to_tensor(x), np.float64) / normaliser for x in grads]
        norm = math.sqrt(sum(float(np.sum(x * x)) for x in g))
        norms.append(norm)
        if clip:
            g = [x * clip / max(norm, clip) for x in g]
        s = float(step)
        lr = (learning_rate * 0.002 * 5000.0 * hidden_size**-0.5
              * min((s + 1) * warmup_steps**-1.5, (s + 1) ** -0.5))
        t = step + 1
        lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        for i, gi in enumerate(g):
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            weights[i] = weights[i] - lr_t * m[i] / (np.sqrt(v[i]) + epsilon)
    return losses, weights, norms


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_thirty_steps_equal_numpy_t2t_update(tmp_path, shared_data, name):
    config = CONFIGS[name]
    batches = _batches(shared_data, "num_classes" in config["model"])
    trainer = Trainer(str(tmp_path), functools.partial(_model_fn, config),
                      functools.partial(_dataset_fn, batches), num_train_steps=STEPS,
                      log_every=1, checkpoint_every=STEPS, seed=3, **config["trainer"])
    trainer.build()
    assert [v.path for v in trainer.model.trainable_weights] == [
        v.path for v in trainer.model.weights], "the test assumes no non-trainable weights"
    initial = [np.array(w) for w in trainer.model.get_weights()]
    trainer.train()
    final = [np.array(w) for w in trainer.model.get_weights()]
    port_losses = _scalars(str(tmp_path), "loss")

    oracle = _model_fn(config)
    oracle({k: v[:1] for k, v in batches[0].items()})
    ref_losses, ref_final, ref_norms = t2t_reference(
        oracle, initial, batches, num_dims=8 * 8 * 3, hidden_size=32,
        learning_rate=config["trainer"]["learning_rate"],
        warmup_steps=config["trainer"]["warmup_steps"],
        clip=config["trainer"]["clip_gradient_norm"])

    assert len(port_losses) == STEPS
    np.testing.assert_allclose(port_losses, ref_losses, rtol=LOSS_RTOL)
    # Not vacuous: the weights moved by more than 1e-3 of their size over the 30 steps.
    moved = math.sqrt(sum(np.sum((r - w) ** 2) for r, w in zip(ref_final, initial)))
    assert moved > 1e-3 * math.sqrt(sum(np.sum(w**2) for w in initial))
    # The logged gradient norm is the global norm before clipping.
    np.testing.assert_allclose(_scalars(str(tmp_path), "gradient_norm"), ref_norms, rtol=NORM_RTOL)
    clip = config["trainer"]["clip_gradient_norm"]
    if clip:
        clipped = sum(n > clip for n in ref_norms)
        assert 5 <= clipped <= STEPS - 5, f"clipping was active on {clipped} of {STEPS} steps"
    for variable, w0, port, ref in zip(trainer.model.weights, initial, final, ref_final):
        port_change, ref_change = port - w0, ref - w0
        scale = np.linalg.norm(ref_change)
        assert scale > 0 or np.linalg.norm(port_change) == 0, variable.path
        error = np.linalg.norm(port_change - ref_change) / max(scale, 1e-30)
        assert error < CHANGE_RTOL, f"{variable.path}: relative change error {error:.2e}"
