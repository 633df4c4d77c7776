"""The files of a sampling job: conditioning images read, outputs checked and written.

Readers raise ``SamplingArgumentError`` naming the flag and the file; writers
leave a file whole or not at all (written beside it, then renamed).
"""

import os
import tempfile
import zipfile

import numpy as np

from t2t_image.sampling.arguments import SamplingArgumentError

_INPUT_KEYS = ("inputs", "x8", "low_res")


def read_image(path, flag="complete"):
    """Reads an image file as uint8 RGB `[h, w, 3]`.

    Args:
        path: str, a PNG (or any format Pillow reads).
        flag: str, the flag that named the file (for error messages), or
            None for a file given as an argument.

    Returns:
        uint8 NumPy array `[h, w, 3]`.

    Raises:
        SamplingArgumentError: if the file is missing or not an image.
    """
    from PIL import Image

    named = path if flag is None else f"--{flag}={path}"
    if not os.path.isfile(path):
        raise SamplingArgumentError(f"{named}: no such image file.")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable files
        raise SamplingArgumentError(f"{named}: not a readable image ({e}).") from e


def _npz_array(path):
    if not os.path.isfile(path):
        raise SamplingArgumentError(f"--inputs={path}: no such file.")
    try:
        with np.load(path) as data:
            keys = list(data.keys())
            key = next((k for k in _INPUT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise SamplingArgumentError(f"--inputs={path}: name the array 'inputs' (found "
                                            f"{keys}).")
            return key, data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, SamplingArgumentError):
            raise
        raise SamplingArgumentError(f"--inputs={path}: not a readable .npz file ({e}).") from e


def read_inputs(path):
    """Low-resolution inputs `[k, h, w, c]` from a PNG or an .npz file.

    Args:
        path: str; a ``.npz`` holds an array named ``inputs``, ``x8`` or
            ``low_res`` (or a single array) of integer values in 0..255
            (floats must be whole numbers); anything else is read as an image.

    Returns:
        uint8 NumPy array `[k, h, w, c]` (k = 1 for an image file).

    Raises:
        SamplingArgumentError: naming ``--inputs`` and what is wrong with the file.
    """
    if not path.endswith(".npz"):
        return read_image(path, "inputs")[None]
    key, array = _npz_array(path)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise SamplingArgumentError(f"--inputs={path}: '{key}' must be images [k, h, w, c] with "
                                    f"k >= 1, got shape {array.shape}.")
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.isfinite(array)))
        and bool(np.all(array == np.round(array))))
    if array.dtype == bool or not integral:
        raise SamplingArgumentError(f"--inputs={path}: '{key}' must hold whole numbers 0..255, "
                                    f"got dtype {array.dtype}.")
    if array.min() < 0 or array.max() > 255:
        raise SamplingArgumentError(
            f"--inputs={path}: '{key}' values must be in 0..255, got values in "
            f"[{int(array.min())}, {int(array.max())}].")
    return array.astype(np.uint8)


def npz_path(path):
    """``path`` with the ``.npz`` suffix NumPy adds when it is missing."""
    return path if path.endswith(".npz") else path + ".npz"


def check_writable(flag, path):
    """Checks that a file can be written at ``path`` (its folder is created if missing).

    Raises:
        SamplingArgumentError: naming the flag, the path and the reason.
    """
    if os.path.isdir(path):
        raise SamplingArgumentError(f"--{flag}={path} is a directory; give a file name.")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".t2t_image-probe-"):
            pass
    except OSError as e:
        raise SamplingArgumentError(f"--{flag}={path}: cannot write there ({e.strerror or e}); "
                                    "nothing was sampled.") from e


def write_samples_npz(path, samples, seed, temperature, conditioning):
    """Writes the raw samples and what produced them as one .npz file (whole or not at all).

    Args:
        path: str; ``.npz`` is appended when missing.
        samples: uint8 `[n, h, w, c]`.
        seed, temperature: the job's seed and temperature.
        conditioning: dict of the conditioning arrays used (``labels``,
            ``inputs``, ``prefix``, ``num_prefix_rows``, ``codes``).

    Returns:
        The path written.
    """
    path = npz_path(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, samples=samples, seed=seed, temperature=temperature, **conditioning)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
