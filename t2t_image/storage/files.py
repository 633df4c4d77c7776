"""File access and TensorFlow for code that both Keras backends run.

The JAX training path must run on machines without TensorFlow (and must not
import it where it is installed: it is large and slow to start). ``tf`` here
is a module proxy that imports TensorFlow on first attribute access, so
TF-only branches can keep writing ``tf.x``; ``gfile()`` is ``tf.io.gfile``
(local paths, GCS, ...) under the TensorFlow backend and a local-file subset
with the same method names otherwise.
"""

import glob as _glob
import importlib
import os
import shutil
import sys

import keras


class _LazyModule:
    """Imports the named module on first attribute access."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


tf = _LazyModule("tensorflow")


def uses_tensorflow():
    """Whether this process runs Keras on the TensorFlow backend."""
    return keras.backend.backend() == "tensorflow"


def io_errors():
    """The exception types of a failed read or write: OSError, and TF's when TF is loaded."""
    loaded = sys.modules.get("tensorflow")
    errors = getattr(loaded, "errors", None)
    return (OSError, errors.OpError) if errors is not None else (OSError,)


class _LocalGFile:
    """The part of ``tf.io.gfile`` the trainer uses, for local paths."""

    GFile = staticmethod(open)
    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    glob = staticmethod(_glob.glob)
    remove = staticmethod(os.remove)
    rmtree = staticmethod(shutil.rmtree)

    @staticmethod
    def makedirs(path):
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def rename(src, dst, overwrite=False):
        if not overwrite and os.path.exists(dst):
            raise FileExistsError(f"{dst} exists")
        os.replace(src, dst)


def gfile():
    """``tf.io.gfile`` under the TensorFlow backend, else a local-file equivalent."""
    return tf.io.gfile if uses_tensorflow() else _LocalGFile
