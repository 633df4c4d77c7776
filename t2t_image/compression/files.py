"""Files in and out of ``t2t-image-compress`` / ``t2t-image-decompress``.

Image files (PNG, JPEG, anything Pillow reads) and ``.npz`` arrays in;
``.t2tc`` files out, and back to PNGs or an ``.npz``. Every output is written
whole or not at all (a temporary file renamed into place), and only after all
of a call's inputs were read and coded, so a refused or failed call leaves no
output file. Not a T2T feature.
"""

import os
import zipfile

import numpy as np

SUFFIX = ".t2tc"
_NPZ_IMAGE_KEYS = ("images", "x", "x32", "targets", "samples")
_NPZ_LABEL_KEYS = ("labels", "y", "label")
_NPZ_INPUT_KEYS = ("inputs", "x8", "low_res")


def read_images(paths):
    """Images from image files and ``.npz`` files: ``(images, labels, names)``.

    Args:
        paths: list of str. An ``.npz`` holds the images under one of
            ``images, x, x32, targets, samples`` (or as its only array) and
            may hold labels (``labels``, ``y``); other files are read with
            Pillow as RGB.

    Returns:
        ``(images, labels, inputs, names)``: uint8 `[n, h, w, 3]`, int64
        `[n]` or None (labels only when every image has one), the
        low-resolution inputs of super-resolution pairs (an ``.npz``'s
        ``inputs``, ``x8`` or ``low_res``; only when every image has one) or
        None, and a name per image (the file's stem, plus ``_i`` for the
        images of an ``.npz``).

    Raises:
        ValueError: a missing or unreadable file, images of different sizes.
    """
    from t2t_image.sampling.files import read_image

    images, labels, inputs, names = [], [], [], []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file.")
        stem = os.path.splitext(os.path.basename(path))[0]
        if path.endswith(".npz"):
            batch, batch_labels, batch_inputs = _read_npz(path)
            images += list(batch)
            labels += list(batch_labels) if batch_labels is not None else [None] * len(batch)
            inputs += list(batch_inputs) if batch_inputs is not None else [None] * len(batch)
            names += [f"{stem}_{i}" for i in range(len(batch))]
            continue
        images.append(read_image(path, flag=None))
        labels.append(None)
        inputs.append(None)
        names.append(stem)
    if not images:
        raise ValueError("no images given.")
    sizes = sorted({image.shape for image in images})
    if len(sizes) > 1:
        raise ValueError(f"the images have different sizes {sizes}; give images of the model's "
                         "size only.")
    known = None if any(label is None for label in labels) else np.array(labels, np.int64)
    pairs = None if any(x is None for x in inputs) else np.stack(inputs)
    return np.stack(images), known, pairs, names


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = next((k for k in _NPZ_IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1
                       else None)
            if key is None:
                raise ValueError(f"{path}: no image array (named one of {_NPZ_IMAGE_KEYS}) among "
                                 f"{keys}.")
            images = data[key]
            label_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
            labels = None if label_key is None else data[label_key]
            input_key = next((k for k in _NPZ_INPUT_KEYS if k in keys and k != key), None)
            inputs = None if input_key is None else data[input_key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if "no image array" in str(e):
            raise
        raise ValueError(f"{path}: not a readable .npz ({e}).") from e
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.integer) or images.size == 0 \
            or images.min() < 0 or images.max() > 255:
        raise ValueError(f"{path}: {key!r} must be 8-bit images [n, h, w, c], got "
                         f"{images.dtype} {list(images.shape)}.")
    if labels is not None and labels.shape != (len(images),):
        labels = None
    if inputs is not None and (inputs.ndim != 4 or len(inputs) != len(images)):
        inputs = None
    return images.astype(np.uint8), labels, inputs


def write_whole(path, data):
    """Writes ``data`` (bytes) to ``path`` via a temporary file renamed into place."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_folder(path):
    """Whether an output path names a folder (exists as one, or ends with a separator)."""
    return os.path.isdir(path) or path.endswith(os.sep)


def output_paths(output, names, suffix):
    """One output file per name inside folder ``output``."""
    return [os.path.join(output, name + suffix) for name in names]


def check_new(paths, overwrite):
    """Raises ValueError if any of ``paths`` exists (unless ``overwrite``)."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists" + (f" (and {len(existing) - 1} more)"
                                                    if len(existing) > 1 else "")
                         + ": pass --overwrite to replace it.")


def compress_files(model, paths, output, label=None, batch_size=32, fingerprint=None,
                   overwrite=False):
    """Compresses image files into one ``.t2tc`` file or one per image (folder ``output``).

    Args:
        model: the model.
        paths: list of image or ``.npz`` files.
        output: a file (all images, coded in batches) or a folder (one file
            per image, each coded alone so that it decodes alone).
        label: int for every image of a class-conditional model (default:
            the labels of the ``.npz``).
        batch_size: int, images coded together.
        fingerprint: hex string, the model's content fingerprint.
        overwrite: bool, replace existing outputs.

    Returns:
        dict: ``files`` (written paths), ``bytes`` (their sizes), ``images``
        (count), ``dims`` (sub-pixels per image), ``model_bits`` (float
        `[n]`).
    """
    from t2t_image.compression import codec  # Keras: imported once images are read
    from t2t_image.sampling.common import needs_inputs

    images, labels, inputs, names = read_images(paths)
    if not needs_inputs(model):
        inputs = None  # an .npz's inputs only matter to super-resolution models
    if label is not None:
        labels = np.full((len(images),), int(label), np.int64)
    fingerprint = fingerprint or codec.weights_fingerprint(model)
    if is_folder(output):
        targets = output_paths(output, names, SUFFIX)
        if len(set(targets)) != len(targets):
            raise ValueError("two inputs have the same name; compress them into one file.")
        groups = [slice(i, i + 1) for i in range(len(images))]
    else:
        targets, groups = [output], [slice(0, len(images))]
    check_new(targets, overwrite)
    blobs, bits = [], []
    for group in groups:
        stats = {}
        blobs.append(codec.compress(model, images[group],
                                    None if labels is None else labels[group], fingerprint,
                                    batch_size, stats, None if inputs is None else inputs[group]))
        bits.append(stats["model_bits"])
    for path, blob in zip(targets, blobs):
        write_whole(path, blob)
    return dict(files=targets, bytes=[len(b) for b in blobs], images=len(images),
                dims=int(np.prod(images.shape[1:])), model_bits=np.concatenate(bits))


def decompress_files(model, paths, output, fingerprint=None, allow_other_versions=False,
                     overwrite=False):
    """Decompresses ``.t2tc`` files into PNGs (a folder or one ``.png``) or one ``.npz``.

    Every file and the output are checked before the first file is decoded,
    and every file is decoded and checked before anything is written.

    Args:
        model: the model that compressed them.
        paths: list of ``.t2tc`` files.
        output: a ``.npz`` (``images`` and, when stored, ``labels``), a
            ``.png`` (exactly one image) or a folder (``NAME.png`` per
            single-image file, ``NAME_i.png`` otherwise).
        fingerprint: hex string, the model's content fingerprint.
        allow_other_versions: bool, see ``codec.decompress``.
        overwrite: bool, replace existing outputs.

    Returns:
        dict: ``files`` (written paths), ``images`` (count).
    """
    from t2t_image.compression import codec

    fingerprint = fingerprint or codec.weights_fingerprint(model)
    contents, names = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file.")
        with open(path, "rb") as f:
            contents.append(f.read())
        # Every file is checked before the first is decoded (minutes, for many images).
        count = len(codec.check_file(model, contents[-1], fingerprint, path,
                                     allow_other_versions)[1])
        stem = os.path.splitext(os.path.basename(path))[0]
        names += [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]
    if output.endswith(".npz"):
        targets = [output]
    elif is_folder(output):
        targets = output_paths(output, names, ".png")
    elif output.endswith(".png"):
        if len(names) != 1:
            raise ValueError(f"--output={output} is one PNG but the files hold {len(names)} "
                             "images: give a folder or an .npz.")
        targets = [output]
    else:
        raise ValueError(f"--output={output}: give a folder, a .png or an .npz.")
    check_new(targets, overwrite)
    decoded = [codec.decompress(model, data, fingerprint, path, allow_other_versions)
               for path, data in zip(paths, contents)]
    images = np.concatenate([d[0] for d in decoded])
    if output.endswith(".npz"):
        import io

        buffer = io.BytesIO()
        arrays = dict(images=images)
        if all(d[1] is not None for d in decoded):
            arrays["labels"] = np.concatenate([d[1] for d in decoded])
        np.savez(buffer, **arrays)
        write_whole(output, buffer.getvalue())
    else:
        for path, image in zip(targets, images):
            write_whole(path, _png(image))
    return dict(files=targets, images=len(images))


def _png(image):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()
