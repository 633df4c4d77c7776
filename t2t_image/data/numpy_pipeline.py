"""``make_numpy_dataset``: the input pipeline of array sources in NumPy, without TensorFlow.

Same settings, features and semantics as ``make_dataset`` (``pipeline.py``)
for the in-memory sources (``npz``, ``cifar10_archive``) and for random data:
a split is shuffled over all its examples with a new permutation each epoch
(drawn from ``(seed, epoch)``), repeated, batched, and features made per batch:
``targets`` area-resized and truncated to uint8 exactly as T2T's
``resize_by_area`` for integer factors (``floor`` of the block mean; for
fractional factors the float32 sums run in another order than TF's, and about
1% of the pixels come out one lower or higher, e.g. 32 -> 12 or 20), ``labels`` int32, super-resolution ``inputs`` area-resized
from the same image. The batch order differs from tf.data's (which draws its
permutations with TF's own generator), not the distribution.

The iterator's position (epoch, batch) is saved with the JAX trainer's
checkpoints, so a resumed run continues the data order. This is what the JAX
backend trains on; stream sources (``tfds``, ``image_folder``) still need
TensorFlow (their tf.data pipeline is read as NumPy).
"""

from __future__ import annotations

import itertools

import numpy as np
from absl import logging

from t2t_image.data import options
from t2t_image.data.sources import Source, SplitData, check_num_classes

ARRAY_SOURCES = ("npz", "cifar10_archive", "random")


def area_resize_numpy(images: np.ndarray, size) -> np.ndarray:
    """Area resize of ``[..., h, w, c]`` images truncated to uint8 (``preprocess.area_resize``).

    Args:
      images: uint8 or float images, values in [0, 255].
      size: an int (square output) or ``(height, width)``.

    Returns:
      uint8 images of the requested size.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    in_h, in_w = images.shape[-3], images.shape[-2]
    if (in_h, in_w) == (out_h, out_w):
        return images.astype(np.uint8, copy=False)
    if in_h % out_h == 0 and in_w % out_w == 0 and np.issubdtype(images.dtype, np.integer):
        fh, fw = in_h // out_h, in_w // out_w  # integer factor: exact floor of the block mean
        blocks = images.reshape(images.shape[:-3] + (out_h, fh, out_w, fw, images.shape[-1]))
        return (blocks.astype(np.int64).sum(axis=(-4, -2)) // (fh * fw)).astype(np.uint8)
    rows, cols = _area_weights(in_h, out_h), _area_weights(in_w, out_w)
    out = np.einsum("oh,...hwc,pw->...opc", rows.astype(np.float32),
                    images.astype(np.float32), cols.astype(np.float32))
    return np.floor(out).astype(np.uint8)


def _area_weights(n_in, n_out):
    """``[n_out, n_in]`` weights: the fraction of each input pixel in each output footprint."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        start, end = o * scale, (o + 1) * scale
        for i in range(int(np.floor(start)), min(int(np.ceil(end)), n_in)):
            weights[o, i] = (min(end, i + 1) - max(start, i)) / scale
    return weights


class RandomSource(Source):
    """Uniform random images (and labels): data for benchmarks and tests, no files.

    Args:
      num_examples: images per split.
      image_size: their side.
      num_classes: labels drawn from ``range(num_classes)``.
      seed: the seed of the pixels (each split name adds its own offset).
    """

    name = "random"

    def __init__(self, num_examples=256, image_size=32, num_classes=10, seed=0):
        self.num_examples = options._check_int(num_examples, "random.num_examples")
        self.image_size = options._check_int(image_size, "random.image_size")
        self.num_classes = options._check_int(num_classes, "random.num_classes")
        self.seed = seed

    def load(self, split, *, shuffle, seed, with_labels):
        del shuffle, seed
        rng = np.random.default_rng([self.seed, sum(map(ord, split))])
        images = rng.integers(0, 256, (self.num_examples, self.image_size, self.image_size, 3),
                              dtype=np.uint8)
        labels = rng.integers(0, self.num_classes, self.num_examples).astype(np.int32)
        return SplitData(images=images, labels=labels if with_labels else None,
                         num_examples=self.num_examples, num_classes=self.num_classes,
                         description=f"random {split!r}: {self.num_examples} images")


def _source(source, kwargs):
    if isinstance(source, Source):
        if kwargs:
            raise ValueError(f"source_kwargs={kwargs!r} given with an already built source "
                             f"{source.describe()}")
        return source
    if isinstance(source, type) and issubclass(source, Source):
        return source(**kwargs)
    if source == "random":
        return RandomSource(**kwargs)
    if source == "npz":
        from t2t_image.data.npz_source import NpzSource

        return NpzSource(**kwargs)
    if source == "cifar10_archive":
        from t2t_image.data.cifar10_archive import Cifar10ArchiveSource

        return Cifar10ArchiveSource(**kwargs)
    raise ValueError(f"source={source!r}: the NumPy pipeline reads the array sources "
                     f"{list(ARRAY_SOURCES)} or a Source instance; others need TensorFlow.")


class NumpyDataset:
    """Batches of feature dicts (NumPy arrays) from in-memory arrays; iterable, re-iterable.

    ``element_spec`` maps each feature to ``(shape, dtype)`` with the batch
    dimension first (None when the last batch may be partial).
    """

    def __init__(self, data: SplitData, task, image_size, input_size, batch_size, shuffle, seed,
                 epochs, drop_remainder, shard=None):
        self.data, self.task = data, task
        # (start, stop) of this worker's slice of every global batch (multi-worker runs).
        self.shard = shard or (0, batch_size)
        self.image_size, self.input_size = image_size, input_size
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epochs, self.drop_remainder = epochs, drop_remainder
        self.num_examples = len(data.images)
        if self.num_examples == 0:
            raise ValueError(f"the split selects no examples: {data.description}")
        if drop_remainder and self.num_examples < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the split "
                             f"({self.num_examples} examples) with drop_remainder=True.")
        first = self.features(np.arange(1))
        batch = self.shard[1] - self.shard[0] if drop_remainder else None
        self.element_spec = {k: ((batch,) + v.shape[1:], v.dtype) for k, v in first.items()}

    def features(self, idx):
        """The feature dict of the examples ``idx`` (crop, resize, labels, inputs)."""
        from t2t_image.data.preprocess import crop_numpy

        images = self.data.images[idx]
        if self.data.crop_box is not None and len(idx):
            images = np.stack([crop_numpy(im, self.data.crop_box) for im in images])
        out = {"targets": area_resize_numpy(images, self.image_size)}
        if self.task == "class_conditional":
            out["labels"] = self.data.labels[idx].astype(np.int32)
        elif self.task == "super_resolution":
            out["inputs"] = (self.data.inputs[idx] if self.data.inputs is not None
                             else area_resize_numpy(images, self.input_size))
        return out

    def order(self, epoch):
        """The example order of an epoch."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def __iter__(self):
        return NumpyIterator(self)

    def take(self, count):
        """The first ``count`` batches (as ``tf.data.Dataset.take``)."""
        return _Take(self, count)


class _Take:
    def __init__(self, dataset, count):
        self.dataset, self.count = dataset, count
        self.element_spec = dataset.element_spec

    def __iter__(self):
        return itertools.islice(iter(self.dataset), self.count)


class NumpyIterator:
    """Iterator over a ``NumpyDataset`` whose position can be saved and restored."""

    def __init__(self, dataset: NumpyDataset):
        self.dataset = dataset
        self.epoch, self.position = 0, 0

    def get_state(self):
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state):
        """Restores ``get_state()``'s dict; ValueError for anything else (a crafted state)."""
        if not isinstance(state, dict) or set(state) != {"epoch", "position"} or not all(
                type(v) is int for v in state.values()):
            raise ValueError(f"a data position is {{'epoch': int, 'position': int}}, got "
                             f"{str(state)[:200]}")
        epoch, position = state["epoch"], state["position"]
        if epoch < 0 or not 0 <= position <= self.dataset.num_examples:
            raise ValueError(f"the data position epoch={epoch}, position={position} is outside "
                             f"the dataset's {self.dataset.num_examples} examples")
        self.epoch, self.position = epoch, position

    def __iter__(self):
        return self

    def __next__(self):
        ds = self.dataset
        while True:
            if ds.epochs is not None and self.epoch >= ds.epochs:
                raise StopIteration
            order = ds.order(self.epoch)
            idx = order[self.position:self.position + ds.batch_size]
            if len(idx) == ds.batch_size or (len(idx) and not ds.drop_remainder):
                self.position += len(idx)  # the global position: the same on every worker
                return ds.features(idx[ds.shard[0]:ds.shard[1]])
            self.epoch, self.position = self.epoch + 1, 0


def make_numpy_dataset(source, split="train", batch_size=16, *, task="unconditional",
                       image_size=32, input_size=8, training=False, shuffle=None,
                       shuffle_buffer=10_000, repeat=None, seed=None, drop_remainder=None,
                       imagenet_version=None, source_kwargs=None, num_classes=None,
                       with_info=False, num_shards=1, shard_index=0):
    """``make_dataset``'s NumPy twin for array sources (see the module docstring).

    Takes ``make_dataset``'s arguments (``shuffle_buffer`` is unused: arrays are
    shuffled over the whole split; ``num_shards``/``shard_index``: one worker's
    slices of the global batches) and returns a ``NumpyDataset``, or
    ``(dataset, DatasetInfo)``.
    """
    del shuffle_buffer
    if task not in options.TASKS:
        raise ValueError(f"task must be one of {list(options.TASKS)}, got {task!r}")
    batch_size = options._check_int(batch_size, "batch_size")
    image_size = options._check_int(image_size, "image_size")
    if task == "super_resolution":
        input_size = options._check_int(input_size, "input_size")
        if input_size >= image_size:
            raise ValueError(f"input_size must be smaller than image_size={image_size} for "
                             f"super-resolution, got {input_size!r}")
    given_seed = seed
    shuffle, repeat, seed, drop_remainder = options.resolve_order(training, shuffle, repeat, seed,
                                                                  drop_remainder)
    num_shards, shard_index = options.check_shards(num_shards, shard_index, batch_size, shuffle,
                                                   given_seed)
    src = _source(source, dict(source_kwargs or {}))
    data = src.load(split, shuffle=shuffle, seed=seed, with_labels=task == "class_conditional")
    if task == "class_conditional":
        check_num_classes(data, num_classes)  # labels >= the model's num_classes: refused here
    if data.images is None:
        raise ValueError(f"{src.describe()} is a stream source; the NumPy pipeline reads "
                         "in-memory arrays only (use TensorFlow's make_dataset).")
    if (data.inputs is not None and task == "super_resolution"
            and data.inputs.shape[1:3] != (input_size, input_size)):
        raise ValueError(f"input_size={input_size} does not match the source's precomputed "
                         f"inputs of shape {data.inputs.shape[1:]}")
    epochs = None if repeat is True else (1 if repeat is False else repeat)
    per_worker = batch_size // num_shards
    ds = NumpyDataset(data, task, image_size, input_size, batch_size, shuffle, seed, epochs,
                      drop_remainder, (shard_index * per_worker, (shard_index + 1) * per_worker))
    logging.info("Dataset (NumPy): %s | task=%s targets=%dx%d | batch_size=%d training=%s "
                 "shuffle=%s seed=%s repeat=%s", data.description, task, image_size, image_size,
                 batch_size, training, shuffle, seed, repeat)
    info = options.DatasetInfo(
        source=src.describe(), split=split, task=task, image_size=image_size,
        input_size=input_size if task == "super_resolution" else None,
        num_examples=data.num_examples, num_classes=data.num_classes,
        label_names=data.label_names, imagenet_version=imagenet_version or src.imagenet_version,
        training=training, shuffle=shuffle, repeat=repeat, drop_remainder=drop_remainder,
        seed=seed, batch_size=batch_size,
    )
    return (ds, info) if with_info else ds
