"""Evaluation of a super-resolution model: bits/dim, consistency and sample grids.

Image Transformer (Parmar et al. 2018), Section 5.3 and Table 5: the
negative log-likelihood of the high-resolution targets given the
low-resolution inputs, samples at temperatures 1.0, 0.9 and 0.8, and the
consistency metric of Dahl et al. 2017 ("Pixel Recursive Super Resolution").

Sampling is not done here: the functions that need samples take a
``sample_fn(inputs, temperature, seed)`` callable returning uint8 images
`[batch, height, width, channels]`; `make_sample_fn` builds one on
``t2t_image.sampling``.
"""

import math
import os

import keras
import numpy as np

from t2t_image.ops.image_metrics import psnr
from t2t_image.training.preemption import raise_if_stop_requested

DEFAULT_TEMPERATURES = (1.0, 0.9, 0.8)


# ------------------------------------------------------------------ helpers
def _as_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _check_images(name, images, rank=4):
    images = np.asarray(images)
    if images.ndim != rank:
        raise ValueError(
            f"{name} must be images [batch, height, width, channels], got shape "
            f"{images.shape}."
        )
    return images


def downsampling_factor(low_res_shape, high_res_shape):
    """Integer factor between a low-res and a high-res image shape.

    Args:
        low_res_shape: `[..., h, w, channels]`.
        high_res_shape: `[..., H, W, channels]`.

    Returns:
        int ``f`` with ``H == f * h`` and ``W == f * w``.

    Raises:
        ValueError: if the sizes are not the same integer multiple, or the
            channels differ.
    """
    h, w, c = tuple(low_res_shape)[-3:]
    hh, ww, cc = tuple(high_res_shape)[-3:]
    if c != cc or h <= 0 or w <= 0 or hh % h or ww % w or hh // h != ww // w:
        raise ValueError(
            "the high-resolution images must be the low-resolution ones enlarged by "
            f"one integer factor in both directions with the same channels, got "
            f"low-res {h}x{w}x{c} and high-res {hh}x{ww}x{cc}."
        )
    return hh // h


def box_downsample(images, factor):
    """Area (box) downsampling: the mean of each ``factor x factor`` block.

    For an integer factor this is exactly TF's ``tf.image.resize(...,
    method="area")`` and Pillow's ``Image.BOX`` resize, the downsampling that
    makes the low-resolution inputs of the data pipeline. No rounding.

    Args:
        images: array `[batch, H, W, channels]` (any numeric dtype).
        factor: int >= 1 dividing H and W.

    Returns:
        float64 array `[batch, H // factor, W // factor, channels]` on the scale
        of ``images``.
    """
    images = _check_images("images", images)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive int, got factor={factor!r}.")
    n, height, width, channels = images.shape
    if height % factor or width % factor:
        raise ValueError(
            f"factor={factor} must divide the image size, got {height}x{width}."
        )
    blocks = images.astype(np.float64).reshape(
        n, height // factor, factor, width // factor, factor, channels
    )
    return blocks.mean(axis=(2, 4))


def nearest_upsample(images, factor):
    """Nearest-neighbour upsampling (each pixel becomes a ``factor x factor`` block).

    Args:
        images: array `[batch, h, w, channels]`.
        factor: int >= 1.

    Returns:
        Array `[batch, h * factor, w * factor, channels]` of the same dtype.
    """
    images = _check_images("images", images)
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive int, got factor={factor!r}.")
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


# -------------------------------------------------------------- consistency
def consistency(low_res, samples):
    """Consistency of super-resolved samples with their low-resolution inputs.

    Each sample is box-downsampled to the input size (`box_downsample`: mean
    over ``factor x factor`` blocks, i.e. TF's area resize for an integer
    factor, the downsampling that makes the inputs) and compared with the
    input, both scaled to [0, 1] (divided by 255). The distance of one image
    is the mean over all its pixels *and channels* of the squared difference
    (an MSE). Reading chosen as the paper-faithful one: the Image Transformer
    (Section 5.3) reports this "mean L2 distance ... on a [0, 1] scale"
    (0.01) next to the Pixel Recursive Super Resolution model, and the metric
    comes from Dahl et al. 2017, who measure it as a mean squared error
    between the low-resolution input and the downsampled output. It is not
    the Euclidean norm over a pixel's three channels (a different scale:
    that norm of a 0.1 error in every channel is 0.17, this metric 0.01).
    No rounding of the downsampled sample.

    Args:
        low_res: uint8 (or 0..255) array `[batch, h, w, channels]`.
        samples: uint8 (or 0..255) array `[batch, f * h, f * w, channels]`.

    Returns:
        float64 array `[batch]`: the per-image consistency (lower is better;
        average it over a data set for the reported number).
    """
    return consistency_after(low_res, samples, box_downsample)


def consistency_after(low_res, samples, downsample):
    """``consistency`` with another downsampling: ``downsample(samples, factor)``
    returns the samples at the input size on their 0..255 scale."""
    low_res = _check_images("low_res", low_res)
    samples = _check_images("samples", samples)
    if low_res.shape[0] != samples.shape[0]:
        raise ValueError(
            f"low_res and samples must hold the same number of images, got "
            f"{low_res.shape[0]} and {samples.shape[0]}."
        )
    factor = downsampling_factor(low_res.shape, samples.shape)
    down = downsample(samples, factor) / 255.0
    diff = down - low_res.astype(np.float64) / 255.0
    return np.mean(np.square(diff).reshape(diff.shape[0], -1), axis=1)


# ---------------------------------------------------------------------- NLL
def _features(batch):
    if not isinstance(batch, dict) or "inputs" not in batch or "targets" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            "each batch must be a dict with 'inputs' (low-res) and 'targets' "
            f"(high-res) images, got {keys}."
        )
    return {"inputs": batch["inputs"], "targets": batch["targets"]}


def _log_prob_fn(model):
    fn = lambda features: model.log_prob(features, training=False)  # noqa: E731
    if keras.backend.backend() == "tensorflow":
        # TF-only: compile the forward pass once per input signature (an eager
        # pass over a whole evaluation set is several times slower).
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True)
    return fn


class _NllTotal:
    """Running sum of nats over images of one size."""

    def __init__(self, model):
        self.log_prob = _log_prob_fn(model)
        self.nats, self.num_images, self.num_dims = 0.0, 0, None

    def add(self, features):
        lp = _as_numpy(self.log_prob(features)).astype(np.float64)
        dims = int(np.prod(np.shape(features["targets"])[1:]))
        if self.num_dims is not None and dims != self.num_dims:
            raise ValueError(
                f"targets changed size between batches: {dims} vs {self.num_dims} dims."
            )
        self.num_dims = dims
        self.nats -= float(lp.sum())
        self.num_images += lp.shape[0]

    def bits_per_dim(self):
        if self.num_images == 0:
            raise ValueError("batches yielded no images to evaluate.")
        return self.nats / (self.num_images * self.num_dims * math.log(2.0))


def nll_bits_per_dim(model, batches, max_batches=None):
    """Negative log-likelihood of the targets given the inputs, in bits per dimension.

    The mean over every image of the set: total nats over all images divided
    by ``num_images * image_height * image_width * channels * ln 2`` (not a
    mean of batch means, so a short last batch counts for its images only).
    Image Transformer, Section 5.3 / Table 5 (T2T's eval metric
    ``neg_log_perplexity`` converted to bits).

    Args:
        model: an `Img2ImgTransformer` (anything with ``log_prob(features,
            training)`` returning per-image log-likelihoods in nats).
        batches: iterable (e.g. a `tf.data.Dataset`) of dicts with ``inputs``
            `[batch, h, w, c]` and ``targets`` `[batch, H, W, c]`.
        max_batches: int or None, stop after this many batches.

    Returns:
        Python float, bits per dimension (`evaluate_super_resolution` also
        reports the number of images).
    """
    total = _NllTotal(model)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        total.add(_features(batch))
    return total.bits_per_dim()


def shuffled_inputs(features):
    """The batch with each image's input replaced by the next image's (rolled by one).

    Scoring it against ``features`` shows how much the model uses its input:
    a model that ignores the low-resolution image scores both alike.
    """
    return dict(features, inputs=np.roll(_as_numpy(features["inputs"]), 1, axis=0))


def upsample_baselines(low_res, size):
    """Nearest and bicubic upsampling (Pillow) of uint8 images to ``size`` x ``size``."""
    from PIL import Image

    out = {"nearest": [], "bicubic": []}
    for image in np.asarray(low_res, np.uint8):
        for name, method in (("nearest", Image.NEAREST), ("bicubic", Image.BICUBIC)):
            out[name].append(np.asarray(Image.fromarray(image).resize((size, size), method)))
    return {name: np.stack(images) for name, images in out.items()}


def _mean_psnr(images, originals):
    # Identical images have infinite PSNR; cap at 100 dB so a mean stays finite.
    return float(np.minimum(_as_numpy(psnr(images, originals)), 100.0).mean())


# --------------------------------------------------------------------- grid
def sample_grid(low_res, samples, originals, padding=2, pad_value=255, min_tile_size=None):
    """Lays out one row per example: input, samples, original.

    Columns, left to right: the low-resolution input enlarged by
    nearest-neighbour upsampling to the high-resolution size (for display
    only), then one column per entry of ``samples`` in its order (e.g.
    temperatures 1.0, 0.9, 0.8), then the original high-resolution image.
    Tiles are separated (and surrounded) by ``padding`` pixels of
    ``pad_value``. As the paper's super-resolution figures (Section 5.3).

    Args:
        low_res: uint8 `[n, h, w, c]`.
        samples: sequence of uint8 `[n, H, W, c]` arrays (one per column), or
            a dict {temperature: array} (its order is kept).
        originals: uint8 `[n, H, W, c]`.
        padding: int >= 0, pixels between tiles.
        pad_value: int, value of the padding pixels.
        min_tile_size: None, or scale every tile up to at least this many
            pixels (``t2t_image.sampling.image_grid``; H and W below are then
            the scaled sizes).

    Returns:
        uint8 array `[n * (H + padding) + padding, k * (W + padding) + padding, c]`
        with ``k = len(samples) + 2`` columns.
    """
    from t2t_image.sampling.grids import image_grid

    low_res = _check_images("low_res", low_res)
    originals = _check_images("originals", originals)
    columns = list(samples.values()) if isinstance(samples, dict) else list(samples)
    columns = [_check_images("samples", s) for s in columns]
    factor = downsampling_factor(low_res.shape, originals.shape)
    tiles = [nearest_upsample(low_res, factor)] + columns + [originals]
    for tile in tiles:
        if tile.shape != originals.shape:
            raise ValueError(
                f"every column must have shape {originals.shape} (the originals'), got "
                f"{tile.shape}."
            )
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got padding={padding!r}.")
    rows = np.stack([np.clip(t, 0, 255) for t in tiles], axis=1)  # [n, k, H, W, c]
    return image_grid(rows.reshape((-1,) + originals.shape[1:]), num_columns=len(tiles),
                      padding=int(padding), pad_value=pad_value, min_tile_size=min_tile_size)


def write_sample_grid(path, low_res, samples, originals, padding=2, pad_value=255,
                      min_tile_size=None):
    """Writes `sample_grid` as a PNG file (whole or not at all) and returns the grid.

    Args:
        path: file path to write (parent folders are created).
        low_res, samples, originals, padding, pad_value, min_tile_size: as in
            `sample_grid`.

    Returns:
        The uint8 grid array that was written.
    """
    from t2t_image.sampling.grids import write_image_grid

    grid = sample_grid(low_res, samples, originals, padding, pad_value, min_tile_size)
    return write_image_grid(path, grid[None], num_columns=1, padding=0)


# ----------------------------------------------------------------- sampling
def make_sample_fn(model, sampler="fast", **sampler_kwargs):
    """A ``sample_fn(inputs, temperature, seed)`` built on ``t2t_image.sampling``.

    Args:
        model: a built `Img2ImgTransformer`.
        sampler: "fast" (``t2t_image.sampling.sample``, cached decoding) or
            "reference" (``reference_sample``, one full pass per sub-pixel).
        **sampler_kwargs: passed on to the sampler (e.g. ``jit_compile``).

    Returns:
        Callable ``(inputs, temperature, seed) -> uint8 [batch, H, W, c]``
        drawing one high-resolution sample per low-resolution input.
    """
    from t2t_image import sampling

    samplers = {"fast": sampling.sample, "reference": sampling.reference_sample}
    if sampler not in samplers:
        raise ValueError(f"sampler must be one of {sorted(samplers)}, got {sampler!r}.")
    draw = samplers[sampler]

    def sample_fn(inputs, temperature, seed):
        inputs = np.asarray(inputs)
        out = draw(model, len(inputs), temperature=temperature, seed=seed, inputs=inputs,
                   **sampler_kwargs)
        return np.asarray(out).astype(np.uint8)

    return sample_fn


# ------------------------------------------------------------- everything
def evaluate_super_resolution(
    model,
    batches,
    sample_fn=None,
    temperatures=DEFAULT_TEMPERATURES,
    seed=0,
    max_batches=None,
    sample_batches=1,
    grid_path=None,
    grid_examples=8,
    min_tile_size=None,
):
    """Evaluates a super-resolution model in one pass over ``batches``.

    Computes the NLL in bits/dim over every batch (`nll_bits_per_dim`); for
    the first ``sample_batches`` batches draws samples at each temperature
    with ``sample_fn`` and measures their `consistency` with the inputs; and,
    with ``grid_path``, writes a PNG `sample_grid` of the first
    ``grid_examples`` sampled examples. Image Transformer, Section 5.3.

    Args:
        model: an `Img2ImgTransformer`.
        batches: iterable of dicts with ``inputs`` and ``targets``.
        sample_fn: callable ``(inputs, temperature, seed) -> uint8 images``
            `[batch, H, W, c]` (``inputs`` is a NumPy array), or None to skip
            sampling.
        temperatures: sequence of sampling temperatures.
        seed: int, the seed of batch ``i`` is ``seed + i``.
        max_batches: int or None, batches to use for the NLL.
        sample_batches: int, leading batches to sample (sampling is slow).
        grid_path: path of the PNG grid, or None.
        grid_examples: int, rows of the grid.
        min_tile_size: None or int, scale the grid's tiles up to at least this
            many pixels (``t2t-image-trainer --mode=eval_sr`` uses 128).

    Returns:
        dict with ``bits_per_dim`` (float), ``num_images`` (int),
        ``bits_per_dim_shuffled_inputs`` (the same targets scored with the inputs
        of other images, ``shuffled_inputs``; None for batches of one),
        ``consistency`` ({temperature: mean over the sampled images}),
        ``psnr`` ({temperature: mean PSNR in dB of the samples against the
        originals}), ``psnr_baselines`` (nearest and bicubic upsampling of the
        same inputs against the originals), ``num_sampled`` (int) and
        ``grid_path`` (str or None).
    """
    if sample_fn is None and grid_path is not None:
        raise ValueError("grid_path needs a sample_fn to draw the samples, got sample_fn=None.")
    temperatures = tuple(float(t) for t in temperatures)
    total, shuffled = _NllTotal(model), _NllTotal(model)
    distances = {t: [] for t in temperatures}
    fidelity = {t: [] for t in temperatures}
    grid_parts = {"low_res": [], "originals": [], "samples": {t: [] for t in temperatures}}
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        # SIGINT/SIGTERM (t2t_image.training.preemption): stop between batches, write nothing.
        raise_if_stop_requested("Stopped the super-resolution evaluation; nothing was written.")
        features = _features(batch)
        total.add(features)
        if len(features["targets"]) > 1:
            shuffled.add(shuffled_inputs(features))
        if sample_fn is None or i >= sample_batches:
            continue
        low_res = _as_numpy(features["inputs"])
        originals = _as_numpy(features["targets"])
        for t in temperatures:
            samples = np.asarray(sample_fn(low_res, t, seed + i))
            if samples.shape != originals.shape:
                raise ValueError(
                    f"sample_fn returned shape {samples.shape}, expected the targets' "
                    f"{originals.shape}."
                )
            distances[t].append(consistency(low_res, samples))
            fidelity[t].append(_as_numpy(psnr(samples, originals)))
            grid_parts["samples"][t].append(samples)
        grid_parts["low_res"].append(low_res)
        grid_parts["originals"].append(originals)
    result = {
        "bits_per_dim": total.bits_per_dim(),
        "num_images": total.num_images,
        "bits_per_dim_shuffled_inputs": shuffled.bits_per_dim() if shuffled.num_images else None,
        "consistency": {},
        "psnr": {},
        "psnr_baselines": {},
        "num_sampled": 0,
        "grid_path": None,
    }
    if sample_fn is not None and grid_parts["low_res"]:
        result["consistency"] = {t: float(np.concatenate(d).mean()) for t, d in distances.items()}
        result["psnr"] = {t: float(np.minimum(np.concatenate(v), 100.0).mean())
                          for t, v in fidelity.items()}
        low_res = np.concatenate(grid_parts["low_res"])
        originals = np.concatenate(grid_parts["originals"])
        result["psnr_baselines"] = {
            name: _mean_psnr(images, originals)
            for name, images in upsample_baselines(low_res, originals.shape[1]).items()}
        result["num_sampled"] = int(sum(len(x) for x in grid_parts["low_res"]))
        if grid_path is not None:
            k = grid_examples
            write_sample_grid(
                grid_path,
                np.concatenate(grid_parts["low_res"])[:k],
                [np.concatenate(grid_parts["samples"][t])[:k] for t in temperatures],
                np.concatenate(grid_parts["originals"])[:k],
                min_tile_size=min_tile_size,
            )
            result["grid_path"] = os.fspath(grid_path)
    return result
