"""Lossless compression of held-out images: t2t-image-compress against PNG, WebP, JPEG 2000, JPEG XL.

Images: the validation split that the trainer and the presets never train on
(``train[90%:]`` of the offline npz: the last 509 of CIFAR-10's 5,085, the last
900 of CelebA's 9,000), the first ``--num_images`` of it, area-resized to the
model's size when it is smaller (as the training pipeline does).

Codecs, each checked to decode every image exactly:

* ``t2t (one file)``: ``t2t_image.compression.compress`` of all images into
  one file, headers and checksums included; ``t2t (per image)``: each image's
  stream in a one-image file (the same stream, the one-image header); ``model``:
  the model's own bits/dim on the same images (what an ideal coder would
  take), so the difference is the coder's and the container's overhead.
  Speeds: images/s of ``compress`` and ``decompress`` of the whole set in
  batches of ``--batch_size``, after a first call that compiles (its
  seconds are printed separately).
  ``--compare_sampler`` also times the cached sampler on one batch.
* ``PNG`` (Pillow, ``optimize=True``, ``compress_level=9``), ``WebP lossless``
  (Pillow, ``method=6``), ``JPEG 2000 lossless`` (``imagecodecs``, reversible
  5/3 wavelet), ``JPEG XL lossless`` (``imagecodecs``, effort 9): one file
  per image; bits/dim of the whole set and the mean per image; images/s of a
  loop over the images.

Usage (from the repository root; a model directory or, once on main, a preset)::

    python3 benchmarks/compression.py --model_dir=runs/quickstart [--num_images 64]
    python3 benchmarks/compression.py --preset=cifar10_32_uncond --data cifar10
    python3 benchmarks/compression.py --preset=celeba_sr_8_32 --data celeba
    python3 benchmarks/compression.py --sr_inputs      # the 8x8 CelebA inputs alone

Prints a table. Nothing is written (``--json PATH`` writes the per-image numbers).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
SETS = {"cifar10": ("cifar10/cifar10_train_exact.npz", "x", "y", None),
        "celeba": ("celeba/celeba_train9000_32x32_8x8.npz", "x32", None, "x8")}


def held_out(name, count):
    """The first ``count`` images of the set's validation split ``train[90%:]``.

    Returns ``(images, labels, inputs)``: labels (CIFAR-10) and the
    precomputed 8x8 inputs (CelebA) or None.
    """
    from t2t_image.data.splits import parse_split

    path, key, label_key, input_key = SETS[name]
    with np.load(os.path.join(DATA, path)) as data:
        images = data[key]
        start = parse_split("train[90%:]")[0].indices(len(images)).start
        labels = data[label_key][start:start + count].astype(np.int64) if label_key else None
        inputs = data[input_key][start:start + count] if input_key else None
        return images[start:start + count], labels, inputs


def _pillow(fmt, **options):
    from PIL import Image

    def encode(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **options)
        return buffer.getvalue()

    def decode(data):
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    return encode, decode


def classical_codecs():
    """``{name: (encode(image) -> bytes, decode(bytes) -> image)}`` of the lossless baselines."""
    import imagecodecs

    return {
        "PNG (Pillow, level 9)": _pillow("PNG", optimize=True, compress_level=9),
        "WebP lossless (method 6)": _pillow("WEBP", lossless=True, quality=100, method=6),
        "JPEG 2000 lossless": (lambda x: imagecodecs.jpeg2k_encode(x, reversible=True),
                               imagecodecs.jpeg2k_decode),
        "JPEG XL lossless (effort 9)": (
            lambda x: imagecodecs.jpegxl_encode(x, lossless=True, effort=9),
            imagecodecs.jpegxl_decode),
    }


def measure_classical(images, encode, decode):
    """Per-image sizes (bytes) and encode/decode images/s; every image must decode exactly."""
    start = time.perf_counter()
    blobs = [encode(image) for image in images]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = [decode(blob) for blob in blobs]
    decode_s = time.perf_counter() - start
    for image, back in zip(images, decoded):
        if not np.array_equal(np.asarray(back).reshape(image.shape), image):
            raise AssertionError("a baseline codec was not lossless")
    return np.array([len(b) for b in blobs]), len(images) / encode_s, len(images) / decode_s


def load(args):
    from t2t_image.compression import weights_fingerprint

    if args.preset:
        from t2t_image.storage import presets

        loaded = presets.load(args.preset)
        print(f"model: preset {loaded.folder}")
        return loaded.model, loaded.metadata["fingerprint"]
    from t2t_image.storage.model_loading import load_model

    model, source = load_model(args.model_dir, args.checkpoint)
    print(f"model: {source} ({model.dtype_policy.name})")
    if args.float32 and model.dtype_policy.name != "float32":
        import keras

        from t2t_image.sampling.sampler import ensure_built

        config = keras.saving.serialize_keras_object(model)  # as presets store models
        config["config"]["dtype"] = keras.saving.serialize_keras_object(
            keras.DTypePolicy("float32"))
        float32 = keras.saving.deserialize_keras_object(config)
        ensure_built(float32)
        float32.set_weights(model.get_weights())
        model = float32
        print("  run in float32, as a preset of it would be")
    return model, weights_fingerprint(model)


def measure_t2t(model, fingerprint, images, labels, inputs, batch_size, compare_sampler=False):
    from t2t_image.compression import compress, decompress, file_format, read_header
    from t2t_image.sampling.common import needs_inputs

    if not getattr(model, "num_classes", None):
        labels = None
    if not needs_inputs(model):
        inputs = None

    def first(x):
        return None if x is None else x[:batch_size]

    warm = time.perf_counter()
    compress(model, images[:batch_size], first(labels), fingerprint, batch_size,
             inputs=first(inputs))
    compile_s = time.perf_counter() - warm
    stats = {}
    start = time.perf_counter()
    data = compress(model, images, labels, fingerprint, batch_size, stats, inputs)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded, _ = decompress(model, data, fingerprint)
    decode_s = time.perf_counter() - start
    if not np.array_equal(decoded, images):
        raise AssertionError("t2t-image-compress was not lossless")
    if compare_sampler:  # the cached sampler on the same batch, compiled first
        from t2t_image.sampling import sample

        conditioning = dict(labels=first(labels), inputs=first(inputs))
        sample(model, batch_size, **conditioning)
        start = time.perf_counter()
        sample(model, batch_size, **conditioning)
        sampler = batch_size / (time.perf_counter() - start)
    header, streams = read_header(data, model=model)
    single = []
    for i, stream in enumerate(streams):
        one = file_format.Header(header.backend, header.model, header.environment, header.height,
                                 header.width, header.channels, 1,
                                 None if labels is None else [int(labels[i])], [],
                                 None if header.inputs is None else
                                 header.inputs[i * len(header.inputs) // len(streams):
                                               (i + 1) * len(header.inputs) // len(streams)],
                                 0)
        single.append(len(file_format.pack(one, [stream])))
    return dict(file_bytes=len(data), per_image_bytes=np.array(single),
                model_bits=stats["model_bits"], encode=len(images) / encode_s,
                decode=len(images) / decode_s, compile_s=compile_s,
                sampler=sampler if compare_sampler else None)


def sr_inputs(count):
    """The 8x8 CelebA inputs alone: raw bytes against the classical codecs."""
    from t2t_image.data.splits import parse_split

    with np.load(os.path.join(DATA, SETS["celeba"][0])) as data:
        start = parse_split("train[90%:]")[0].indices(len(data["x8"])).start
        images = data["x8"][start:start + count]
    print(f"{count} CelebA 8x8 inputs of train[90%:]: mean bytes per image (raw: "
          f"{images[0].size})")
    for name, (encode, decode) in classical_codecs().items():
        sizes, _, _ = measure_classical(images, encode, decode)
        print(f"  {name:30s} {sizes.mean():7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir")
    parser.add_argument("--checkpoint")
    parser.add_argument("--preset")
    parser.add_argument("--data", choices=sorted(SETS), default="cifar10")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--json", help="write the per-image numbers here")
    parser.add_argument("--sr_inputs", action="store_true")
    parser.add_argument("--float32", action="store_true",
                        help="run a --model_dir model in float32 (as presets are stored)")
    parser.add_argument("--compare_sampler", action="store_true",
                        help="also time the cached sampler on one batch (images/s)")
    args = parser.parse_args()
    if args.sr_inputs:
        sr_inputs(args.num_images)
        return
    if not (args.model_dir or args.checkpoint or args.preset):
        parser.error("give --model_dir, --checkpoint or --preset")
    model, fingerprint = load(args)
    images, labels, inputs = held_out(args.data, args.num_images)
    size = (model.image_height, model.image_width)
    from t2t_image.data.numpy_pipeline import area_resize_numpy

    if images.shape[1:3] != size:
        images = area_resize_numpy(images, size)
    if inputs is not None and hasattr(model, "input_height") and \
            inputs.shape[1:3] != (model.input_height, model.input_width):
        inputs = area_resize_numpy(inputs, (model.input_height, model.input_width))
    dims = images[0].size
    import keras

    print(f"{len(images)} held-out {args.data} images (train[90%:]), {size[0]}x{size[1]}; "
          f"{type(model).__name__} {model.likelihood}, {model.dec_attention_type}, "
          f"d {model.hidden_size}, {model.num_decoder_layers} layers; "
          f"KERAS_BACKEND={keras.backend.backend()}; batch {args.batch_size}")
    t2t = measure_t2t(model, fingerprint, images, labels, inputs, args.batch_size,
                      args.compare_sampler)
    rows = [("model's own bits/dim (ideal coder)", t2t["model_bits"].sum() / (dims * len(images)),
             t2t["model_bits"].mean() / dims, None, None),
            ("t2t-image-compress (one file)", 8 * t2t["file_bytes"] / (dims * len(images)),
             None, t2t["encode"], t2t["decode"]),
            ("t2t-image-compress (per image)", 8 * t2t["per_image_bytes"].sum() /
             (dims * len(images)), 8 * t2t["per_image_bytes"].mean() / dims, None, None)]
    if hasattr(model, "input_height"):  # the two-part code: + the raw low-resolution input
        raw = 8 * model.input_height * model.input_width * model.num_channels
        rows.insert(1, ("model's own + the raw low-resolution input",
                        (t2t["model_bits"].sum() + raw * len(images)) / (dims * len(images)),
                        (t2t["model_bits"].mean() + raw) / dims, None, None))
    per_image = {"t2t_per_image_bytes": t2t["per_image_bytes"].tolist(),
                 "model_bits": t2t["model_bits"].tolist()}
    for name, (encode, decode) in classical_codecs().items():
        sizes, enc, dec = measure_classical(images, encode, decode)
        rows.append((name, 8 * sizes.sum() / (dims * len(images)), 8 * sizes.mean() / dims, enc,
                     dec))
        per_image[name] = sizes.tolist()
    print(f"(t2t-image-compress compiled its loop in {t2t['compile_s']:.1f} s first)")
    if t2t["sampler"] is not None:
        print(f"(the cached sampler, same batch: {t2t['sampler']:.3g} images/s)")
    print(f"| codec | bits/dim, set | bits/dim, mean per file | encode images/s | "
          f"decode images/s |\n|---|---:|---:|---:|---:|")
    for name, total, mean, enc, dec in rows:
        cell = (lambda v, f: "" if v is None else format(v, f))
        print(f"| {name} | {total:.3f} | {cell(mean, '.3f')} | {cell(enc, '.3g')} | "
              f"{cell(dec, '.3g')} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(per_image, f)


if __name__ == "__main__":
    main()
