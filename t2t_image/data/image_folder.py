"""The ``image_folder`` source: a folder of JPEG / PNG files (e.g. CelebA's img_align_celeba).

Files are listed once (sorted by relative path, so the order is deterministic),
decoded with Pillow, converted to RGB (grey is replicated, the alpha channel of
RGBA / LA / transparent palette images is dropped, 16-bit values are scaled to 8
bits), optionally cropped, and then area-resized by the pipeline.

A file that cannot be decoded (corrupt, truncated, not an image) or is smaller
than the crop box (e.g. a 1x1 PNG with ``crop_box="celeba"``) is skipped, and
so is a name that is not a regular file (a FIFO named ``x.jpg`` is refused when
the folder is listed, and files are opened without blocking): the first time,
a warning naming the file is logged; every skipped file is recorded in the source's ``skipped``
(``SkippedFiles``: ``count``, ``paths``, ``summary()``). Skips are never fatal,
except when every file of a split is unreadable (then iteration fails with a
message, instead of looping forever without producing a batch).

An image whose header declares more than ``max_image_pixels`` pixels (default
50 million, 150 MB decoded) is skipped the same way BEFORE it is decoded: a
17 KB PNG can declare 12000x12000 pixels (an "image bomb") and would take
gigabytes to decode. Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, an
error at twice its value) still applies above that.
"""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from t2t_image.data import preprocess
from t2t_image.data.image_headers import DEFAULT_MAX_IMAGE_PIXELS
from t2t_image.data.image_headers import check_max_image_pixels
from t2t_image.data.image_headers import open_image
from t2t_image.data import splits as splits_lib
from t2t_image.data.imagenet import check_imagenet_version
from t2t_image.data.sources import Source, SplitData, split_paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class SkippedFiles:
    """Thread-safe record of the image files a source skipped, with the reasons.

    Attributes:
      count: the number of distinct files skipped so far.
      paths: the sorted list of those files.
      reasons: a dict from path to the error message.
      events: the number of skips including repeats in later epochs.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.reasons: dict[str, str] = {}
        self.events = 0

    @property
    def count(self) -> int:
        """The number of distinct files skipped."""
        with self._lock:
            return len(self.reasons)

    @property
    def paths(self) -> list[str]:
        """The distinct skipped files, sorted."""
        with self._lock:
            return sorted(self.reasons)

    def add(self, path: str, reason: str) -> bool:
        """Records a skip; returns True the first time ``path`` is recorded."""
        with self._lock:
            self.events += 1
            if path in self.reasons:
                return False
            self.reasons[path] = reason
            return True

    def summary(self) -> str:
        """A one-line summary for logs."""
        paths = self.paths
        if not paths:
            return "no image files skipped"
        shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
        return f"{len(paths)} unreadable image file(s) skipped: {shown}"

    def __repr__(self):
        return f"SkippedFiles(count={self.count})"


def decode_image_file(path: str, crop_box=None,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                      setting: str = "image_folder.max_image_pixels") -> np.ndarray:
    """Decodes one image file to uint8 RGB ``[h, w, 3]`` with Pillow and crops it.

    Args:
      path: a JPEG/PNG (any format Pillow reads).
      crop_box: a value accepted by ``preprocess.validate_crop_box``.
      max_pixels: refuse (before decoding) an image whose header declares more.
      setting: the limit's name for messages.

    Returns:
      The uint8 array.

    Raises:
      Exception: whatever Pillow raises for an unreadable file; ValueError when the
        crop box does not fit or the image is larger than ``max_pixels``.
    """
    # O_NONBLOCK: opening a FIFO named like an image must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        arr = _decode(open_image(f, path, max_pixels, setting))
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path} decodes to an empty {arr.shape[0]}x{arr.shape[1]} image")
    arr = preprocess.crop_numpy(arr, crop_box)
    return np.ascontiguousarray(arr)


def _decode(opened) -> np.ndarray:
    with opened as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.int64)
            shift = 8 if img.mode.startswith("I;16") else 0
            arr = np.clip(arr >> shift, 0, 255).astype(np.uint8)
            arr = np.repeat(arr[..., None], 3, axis=-1)
        else:
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return arr


def _list_images(folder: str, recursive: bool, extensions, skipped: SkippedFiles) -> list[str]:
    """Image files under ``folder``; names that are not regular files (FIFOs, devices,
    sockets, dangling links) are recorded in ``skipped`` and never opened."""
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            found.extend(os.path.join(root, f) for f in files if f.lower().endswith(extensions))
    else:
        found = [os.path.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(extensions)
                 and not os.path.isdir(os.path.join(folder, f))]
    out = []
    for path in sorted(found):
        if os.path.isfile(path):  # follows links: a link to a regular file is fine
            out.append(path)
        elif skipped.add(path, "not a regular file (FIFO, device, socket or dangling link)"):
            logging.warning("image_folder: skipping %s: not a regular file", path)
    return out


def _is_ok(example, ok):
    del example
    return ok


def _drop_ok(example, ok):
    del ok
    return example


class ImageFolderSource(Source):
    """Images from folders of JPEG / PNG files (see the module docstring).

    For T2T's CelebA preprocessing (``image_celeba`` / ``img2img_celeba``) use
    ``crop_box="celeba"`` on the aligned images; the pipeline then area-resizes
    the 138x138 box (69x69 on half-resolution copies) to the target sizes.

    Args:
      path: the folder of split ``"train"``. Give this or ``splits``.
      splits: a mapping from split name to folder.
      crop_box: None, ``"celeba"`` or ``(top, left, height, width)``.
      label_mode: None (no labels) or ``"subdirs"``: each immediate subfolder is a
        class, labels numbered in sorted folder-name order.
      recursive: look into subfolders (always True with ``label_mode="subdirs"``).
      extensions: file name endings to include (case-insensitive).
      imagenet_version: ``"oord"`` or ``"chrabaszcz"`` when the files are
        downsampled ImageNet (e.g. the extracted ``train_32x32.tar`` of van den
        Oord et al. 2016); logged by ``make_dataset``.

      max_image_pixels: an image whose header declares more pixels is skipped
        (counted, named) before it is decoded.
    """

    name = "image_folder"

    def __init__(self, path=None, *, splits=None, crop_box=None, label_mode=None, recursive=True,
                 extensions=IMAGE_EXTENSIONS, imagenet_version=None,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.splits = split_paths(path, splits, "image_folder")
        self.crop_box = preprocess.validate_crop_box(crop_box, "image_folder.crop_box")
        if label_mode not in (None, "subdirs"):
            raise ValueError(f"image_folder.label_mode must be None or 'subdirs', got {label_mode!r}")
        if not isinstance(recursive, bool):
            raise ValueError(f"image_folder.recursive must be a bool, got {recursive!r}")
        if isinstance(extensions, str) or not extensions or not all(
                isinstance(e, str) and e.startswith(".") for e in extensions):
            raise ValueError(
                f"image_folder.extensions must be a list of endings like ['.jpg', '.png'], got {extensions!r}"
            )
        if imagenet_version is not None:
            check_imagenet_version(imagenet_version, "image_folder.imagenet_version")
        self.imagenet_version = imagenet_version
        self.max_image_pixels = check_max_image_pixels(max_image_pixels,
                                                       "image_folder.max_image_pixels")
        self.label_mode = label_mode
        self.recursive = recursive or label_mode == "subdirs"
        self.extensions = tuple(e.lower() for e in extensions)
        self.skipped = SkippedFiles()
        self._listing: dict[str, tuple[list[str], list[int], list[str]]] = {}
        for name, folders in self.splits.items():
            for folder in folders:
                if not os.path.isdir(folder):
                    raise FileNotFoundError(
                        f"image_folder: split {name!r} folder {folder} does not exist or is not a folder"
                    )

    def describe(self) -> str:
        crop = f", crop_box={self.crop_box}" if self.crop_box else ""
        return f"image_folder({', '.join(f'{k}={v}' for k, v in self.splits.items())}{crop})"

    def _list(self, name: str):
        if name not in self._listing:
            files, labels, classes = [], [], []
            for folder in self.splits[name]:
                if self.label_mode == "subdirs":
                    subdirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
                    if classes and subdirs != classes:
                        raise ValueError(f"image_folder: split {name!r} folders have different class subfolders")
                    classes = subdirs
                    for label, sub in enumerate(subdirs):
                        found = _list_images(os.path.join(folder, sub), True, self.extensions,
                                             self.skipped)
                        files.extend(found)
                        labels.extend([label] * len(found))
                else:
                    found = _list_images(folder, self.recursive, self.extensions, self.skipped)
                    files.extend(found)
                    labels.extend([-1] * len(found))
            if not files:
                raise FileNotFoundError(
                    f"image_folder: no image files ({', '.join(self.extensions)}) in split {name!r} "
                    f"folder(s) {self.splits[name]}"
                    + (" (label_mode='subdirs' looks only inside class subfolders)"
                       if self.label_mode == "subdirs" else "")
                )
            self._listing[name] = (files, labels, classes)
        return self._listing[name]

    def load(self, split, *, shuffle, seed, with_labels):
        """See ``Source.load``; returns a stream (file list shuffled here when training)."""
        if with_labels and self.label_mode is None:
            raise ValueError(
                "image_folder: class-conditional task needs labels; set label_mode='subdirs' "
                "(one subfolder per class)"
            )
        files, labels, classes = [], [], None
        for part in splits_lib.parse_split(split):
            if part.name not in self.splits:
                raise ValueError(
                    f"split={split!r}: image_folder has splits {sorted(self.splits)}, got {part.name!r}"
                )
            f, lab, classes = self._list(part.name)
            idx = part.indices(len(f))
            files.extend(f[idx.start:idx.stop])
            labels.extend(lab[idx.start:idx.stop])
        if not files:
            raise ValueError(f"split={split!r} selects no image files from {self.describe()}")

        crop_box, skipped, max_pixels = self.crop_box, self.skipped, self.max_image_pixels
        all_files = set(files)
        bad_here: set[str] = set()
        bad_lock = threading.Lock()

        def decode(path_bytes):
            path = path_bytes.decode("utf-8", "surrogateescape")
            try:
                return decode_image_file(path, crop_box, max_pixels), True
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal.
                reason = f"{type(e).__name__}: {e}"
                if skipped.add(path, reason):
                    logging.warning("image_folder: skipping unreadable image %s (%s)", path, reason)
                with bad_lock:
                    bad_here.add(path)
                    all_bad = len(bad_here) == len(all_files)
                if all_bad:
                    raise RuntimeError(
                        f"image_folder: all {len(all_files)} image files of split {split!r} are "
                        f"unreadable; {skipped.summary()}"
                    ) from e
                return np.zeros((0, 0, 3), np.uint8), False

        def to_example(path, label):
            image, ok = tf.numpy_function(decode, [path], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([None, None, 3])
            ok.set_shape([])
            example = {"image": image}
            if with_labels:
                example["label"] = label
            return example, ok

        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(files), tf.constant(labels, dtype=tf.int32)))
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.filter(_is_ok).map(_drop_ok)
        return SplitData(
            dataset=ds, shuffled=shuffle, num_examples=len(files),
            label_names=list(classes) if classes else None,
            num_classes=len(classes) if classes else None,
            description=f"{self.describe()} split {split!r}: {len(files)} files",
        )
