"""Runs one trainer computation under the Keras backend of this process; files in, files out.

The JAX tests call these functions in-process and run this file with
``KERAS_BACKEND=tensorflow`` in a subprocess to get the TF backend's numbers
for the same weights and batches (Keras fixes its backend at import):

    KERAS_BACKEND=tensorflow python3 tests/jax/cross_backend.py gradients WORK_DIR
    KERAS_BACKEND=tensorflow python3 tests/jax/cross_backend.py train WORK_DIR STEPS
    KERAS_BACKEND=tensorflow python3 tests/jax/cross_backend.py bits_per_dim MODEL_DIR NPZ
    KERAS_BACKEND=tensorflow python3 tests/jax/cross_backend.py save_keras MODEL_DIR

Nothing here imports TensorFlow unless the backend is TensorFlow.
"""

import functools
import json
import math
import os
import sys

import keras
import numpy as np

from t2t_image.models import ImageTransformer
from t2t_image.training.trainer import Trainer

BATCH = 4
SIZE = 8
EVAL_SPLIT = "train[64:74]"


def model_fn(**kwargs):
    return ImageTransformer(image_height=SIZE, image_width=SIZE, hidden_size=32, filter_size=64,
                            num_heads=2, num_decoder_layers=1, block_length=16,
                            layer_prepostprocess_dropout=0.0, **kwargs)


def dataset(npz, split, training, with_info=False):
    """The same batches in the same order under both backends (no shuffling)."""
    args = dict(batch_size=BATCH, image_size=SIZE, training=training, shuffle=False, seed=0,
                source_kwargs={"path": str(npz)}, with_info=with_info)
    if keras.backend.backend() == "tensorflow":
        from t2t_image.data import make_dataset

        return make_dataset("npz", split, **args)
    from t2t_image.data.numpy_pipeline import make_numpy_dataset

    return make_numpy_dataset("npz", split, **args)


def trainer(model_dir, npz, **kwargs):
    args = dict(num_train_steps=50, learning_rate=0.02, warmup_steps=10, clip_gradient_norm=1.0,
                checkpoint_every=1000, log_every=1000, eval_batches=None)
    args.update(kwargs)
    return Trainer(str(model_dir), model_fn, functools.partial(dataset, npz, "train[:64]", True),
                   functools.partial(dataset, npz, EVAL_SPLIT, False), **args)


def gradients(work_dir):
    """Loss and gradients of ``weights.npz`` on ``batch.npz`` -> ``gradients_<backend>.npz``."""
    t = trainer(os.path.join(work_dir, "unused"), os.path.join(work_dir, "data.npz"))
    t.build()
    t.model.set_weights(list(np.load(os.path.join(work_dir, "weights.npz")).values()))
    batch = dict(np.load(os.path.join(work_dir, "batch.npz")))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            nll = t._per_example_nll(batch, training=True)
            loss = tf.reduce_sum(nll / t.num_dims) / BATCH
        grads = tape.gradient(loss, t.model.trainable_variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
    else:
        from t2t_image.training import jax_step

        fn = jax_step.make_gradient_fn(t.model, BATCH, t.num_dims)
        loss, grads, _ = fn([v.value for v in t.model.trainable_variables],
                            [v.value for v in t.model.non_trainable_variables], batch)
    out = {"loss": np.asarray(loss)}
    out.update({f"g{i:04d}": np.asarray(g) for i, g in enumerate(grads)})
    np.savez(os.path.join(work_dir, f"gradients_{keras.backend.backend()}.npz"), **out)


def train(work_dir, steps):
    """``steps`` trainer steps from ``weights.npz`` -> ``trained_<backend>.npz``."""
    model_dir = os.path.join(work_dir, f"run_{keras.backend.backend()}")
    t = trainer(model_dir, os.path.join(work_dir, "data.npz"), num_train_steps=int(steps))
    t.build()
    t.model.set_weights(list(np.load(os.path.join(work_dir, "weights.npz")).values()))
    results = t.train()
    np.savez(os.path.join(work_dir, f"trained_{keras.backend.backend()}.npz"),
             bits_per_dim=results["bits_per_dim"], *t.model.get_weights())


def bits_per_dim(model_dir, npz):
    """Bits/dim of the model that ``model_loading`` loads from ``model_dir``, printed as JSON."""
    from t2t_image.storage.model_loading import load_model

    model, source = load_model(model_dir)
    total = count = 0.0
    for batch in dataset(npz, EVAL_SPLIT, False):
        nll = -np.asarray(model.log_prob(batch), np.float64)
        total, count = total + nll.sum(), count + len(nll)
    print(json.dumps({"bits_per_dim": total / (count * SIZE * SIZE * 3 * math.log(2)),
                      "source": source}))


def save_keras(model_dir):
    """Saves the model ``model_loading`` loads from ``model_dir`` as ``model_dir/model.keras``."""
    from t2t_image.storage.model_loading import load_model

    load_model(model_dir)[0].save(os.path.join(model_dir, "model.keras"))


if __name__ == "__main__":
    {"gradients": gradients, "train": train, "bits_per_dim": bits_per_dim,
     "save_keras": save_keras}[sys.argv[1]](*sys.argv[2:])
