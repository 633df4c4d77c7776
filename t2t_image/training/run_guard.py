"""Guards of a model_dir: one live trainer at a time, no silent architecture drift,
checkpoint state that survives a kill at any point, and clear errors when the disk fails."""

import contextlib
import fcntl
import json
import os
import re
import socket

import keras
import tensorflow as tf
from absl import logging

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
    """Writes the model's Keras config (used by the checks above and by the tools).

    Atomic: the config goes to a temporary file that then replaces the old one,
    so a trainer killed (or out of disk) while writing leaves the previous
    config, never a truncated one that would block every later restart.
    """
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, MODEL_CONFIG_NAME)
    text = json.dumps(keras.saving.serialize_keras_object(model), indent=2)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            tf.io.gfile.remove(tmp)
        raise


def _normalise(value):
    # JSON turns tuples into lists; compare them alike.
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------- checkpoints
_DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


def checkpoint_is_complete(prefix):
    """Whether the V2 checkpoint ``prefix`` has a readable index and all its data shards.

    Cheap (reads the index, not the data): enough to tell a checkpoint that a
    killed save or sweep left half-written or half-deleted from a complete one.
    (No T2T counterpart: tf.estimator managed T2T's checkpoints.)

    Args:
        prefix: str, a checkpoint prefix such as ``model_dir/checkpoints/ckpt-12``.

    Returns:
        bool.
    """
    try:
        tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError):
        return False
    shards = {}
    for name in tf.io.gfile.glob(prefix + ".data-?????-of-?????"):
        index, count = map(int, _DATA_SHARD.search(name).groups())
        shards.setdefault(count, set()).add(index)
    return any(indices == set(range(count)) for count, indices in shards.items())


class CheckpointManager(tf.train.CheckpointManager):
    """``tf.train.CheckpointManager`` whose state file never names a broken checkpoint.

    TF's manager writes the ``checkpoint`` state file listing ``max_to_keep + 1``
    checkpoints, deletes the oldest one's files, then rewrites the state: a
    trainer killed in between leaves a state file that names a half-deleted
    checkpoint (seen with a SIGKILL injected at that ``unlink``; averaging or
    evaluating "the last N" then fails). Here the state is rewritten without the
    checkpoints to delete BEFORE their files go. When opened, the manager also
    drops listed checkpoints whose files are missing or unreadable (state
    written by TF's manager, files removed by hand), falling back to the newest
    complete one as latest, with a warning.

    Relies on TF's private ``_maybe_delete``/``_record_state``/``_latest_checkpoint``
    (unchanged from TF 2.0 to 2.21); without them it behaves like TF's manager.
    No T2T counterpart (tf.estimator managed T2T's checkpoints).

    Args:
        *args, **kwargs: those of ``tf.train.CheckpointManager``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self._has_internals():
            return
        broken = [p for p in self._maybe_delete if not checkpoint_is_complete(p)]
        for prefix in broken:
            del self._maybe_delete[prefix]
        latest = self._latest_checkpoint
        if latest and (latest in broken or not checkpoint_is_complete(latest)):
            self._latest_checkpoint = next(reversed(self._maybe_delete), None)
            broken.append(latest)
        if broken:
            logging.warning(
                "The checkpoint state in %s named incomplete checkpoints (%s), left by a killed "
                "or failed save; ignoring them. Latest complete checkpoint: %s.",
                self.directory, ", ".join(sorted(set(broken))), self._latest_checkpoint)

    def _has_internals(self):
        return all(hasattr(self, name) for name in (
            "_maybe_delete", "_record_state", "_latest_checkpoint", "_max_to_keep",
            "_keep_checkpoint_every_n_hours"))

    def _sweep(self):
        if (not self._has_internals() or not self._max_to_keep
                or self._keep_checkpoint_every_n_hours):
            return super()._sweep()
        doomed = []
        while len(self._maybe_delete) > self._max_to_keep:
            doomed.append(self._maybe_delete.popitem(last=False)[0])
        if not doomed:
            return None
        self._record_state()  # the state stops naming them before their files go
        for prefix in doomed:
            for pattern in (prefix + ".index", prefix + ".data-?????-of-?????"):
                for name in tf.io.gfile.glob(pattern):
                    with contextlib.suppress(tf.errors.NotFoundError):
                        tf.io.gfile.remove(name)
        return None


def remove_partial_checkpoints(checkpoint_dir):
    """Deletes what interrupted checkpoint saves left in ``checkpoint_dir``.

    A save killed midway leaves TF's ``<prefix>-N_temp/`` folder with a partial
    data or index file (a whole checkpoint's size), a ``checkpoint.tmp*`` state
    file, or a ``.data`` shard whose ``.index`` was never written or already
    deleted. None is ever read, and without this they pile up with every
    preemption. Call it only while holding the model_dir lock (no save can be
    in progress); complete checkpoints are never touched.

    Args:
        checkpoint_dir: str, the run's checkpoint directory (may not exist yet).

    Returns:
        The list of removed paths (each also logged as a warning).
    """
    if not tf.io.gfile.isdir(checkpoint_dir):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(checkpoint_dir)]
    indexed = {n[:-len(".index")] for n in names if n.endswith(".index")}
    removed = []
    for name in names:
        path = os.path.join(checkpoint_dir, name)
        shard = _DATA_SHARD.search(name)
        if name.endswith("_temp") and tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif name.startswith("checkpoint.tmp") or (shard and name[:shard.start()] not in indexed):
            tf.io.gfile.remove(path)
        else:
            continue
        removed.append(path)
    if removed:
        logging.warning("Removed %d leftovers of interrupted checkpoint saves: %s",
                        len(removed), ", ".join(removed))
    return removed


class ModelDirWriteError(RuntimeError):
    """Raised when the trainer cannot write to its model_dir (disk full, read-only, quota)."""


def latest_complete_checkpoint(checkpoint_dir):
    """The checkpoint a restart would resume from, as the state file on disk says.

    Args:
        checkpoint_dir: str, the run's checkpoint directory.

    Returns:
        The checkpoint prefix, or None when there is none or the state cannot be read.
    """
    try:
        return tf.train.latest_checkpoint(checkpoint_dir)
    except (OSError, tf.errors.OpError):
        return None


@contextlib.contextmanager
def write_errors_named(what, step, directory, checkpoint_dir):
    """Turns an I/O failure inside the block into a ModelDirWriteError naming what failed.

    Args:
        what: str, what the block writes ("checkpoint", "TensorBoard summaries").
        step: int, the training step being written.
        directory: str, where it is written.
        checkpoint_dir: str, the run's checkpoint directory; the message names
            the latest complete checkpoint in it (read from the state file on
            disk, i.e. what a restart resumes from).

    Raises:
        ModelDirWriteError: chained to the OSError or tf.errors.OpError raised.
    """
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        raise ModelDirWriteError(
            f"cannot write the {what} of step {step} to {directory}: {e}. Earlier checkpoints "
            f"are intact; the latest complete one is "
            f"{latest_complete_checkpoint(checkpoint_dir)}, which a restart resumes from once "
            f"the disk takes writes again."
        ) from e
