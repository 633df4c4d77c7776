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
"""

import contextlib
import json
import os
import re
import zipfile

import numpy as np
from absl import logging

_NAME = re.compile(r"^ckpt-(\d+)\.npz$")
SUFFIX = ".npz"


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


def is_checkpoint(path):
    """Whether ``path`` is one of these checkpoint files."""
    return path.endswith(SUFFIX) and os.path.isfile(path) and zipfile.is_zipfile(path)


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


def read_checkpoint(path):
    """Reads a checkpoint file: ``(model_weights, optimizer_variables, step, data_state)``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            model = [npz[k] for k in keys if k.startswith("model/")]
            optimizer = [npz[k] for k in keys if k.startswith("optimizer/")]
            step = int(npz["step"])
            data_state = json.loads(str(npz["data_iterator"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read the checkpoint {path}: {e}") from e
    return model, optimizer, step, data_state


def set_weights_checked(variables, arrays, what, path):
    """Assigns ``arrays`` to ``variables`` in order; a count or shape mismatch names both."""
    if len(variables) != len(arrays):
        raise ValueError(f"the checkpoint {path} holds {len(arrays)} {what} arrays, the model "
                         f"has {len(variables)}: it was written by another architecture.")
    for variable, value in zip(variables, arrays):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"the checkpoint {path} holds {what} {variable.path} with shape "
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

    @property
    def checkpoints(self):
        return list_checkpoints(self.directory)

    @property
    def latest_checkpoint(self):
        return latest_checkpoint(self.directory)

    def save(self, checkpoint_number):
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"ckpt-{int(checkpoint_number)}{SUFFIX}")
        model, optimizer, data_state = self.write_fn()
        write_checkpoint(path, model, optimizer, checkpoint_number, data_state)
        for old in self.checkpoints[:-self.max_to_keep]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        return path
