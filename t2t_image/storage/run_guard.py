"""Guards of a model_dir: one live trainer at a time, no silent architecture drift,
checkpoint state that survives a kill at any point, and clear errors when the disk fails."""

import collections
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time

import keras
from absl import logging

from t2t_image.storage import checkpoint_files
from t2t_image.storage import files
from t2t_image.storage.files import tf  # imported on first use: the JAX path never needs it

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
    advisory and unreliable on some network file systems). ``release`` deletes
    the file while still holding the lock, so a clean exit leaves none; a
    trainer that locked a file just deleted retries on the new one.
    """

    def __init__(self, model_dir):
        self.path = os.path.join(model_dir, LOCK_NAME)
        self._file = None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return self._acquire()
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise ModelDirWriteError(
                f"--model_dir={os.path.dirname(self.path)} cannot be written ({e.strerror}: "
                f"{e.filename}): training and averaging write checkpoints there. A read-only "
                "(archived) run can still be evaluated (--mode=eval), sampled and exported; "
                "copy it to a writable folder to train on.") from e

    def _acquire(self):
        while True:
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
            try:  # the holder we waited for may have deleted the file (release)
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self):
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # before unlocking: nobody can lock this file after
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _architecture(config):
    return {k: v for k, v in config.items()
            if k not in HARMLESS_KEYS and not k.endswith(HARMLESS_SUFFIXES)}


def architecture_differences(saved, current, saved_as="in the model_dir", current_as="now"):
    """The architecture settings in which two serialised Keras models differ (a list of text).

    Dropout rates, the dtype policy and the name may differ.
    """
    problems = []
    if saved.get("class_name") != current.get("class_name"):
        problems.append(f"model class: {saved.get('class_name')} {saved_as}, "
                        f"{current.get('class_name')} {current_as}")
    old = _architecture(saved.get("config", {}))
    new = _architecture(current.get("config", {}))
    for key in sorted(set(old) | set(new)):
        if _normalise(old.get(key)) != _normalise(new.get(key)):
            problems.append(f"{key}: {old.get(key)!r} {saved_as}, {new.get(key)!r} {current_as}")
    return problems


def check_same_architecture(source_model, model, what):
    """Raises CheckpointMismatchError unless ``model`` has ``source_model``'s architecture.

    ``what`` names the source (e.g. ``preset cifar10_32_uncond``) in the message.
    """
    problems = architecture_differences(keras.saving.serialize_keras_object(source_model),
                                        keras.saving.serialize_keras_object(model),
                                        f"in {what}", "in the gin config")
    if problems:
        raise checkpoint_files.CheckpointMismatchError(
            f"the configuration's model differs from the one of {what}: " + "; ".join(problems)
            + ". Use the gin config it was trained with (its metadata.json records it).")


def check_model_config(model_dir, model):
    """Compares the model with the one model_dir was trained with.

    Raises ValueError naming every differing architecture setting; dropout
    rates, the dtype policy and the name may change between runs. Returns the
    path of the saved config, or None when model_dir has none yet.
    """
    saved = read_model_config(model_dir)
    if saved is None:
        return None
    path = os.path.join(model_dir, MODEL_CONFIG_NAME)
    problems = architecture_differences(saved, keras.saving.serialize_keras_object(model))
    if problems:
        raise ValueError(
            f"the configuration's model differs from the one {model_dir} was trained with "
            f"({path}); resuming would not fit the checkpoints. Differences: "
            + "; ".join(problems)
            + ". Use a new --model_dir or restore the original settings."
        )
    return path


def read_model_config(model_dir):
    """The model's Keras config recorded in ``model_dir``, checked; None when there is none.

    Raises:
        ValueError: naming the file when it cannot be read, is not JSON, or is
            not a serialized Keras object (``class_name`` and a ``config``
            mapping), e.g. after an edit or a copy that failed.
    """
    path = os.path.join(model_dir, MODEL_CONFIG_NAME)
    gfile = files.gfile()
    if not gfile.exists(path):
        return None
    try:
        with gfile.GFile(path, "rb") as f:
            data = f.read(_MAX_CONFIG_BYTES + 1)
        if len(data) > _MAX_CONFIG_BYTES:
            raise ValueError(f"it is larger than {_MAX_CONFIG_BYTES} bytes")
        config = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {str(e)[:200]}): it records the "
                         f"model's architecture; {_MODEL_CONFIG_FIX}") from e
    if not (isinstance(config, dict) and isinstance(config.get("class_name"), str)
            and isinstance(config.get("config"), dict)):
        raise ValueError(f"{path} does not describe a Keras model (it holds "
                         f"{json.dumps(config)[:80]}, not an object with 'class_name' and "
                         f"'config'); {_MODEL_CONFIG_FIX}")
    return config


_MAX_CONFIG_BYTES = 16 << 20
_MODEL_CONFIG_FIX = ("restore it from a copy of the run, or move it away and resume with the "
                     "run's gin files (model_dir/operative_config.gin), which writes it again "
                     "once the checkpoint fits.")


def write_model_config(model_dir, model):
    """Writes the model's Keras config (used by the checks above and by the tools).

    Atomic: the config goes to a temporary file that then replaces the old one,
    so a trainer killed (or out of disk) while writing leaves the previous
    config, never a truncated one that would block every later restart.
    """
    gfile = files.gfile()
    gfile.makedirs(model_dir)
    path = os.path.join(model_dir, MODEL_CONFIG_NAME)
    text = json.dumps(keras.saving.serialize_keras_object(model), indent=2)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with gfile.GFile(tmp, "w") as f:
            f.write(text)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            gfile.remove(tmp)
        raise


def _normalise(value):
    # JSON turns tuples into lists; compare them alike.
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------- checkpoints
_DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


# Found by listing, never by globbing a name; unreadable ones are skipped (checkpoint_files).
checkpoint_is_complete = checkpoint_files.checkpoint_is_complete
CheckpointNotFoundError = checkpoint_files.CheckpointNotFoundError
CheckpointMismatchError = checkpoint_files.CheckpointMismatchError


# The TF backend's manager; other backends write npz_checkpoints.py's files.
_TF_MANAGER = tf.train.CheckpointManager if files.uses_tensorflow() else object


class CheckpointManager(_TF_MANAGER):
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

    def __init__(self, checkpoint, directory, *args, **kwargs):
        _, _, problem = checkpoint_files.read_state(directory)
        try:
            super().__init__(checkpoint, directory, *args, **kwargs)
        except ValueError:  # TF refuses an empty state file ("Invalid checkpoint state")
            if problem is None:
                raise
            self._maybe_delete = collections.OrderedDict()
            self._latest_checkpoint = None
            self._last_preserved_timestamp = time.time() - 1.0
        if not self._has_internals():
            return
        if problem is not None:  # no usable state file: the complete checkpoints on disk count
            self._recover_from_files(problem)
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

    def _recover_from_files(self, problem):
        name = os.path.basename(self._checkpoint_prefix)
        complete = checkpoint_files.complete_checkpoints(self.directory, name)
        if not complete:
            return
        now = time.time()
        self._maybe_delete = collections.OrderedDict((p, now) for p in complete)
        self._latest_checkpoint = complete[-1]
        logging.warning(
            "%s; recovered the checkpoint list from the files instead: %s (latest %s). The state "
            "file is rewritten at the next save.", problem[0].upper() + problem[1:],
            ", ".join(os.path.basename(p) for p in complete), self._latest_checkpoint)

    def use(self, prefix, unreadable=()):
        """Makes ``prefix`` (just restored) the latest; forgets the ``unreadable`` checkpoints."""
        if not self._has_internals():
            return
        for bad in unreadable:
            self._maybe_delete.pop(bad, None)
        self._latest_checkpoint = prefix

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
        for prefix in doomed:  # listed, not globbed: the folder's name may hold "[" or "*"
            for name in [prefix + ".index"] + checkpoint_files.data_files(prefix):
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
    if not files.uses_tensorflow():
        from t2t_image.storage import npz_checkpoints

        return npz_checkpoints.remove_partial_checkpoints(checkpoint_dir)
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
    """The checkpoint a restart would resume from: the state file's latest when complete,
    else the newest complete one found by listing.

    Args:
        checkpoint_dir: str, the run's checkpoint directory.

    Returns:
        The checkpoint prefix, or None when there is none or the state cannot be read.
    """
    if not files.uses_tensorflow():
        from t2t_image.storage import npz_checkpoints

        return npz_checkpoints.newest_readable(checkpoint_dir)
    try:
        order, _ = checkpoint_files.candidates(checkpoint_dir)
    except (OSError, tf.errors.OpError):
        return None
    return order[0] if order else None


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
    except files.io_errors() as e:
        latest = latest_complete_checkpoint(checkpoint_dir)
        raise ModelDirWriteError(
            f"cannot write the {what} of step {step} to {directory}: {e}. "
            + (f"Earlier checkpoints are intact; the latest complete one is {latest}, which a "
               "restart resumes from once the disk takes writes again." if latest else
               f"No checkpoint of this run is complete yet in {checkpoint_dir}: a restart "
               "starts from step 0 once the disk takes writes again.")
        ) from e


# ------------------------------------------------------------ restoring a run
class NonFiniteWeightsError(RuntimeError):
    """Raised instead of saving a checkpoint whose weights hold NaN or infinity."""


def check_finite_weights(variables, step, checkpoint_dir):
    """Refuses to save non-finite weights: a checkpoint is "good" only if they are finite.

    The loss a step reports is computed BEFORE its update, so a finite loss
    does not mean finite weights after it (e.g. ``learning_rate=1e40``).

    Raises:
        NonFiniteWeightsError: naming the step and the last finite checkpoint.
    """
    bad = checkpoint_files.non_finite_tensors(variables)
    if bad:
        latest = latest_complete_checkpoint(checkpoint_dir)
        raise NonFiniteWeightsError(
            f"{bad} weight tensors are NaN or infinite after step {step}; stopping without "
            "saving them. "
            + (f"The last checkpoint with finite weights is {latest}: " if latest else
               f"No checkpoint was saved in {checkpoint_dir} yet: ")
            + "lower the learning rate or set clip_gradient_norm, then start again.")


def restore_run(checkpoint, manager, variables, path=None, partial=False):
    """Restores a trainer's ``tf.train.Checkpoint``: ``path``, else the newest readable one.

    The newest readable checkpoint is the manager's latest unless it cannot be
    read whole or holds non-finite ``variables``; then the next newest complete
    one on disk (found by listing), with a warning naming the file that failed
    (``checkpoint_files.restore_newest``). The manager then treats the one
    restored as its latest.

    Args:
        checkpoint: the ``tf.train.Checkpoint`` to restore into.
        manager: the run's ``CheckpointManager``.
        variables: the variables that must come out finite.
        path: optional checkpoint prefix to restore exactly.
        partial: allow values in the checkpoint that ``checkpoint`` lacks
            (e.g. a data iterator position that is not restored).

    Returns:
        The restored prefix, or None when the directory holds no checkpoint.

    Raises:
        CheckpointNotFoundError: checkpoint files exist but none is restorable.
        CheckpointMismatchError: a checkpoint's shapes or dtypes do not fit.
    """
    def restore(prefix):
        status = checkpoint.restore(prefix)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()

    name = os.path.basename(getattr(manager, "_checkpoint_prefix", "ckpt"))
    prefix, skipped = checkpoint_files.restore_newest(
        restore, manager.directory, name=name, variables=variables,
        first=None if path else manager.latest_checkpoint, exact=path)
    if prefix is not None and path is None and hasattr(manager, "use"):
        manager.use(prefix, skipped)
    return prefix


RUN_SETTINGS_NAME = "run_settings.json"


def run_settings_changes(model_dir, settings):
    """The settings that differ from those of the run that wrote model_dir's checkpoints.

    Args:
        model_dir: str.
        settings: dict of JSON values (batch size, precision, dataset, ...).

    Returns:
        dict name -> (old value, new value); empty when nothing changed or
        model_dir has no ``run_settings.json`` yet.
    """
    path = os.path.join(model_dir, RUN_SETTINGS_NAME)
    gfile = files.gfile()
    if not gfile.exists(path):
        return {}
    try:
        with gfile.GFile(path) as f:
            old = json.load(f)
    except (ValueError,) + files.io_errors() as e:
        logging.warning("Cannot read %s (%s); not comparing the run's settings.", path, e)
        return {}
    return {k: (old.get(k), v) for k, v in settings.items()
            if k in old and _normalise(old.get(k)) != _normalise(v)}


def write_run_settings(model_dir, settings):
    """Records the settings of the run whose checkpoints model_dir holds (atomic)."""
    gfile = files.gfile()
    gfile.makedirs(model_dir)
    path = os.path.join(model_dir, RUN_SETTINGS_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with gfile.GFile(tmp, "w") as f:
            f.write(json.dumps(settings, indent=2))
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(Exception):
            gfile.remove(tmp)
        raise
