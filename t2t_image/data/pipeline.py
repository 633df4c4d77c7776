"""``make_dataset``: batched, prefetched ``tf.data`` pipelines of Image Transformer features.

Features (T2T's names), per example, batched along a leading axis:

* ``targets`` uint8 ``[image_size, image_size, 3]`` - the image to model, area
  resized (``preprocess.area_resize``: TF area interpolation, truncated to uint8)
  when its size differs, after the source's crop box if any.
* ``labels`` int32 ``[]`` - the class, for ``task="class_conditional"``.
* ``inputs`` uint8 ``[input_size, input_size, 3]`` - for ``task="super_resolution"``:
  ``area_resize(image, input_size)`` of the same (cropped) image the targets come
  from, as T2T's ``img2img_celeba`` / ``img2img_cifar10`` problems do
  (8 -> 32 by default); or the source's precomputed inputs (npz ``inputs_key``).

Training (``training=True``) shuffles with a seed (a random one, logged, when
``seed`` is None), repeats forever and drops the last partial batch (static batch
shapes); evaluation reads once in a fixed order and keeps the partial batch.
Each of these can be overridden. Array sources are shuffled over the whole
split (a permutation of indices, redrawn each epoch); stream sources shuffle
their file list (``image_folder``) or use TFDS file shuffling plus a
``shuffle_buffer``. Everything is prefetched with AUTOTUNE.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from t2t_image.data import preprocess
from t2t_image.data.cifar10_archive import Cifar10ArchiveSource
from t2t_image.data.image_folder import ImageFolderSource, SkippedFiles
from t2t_image.data.imagenet import IMAGENET_VERSIONS, resolve_imagenet_version
from t2t_image.data.npz_source import NpzSource
from t2t_image.data.options import TASKS, DatasetInfo, _check_int, check_shards, resolve_order  # noqa: F401
from t2t_image.data.sources import Source, SplitData, check_num_classes
from t2t_image.data.tfds_source import TfdsSource

SOURCES = {
    "tfds": TfdsSource,
    "cifar10_archive": Cifar10ArchiveSource,
    "npz": NpzSource,
    "image_folder": ImageFolderSource,
}


def get_source(source, **kwargs) -> Source:
    """Returns a source object from a registry name or passes a ``Source`` through.

    Args:
      source: ``"tfds"``, ``"cifar10_archive"``, ``"npz"``, ``"image_folder"``, a
        ``Source`` subclass, or a ``Source`` instance (e.g. one configured with gin).
      **kwargs: constructor arguments when ``source`` is a name or a class.

    Returns:
      A ``Source``.

    Raises:
      ValueError: for an unknown name, or kwargs given with an instance.
    """
    if isinstance(source, Source):
        if kwargs:
            raise ValueError(f"source_kwargs={kwargs!r} given with an already built source {source.describe()}")
        return source
    if isinstance(source, str) and source in SOURCES:
        return SOURCES[source](**kwargs)
    if isinstance(source, type) and issubclass(source, Source):  # e.g. gin's @t2t_image.NpzSource
        return source(**kwargs)
    raise ValueError(f"source must be one of {sorted(SOURCES)} or a Source instance, got {source!r}")


def make_dataset(source, split="train", batch_size=16, *, task="unconditional", image_size=32,
                 input_size=8, training=False, shuffle=None, shuffle_buffer=10_000, repeat=None,
                 seed=None, drop_remainder=None, imagenet_version=None, source_kwargs=None,
                 num_classes=None, with_info=False, num_shards=1, shard_index=0):
    """Builds the input pipeline of the Image Transformer (see the module docstring).

    Corresponds to T2T's ``Problem.input_fn`` with the ``preprocess_example`` of
    ``image_cifar10*``, ``image_imagenet32/64``, ``image_celeba`` and
    ``img2img_celeba`` / ``img2img_cifar10`` (Parmar et al. 2018, Section 5).

    Args:
      source: a source name (``"tfds"``, ``"cifar10_archive"``, ``"npz"``,
        ``"image_folder"``; constructor arguments in ``source_kwargs``) or a
        ``Source`` instance.
      split: split specification, e.g. ``"train"``, ``"test"``, ``"train[:90%]"``.
      batch_size: examples per batch.
      task: ``"unconditional"``, ``"class_conditional"`` or ``"super_resolution"``.
      image_size: side of ``targets``.
      input_size: side of ``inputs`` for super-resolution (must be < image_size).
      training: sets the defaults of ``shuffle``, ``repeat`` and ``drop_remainder``
        (True for a training pipeline, False for deterministic evaluation).
      shuffle: shuffle (None: follow ``training``).
      shuffle_buffer: buffer size for stream sources that the source does not
        shuffle itself (TFDS).
      repeat: True (forever), False (one pass) or an int number of epochs (None:
        follow ``training``).
      seed: shuffle seed; None draws one at random and logs it.
      drop_remainder: drop the last partial batch (None: follow ``training``).
      imagenet_version: ``"oord"`` or ``"chrabaszcz"`` when the data is downsampled
        ImageNet; TFDS ``imagenet_resized`` / ``downsampled_imagenet`` set it
        themselves and a contradicting value is an error. Logged.
      source_kwargs: constructor arguments when ``source`` is a name.
      num_classes: the model's number of classes (class-conditional task); every
        label is checked against it here, so a label the model cannot embed fails
        when the dataset is built, naming the data and the value. None: no check.
      with_info: also return a ``DatasetInfo``.
      num_shards, shard_index: one worker's share of a multi-worker run (set by the
        trainer, not by gin): the batches are worker ``shard_index``'s contiguous slices
        of the global batches of ``batch_size`` (``t2t_image.training.workers``).

    Returns:
      A ``tf.data.Dataset`` of feature dicts, or ``(dataset, DatasetInfo)``.

    Raises:
      ValueError: for an invalid setting (naming it and the value).
      FileNotFoundError: when the data cannot be found.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    batch_size = _check_int(batch_size, "batch_size")
    image_size = _check_int(image_size, "image_size")
    if task == "super_resolution":
        input_size = _check_int(input_size, "input_size")
        if input_size >= image_size:
            raise ValueError(
                f"input_size must be smaller than image_size={image_size} for super-resolution, got {input_size!r}"
            )
    shuffle_buffer = _check_int(shuffle_buffer, "shuffle_buffer")
    given_seed = seed
    shuffle, repeat, seed, drop_remainder = resolve_order(training, shuffle, repeat, seed,
                                                          drop_remainder)
    num_shards, shard_index = check_shards(num_shards, shard_index, batch_size, shuffle,
                                           given_seed)
    shard = (shard_index * batch_size // num_shards, (shard_index + 1) * batch_size // num_shards)
    if source_kwargs is not None and not hasattr(source_kwargs, "items"):
        raise ValueError(f"source_kwargs must be a mapping or None, got {source_kwargs!r}")

    src = get_source(source, **dict(source_kwargs or {}))
    version = resolve_imagenet_version(imagenet_version, src.imagenet_version, src.describe())
    data = src.load(split, shuffle=shuffle, seed=seed, with_labels=task == "class_conditional")
    if task == "class_conditional":
        check_num_classes(data, num_classes)
    if data.inputs is not None and task == "super_resolution" and data.inputs.shape[1:3] != (input_size, input_size):
        raise ValueError(
            f"input_size={input_size} does not match the source's precomputed inputs of shape "
            f"{data.inputs.shape[1:]}"
        )

    def features(image, label=None, inputs=None):
        image = preprocess.crop_tf(image, data.crop_box)
        out = {"targets": preprocess.area_resize(image, image_size)}
        if task == "class_conditional":
            out["labels"] = tf.cast(label, tf.int32)
        elif task == "super_resolution":
            out["inputs"] = inputs if inputs is not None else preprocess.area_resize(image, input_size)
        return out

    epochs = None if repeat is True else (1 if repeat is False else repeat)
    if data.images is not None:
        ds = array_pipeline(data, features, task, batch_size, shuffle, seed, epochs, drop_remainder,
                            shard)
    else:
        ds = data.dataset
        if shuffle and not data.shuffled:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if epochs != 1:
            ds = ds.repeat(epochs)
        ds = ds.map(lambda ex: features(ex["image"], ex.get("label")), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if num_shards > 1:  # this worker's slice of every global batch
            ds = ds.map(lambda batch: {k: v[shard[0]:shard[1]] for k, v in batch.items()})
    ds = ds.prefetch(tf.data.AUTOTUNE)

    skipped = getattr(src, "skipped", None)
    info = DatasetInfo(
        source=src.describe(), split=split, task=task, image_size=image_size,
        input_size=input_size if task == "super_resolution" else None,
        num_examples=data.num_examples, num_classes=data.num_classes, label_names=data.label_names,
        imagenet_version=version, training=training, shuffle=shuffle, repeat=repeat,
        drop_remainder=drop_remainder, seed=seed, batch_size=batch_size, skipped=skipped,
    )
    logging.info(
        "Dataset: %s | task=%s targets=%dx%d%s | batch_size=%d training=%s shuffle=%s seed=%s "
        "repeat=%s drop_remainder=%s | %s examples/epoch",
        data.description, task, image_size, image_size,
        f" inputs={input_size}x{input_size}" if task == "super_resolution" else "",
        batch_size, training, shuffle, seed, repeat, drop_remainder, data.num_examples,
        extra={"short": f"Data {split}: {data.num_examples} examples, {task} {image_size}x"
                        f"{image_size}, batch {batch_size}{', shuffled' if shuffle else ''}"},
    )
    if data.images is not None and data.images.shape[1:3] != (image_size, image_size):
        logging.info("targets are area-resized from %dx%d to %dx%d (truncated to uint8)",
                     data.images.shape[1], data.images.shape[2], image_size, image_size)
    if version is not None:
        logging.info("Downsampled ImageNet version: %s = %s", version, IMAGENET_VERSIONS[version])
    elif "imagenet" in data.description.lower() or data.num_classes == 1000:
        logging.warning(
            "This looks like ImageNet data but imagenet_version is not set; set it to 'oord' "
            "(van den Oord et al. 2016) or 'chrabaszcz' (Chrabaszcz et al. 2017): their bits/dim "
            "are not comparable.")
    return (ds, info) if with_info else ds


def array_pipeline(data: SplitData, features, task, batch_size, shuffle, seed, epochs, drop_remainder,
                   shard=None):
    """Index-based pipeline for in-memory arrays: shuffle indices, batch, gather, transform.

    ``features(images, labels, inputs)`` maps gathered batches to feature dicts;
    ``epochs`` is None for forever; ``shard``: ``(start, stop)`` of this worker's
    slice of each batch of indices, or None for all of it.
    """
    n = len(data.images)
    if n == 0:
        raise ValueError(f"the split selects no examples: {data.description}")
    images = tf.convert_to_tensor(data.images)
    labels = tf.convert_to_tensor(data.labels) if task == "class_conditional" else None
    inputs = (tf.convert_to_tensor(data.inputs)
              if task == "super_resolution" and data.inputs is not None else None)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if epochs != 1:
        ds = ds.repeat(epochs)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if shard is not None and shard != (0, batch_size):  # this worker's indices only
        ds = ds.map(lambda idx: idx[shard[0]:shard[1]])

    def gather(idx):
        return features(
            tf.gather(images, idx),
            tf.gather(labels, idx) if labels is not None else None,
            tf.gather(inputs, idx) if inputs is not None else None,
        )

    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
