"""Replacing an export folder atomically: write beside it, then swap the two folders.

``write_folder_atomically(export_dir, write)`` lets ``write`` fill a staging
folder next to ``export_dir`` (same parent, so the same file system), flushes it
to disk, and then puts it in place with one ``rename``: onto a missing or empty
``export_dir`` a plain rename, onto an existing export Linux's
``renameat2(RENAME_EXCHANGE)``, which swaps the two folders in one step. A
process killed at any point leaves ``export_dir`` holding either the complete
old export or the complete new one; what is left over is the staging folder
(``.<name>.staging``), which the next export removes. Where the exchange is not
available (another OS, a file system without it) the old folder is first
renamed away, leaving a short window without an export; a warning says so.

Only an export this project wrote is ever replaced: each one holds a marker
file (``t2t_image_export.json``) listing its files, and a non-empty
``export_dir`` without it, holding files it does not list, or lying in a
model_dir (a run's ``checkpoints/`` folder, the run itself) is refused before
anything is written (``check_replaceable``).
"""

import ctypes
import errno
import json
import os
import shutil

from absl import logging

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# Written into every export: what wrote it and its files (what --overwrite may replace).
MARKER = "t2t_image_export.json"
_WRITER = "t2t_image export"


class ExportDirError(ValueError):
    """An ``export_dir`` that must not be replaced; the message names it and why."""


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths atomically (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def _fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def staging_dir(export_dir) -> str:
    """The staging folder ``write_folder_atomically`` uses for ``export_dir``."""
    parent, name = os.path.split(os.path.abspath(os.fspath(export_dir)))
    return os.path.join(parent, f".{name}.staging")


def _relative_files(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def _write_marker(folder):
    files = _relative_files(folder)
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump({"written_by": _WRITER, "files": files}, f, indent=1)


def _model_dir_holding(path):
    """The model_dir that ``path`` is or lies in (a folder holding a run's files), or None."""
    from t2t_image.storage import run_guard  # the names a trainer writes into a model_dir

    run_files = (run_guard.MODEL_CONFIG_NAME, run_guard.RUN_SETTINGS_NAME, run_guard.LOCK_NAME,
                 "operative_config.gin")
    folder = path
    while True:
        for name in run_files:
            if os.path.lexists(os.path.join(folder, name)):
                return folder, name
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def check_replaceable(export_dir) -> bool:
    """Whether writing ``export_dir`` replaces an export; refuses what must not be replaced.

    Returns:
        False for a missing or empty folder, True for an export this project
        wrote (its marker lists every file it holds).

    Raises:
        ExportDirError: ``export_dir`` is a file, is or lies in a model_dir,
            has no marker, or holds files its marker does not list (the
            message names them).
    """
    target = os.path.abspath(os.fspath(export_dir))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise ExportDirError(f"export_dir={export_dir} exists and is not a folder")
    if not os.path.isdir(target) or not os.listdir(target):
        return False
    run = _model_dir_holding(target)
    if run is not None:
        where = "is" if run[0] == target else f"lies in the model_dir {run[0]}, which"
        raise ExportDirError(
            f"export_dir={export_dir} {where} holds a training run ({run[1]}): an export never "
            "replaces a run's files; write the export to a folder outside the model_dir.")
    marker = os.path.join(target, MARKER)
    try:
        with open(marker) as f:
            record = json.load(f)
        listed = set(record["files"]) if record.get("written_by") == _WRITER else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = None
    present = _relative_files(target)
    if listed is None:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5
                                          else "")
        raise ExportDirError(
            f"export_dir={export_dir} is not an export written by t2t_image (no valid {MARKER}; "
            f"it holds {shown}): only such an export is replaced; choose another export_dir or "
            "empty it yourself.")
    other = [p for p in present if p not in listed and p != MARKER]
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise ExportDirError(
            f"export_dir={export_dir} holds files the export did not write ({shown}): "
            "replacing it would delete them; move them away or choose another export_dir.")
    return True


def write_folder_atomically(export_dir, write) -> str:
    """Calls ``write(staging)``, adds the marker, and swaps the staging folder into ``export_dir``.

    Args:
        export_dir: the folder to create or replace (its parent must exist or be
            creatable).
        write: a function that fills the (new, empty) folder it is given.

    Returns:
        ``export_dir``.

    Raises:
        ExportDirError: when ``export_dir`` must not be replaced
            (``check_replaceable``), before anything is written.
        Whatever ``write`` raises (the staging folder is removed, ``export_dir``
        is untouched).
    """
    target = os.path.abspath(os.fspath(export_dir))
    check_replaceable(target)
    staging = staging_dir(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(staging):  # Left by an export that was killed.
        shutil.rmtree(staging)
    os.mkdir(staging)
    try:
        write(staging)
        _write_marker(staging)
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not os.path.isdir(target) or not os.listdir(target):
        os.replace(staging, target)  # rename(2) onto a missing or empty folder is atomic.
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # Now the old export.
    else:
        logging.warning("This file system cannot swap folders atomically; %s is replaced in two "
                        "renames (a kill between them leaves the old export in %s).",
                        target, staging + ".old")
        old = staging + ".old"
        if os.path.lexists(old):
            shutil.rmtree(old)
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    fd = os.open(os.path.dirname(target), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return export_dir
