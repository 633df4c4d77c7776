"""The ``npz`` source: images (and labels) stored in NumPy ``.npz`` files.

Layout (the project's shared data uses it): an image array ``x`` uint8
``[N, h, w, 3]`` (RGB) and optionally integer labels ``y`` / ``labels`` /
``label`` of shape ``[N]`` and ``label_names`` (strings). Flat channel-first rows
uint8 ``[N, 3*s*s]`` (the CIFAR python and Chrabaszcz et al. 2017 downsampled
ImageNet npz layout: s*s red values, then green, then blue) are also accepted
and reshaped to ``[N, s, s, 3]``.

Files load with ``allow_pickle=False``. A file given for a split holds that whole
split; several files (a list or a glob pattern) are concatenated in sorted order.
Hold out a validation part with the split syntax of ``splits.py``, e.g.
``split="train[:90%]"`` for training and ``split="train[90%:]"`` for evaluation
(disjoint, TFDS "closest" rounding).
"""

from __future__ import annotations

import glob
import math
import os
import zipfile

import numpy as np

from t2t_image.data import splits as splits_lib
from t2t_image.data.imagenet import check_imagenet_version
from t2t_image.data.sources import Source, SplitData, split_paths

_IMAGE_KEYS = ("x", "images", "image", "data")
_LABEL_KEYS = ("y", "labels", "label")


def _expand(pattern: str) -> list[str]:
    if any(c in pattern for c in "*?["):
        files = sorted(glob.glob(pattern))
        if not files:
            raise FileNotFoundError(f"npz: no file matches {pattern!r}")
        return files
    if not os.path.isfile(pattern):
        raise FileNotFoundError(f"npz: file not found: {pattern}")
    return [pattern]


def _pick(keys, explicit, candidates, what, path, required):
    if explicit is not None:
        if explicit not in keys:
            raise ValueError(f"npz: {path} has no array {explicit!r} ({what}); it holds {sorted(keys)}")
        return explicit
    for key in candidates:
        if key in keys:
            return key
    if required:
        raise ValueError(
            f"npz: {path} has no {what} array; looked for {list(candidates)}, found {sorted(keys)} "
            f"(set the key explicitly)"
        )
    return None


def image_and_label_keys(keys, path, image_key=None, label_key=None):
    """The image and label array names ``NpzSource`` reads from a file holding ``keys``.

    Explicit names must be present; otherwise the first default present is taken
    (the label name is None when no label array is found).
    """
    keys = set(keys)
    return (_pick(keys, image_key, _IMAGE_KEYS, "image", path, required=True),
            _pick(keys, label_key, _LABEL_KEYS, "label", path, required=False))


# Largest expansion of deflate (the compression numpy.savez_compressed uses): ~1032:1.
_MAX_DEFLATE_RATIO = 1032


def _read_array(npz, key: str, path: str) -> np.ndarray:
    """``npz[key]`` after checking that the header's shape and dtype fit the member's size.

    A crafted header can claim any shape (numpy would try to allocate it, e.g.
    3 PiB); the bytes a header promises must equal the member's stored size, and
    that size must be reachable from its compressed size. Raises ValueError
    naming the file and the array otherwise.
    """
    member = key + ".npy"
    try:
        info = npz.zip.getinfo(member)
        with npz.zip.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            header_bytes = f.tell()
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"npz: array {key!r} in {path} has an unreadable header ({e})") from e
    del fortran
    if dtype.hasobject:
        raise ValueError(f"npz: {path} holds object arrays, which are refused (pickles)")
    claimed = math.prod(shape) * dtype.itemsize
    stored = info.file_size - header_bytes
    limit = info.compress_size * (_MAX_DEFLATE_RATIO if info.compress_type else 1) + 4096
    if claimed != stored or info.file_size > limit:
        raise ValueError(
            f"npz: array {key!r} in {path} claims shape {shape} of {dtype} ({claimed} bytes) but "
            f"the file holds {stored} bytes for it; the file is damaged or crafted")
    return npz[key]


def _check_images(arr: np.ndarray, key: str, path: str) -> np.ndarray:
    expected = "uint8 [N, h, w, 3] (or flat channel-first uint8 [N, 3*s*s])"
    error = ValueError(
        f"npz: array {key!r} in {path} has dtype {arr.dtype} and shape {arr.shape}; expected {expected}")
    if arr.dtype != np.uint8:
        raise error
    if arr.ndim == 4 and arr.shape[-1] == 3 and arr.shape[1] > 0 and arr.shape[2] > 0:
        return arr
    if arr.ndim == 2 and arr.shape[1] % 3 == 0:
        side = int(round((arr.shape[1] // 3) ** 0.5))
        if side > 0 and 3 * side * side == arr.shape[1]:
            return np.ascontiguousarray(arr.reshape(-1, 3, side, side).transpose(0, 2, 3, 1))
    raise error


class NpzSource(Source):
    """Images and optional labels from ``.npz`` files (see the module docstring).

    Args:
      path: the file(s) of split ``"train"``: a path, a glob pattern or a list.
        Give this or ``splits``.
      splits: a mapping from split name to file(s), e.g.
        ``{"train": "train.npz", "test": "test.npz"}``.
      image_key: the image array; default the first of ``x``, ``images``,
        ``image``, ``data`` present.
      label_key: the label array; default the first of ``y``, ``labels``,
        ``label`` present (required only for class-conditional tasks).
      inputs_key: an array of precomputed super-resolution inputs uint8
        ``[N, s, s, 3]`` (e.g. ``x8`` of the shared CelebA pairs); default None,
        inputs are area-resized from the images.
      label_offset: added to every label (``-1`` for the 1-based labels of the
        Chrabaszcz et al. 2017 ImageNet npz files).
      imagenet_version: ``"oord"`` or ``"chrabaszcz"`` when the files are
        downsampled ImageNet (logged by ``make_dataset``); default None.
    """

    name = "npz"

    def __init__(self, path=None, *, splits=None, image_key=None, label_key=None, inputs_key=None,
                 label_offset=0, imagenet_version=None):
        self.splits = split_paths(path, splits, "npz")
        for key_name, key in (("image_key", image_key), ("label_key", label_key), ("inputs_key", inputs_key)):
            if key is not None and (not isinstance(key, str) or not key):
                raise ValueError(f"npz.{key_name} must be a non-empty string or None, got {key!r}")
        if isinstance(label_offset, bool) or not isinstance(label_offset, int):
            raise ValueError(f"npz.label_offset must be an int, got {label_offset!r}")
        self.image_key, self.label_key, self.inputs_key = image_key, label_key, inputs_key
        self.label_offset = label_offset
        if imagenet_version is not None:
            check_imagenet_version(imagenet_version, "npz.imagenet_version")
        self.imagenet_version = imagenet_version
        # Check that the files exist now, so a bad path fails at configuration time.
        self._files = {name: [f for p in paths for f in _expand(p)] for name, paths in self.splits.items()}
        self._cache: dict[str, dict] = {}

    def describe(self) -> str:
        # Every setting that changes what is read (the code-grid cache keys on this).
        keys = [f"{name}={value!r}" for name, value in (
            ("image_key", self.image_key), ("label_key", self.label_key),
            ("inputs_key", self.inputs_key)) if value is not None]
        if self.label_offset:
            keys.append(f"label_offset={self.label_offset}")
        return f"npz({', '.join([f'{k}={v}' for k, v in self.splits.items()] + keys)})"

    def _load_file(self, path: str) -> dict:
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"npz: cannot read {path} as a NumPy .npz file ({e})") from e
        if not hasattr(npz, "files"):
            raise ValueError(f"npz: {path} is a single .npy array, expected an .npz archive of named arrays")
        with npz:
            keys = set(npz.files)
            try:
                ikey, lkey = image_and_label_keys(keys, path, self.image_key, self.label_key)
                images = _check_images(_read_array(npz, ikey, path), ikey, path)
                out = {"images": images, "labels": None, "inputs": None, "label_names": None}
                if lkey is not None:
                    labels = _read_array(npz, lkey, path)
                    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
                        raise ValueError(
                            f"npz: array {lkey!r} in {path} has dtype {labels.dtype} and shape "
                            f"{labels.shape}; expected integers of shape ({len(images)},)"
                        )
                    labels = labels.astype(np.int64) + self.label_offset
                    if labels.size and labels.min() < 0:
                        raise ValueError(
                            f"npz: array {lkey!r} in {path} has labels below 0 after "
                            f"label_offset={self.label_offset} (min {labels.min()})"
                        )
                    out["labels"] = labels.astype(np.int32)
                if self.inputs_key is not None:
                    ikey_in = _pick(keys, self.inputs_key, (), "inputs", path, required=True)
                    inputs = _read_array(npz, ikey_in, path)
                    if (inputs.dtype != np.uint8 or inputs.ndim != 4 or inputs.shape[0] != len(images)
                            or inputs.shape[-1] != 3):
                        raise ValueError(
                            f"npz: array {self.inputs_key!r} in {path} has dtype {inputs.dtype} and "
                            f"shape {inputs.shape}; expected uint8 [{len(images)}, s, s, 3]"
                        )
                    out["inputs"] = inputs
                if "label_names" in keys:
                    names = _read_array(npz, "label_names", path)
                    if names.dtype.kind in "US":
                        out["label_names"] = [str(n) for n in names.astype(str)]
                        labels = out["labels"]
                        if labels is not None and labels.size and labels.max() >= len(names):
                            raise ValueError(
                                f"npz: array {lkey!r} in {path} has label {labels.max()} at index "
                                f"{int(labels.argmax())}, but 'label_names' names only "
                                f"{len(names)} classes (labels must be in [0, {len(names)}))")
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise ValueError(f"npz: {path} holds object arrays, which are refused (pickles)") from e
                raise
        return out

    def _load_base(self, name: str) -> dict:
        if name not in self._cache:
            parts = [self._load_file(f) for f in self._files[name]]
            sizes = {p["images"].shape[1:] for p in parts}
            if len(sizes) > 1:
                raise ValueError(f"npz: the files of split {name!r} hold images of different sizes {sorted(sizes)}")
            merged = {"images": np.concatenate([p["images"] for p in parts]) if len(parts) > 1 else parts[0]["images"]}
            for key in ("labels", "inputs"):
                have = [p[key] is not None for p in parts]
                if all(have):
                    merged[key] = np.concatenate([p[key] for p in parts]) if len(parts) > 1 else parts[0][key]
                elif any(have):
                    raise ValueError(f"npz: only some files of split {name!r} have {key}")
                else:
                    merged[key] = None
            merged["label_names"] = parts[0]["label_names"]
            self._cache[name] = merged
        return self._cache[name]

    def load(self, split, *, shuffle, seed, with_labels):
        """See ``Source.load``; returns in-memory arrays."""
        del shuffle, seed
        pieces = []
        for part in splits_lib.parse_split(split):
            if part.name not in self.splits:
                raise ValueError(f"split={split!r}: npz has splits {sorted(self.splits)}, got {part.name!r}")
            base = self._load_base(part.name)
            idx = part.indices(len(base["images"]))
            pieces.append((base, slice(idx.start, idx.stop)))
        first = pieces[0][0]
        if with_labels and any(b["labels"] is None for b, _ in pieces):
            raise ValueError(
                f"npz: class-conditional task needs labels but {self.describe()} has no label array "
                f"(looked for {self.label_key or list(_LABEL_KEYS)})"
            )

        def cat(key):
            if any(b[key] is None for b, _ in pieces):
                return None
            arrays = [b[key][s] for b, s in pieces]
            return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]

        images = cat("images")
        labels = cat("labels")
        names = first["label_names"]
        num_classes = len(names) if names else (int(labels.max()) + 1 if labels is not None and labels.size else None)
        return SplitData(
            images=images, labels=labels if with_labels else None, inputs=cat("inputs"),
            num_examples=len(images), label_names=names, num_classes=num_classes,
            description=f"{self.describe()} split {split!r}: {len(images)} images {images.shape[1:]}",
        )
