"""Lossless image compression with an Image Transformer: ``compress`` and ``decompress``.

An autoregressive model that gives an image ``b`` bits per dimension codes it
in about ``b * height * width * channels`` bits: each sub-pixel is coded with
the rANS coder (``rans.py``) from the model's distribution of that sub-pixel
given the ones before it (a "cat" model's 256-way softmax; a "dmol" model's
256-bin table per channel). Images are coded in batches by one compiled
program that compression and decompression share (``graph.py``), so the
probabilities agree bit for bit. The file (``file_format.py``) names the
model and the environment and carries a CRC-32 of the original pixels:
a file is refused before decoding when it comes from another model, backend
or format version, and never decodes silently to another image.

* Class-conditional models: the label of each image is stored in the file.
* Super-resolution models (``Img2ImgTransformer``): a two-part code, the
  low-resolution input (the image area-downsampled as in training,
  ``area_resize_numpy``) stored raw, then the image given it. Raw because at
  8x8 the classical codecs are no smaller: PNG, WebP lossless and JPEG XL
  lossless (effort 9) take 266, 218 and 173 bytes for the 192 raw bytes
  (64 CelebA validation images, ``benchmarks/compression.py --sr_inputs``).

Not a T2T feature (T2T reports bits/dim but does not code images).
"""

import hashlib

import numpy as np

from t2t_image.compression import file_format, graph, rans
from t2t_image.compression.file_format import CompressedFileError
from t2t_image.sampling.common import needs_inputs, model_vocab_size

DEFAULT_BATCH_SIZE = 32


def weights_fingerprint(model):
    """SHA-256 (hex) of a model's weights: their shapes, dtypes and values, in order.

    The content fingerprint of a model loaded from a model directory; a
    preset's comes from its metadata (``t2t_image.from_preset``).
    """
    from keras import ops

    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(ops.convert_to_numpy(weight.value))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def environment(model):
    """What besides the weights decides the probabilities, as a string.

    The Keras and backend versions, the device platform (CPU/GPU/TPU: XLA's
    code differs) and the model's dtype policy are named; the file keeps a
    2-byte hash of it.
    """
    import keras

    from t2t_image.sampling.compiled import backend

    name = backend()
    if name == "jax":
        import jax
        import jaxlib

        versions = f"jax {jax.__version__} jaxlib {jaxlib.__version__} {jax.default_backend()}"
    else:
        import tensorflow as tf

        platform = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
        versions = f"tensorflow {tf.__version__} {platform}"
    return f"keras {keras.__version__}, {versions}, {model.dtype_policy.name}"


def _fingerprint_bytes(fingerprint):
    """The 4 bytes a file keeps of a hex fingerprint (``sha256:`` prefix or not)."""
    return bytes.fromhex(fingerprint.rsplit(":", 1)[-1])[:4]


def _tag(text, size):
    return hashlib.sha256(text.encode()).digest()[:size]


def check_model(model):
    """Raises ValueError unless ``model`` is a pixel model this codec can code."""
    vocab = model_vocab_size(model)
    if vocab != 256 or model.likelihood not in ("cat", "dmol"):
        raise ValueError(
            f"t2t-image-compress codes 8-bit images with pixel models (vocab_size 256, "
            f"likelihood cat or dmol); this model has vocab_size={vocab}, likelihood="
            f"{model.likelihood!r} (a prior over codes of a two-stage model?).")


def _check_images(model, images, labels):
    images = np.asarray(images)
    shape = (model.image_height, model.image_width, model.num_channels)
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ValueError(f"images must have shape [n, {shape[0]}, {shape[1]}, {shape[2]}] (the "
                         f"model's image_height, image_width, num_channels), got "
                         f"{list(images.shape)}.")
    if len(images) == 0:
        raise ValueError("no images to compress.")
    if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
        raise ValueError("images must hold integers in 0..255 (uint8).")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels were given but the model is unconditional.")
        return images.astype(np.uint8), None
    if labels is None:
        raise ValueError(f"the model is class-conditional (num_classes={num_classes}): give "
                         "every image its label.")
    labels = np.broadcast_to(np.asarray(labels), (len(images),)).astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}].")
    return images.astype(np.uint8), labels


def _check_inputs(model, images, inputs):
    if inputs is None:
        from t2t_image.data.numpy_pipeline import area_resize_numpy

        return area_resize_numpy(images, (model.input_height, model.input_width))
    inputs = np.asarray(inputs)
    if inputs.shape != (len(images),) + _input_size(model):
        raise ValueError(f"inputs must have shape {[len(images), *_input_size(model)]} (one "
                         f"low-resolution image per image), got {list(inputs.shape)}.")
    if not np.issubdtype(inputs.dtype, np.integer) or inputs.min() < 0 or inputs.max() > 255:
        raise ValueError("inputs must hold integers in 0..255 (uint8).")
    return inputs.astype(np.uint8)


def _input_size(model):
    return (model.input_height, model.input_width, model.num_channels)


def _batches(count, batch):
    for begin in range(0, count, batch):
        yield begin, min(begin + batch, count)


def _conditioning(model, labels, inputs, begin, end, batch):
    """Conditioning tensors of rows ``[begin, end)``, padded with zeros to ``batch`` rows."""
    out = {}
    if labels is not None:
        out["labels"] = np.zeros((batch,), np.int32)
        out["labels"][:end - begin] = labels[begin:end]
    if inputs is not None:
        out["inputs"] = np.zeros((batch,) + _input_size(model), np.int32)
        out["inputs"][:end - begin] = inputs[begin:end]
    return out


def compress(model, images, labels=None, fingerprint=None, batch_size=DEFAULT_BATCH_SIZE,
             stats=None, inputs=None):
    """Compresses images losslessly with ``model``: the bytes of one ``.t2tc`` file.

    Args:
        model: an ``ImageTransformer`` or ``Img2ImgTransformer`` over 8-bit pixels.
        images: integer array `[n, height, width, channels]` in 0..255, the
            model's image size.
        labels: int or int array `[n]` for a class-conditional model.
        fingerprint: hex string, the model's content fingerprint (default
            ``weights_fingerprint(model)``).
        batch_size: int, images coded together (the compiled batch is
            ``min(batch_size, n)``; decompression runs the same).
        stats: optional dict, filled with ``model_bits`` (float64 `[n]`, the
            model's own cost of each image) and ``stream_bytes`` (int `[n]`).
        inputs: super-resolution models: the low-resolution images `[n,
            input_height, input_width, channels]` the model was trained with
            (e.g. a data set's precomputed ones); default: the images
            area-downsampled as the training pipeline does
            (``area_resize_numpy``). Stored raw in the file.

    Returns:
        bytes.

    Raises:
        ValueError: for images, labels or a model the codec cannot take.
    """
    check_model(model)
    images, labels = _check_images(model, images, labels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    fingerprint = fingerprint or weights_fingerprint(model)
    if needs_inputs(model):
        inputs = _check_inputs(model, images, inputs)
    elif inputs is not None:
        raise ValueError("inputs were given but the model takes none (it has no encoder).")
    count = len(images)
    batch = min(int(batch_size), count)
    run = graph.codec_function(model, batch)
    payload = np.zeros((batch, graph.payload_length(model)), np.int32)
    streams, nats = [], []
    for begin, end in _batches(count, batch):
        targets = np.zeros((batch,) + images.shape[1:], np.int32)
        targets[:end - begin] = images[begin:end]
        out = run(targets, _conditioning(model, labels, inputs, begin, end, batch), payload,
                  np.ones((batch,), bool))
        if not np.array_equal(np.asarray(out["images"]), targets):
            raise RuntimeError("the coding loop did not reproduce its teacher-forced images.")
        rows = end - begin
        streams += rans.encode(np.asarray(out["start"])[:, :rows], np.asarray(out["freq"])[:, :rows])
        nats.append(np.asarray(out["nats"], np.float64)[:rows])
    if stats is not None:
        stats["model_bits"] = np.concatenate(nats) / np.log(2.0)
        stats["stream_bytes"] = np.array([len(s) for s in streams])
    from t2t_image.sampling.compiled import backend

    header = file_format.Header(
        backend(), _fingerprint_bytes(fingerprint), _tag(environment(model), 2), images.shape[1],
        images.shape[2], images.shape[3], batch,
        None if labels is None else [int(v) for v in labels], [],
        None if inputs is None else inputs.astype(np.uint8).tobytes(),
        file_format.pixels_crc(images))
    return file_format.pack(header, streams)


def read_header(data, name="the file", model=None):
    """The header of a compressed file (checked: magic, version, file CRC).

    Args:
        data: bytes.
        name: str, the file's name for messages.
        model: the model, needed for super-resolution files (its input size).

    Returns:
        ``(file_format.Header, streams)``.
    """
    input_bytes = None
    if model is not None and needs_inputs(model):
        input_bytes = int(np.prod(_input_size(model)))
    return file_format.unpack(data, name, input_bytes)


def _check_file_against_model(header, model, fingerprint, name, allow_other_versions):
    from t2t_image.sampling.compiled import backend

    if header.model != _fingerprint_bytes(fingerprint):
        raise CompressedFileError(
            f"{name} was compressed by another model (fingerprint {header.model.hex()}...; "
            f"this model's is {_fingerprint_bytes(fingerprint).hex()}...): decompress it with the model that "
            "compressed it.")
    size = (model.image_height, model.image_width, model.num_channels)
    if (header.height, header.width, header.channels) != size:
        raise CompressedFileError(f"{name} holds {header.height}x{header.width}x"
                                  f"{header.channels} images; the model's are "
                                  f"{size[0]}x{size[1]}x{size[2]}.")
    if (header.labels is not None) != (getattr(model, "num_classes", None) is not None):
        raise CompressedFileError(f"{name}: labels do not match the model's num_classes.")
    if header.backend != backend():
        raise CompressedFileError(
            f"{name} was compressed under KERAS_BACKEND={header.backend}; this process runs "
            f"{backend()}, whose probabilities differ: decompress it with "
            f"KERAS_BACKEND={header.backend}.")
    here = environment(model)
    if header.environment != _tag(here, 2) and not allow_other_versions:
        raise CompressedFileError(
            f"{name} was compressed with other versions or another device or dtype policy "
            f"(environment tag {header.environment.hex()}; here {_tag(here, 2).hex()}: "
            f"{here}), which may change the probabilities: decompress it where it was made, "
            "or allow other versions (--allow_other_versions) and let the pixel checksum "
            "tell.")


def check_file(model, data, fingerprint=None, name="the file", allow_other_versions=False):
    """Every check of a compressed file that needs no decoding: ``(header, streams)``.

    Format (magic, version, file CRC), model fingerprint, image size, labels,
    backend and environment, in that order.

    Raises:
        CompressedFileError: naming what does not match and what to do.
    """
    check_model(model)
    header, streams = read_header(data, name, model)
    _check_file_against_model(header, model, fingerprint or weights_fingerprint(model), name,
                              allow_other_versions)
    return header, streams


def decompress(model, data, fingerprint=None, name="the file", allow_other_versions=False,
               stats=None):
    """Decompresses a ``compress`` file: ``(images, labels)``.

    Every check that needs no decoding comes first (``check_file``); after
    decoding, every stream must end where and how the encoder began it, and
    the images must match the stored CRC-32 of the original pixels.

    Args:
        model: the model that compressed the file.
        data: bytes of the file.
        fingerprint: hex string, the model's content fingerprint (default
            ``weights_fingerprint(model)``).
        name: str, how to call the file in messages.
        allow_other_versions: bool, decode a file made with other versions
            (the checksum still guards the result).
        stats: optional dict, filled with ``model_bits`` as in ``compress``.

    Returns:
        ``(images, labels)``: uint8 `[n, height, width, channels]`, and int64
        `[n]` or None.

    Raises:
        CompressedFileError: a file this model cannot decode, or one whose
            decoding failed (named, with what to do).
    """
    header, streams = check_file(model, data, fingerprint, name, allow_other_versions)
    count, batch = len(streams), header.batch
    if count == 0 or batch < 1 or batch > count:
        raise CompressedFileError(f"{name}: corrupted header ({count} images in batches of "
                                  f"{batch}).")
    labels = None if header.labels is None else np.array(header.labels, np.int64)
    if labels is not None and labels.max() >= model.num_classes:
        raise CompressedFileError(f"{name}: a label is out of the model's range.")
    inputs = None
    if header.inputs is not None:
        inputs = np.frombuffer(header.inputs, np.uint8).reshape((count,) + _input_size(model))
    run = graph.codec_function(model, batch)
    width = graph.payload_length(model)
    shape = (batch, header.height, header.width, header.channels)
    images, nats = [], []
    for begin, end in _batches(count, batch):
        payload = np.zeros((batch, width), np.int32)
        for row, stream in enumerate(streams[begin:end]):
            if len(stream) > width or len(stream) < 4:
                raise CompressedFileError(f"{name}: image {begin + row} has a stream of "
                                          f"{len(stream)} bytes; the file is corrupted.")
            payload[row, :len(stream)] = np.frombuffer(stream, np.uint8)
        teacher = np.arange(batch) >= end - begin  # padding rows: zeros, as when compressing
        out = run(np.zeros(shape, np.int32), _conditioning(model, labels, inputs, begin, end,
                                                           batch), payload, teacher)
        rows = end - begin
        lengths = np.array([len(s) for s in streams[begin:end]])
        ended = (np.asarray(out["state"])[:rows] == rans.LOWER) \
            & (np.asarray(out["position"])[:rows] == lengths)
        if not ended.all():
            bad = begin + int(np.flatnonzero(~ended)[0])
            raise CompressedFileError(_mismatch(name, f"image {bad}'s stream did not end where "
                                                      "it began", header, model))
        images.append(np.asarray(out["images"])[:rows].astype(np.uint8))
        nats.append(np.asarray(out["nats"], np.float64)[:rows])
    images = np.concatenate(images)
    if file_format.pixels_crc(images) != header.pixels_crc:
        raise CompressedFileError(_mismatch(name, "the decoded pixels do not match the "
                                                  "original's CRC-32", header, model))
    if stats is not None:
        stats["model_bits"] = np.concatenate(nats) / np.log(2.0)
    return images, labels


def _mismatch(name, what, header, model):
    here = environment(model)
    return (f"{name}: decoding failed ({what}): the probabilities here differ from the "
            f"compressor's (environment tag {header.environment.hex()}, here "
            f"{_tag(here, 2).hex()}: {here}); nothing was written.")
