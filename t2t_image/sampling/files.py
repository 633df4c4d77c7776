"""The files of a sampling job: conditioning images read, outputs checked and written.

Readers raise ``SamplingArgumentError`` naming the flag and the file; writers
leave a file whole or not at all (written beside it, then renamed).
"""

import contextlib
import os
import tempfile
import zipfile

import numpy as np

from t2t_image.data.image_headers import DEFAULT_MAX_IMAGE_PIXELS
from t2t_image.data.image_headers import open_image
from t2t_image.sampling.arguments import SamplingArgumentError

_INPUT_KEYS = ("inputs", "x8", "low_res")


def read_image(path, flag="complete", size=None, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Reads an image file as uint8 RGB `[h, w, 3]`, checking its size from the header first.

    An image bomb (a small file declaring a huge size) is refused before any
    pixel is decoded: an image whose header declares more than ``max_pixels``
    pixels, or another size than ``size``.

    Args:
        path: str, a PNG (or any format Pillow reads).
        flag: str, the flag that named the file (for error messages), or
            None for a file given as an argument.
        size: None, or the ``(height, width)`` the image must have.
        max_pixels: int, the most pixels its header may declare.

    Returns:
        uint8 NumPy array `[h, w, 3]`.

    Raises:
        SamplingArgumentError: if the file is missing, not an image, or of the
            wrong size (naming the flag, the file and both sizes).
    """
    named = path if flag is None else f"--{flag}={path}"
    with _open_checked(path, named, max_pixels) as image:
        width, height = image.size
        if size is not None and (height, width) != tuple(size):
            raise SamplingArgumentError(
                f"--{flag} images are {height}x{width}x3 (height x width x channels; from the "
                f"file's header, not decoded), the model expects {size[0]}x{size[1]}x3.")
        try:
            return np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, ValueError, SyntaxError) as e:
            raise SamplingArgumentError(f"{named}: not a readable image ({e}).") from e


def check_image(path, flag="complete", max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Checks an image file from its header only (exists, readable, not too large)."""
    with _open_checked(path, f"--{flag}={path}", max_pixels):
        pass


def _open_checked(path, named, max_pixels):
    import warnings

    from PIL import Image

    if not os.path.isfile(path):
        raise SamplingArgumentError(f"{named}: no such image file.")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: the limit here decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return open_image(path, named, max_pixels, "the sampler's limit")
    except ValueError as e:  # refused from its header
        raise SamplingArgumentError(f"{e}.") from e
    except (OSError, SyntaxError) as e:  # PIL's errors for unreadable files
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


def check_npz_space(path, num_samples, bytes_per_sample):
    """Refuses a job whose ``.npz`` would not fit in the free space of its folder.

    Raises:
        SamplingArgumentError: naming --num_samples, the bytes needed and free.
    """
    import shutil

    folder = os.path.dirname(os.path.abspath(npz_path(path)))
    needed = num_samples * bytes_per_sample
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SamplingArgumentError(
            f"--num_samples={num_samples}: --npz={path} would take {needed} bytes "
            f"({bytes_per_sample} per sample), more than the {free} bytes free in {folder}; "
            "nothing was written.")


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
    arrays = {k: v for k, v in conditioning.items() if isinstance(v, np.ndarray) and k != "codes"}
    scalars = {k: v for k, v in conditioning.items() if k not in arrays and k != "codes"}
    with SamplesNpzWriter(path, len(samples)) as writer:
        writer.add(samples, conditioning.get("codes"))
        return writer.finish(dict(seed=seed, temperature=temperature, **scalars),
                             lambda start, count: {k: v[start:start + count]
                                                   for k, v in arrays.items()})


def _npy_header(entry, shape, dtype):
    np.lib.format.write_array_header_2_0(entry, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": tuple(shape)})


class SamplesNpzWriter:
    """Writes a job's samples into an ``.npz`` as they are drawn, a batch at a time.

    Memory stays one batch whatever ``--num_samples`` is: the ``samples``
    array is streamed into the file (an uncompressed zip member, as
    ``np.savez`` writes, ZIP64 for any size), two-stage ``codes`` into a
    temporary file beside it. ``finish`` adds the conditioning arrays (built a
    chunk at a time) and the scalars, and renames the file into place: the
    ``.npz`` appears whole or not at all; leaving the ``with`` block without
    ``finish`` (an error, a signal) removes what was written. ``np.load``
    reads the result like any ``np.savez`` file.

    Args:
        path: str; ``.npz`` is appended when missing.
        num_samples: int, how many samples ``add`` will be given in all.
    """

    CHUNK = 4096  # samples per chunk when copying conditioning arrays

    def __init__(self, path, num_samples):
        self.path = npz_path(path)
        self.num_samples = num_samples
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        self._written = 0
        self._zip = self._entry = self._codes = None
        self._codes_shape = None

    def __enter__(self):
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._zip = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        return self

    def __exit__(self, *exc):
        for handle in (self._entry, self._codes, self._zip):
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()
        self.discard()
        return False

    def discard(self):
        """Removes the temporary files (also safe from a signal handler before quitting)."""
        for leftover in (self.tmp, self.tmp + ".codes"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)

    def add(self, images, codes=None):
        """Appends a batch: uint8 images `[count, h, w, c]` (and int32 codes `[count, r, c]`)."""
        images = np.ascontiguousarray(images, np.uint8)
        if self._entry is None:
            self._entry = self._zip.open("samples.npy", "w", force_zip64=True)
            _npy_header(self._entry, (self.num_samples,) + images.shape[1:], np.uint8)
            if codes is not None:
                self._codes_shape = codes.shape[1:]
                self._codes = open(self.tmp + ".codes", "wb")
        if self._written + len(images) > self.num_samples:
            raise ValueError(f"more than the {self.num_samples} samples announced")
        self._entry.write(images.tobytes())
        if self._codes is not None:
            self._codes.write(np.ascontiguousarray(codes, np.int32).tobytes())
        self._written += len(images)

    def finish(self, scalars, per_sample=None):
        """Adds the other arrays, then puts the file in place; returns its path.

        Args:
            scalars: dict name -> number (seed, temperature, num_prefix_rows).
            per_sample: None, or a function ``(start, count)`` returning a dict
                of per-sample arrays for those samples (labels, inputs, prefix).
        """
        if self._written != self.num_samples:
            raise ValueError(f"{self._written} samples written of {self.num_samples}")
        self._entry.close()
        self._entry = None
        if self._codes is not None:
            self._codes.close()
            self._codes = None
            with self._zip.open("codes.npy", "w", force_zip64=True) as entry, \
                    open(self.tmp + ".codes", "rb") as source:
                _npy_header(entry, (self.num_samples,) + tuple(self._codes_shape), np.int32)
                for block in iter(lambda: source.read(1 << 22), b""):
                    entry.write(block)
        names = list(per_sample(0, 1)) if per_sample is not None else []
        for name in names:
            first = np.asarray(per_sample(0, 1)[name])
            with self._zip.open(f"{name}.npy", "w", force_zip64=True) as entry:
                _npy_header(entry, (self.num_samples,) + first.shape[1:], first.dtype)
                for start in range(0, self.num_samples, self.CHUNK):
                    count = min(self.CHUNK, self.num_samples - start)
                    entry.write(np.ascontiguousarray(per_sample(start, count)[name],
                                                     first.dtype).tobytes())
        for name, value in scalars.items():
            with self._zip.open(f"{name}.npy", "w") as entry:
                np.lib.format.write_array(entry, np.asarray(value), allow_pickle=False)
        self._zip.close()
        self._zip = None
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path
