"""The interface every data source implements, and what a source hands the pipeline.

A source knows where images come from (TFDS, the official CIFAR-10 archive, an
``.npz`` file, a folder of JPEG/PNG files) and how its splits are named. It
returns a ``SplitData`` for a split specification; ``make_dataset`` turns that
into batches of model features (T2T's ``targets`` / ``labels`` / ``inputs``).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only stream sources hand over a tf.data.Dataset; array sources need no TF
    import tensorflow as tf


@dataclasses.dataclass
class SplitData:
    """One split as a source provides it: in-memory arrays or a stream of examples.

    Exactly one of ``images`` and ``dataset`` is set.

    Attributes:
      images: uint8 ``[N, h, w, 3]`` (array sources: ``npz``, ``cifar10_archive``).
      labels: int32 ``[N]`` aligned with ``images``, or None.
      inputs: optional precomputed super-resolution inputs uint8 ``[N, s, s, 3]``.
      dataset: a ``tf.data.Dataset`` of ``{"image": uint8 [h, w, 3], "label": int32}``
        dicts (``"label"`` only when requested), for stream sources (``tfds``,
        ``image_folder``). Image sizes may vary; the pipeline crops and resizes.
      shuffled: True when the source already shuffled the stream (seeded), so the
        pipeline adds no shuffle buffer.
      crop_box: a crop the pipeline applies before resizing (see ``preprocess``).
      num_examples: examples per epoch when known (before skipping corrupt files).
      label_names: class names indexed by label, when known.
      num_classes: the number of classes, when known.
      description: a one-line human-readable description for the logs.
    """

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    inputs: np.ndarray | None = None
    dataset: tf.data.Dataset | None = None
    shuffled: bool = False
    crop_box: Any = None
    num_examples: int | None = None
    label_names: list[str] | None = None
    num_classes: int | None = None
    description: str = ""


class Source(abc.ABC):
    """Base class of the data sources selectable by name in ``make_dataset``.

    Subclasses set ``name`` (the registry key) and implement ``load``. A source
    whose data is a known downsampled-ImageNet version sets ``imagenet_version``.
    """

    name: str = ""
    imagenet_version: str | None = None

    @abc.abstractmethod
    def load(self, split: str, *, shuffle: bool, seed: int | None, with_labels: bool) -> SplitData:
        """Returns the examples of ``split``.

        Args:
          split: a split specification, e.g. ``"train"``, ``"train[:90%]"``.
          shuffle: whether the caller will train on it (a stream source may shuffle
            its file list here; array sources are shuffled by the pipeline).
          seed: the shuffle seed (an int whenever ``shuffle`` is True).
          with_labels: whether class labels are required; a source without labels
            raises ValueError.

        Returns:
          A ``SplitData``.
        """

    def describe(self) -> str:
        """A short description of the source for logs."""
        return self.name


def as_path_list(value, setting: str) -> list[str]:
    """Normalizes a path or a sequence of paths to a list of strings.

    Args:
      value: a str / os.PathLike, or a list/tuple of them.
      setting: the setting's name for error messages.

    Returns:
      A non-empty list of path strings.

    Raises:
      ValueError: when ``value`` is empty or not path-like.
    """
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{setting} must be a path or a non-empty list of paths, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item):
            raise ValueError(f"{setting} must hold paths, got {item!r}")
        out.append(os.path.expanduser(os.fspath(item)))
    return out


def split_paths(path, splits, setting_prefix: str) -> dict[str, list[str]]:
    """Resolves the ``path`` / ``splits`` settings shared by the local sources.

    Args:
      path: the data of split ``"train"`` (a path or list of paths), or None.
      splits: a mapping from split name to a path or list of paths, or None.
      setting_prefix: the source name for error messages.

    Returns:
      An ordered mapping from split name to a list of paths.

    Raises:
      ValueError: when both or neither are given, or a value is malformed.
    """
    if (path is None) == (splits is None):
        raise ValueError(
            f"{setting_prefix}: give exactly one of path= (the 'train' split) or "
            f"splits={{name: path}}, got path={path!r}, splits={splits!r}"
        )
    if path is not None:
        return {"train": as_path_list(path, f"{setting_prefix}.path")}
    if not hasattr(splits, "items") or not splits:
        raise ValueError(f"{setting_prefix}.splits must be a non-empty mapping, got {splits!r}")
    return {str(k): as_path_list(v, f"{setting_prefix}.splits[{k!r}]") for k, v in splits.items()}


def check_num_classes(data: SplitData, num_classes) -> None:
    """Checks that every label of a split is below the model's ``num_classes``, before training.

    An out-of-range label otherwise fails only at its first batch (a raw gather
    error on CPU) or is silently read as zeros (GPU). In-memory labels are all
    checked; for streams the source's class count is compared.

    Args:
      data: the split, as a source's ``load`` returned it with labels.
      num_classes: the model's number of classes, or None (no check).

    Raises:
      ValueError: naming the data (file or folder), the label value, where it
        is and ``num_classes``.
    """
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
    if data.labels is not None:
        labels = np.asarray(data.labels)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise ValueError(
                f"{data.description}: label {int(labels[bad[0]])} (example {int(bad[0])}; "
                f"{bad.size} labels in all) is outside [0, num_classes={num_classes}); set "
                f"num_classes to the data's {int(labels.max()) + 1} classes or select other data")
    elif data.num_classes is not None and data.num_classes > num_classes:
        raise ValueError(
            f"{data.description}: the data has {data.num_classes} classes (labels up to "
            f"{data.num_classes - 1}) but num_classes={num_classes}; set num_classes to "
            f"{data.num_classes} or select other data")
