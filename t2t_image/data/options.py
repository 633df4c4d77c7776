"""Settings shared by the tf.data and the NumPy input pipelines (no TensorFlow here)."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import numpy as np

TASKS = ("unconditional", "class_conditional", "super_resolution")


@dataclasses.dataclass
class DatasetInfo:
    """What ``make_dataset`` built, for training code and logs.

    Attributes:
      source: the source description.
      split: the split specification.
      task: the task.
      image_size: targets size.
      input_size: inputs size (super-resolution) or None.
      num_examples: examples per epoch when known (image folders: before skips).
      num_classes: number of classes when known.
      label_names: class names when known.
      imagenet_version: ``"oord"`` / ``"chrabaszcz"`` / None.
      training, shuffle, repeat, drop_remainder, seed, batch_size: resolved settings.
      skipped: the ``SkippedFiles`` of an ``image_folder`` source, else None.
      first_stage_dir: for a dataset of code grids (``t2t_image.two_stage``),
        the first stage's model directory, else None.
      image_num_dims: for code grids, the sub-pixels of the image a grid stands
        for (for bits per image dimension), else None.
      decode_codes: for code grids, a function from int codes ``[b, h, w, 1]``
        to int32 0..255 images, else None.
    """

    source: str
    split: str
    task: str
    image_size: int
    input_size: int | None
    num_examples: int | None
    num_classes: int | None
    label_names: list[str] | None
    imagenet_version: str | None
    training: bool
    shuffle: bool
    repeat: bool | int
    drop_remainder: bool
    seed: int | None
    batch_size: int
    skipped: SkippedFiles | None = None
    first_stage_dir: str | None = None
    image_num_dims: int | None = None
    decode_codes: Any = None


def _check_int(value, setting, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{setting} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_bool_or_none(value, setting):
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{setting} must be True, False or None, got {value!r}")
    return value


def resolve_order(training, shuffle, repeat, seed, drop_remainder):
    """Validates and resolves the order settings from ``training`` (see ``make_dataset``).

    Returns:
      ``(shuffle, repeat, seed, drop_remainder)``; a random seed (to be logged)
      when shuffling without one.
    """
    if not isinstance(training, bool):
        raise ValueError(f"training must be a bool, got {training!r}")
    shuffle = training if _check_bool_or_none(shuffle, "shuffle") is None else shuffle
    drop_remainder = training if _check_bool_or_none(drop_remainder, "drop_remainder") is None else drop_remainder
    if repeat is None:
        repeat = training
    elif not isinstance(repeat, bool):
        repeat = _check_int(repeat, "repeat")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if shuffle and seed is None:
        seed = secrets.randbelow(2**31)
    seed = None if seed is None else int(seed)
    return shuffle, repeat, seed, drop_remainder


def check_shards(num_shards, shard_index, batch_size, shuffle, seed):
    """Validates one worker's share of a pipeline (``num_shards`` workers; see
    ``t2t_image.training.workers``): the global ``batch_size`` divides by them, and a
    shuffled pipeline has a ``seed``, so that every worker draws the same order."""
    num_shards = _check_int(num_shards, "num_shards")
    shard_index = _check_int(shard_index, "shard_index", minimum=0)
    if shard_index >= num_shards:
        raise ValueError(f"shard_index must be < num_shards={num_shards}, got {shard_index}")
    if batch_size % num_shards:
        raise ValueError(f"batch_size={batch_size} (the global batch) must divide by the "
                         f"{num_shards} workers")
    if num_shards > 1 and shuffle and seed is None:
        raise ValueError(f"seed must be set (e.g. make_dataset.seed = 0) when {num_shards} workers "
                         "read one shuffled pipeline: each worker keeps its slice of the same "
                         "global batches, so all must draw the same order")
    return num_shards, shard_index
