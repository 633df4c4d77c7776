"""Guards of a model_dir: one live trainer at a time, and no silent architecture drift."""

import fcntl
import json
import os
import socket

import keras
import tensorflow as tf

LOCK_NAME = ".trainer.lock"
MODEL_CONFIG_NAME = "model_config.json"
# Settings that change how a run trains, not which weights it has or what they compute.
HARMLESS_SUFFIXES = ("dropout",)
HARMLESS_KEYS = ("name", "dtype", "trainable")


class ModelDirLockedError(RuntimeError):
    """Raised when another live trainer holds the model_dir."""


class ModelDirLock:
    """An exclusive lock on ``model_dir`` held while a trainer runs.

    ``fcntl.flock`` on ``model_dir/.trainer.lock``: the kernel releases it when
    the holder exits in any way (SIGKILL included), so a lock left by a killed
    run never blocks a restart; a live holder makes ``acquire`` fail at once
    with its pid and host in the message. Local file systems only (flock is
    advisory and unreliable on some network file systems).
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_NAME)
        self._file = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ModelDirLockedError(
                f"another trainer is running on {os.path.dirname(self.path)} ({holder}); "
                "stop it or use another --model_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self):
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _architecture(config):
    return {k: v for k, v in config.items()
            if k not in HARMLESS_KEYS and not k.endswith(HARMLESS_SUFFIXES)}


def check_model_config(model_dir, model):
    """Compares the model with the one model_dir was trained with.

    Raises ValueError naming every differing architecture setting; dropout
    rates, the dtype policy and the name may change between runs. Returns the
    path of the saved config, or None when model_dir has none yet.
    """
    path = os.path.join(model_dir, MODEL_CONFIG_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        saved = json.load(f)
    current = keras.saving.serialize_keras_object(model)
    problems = []
    if saved.get("class_name") != current.get("class_name"):
        problems.append(f"model class: {saved.get('class_name')} in the model_dir, "
                        f"{current.get('class_name')} now")
    old = _architecture(saved.get("config", {}))
    new = _architecture(current.get("config", {}))
    for key in sorted(set(old) | set(new)):
        if _normalise(old.get(key)) != _normalise(new.get(key)):
            problems.append(f"{key}: {old.get(key)!r} in the model_dir, {new.get(key)!r} now")
    if problems:
        raise ValueError(
            f"the configuration's model differs from the one {model_dir} was trained with "
            f"({path}); resuming would not fit the checkpoints. Differences: "
            + "; ".join(problems)
            + ". Use a new --model_dir or restore the original settings."
        )
    return path


def write_model_config(model_dir, model):
    """Writes the model's Keras config (used by the checks above and by the tools)."""
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, MODEL_CONFIG_NAME), "w") as f:
        json.dump(keras.saving.serialize_keras_object(model), f, indent=2)


def _normalise(value):
    # JSON turns tuples into lists; compare them alike.
    return json.loads(json.dumps(value))
