"""Image grids of samples: arrays, PNG files, and the trainer's TensorBoard grid.

The super-resolution layout (input | samples | original per row) lives in
``t2t_image.evaluation.sample_grid``; this module lays out any batch of images.
"""

import math
import os

import numpy as np

# Tiles of written grids are scaled up (nearest neighbour) to at least this many pixels:
# an 8x8 or 32x32 sample cannot be judged at its own size.
VIEWABLE_TILE = 128


def upscale_factor(height, width, min_tile_size):
    """The integer nearest-neighbour factor that makes a tile at least ``min_tile_size`` px."""
    if not min_tile_size:
        return 1
    return max(1, math.ceil(min_tile_size / max(1, min(height, width))))


def image_grid(images, num_columns=None, padding=2, pad_value=255, min_tile_size=None):
    """Tiles a batch of images into one image, row by row.

    Image ``i`` goes to grid row ``i // num_columns``, column
    ``i % num_columns``; tiles are separated and surrounded by ``padding``
    pixels of ``pad_value``; missing tiles of the last row are ``pad_value``.
    The layout of the paper's sample figures (Parmar et al. 2018, Fig. 3-5).

    Args:
        images: integer array `[n, height, width, channels]` with values in 0..255
            (channels 1 or 3).
        num_columns: int > 0, tiles per row (default: ceil(sqrt(n))).
        padding: int >= 0, pixels between tiles.
        pad_value: int in 0..255, value of the padding pixels.
        min_tile_size: None, or int: each image is first scaled up by the
            smallest integer factor ``s`` (nearest neighbour, every pixel an
            ``s x s`` block) that makes it at least this many pixels high and
            wide; ``height``/``width`` below are then the scaled sizes.

    Returns:
        uint8 array `[rows * (height + padding) + padding,
        num_columns * (width + padding) + padding, channels]`.

    Raises:
        ValueError: on a bad shape, value range or argument.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must have shape [n > 0, height, width, 1 or 3], got shape {images.shape}."
        )
    if images.size and (images.min() < 0 or images.max() > 255):
        raise ValueError(
            f"images must have values in 0..255, got [{images.min()}, {images.max()}]."
        )
    factor = upscale_factor(images.shape[1], images.shape[2], min_tile_size)
    if factor > 1:
        images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
    n, height, width, channels = images.shape
    if num_columns is None:
        num_columns = math.ceil(math.sqrt(n))
    if isinstance(num_columns, bool) or not isinstance(num_columns, (int, np.integer)) \
            or num_columns <= 0:
        raise ValueError(f"num_columns must be a positive int, got {num_columns!r}.")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}.")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value!r}.")
    num_columns = min(int(num_columns), n)
    num_rows = math.ceil(n / num_columns)
    grid = np.full((num_rows * (height + padding) + padding,
                    num_columns * (width + padding) + padding, channels), pad_value, np.uint8)
    for i in range(n):
        top = padding + (i // num_columns) * (height + padding)
        left = padding + (i % num_columns) * (width + padding)
        grid[top:top + height, left:left + width] = images[i]
    return grid


def png_bytes(grid):
    """The PNG encoding of a uint8 image ``[height, width, 1 or 3]`` (e.g. a grid)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_grid(path, images, num_columns=None, padding=2, pad_value=255,
                     min_tile_size=None):
    """Writes ``image_grid(images, ...)`` as a PNG file and returns the grid.

    The sample figures of Parmar et al. 2018 (Fig. 3-5) as PNG files. The
    file appears whole or not at all (written beside it, then renamed).

    Args:
        path: file to write; parent folders are created.
        images, num_columns, padding, pad_value, min_tile_size: as in ``image_grid``.

    Returns:
        The uint8 grid that was written.
    """
    grid = image_grid(images, num_columns, padding, pad_value, min_tile_size)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(png_bytes(grid))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return grid


def _first_batch(dataset, num_samples):
    batch = next(iter(dataset))
    return {k: np.asarray(v)[:num_samples] for k, v in batch.items()}


def sample_grid_for_summary(model, num_samples, seed=0, eval_dataset=None, temperature=1.0,
                            decode=None, min_tile_size=VIEWABLE_TILE):
    """A grid of fresh samples for TensorBoard during training.

    Class-conditional models sample the labels of the first ``eval_dataset``
    batch (classes ``0, 1, ...`` without a dataset); encoder-decoder models
    (features ``inputs``) condition on its inputs, and then need the dataset.
    Uses the cached sampler (``t2t_image.sampling.sample``). T2T writes
    decoded images to TensorBoard with ``image_summary`` the same way;
    Parmar et al. 2018, Sec. 5 (samples).

    Args:
        model: an ``ImageTransformer`` (or subclass).
        num_samples: int, number of images.
        seed: int, sampling seed (e.g. the training step).
        eval_dataset: optional ``tf.data.Dataset`` of feature dicts.
        temperature: float >= 0.
        decode: optional function from samples to images (a prior over code
            grids: the first stage's decoder).
        min_tile_size: as in ``image_grid`` (default: viewable tiles of >= 128 px).

    Returns:
        uint8 grid `[height, width, channels]` (see ``image_grid``).
    """
    from t2t_image.sampling.sampler import sample

    batch = _first_batch(eval_dataset, num_samples) if eval_dataset is not None else {}
    labels = inputs = None
    if getattr(model, "num_classes", None) is not None:
        labels = batch.get("labels")
        if labels is None:
            labels = np.arange(num_samples) % model.num_classes
        labels = np.asarray(labels).reshape(-1)
    if hasattr(model, "input_height"):  # encoder-decoder (Img2Img): needs low-res inputs
        if "inputs" not in batch:
            raise ValueError("sampling an encoder-decoder model needs eval_dataset batches "
                             "with 'inputs'.")
        inputs = batch["inputs"]
    n = num_samples
    for array in (labels, inputs):
        if array is not None:
            n = min(n, len(array))
    labels = None if labels is None else labels[:n]
    inputs = None if inputs is None else inputs[:n]
    images = sample(model, n, temperature=temperature, seed=int(seed), labels=labels,
                    inputs=inputs)
    if decode is not None:
        images = decode(images)
    return image_grid(images, min_tile_size=min_tile_size)
