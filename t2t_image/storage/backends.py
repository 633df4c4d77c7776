"""Runs of the other Keras backend in a model_dir: TF checkpoints beside a JAX run's .npz.

The TensorFlow backend writes TF checkpoints, the JAX backend ``ckpt-N.npz``
files (``npz_checkpoints``); ``run_settings.json`` records which backend and
format wrote a run (``checkpoint_format``). A trainer never resumes the other
backend's checkpoints (optimizer state and data positions are stored
differently): it refuses by name instead of starting over beside them;
evaluation reads the newest checkpoint of either kind (``Trainer.restore``).
"""

import json
import os

import keras
from absl import logging

from t2t_image.storage import checkpoint_files
from t2t_image.storage import files
from t2t_image.storage.checkpoint_files import CheckpointMismatchError
from t2t_image.storage.run_guard import RUN_SETTINGS_NAME


def _backends():
    """(this backend's name, the other's) as KERAS_BACKEND spells them."""
    return ("tensorflow", "jax") if files.uses_tensorflow() else (keras.backend.backend(),
                                                                   "tensorflow")


def checkpoint_format():
    """The checkpoints this backend writes: "tf" (TF's format) or "npz" (npz_checkpoints)."""
    return "tf" if files.uses_tensorflow() else "npz"


def _newest(checkpoint_dir, fmt):
    """(path, step) of the newest checkpoint of format ``fmt`` in the folder, or None."""
    from t2t_image.storage import npz_checkpoints

    if fmt == "npz":
        path = npz_checkpoints.latest_checkpoint(checkpoint_dir)
        return (path, npz_checkpoints.checkpoint_step(path)) if path else None
    prefixes = checkpoint_files.index_files(checkpoint_dir, "ckpt")
    return (prefixes[-1], checkpoint_files.checkpoint_number(prefixes[-1])) if prefixes else None


def other_backend_checkpoint(model_dir, checkpoint_dir, training):
    """The other backend's newest checkpoint when it is newer than this backend's, else None.

    A model_dir records the backend and checkpoint format of its run in
    ``run_settings.json``; the files decide (older runs lack the record). A
    TensorFlow run cannot resume a JAX run's ``.npz`` checkpoints, nor the
    reverse (optimizer and data positions are stored differently): training
    on them is refused by name instead of silently starting over beside them.
    Evaluation uses the newest checkpoint of either kind (the caller reads it).

    Raises:
        CheckpointMismatchError: ``training`` and the newest checkpoint is the
            other backend's (names the file, both backends and what to do).
    """
    this, other = _backends()
    theirs = _newest(checkpoint_dir, "npz" if checkpoint_format() == "tf" else "tf")
    if theirs is None:
        return None
    ours = _newest(checkpoint_dir, checkpoint_format())
    if ours is not None and ours[1] >= theirs[1]:
        logging.warning("%s also holds older checkpoints written under KERAS_BACKEND=%s (newest "
                        "%s); this run uses its own, %s.", checkpoint_dir, other,
                        os.path.basename(theirs[0]), os.path.basename(ours[0]))
        return None
    if training:
        recorded = _recorded_backend(model_dir)
        raise CheckpointMismatchError(
            f"--model_dir={model_dir} holds checkpoints written by the trainer under "
            f"KERAS_BACKEND={other} (newest {theirs[0]}, step {theirs[1]}"
            + (f"; {RUN_SETTINGS_NAME} records backend {recorded!r}" if recorded else "")
            + f"), which a trainer under KERAS_BACKEND={this} cannot resume. Run it with "
            f"KERAS_BACKEND={other} again, or train in a new --model_dir; nothing was changed.")
    return theirs[0]


def _recorded_backend(model_dir):
    path = os.path.join(model_dir, RUN_SETTINGS_NAME)
    try:
        with files.gfile().GFile(path) as f:
            settings = json.load(f)
    except (ValueError,) + files.io_errors():
        return None
    return settings.get("backend") if isinstance(settings, dict) else None
