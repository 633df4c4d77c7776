"""Finding and reading a run's TF checkpoints without trusting names, state files or disks.

Every tool that reads a model_dir's checkpoints (training resume, evaluation,
the sampler, the exporter, the code cache of two-stage models) goes through
``restore_newest`` or ``candidates`` here:

- checkpoints are found by LISTING the directory, never by globbing a name: a
  model_dir such as ``runs/lr[0.1]`` holds ``[``, which TF's readers take for
  a glob pattern (``tf.train.latest_checkpoint`` then finds nothing and
  ``Checkpoint.restore`` raises NotFoundError); ``glob_safe_prefix`` gives
  TF a path to the same files without such characters;
- the ``checkpoint`` state file is a hint: missing, empty or garbage, the
  complete checkpoints on disk are used instead; naming a missing one
  (``ckpt-99``), the newest complete one is used;
- a checkpoint that cannot be read whole (a truncated or corrupted shard, a
  file deleted mid-read by a live trainer) or holds non-finite weights is
  skipped for the next newest, with a warning naming the file that failed;
  when none is left, ``CheckpointNotFoundError`` names what was found.

No T2T counterpart (tf.estimator read ``tf.train.latest_checkpoint``).
"""

import contextlib
import hashlib
import os
import re
import tempfile

from absl import logging

from t2t_image.storage import files
from t2t_image.storage.files import tf  # imported on first use

STATE_FILE = "checkpoint"
# Characters TF's file matching treats as a pattern (tensorflow/core/platform/file_system_helper).
_GLOB_CHARS = re.compile(r"[*?\[\\]")
_INDEX = re.compile(r"^(?P<name>.+?)(?:-(?P<number>\d+))?\.index$")
_DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
# A checkpoint deleted while it is read (a live trainer's sweep): look again this often.
_RESCANS = 5


class CheckpointNotFoundError(FileNotFoundError):
    """No restorable checkpoint where one is needed; the message says what was found there."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the current run or model; the message names both sides."""


def listdir(directory):
    """The entry names of ``directory`` (sorted), or [] when it does not exist."""
    try:
        names = files.gfile().listdir(directory)
    except files.io_errors():
        return []
    return sorted(n.rstrip("/") for n in names)


@contextlib.contextmanager
def glob_safe_prefix(prefix):
    """A path to checkpoint ``prefix`` that TF's checkpoint readers accept.

    TF's readers match the prefix as a glob pattern; a folder named
    ``lr[0.1]`` matches nothing. Such a folder is reached through
    ``/proc/self/fd/N`` (Linux) or a symlink in a temporary folder, valid
    while the context is open.

    Args:
        prefix: str, a checkpoint prefix such as ``D/checkpoints/ckpt-12``.

    Yields:
        str, the same checkpoint under a path without glob characters.
    """
    folder, base = os.path.split(prefix)
    if not _GLOB_CHARS.search(folder):
        yield prefix
        return
    if os.path.isdir("/proc/self/fd"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield f"/proc/self/fd/{fd}/{base}"
        finally:
            os.close(fd)
        return
    tmp = tempfile.mkdtemp(prefix="t2t_image-checkpoint-")
    link = os.path.join(tmp, "dir")
    os.symlink(os.path.abspath(folder), link)
    try:
        yield os.path.join(link, base)
    finally:
        os.remove(link)
        os.rmdir(tmp)


def _shard_sets(base, names):
    shards = {}
    for name in names:
        match = _DATA_SHARD.search(name)
        if match and name[:match.start()] == base:
            index, count = map(int, match.groups())
            shards.setdefault(count, set()).add(index)
    return shards


def data_files(prefix, names=None):
    """The data shard paths of ``prefix`` present on disk (by listing)."""
    folder, base = os.path.split(prefix)
    names = listdir(folder) if names is None else names
    return [os.path.join(folder, n) for n in names
            if _DATA_SHARD.search(n) and n[:_DATA_SHARD.search(n).start()] == base]


def checkpoint_is_complete(prefix, names=None):
    """Whether the V2 checkpoint ``prefix`` has a readable index and all its data shards.

    Cheap (reads the index, not the data): enough to tell a checkpoint that a
    killed save or sweep left half-written or half-deleted from a complete
    one. Files are found by listing, so any folder name works.

    Args:
        prefix: str, e.g. ``model_dir/checkpoints/ckpt-12``.
        names: optional entry names of the prefix's folder (saves a listing).

    Returns:
        bool.
    """
    folder, base = os.path.split(prefix)
    names = listdir(folder) if names is None else names
    if base + ".index" not in names:
        return False
    if not any(indices == set(range(count))
               for count, indices in _shard_sets(base, names).items()):
        return False
    try:
        with glob_safe_prefix(prefix) as path:
            tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError, OSError):
        return False
    return True


def checkpoint_number(prefix):
    """The number N of a prefix ``.../name-N`` (-1 when it has none)."""
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def index_files(checkpoint_dir, name=None):
    """Prefixes of every ``<name>-N.index`` in the folder, complete or not, oldest first."""
    found = []
    for entry in listdir(checkpoint_dir):
        match = _INDEX.match(entry)
        if match and (name is None or match["name"] == name):
            found.append((int(match["number"] or -1), os.path.join(checkpoint_dir, entry[:-6])))
    return [p for _, p in sorted(found)]


def complete_checkpoints(checkpoint_dir, name="ckpt"):
    """The complete checkpoints ``<name>-N`` in ``checkpoint_dir`` by listing, oldest first."""
    names = listdir(checkpoint_dir)
    return [p for p in index_files(checkpoint_dir, name) if checkpoint_is_complete(p, names)]


def read_state(checkpoint_dir):
    """What the ``checkpoint`` state file says, and what is wrong with it.

    Paths in the state are taken as names inside ``checkpoint_dir`` (so a
    moved model_dir still works).

    Returns:
        ``(latest, listed, problem)``: the latest prefix or None, the listed
        prefixes, and None or a sentence saying why the state is unusable.
    """
    path = os.path.join(checkpoint_dir, STATE_FILE)
    if not tf.io.gfile.exists(path):
        return None, [], f"there is no checkpoint state file {path}"
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except ValueError:  # TF: "Invalid checkpoint state" (empty, or names no checkpoint)
        return None, [], f"the checkpoint state file {path} is empty or names no checkpoint"
    except tf.errors.OpError as e:
        return None, [], f"the checkpoint state file {path} cannot be read ({e.message})"
    if state is None:  # TF logged the parse error and ignored the file
        return None, [], f"the checkpoint state file {path} is not a checkpoint state (garbage)"

    def local(p):
        return os.path.join(checkpoint_dir, os.path.basename(os.path.normpath(p)))

    return (local(state.model_checkpoint_path),
            [local(p) for p in state.all_model_checkpoint_paths], None)


def candidates(checkpoint_dir, name="ckpt"):
    """The checkpoints a reader should try, best first, and notes on what was off.

    The state file's latest checkpoint comes first when it is complete; then
    every other complete checkpoint found by listing, newest first.

    Returns:
        ``(prefixes, notes)``: a list of str and a list of sentences.
    """
    complete = complete_checkpoints(checkpoint_dir, name)
    latest, _, problem = read_state(checkpoint_dir)
    notes = []
    if latest is None and complete:
        notes.append(f"{problem}; using the complete checkpoints found in {checkpoint_dir} "
                     f"({', '.join(os.path.basename(p) for p in complete)})")
    elif latest is not None and latest not in complete:
        notes.append(f"the checkpoint state in {checkpoint_dir} names {os.path.basename(latest)}, "
                     f"which is missing or incomplete")
    first = [latest] if latest in complete else []
    return first + [p for p in reversed(complete) if p != latest], notes


def _failed_file(prefix):
    """The file of ``prefix`` to blame for a failed read: its index if unreadable, else its data."""
    try:
        with glob_safe_prefix(prefix) as path:
            tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError, OSError):
        return prefix + ".index"
    return ", ".join(data_files(prefix)) or prefix + ".data-*"


def _first_line(error):
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    return (text.strip().splitlines() or [type(error).__name__])[0]


def non_finite_tensors(variables):
    """How many floating-point variables in ``variables`` hold a NaN or an infinity."""
    import keras  # keras.ops: the same check under the TF and the JAX backend

    count = 0
    for variable in variables:
        if (keras.backend.is_float_dtype(variable.dtype)
                and not bool(keras.ops.all(keras.ops.isfinite(variable)))):
            count += 1
    return count


def describe_found(checkpoint_dir):
    """A short account of the checkpoint files in a folder, for error messages."""
    names = [n for n in listdir(checkpoint_dir) if n == STATE_FILE or ".index" in n
             or _DATA_SHARD.search(n)]
    if not names:
        return f"{checkpoint_dir} holds no checkpoint files"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"{checkpoint_dir} holds {shown}"


def _is_mismatch(error):
    # Shapes or dtypes that differ from the run's (another batch size, precision or
    # architecture): every older checkpoint would fail alike, so no fallback.
    return isinstance(error, tf.errors.InvalidArgumentError) and not isinstance(
        error, tf.errors.DataLossError)


def restore_newest(restore, checkpoint_dir, *, name="ckpt", variables=(), first=None,
                   exact=None):
    """Restores the newest readable checkpoint of ``checkpoint_dir`` with ``restore(path)``.

    Tries ``candidates`` in order; a checkpoint whose read raises an I/O or
    data error (truncated or corrupted shard, ``Read less bytes than
    requested``, a file deleted mid-read) or whose ``variables`` come out
    non-finite is skipped with a warning naming the file, and the folder is
    listed again (a live trainer may have written a newer one meanwhile).

    Args:
        restore: callable taking a prefix (a glob-safe path to it) and
            restoring it; raise on failure.
        checkpoint_dir: str.
        name: checkpoint name (``<name>-N``).
        variables: the variables ``restore`` fills; each must come out finite.
        first: optional prefix to try before the candidates (e.g. a manager's
            latest checkpoint).
        exact: optional prefix to restore instead (an explicit ``--checkpoint``):
            nothing else is tried.

    Returns:
        ``(prefix, skipped)``: the restored checkpoint (None when the folder
        holds no checkpoint index at all) and a dict of those skipped:
        prefix -> "file: reason".

    Raises:
        CheckpointNotFoundError: the folder holds checkpoint files but none
            could be restored (the message names each and why).
        CheckpointMismatchError: a checkpoint's shapes or dtypes differ from
            the variables' (nothing older is tried).
    """
    failed, skipped, notes = {}, {}, []
    for _ in range(_RESCANS):
        if exact:
            order, notes = ([exact] if checkpoint_is_complete(exact) else []), []
            if not order:
                failed[exact] = f"{exact}: not a complete checkpoint (index plus data shards)"
        else:
            order, notes = candidates(checkpoint_dir, name)
        if first and first not in order and checkpoint_is_complete(first):
            order.insert(0, first)
        order = [p for p in order if p not in failed]
        if not order:
            break
        rescan = False
        for prefix in order:
            try:
                with glob_safe_prefix(prefix) as path:
                    restore(path)
            except ValueError as e:  # TF: "Received incompatible tensor with shape ..."
                raise CheckpointMismatchError(
                    f"checkpoint {prefix} does not fit the current model: {_first_line(e)}"
                ) from e
            except (tf.errors.OpError, IndexError, OSError) as e:
                if _is_mismatch(e):
                    raise CheckpointMismatchError(
                        f"checkpoint {prefix} does not fit the current settings: "
                        f"{_first_line(e)}") from e
                gone = isinstance(e, (tf.errors.NotFoundError, FileNotFoundError))
                failed[prefix] = (f"{_failed_file(prefix)}: "
                                  + ("deleted while being read" if gone else _first_line(e)))
                skipped[prefix] = failed[prefix]
                logging.warning("Cannot read checkpoint %s (%s); trying the next newest.",
                                prefix, failed[prefix])
                if gone:
                    rescan = True
                    break
                continue
            bad = non_finite_tensors(variables)
            if bad:
                failed[prefix] = f"{prefix}: {bad} of its weight tensors are NaN or infinite"
                skipped[prefix] = failed[prefix]
                logging.warning("Checkpoint %s holds non-finite weights (%d tensors); trying the "
                                "next newest.", prefix, bad)
                continue
            for note in notes:
                logging.warning("%s.", note[0].upper() + note[1:])
            return prefix, skipped
        if not rescan:
            break
    if not failed and not index_files(checkpoint_dir) and not notes:
        return None, skipped
    checkpoint_dir = os.path.dirname(exact) if exact else checkpoint_dir
    found = describe_found(checkpoint_dir)
    reasons = "; ".join(failed.values()) or "no complete checkpoint (index plus all data shards)"
    raise CheckpointNotFoundError(
        f"no restorable checkpoint in {checkpoint_dir}: {reasons}. Found: {found}.")


def fingerprint(prefix):
    """A content fingerprint of checkpoint ``prefix``: SHA-256 of its index and data files.

    Independent of the path and of file times, so a copied or moved
    checkpoint keeps it and a retrained one (same name, new weights) does not.

    Returns:
        str, ``sha256:<first 16 hex digits>``.
    """
    digest = hashlib.sha256()
    if prefix.endswith((".keras", ".weights.h5")):  # one file (a preset's weights)
        files = [prefix]
    else:
        folder, base = os.path.split(prefix)
        names = listdir(folder)
        files = [prefix + ".index"] + sorted(data_files(prefix, names))
    for path in files:  # names without the prefix: a renamed copy keeps its fingerprint
        digest.update(os.path.basename(path)[len(os.path.basename(prefix)):].encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
