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
"""

import ctypes
import errno
import os
import shutil

from absl import logging

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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


def write_folder_atomically(export_dir, write) -> str:
    """Calls ``write(staging)`` and then swaps the staging folder into ``export_dir``.

    Args:
        export_dir: the folder to create or replace (its parent must exist or be
            creatable).
        write: a function that fills the (new, empty) folder it is given.

    Returns:
        ``export_dir``.

    Raises:
        FileExistsError: when ``export_dir`` exists and is not a folder.
        Whatever ``write`` raises (the staging folder is removed, ``export_dir``
        is untouched).
    """
    target = os.path.abspath(os.fspath(export_dir))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise FileExistsError(f"export_dir={export_dir} exists and is not a folder")
    staging = staging_dir(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(staging):  # Left by an export that was killed.
        shutil.rmtree(staging)
    os.mkdir(staging)
    try:
        write(staging)
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
