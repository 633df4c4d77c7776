"""Datasets of code grids: images tokenized by a trained first stage, cached to disk.

The second stage of a two-stage model (Esser et al. 2021, "Taming
Transformers", Sec. 3.2) is an autoregressive prior over the code grids the
first stage's encoder and vector quantizer assign to the training images.
``make_code_dataset`` tokenizes a split once with the first stage of a model
directory, caches the grids in an ``.npz`` file keyed by the first-stage
checkpoint and the data, and serves them as ``targets`` int32
``[batch, h, w, 1]`` (plus ``labels`` for a class-conditional prior) with the
same shuffling, repetition and batching rules as ``make_dataset``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

from t2t_image.data import pipeline
from t2t_image.data.sources import SplitData

TASKS = ("unconditional", "class_conditional")
CACHE_VERSION = 2  # 2: content fingerprints of the checkpoint and the data


def tokenize_dataset(first_stage, dataset):
    """Encodes every batch of ``dataset`` to code grids.

    Args:
        first_stage: a built ``VQAutoencoder``.
        dataset: a ``tf.data.Dataset`` of feature dicts with ``targets``
            (and optionally ``labels``), read once in order.

    Returns:
        ``(codes, labels)``: int32 ``[N, h, w]`` and int32 ``[N]`` or None.
    """
    encode = tf.function(lambda targets: first_stage.encode_to_codes(targets))
    codes, labels = [], []
    for batch in dataset:
        codes.append(np.asarray(encode(batch["targets"]), np.int32))
        if "labels" in batch:
            labels.append(np.asarray(batch["labels"], np.int32))
    if not codes:
        raise ValueError("tokenize_dataset: the image dataset is empty.")
    return np.concatenate(codes), (np.concatenate(labels) if labels else None)


def data_fingerprint(images):
    """SHA-256 of every image (and label) a dataset yields, in order: its content, not its path."""
    digest = hashlib.sha256()
    for batch in images:
        for key in ("targets", "labels"):
            if key in batch:
                value = np.ascontiguousarray(np.asarray(batch[key]))
                digest.update(f"{key}{value.dtype}{value.shape}".encode())
                digest.update(value.tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _cache_key(checkpoint, description, split, task, image_size, data):
    """A key that changes whenever the first-stage weights or the data (content) change."""
    from t2t_image.storage import checkpoint_files

    fields = {
        "version": CACHE_VERSION,
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_fingerprint": checkpoint_files.fingerprint(checkpoint),
        "data_fingerprint": data,
        "data": description,
        "split": split,
        "task": task,
        "image_size": image_size,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16], fields


def _write_atomic(path, **arrays):
    """Writes an .npz so that a killed writer never leaves a partial file at ``path``."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_or_tokenize(first_stage, checkpoint, image_dataset_fn, cache_dir, tokenize_batch_size=64):
    """The code grids (and labels) of one split, from the cache or freshly tokenized.

    Returns:
        ``(codes int32 [N, h, w], labels int32 [N] or None, cache path, image DatasetInfo)``.
    """
    image_size = first_stage.image_height
    if first_stage.image_width != image_size:
        raise ValueError("make_code_dataset needs a first stage of square images, got "
                         f"{first_stage.image_height}x{first_stage.image_width}.")
    # One ordered pass at the first stage's image size, whatever the bindings say.
    images, info = image_dataset_fn(
        batch_size=tokenize_batch_size, image_size=image_size, training=False, shuffle=False,
        repeat=False, drop_remainder=False, with_info=True)
    if info.task not in TASKS:
        raise ValueError(f"make_code_dataset: the image dataset's task must be one of "
                         f"{list(TASKS)}, got {info.task!r}")
    # Keyed on content: an overwritten data file or retrained first stage is a cache miss.
    key, fields = _cache_key(checkpoint, info.source, info.split, info.task, image_size,
                             data_fingerprint(images))
    path = os.path.join(cache_dir, f"{re.sub(r'[^A-Za-z0-9._-]+', '_', info.split)}-{key}.npz")
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as cached:
            codes = cached["codes"].astype(np.int32)
            labels = cached["labels"].astype(np.int32) if "labels" in cached else None
        logging.info("Code grids of %s [%s] read from the cache %s", info.source, info.split, path)
        return codes, labels, path, info
    codes, labels = tokenize_dataset(first_stage, images)
    arrays = {"codes": codes.astype(np.uint16 if first_stage.codebook_size <= 65536 else np.int32),
              "meta": np.array(json.dumps(fields))}
    if labels is not None:
        arrays["labels"] = labels
    _write_atomic(path, **arrays)
    logging.info("Tokenized %d images of %s [%s] into %s code grids; cached in %s", len(codes),
                 info.source, info.split, "x".join(map(str, codes.shape[1:])), path)
    return codes, labels, path, info


def make_code_dataset(first_stage_dir, image_dataset_fn, batch_size=16, *, training=False,
                      shuffle=None, repeat=None, seed=None, drop_remainder=None, checkpoint=None,
                      cache_dir=None, tokenize_batch_size=64, with_info=False):
    """The input pipeline of a prior over code grids (see the module docstring).

    Args:
        first_stage_dir: str, the model directory of a trained ``VQAutoencoder``
            (trained with ``t2t_image.FirstStageTrainer``).
        image_dataset_fn: the image pipeline to tokenize, e.g. gin's
            ``@train/t2t_image.make_dataset`` (the same binding the first stage
            trained or evaluated on). It is called once with
            ``batch_size=tokenize_batch_size, image_size=<first stage size>,
            training=False, shuffle=False, repeat=False, drop_remainder=False,
            with_info=True``; its task ("unconditional" or
            "class_conditional") carries over, labels included.
        batch_size, training, shuffle, repeat, seed, drop_remainder: the order
            of the code grids, as in ``make_dataset``.
        checkpoint: optional first-stage checkpoint (default: the newest readable
            one); the one used is recorded in ``info.first_stage``.
        cache_dir: where the tokenized grids are cached (default:
            ``first_stage_dir/codes``); the file name holds a key of the
            checkpoint (path and content fingerprint) and the data (content
            fingerprint of the images and labels, source, split, task).
        tokenize_batch_size: int, images per encoder call when tokenizing.
        with_info: also return a ``DatasetInfo`` (with ``first_stage_dir``,
            ``image_num_dims`` and ``decode_codes`` set).

    Returns:
        A ``tf.data.Dataset`` of ``{"targets": int32 [b, h, w, 1]}`` (plus
        ``labels``), or ``(dataset, DatasetInfo)``.
    """
    from t2t_image.storage.model_loading import first_stage_record
    from t2t_image.storage.model_loading import load_model  # loads Keras models

    batch_size = pipeline._check_int(batch_size, "batch_size")
    tokenize_batch_size = pipeline._check_int(tokenize_batch_size, "tokenize_batch_size")
    shuffle, repeat, seed, drop_remainder = pipeline.resolve_order(
        training, shuffle, repeat, seed, drop_remainder)
    if not callable(image_dataset_fn):
        raise ValueError("make_code_dataset: image_dataset_fn must be a dataset function such "
                         f"as @train/t2t_image.make_dataset, got {image_dataset_fn!r}")
    if not first_stage_dir or not os.path.isdir(first_stage_dir):
        raise FileNotFoundError(
            f"make_code_dataset: first_stage_dir={first_stage_dir!r} is not a directory; train "
            "the first stage first (t2t-image-trainer with a first-stage gin file).")
    first_stage, checkpoint = load_model(first_stage_dir, checkpoint)
    if not hasattr(first_stage, "encode_to_codes"):
        raise ValueError(f"make_code_dataset: {first_stage_dir} holds a "
                         f"{type(first_stage).__name__}, not a VQAutoencoder first stage.")
    cache_dir = cache_dir or os.path.join(first_stage_dir, "codes")
    codes, labels, path, image_info = load_or_tokenize(
        first_stage, checkpoint, image_dataset_fn, cache_dir, tokenize_batch_size)
    task = image_info.task
    data = SplitData(images=codes[..., None], labels=labels)

    def features(grids, batch_labels=None, inputs=None):
        del inputs
        out = {"targets": tf.cast(grids, tf.int32)}
        if task == "class_conditional":
            out["labels"] = tf.cast(batch_labels, tf.int32)
        return out

    epochs = None if repeat is True else (1 if repeat is False else repeat)
    ds = pipeline.array_pipeline(data, features, task, batch_size, shuffle, seed, epochs,
                                 drop_remainder).prefetch(tf.data.AUTOTUNE)
    logging.info("Code dataset: %d grids of %s from %s | batch_size=%d training=%s shuffle=%s "
                 "seed=%s", len(codes), "x".join(map(str, codes.shape[1:])), path, batch_size,
                 training, shuffle, seed)
    if not with_info:
        return ds

    def decode_codes(grids):
        grids = np.asarray(grids)
        return np.asarray(first_stage.images_from_codes(grids.reshape(grids.shape[:3])))

    info = pipeline.DatasetInfo(
        source=f"codes of {image_info.source} ({path})", split=image_info.split, task=task,
        image_size=codes.shape[1], input_size=None, num_examples=len(codes),
        num_classes=image_info.num_classes, label_names=image_info.label_names,
        imagenet_version=image_info.imagenet_version, training=training, shuffle=shuffle,
        repeat=repeat, drop_remainder=drop_remainder, seed=seed, batch_size=batch_size,
        first_stage_dir=os.path.abspath(first_stage_dir),
        image_num_dims=first_stage.image_height * first_stage.image_width
        * first_stage.num_channels,
        decode_codes=decode_codes,
    )
    # The exact first-stage checkpoint (path, step, content fingerprint): the trainer
    # records it in first_stage.json, and the sampler and exporter decode with it.
    info.first_stage = first_stage_record(first_stage_dir, checkpoint)
    info.first_stage_model = first_stage  # a preset of the prior ships it
    return ds, info
