"""Checkpoints as one ``.npz`` file per step: no TensorFlow needed to write or read them.

The JAX backend's trainer writes ``model_dir/checkpoints/ckpt-<step>.npz``
holding the model's weights (``model/<i>`` in ``model.weights`` order, with
their shapes checked on restore), the optimizer's variables
(``optimizer/<i>``), the step and the data iterator's position (JSON). A file
is written beside its final name, flushed to disk, then renamed over it: a
file with the final name is always complete, so the newest one is the latest
checkpoint and no state file can name a missing or half-written one (the
guarantee ``run_guard.CheckpointManager`` gives TF's checkpoints). The oldest
files beyond ``max_to_keep`` are deleted only after the new one is in place.
The TF backend reads the model part (``model_loading``), so weights trained
under JAX sample, evaluate and export under TensorFlow.

Readers trust nothing in a file: ``read_checkpoint`` refuses an empty, truncated
or crafted one (array names, dtypes, a non-scalar step, a data-iterator state
that is not bounded JSON) and one holding NaN or infinity, raising
``UnreadableCheckpointError``; ``restore_newest`` then falls back to the next
newest file with a warning naming the file and the reason, as the TF readers
do (``checkpoint_files.restore_newest``), and fails naming every file when
none is readable, so no tool ever starts over or samples from damaged weights.
"""

import contextlib
import json
import os
import re
import zipfile
import zlib

import numpy as np
from absl import logging

from t2t_image.storage.checkpoint_files import CheckpointMismatchError
from t2t_image.storage.checkpoint_files import CheckpointNotFoundError

_NAME = re.compile(r"^ckpt-(\d+)\.npz$")
_ARRAY = re.compile(r"^(model|optimizer)/(\d{6})$")
SUFFIX = ".npz"
# The data iterator's position is small JSON (a few numbers); more is not a checkpoint of ours.
MAX_STATE_CHARS = 1 << 20
# A checkpoint deleted while it is read (a live trainer's sweep): look again this often.
_RESCANS = 5


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, crafted, non-finite); names the file."""


def checkpoint_step(path):
    """The step of a checkpoint file name, or None when it is not one."""
    match = _NAME.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def list_checkpoints(directory):
    """The complete checkpoint files in ``directory``, oldest step first."""
    if not os.path.isdir(directory):
        return []
    found = sorted((checkpoint_step(n), n) for n in os.listdir(directory)
                   if checkpoint_step(n) is not None)
    return [os.path.join(directory, n) for _, n in found]


def latest_checkpoint(directory):
    """The newest checkpoint file in ``directory``, or None."""
    paths = list_checkpoints(directory)
    return paths[-1] if paths else None


def write_checkpoint(path, model_weights, optimizer_variables, step, data_state=None):
    """Writes one checkpoint file atomically (temporary file, fsync, rename)."""
    arrays = {f"model/{i:06d}": np.asarray(w) for i, w in enumerate(model_weights)}
    arrays.update({f"optimizer/{i:06d}": np.asarray(v) for i, v in enumerate(optimizer_variables)})
    arrays["step"] = np.asarray(step, np.int64)
    arrays["data_iterator"] = np.asarray(json.dumps(data_state))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power loss
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _indexed(keys, kind, path):
    found = sorted(int(m.group(2)) for m in map(_ARRAY.match, keys) if m and m.group(1) == kind)
    if found != list(range(len(found))):
        raise ValueError(f"its {kind} arrays are not numbered 0..{len(found) - 1}")
    return [f"{kind}/{i:06d}" for i in found]


def _scalar(npz, key, kinds):
    value = npz[key]
    if value.shape != () or value.dtype.kind not in kinds:
        raise ValueError(f"'{key}' must be a scalar of kind {kinds!r}, got dtype {value.dtype} "
                         f"and shape {value.shape}")
    return value[()]


def read_checkpoint(path):
    """Reads a checkpoint file: ``(model_weights, optimizer_variables, step, data_state)``.

    Raises:
        UnreadableCheckpointError: naming the file and what is wrong: empty,
            truncated or not a zip; unexpected array names, non-numeric arrays,
            a step that is not one integer >= 0, a data-iterator state that is
            not JSON of at most ``MAX_STATE_CHARS`` characters; NaN or infinite
            values (a trainer never saves those).
    """
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty (0 bytes)")
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            names = _indexed(keys, "model", path), _indexed(keys, "optimizer", path)
            unexpected = sorted(keys - set(names[0]) - set(names[1]) - {"step", "data_iterator"})
            if unexpected or not names[0]:
                raise ValueError(f"unexpected arrays {unexpected[:5]}" if unexpected
                                 else "it holds no model arrays")
            model, optimizer = ([npz[k] for k in group] for group in names)
            step = int(_scalar(npz, "step", "iu"))
            state = str(_scalar(npz, "data_iterator", "U"))
        if step < 0:
            raise ValueError(f"its step is {step}")
        if len(state) > MAX_STATE_CHARS:
            raise ValueError(f"its data-iterator state has {len(state)} characters "
                             f"(at most {MAX_STATE_CHARS})")
        try:
            data_state = json.loads(state)
        except ValueError as e:
            raise ValueError(f"its data-iterator state is not JSON ({e})") from e
    except RecursionError as e:
        raise UnreadableCheckpointError(
            f"cannot read the checkpoint {path}: its data-iterator state is nested too deeply"
        ) from e
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError) as e:
        raise UnreadableCheckpointError(f"cannot read the checkpoint {path}: {e}") from e
    arrays = model + optimizer
    odd = [a.dtype for a in arrays if a.dtype.kind not in "biuf"]
    if odd:
        raise UnreadableCheckpointError(
            f"cannot read the checkpoint {path}: it holds arrays of dtype {odd[0]}")
    bad = sum(1 for a in arrays if a.dtype.kind == "f" and not np.isfinite(a).all())
    if bad:
        raise UnreadableCheckpointError(
            f"the checkpoint {path} holds NaN or infinite values in {bad} of its arrays")
    return model, optimizer, step, data_state


def restore_newest(directory, restore, exact=None):
    """Calls ``restore(path)`` with the newest checkpoint of ``directory`` that it accepts.

    A file ``restore`` rejects with ``UnreadableCheckpointError`` (damaged,
    crafted, non-finite; also a file deleted while read) is skipped for the
    next newest with a warning naming it; a ``CheckpointMismatchError`` (another
    architecture) is raised at once: every older file would fail alike.

    Args:
        directory: str, the checkpoint folder.
        restore: callable taking a path; raises ``UnreadableCheckpointError``
            for a file it cannot use.
        exact: optional path to restore instead; nothing else is tried.

    Returns:
        ``(path, skipped)``: the restored file (None when the folder holds no
        checkpoint file) and a dict path -> reason of those skipped.

    Raises:
        CheckpointNotFoundError: checkpoint files exist but none is usable (the
            message names each and why).
    """
    skipped = {}
    for _ in range(_RESCANS):
        order = [exact] if exact else list_checkpoints(directory)[::-1]
        order = [p for p in order if p not in skipped]
        rescan = False
        for path in order:
            try:
                restore(path)
            except UnreadableCheckpointError as e:
                skipped[path] = str(e)
                logging.warning("%s; trying the next newest.", e)
                if isinstance(e.__cause__, FileNotFoundError) and not exact:
                    rescan = True  # a live trainer swept it: newer files may have come
                    break
                continue
            return path, skipped
        if not rescan:
            break
    if not skipped:
        return None, skipped
    raise CheckpointNotFoundError(
        f"no restorable checkpoint in {os.path.dirname(exact) if exact else directory}: "
        + "; ".join(skipped.values()) + ".")


def newest_readable(directory):
    """The newest checkpoint file of ``directory`` that reads whole and finite, or None."""
    for path in list_checkpoints(directory)[::-1]:
        try:
            read_checkpoint(path)
        except UnreadableCheckpointError:
            continue
        return path
    return None


def set_weights_checked(variables, arrays, what, path):
    """Assigns ``arrays`` to ``variables`` in order; a count or shape mismatch names both.

    Raises:
        CheckpointMismatchError: another architecture (never a reason to try
            an older checkpoint).
    """
    if len(variables) != len(arrays):
        raise CheckpointMismatchError(
            f"the checkpoint {path} holds {len(arrays)} {what} arrays, the model has "
            f"{len(variables)}: it was written by another architecture.")
    for variable, value in zip(variables, arrays):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointMismatchError(
                f"the checkpoint {path} holds {what} {variable.path} with shape "
                             f"{tuple(value.shape)}, the model has {tuple(variable.shape)}.")
        variable.assign(value.astype(variable.dtype))


def remove_partial_checkpoints(directory):
    """Deletes temporary files that a killed save left (call while holding the model_dir lock)."""
    if not os.path.isdir(directory):
        return []
    removed = [os.path.join(directory, n) for n in os.listdir(directory) if ".npz.tmp-" in n]
    for path in removed:
        os.remove(path)
    if removed:
        logging.warning("Removed %d leftovers of interrupted checkpoint saves: %s",
                        len(removed), ", ".join(removed))
    return removed


class NpzCheckpointManager:
    """Saves and lists ``ckpt-<step>.npz`` files (the subset of TF's manager the trainer uses).

    Args:
        directory: str, the checkpoint directory.
        max_to_keep: int, how many recent checkpoints to keep.
        write_fn: callable returning ``(model_weights, optimizer_variables,
            data_state)`` to write, called at each save.
    """

    def __init__(self, directory, max_to_keep, write_fn):
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.write_fn = write_fn
        self._latest = None  # restored or saved by this process

    @property
    def checkpoints(self):
        return list_checkpoints(self.directory)

    @property
    def latest_checkpoint(self):
        """The checkpoint this run restored or saved last, else the newest readable file."""
        return self._latest or newest_readable(self.directory)

    def use(self, path):
        """Makes ``path`` (just restored) the latest (a newer damaged file is not)."""
        self._latest = path

    def save(self, checkpoint_number):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"ckpt-{int(checkpoint_number)}{SUFFIX}")
        model, optimizer, data_state = self.write_fn()
        write_checkpoint(path, model, optimizer, checkpoint_number, data_state)
        self._latest = path
        for old in self.checkpoints[:-self.max_to_keep]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        return path
