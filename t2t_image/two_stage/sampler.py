"""Sampling images from a two-stage model: a prior over code grids, then the first stage's decoder.

Code grids of the prior's training size come from the cached sampler
(``t2t_image.sampling.sample``); larger grids from sliding-window sampling
(``sample_sliding_window``, Esser et al. 2021, Sec. 3.2 and Fig. 4), where each
code is drawn from the prior run on the training-size window around it. The
first stage's convolutional decoder turns a grid of any size into an image
``downsample_factor`` times larger.
"""

import numpy as np

from t2t_image.sampling import sample
from t2t_image.sampling.sliding_window import sample_sliding_window

UNITS = ("codes", "pixels")


def check_two_stage(prior, first_stage):
    """Checks that ``prior`` models the code grids of ``first_stage``; raises ValueError."""
    if not hasattr(first_stage, "images_from_codes"):
        raise ValueError(f"the first stage must be a VQAutoencoder, got {type(first_stage).__name__}.")
    if getattr(prior, "likelihood", None) != "cat" or getattr(prior, "num_channels", None) != 1:
        raise ValueError("the prior of a two-stage model must be an ImageTransformer with "
                         "likelihood='cat' and num_channels=1 (one position per code), got "
                         f"likelihood={getattr(prior, 'likelihood', None)!r}, num_channels="
                         f"{getattr(prior, 'num_channels', None)!r}.")
    if prior.vocab_size != first_stage.codebook_size:
        raise ValueError(f"the prior's vocab_size={prior.vocab_size} differs from the first "
                         f"stage's codebook_size={first_stage.codebook_size}.")


def grid_size(first_stage, height, width, units="codes"):
    """A requested output size in codes or pixels -> (code rows, code columns)."""
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")
    if units == "codes":
        return int(height), int(width)
    f = first_stage.downsample_factor
    if height % f or width % f:
        raise ValueError(f"an image of {height}x{width} pixels is not a whole code grid: the "
                         f"first stage downsamples by {f}; use multiples of {f}.")
    return height // f, width // f


def sample_two_stage(prior, first_stage, num_samples, height=None, width=None, seed=0,
                     temperature=1.0, top_k=None, labels=None, jit_compile=True,
                     window_stride=(1, 1)):
    """Samples code grids from ``prior`` and decodes them with ``first_stage``.

    Args:
        prior: a built code prior (``ImageTransformer`` with ``num_channels=1``,
            ``vocab_size = first_stage.codebook_size``).
        first_stage: a built ``VQAutoencoder``.
        num_samples: int.
        height, width: the code grid to sample (None: the prior's training
            grid); larger grids are sampled with a sliding window.
        seed: int; temperature: float >= 0 (0: argmax); top_k: None or int.
        labels: int `[num_samples]` for a class-conditional prior.
        jit_compile: XLA-compile the sampling loop.
        window_stride: (rows, cols), the sliding window's step in codes beyond
            the training grid (``sample_sliding_window``).

    Returns:
        ``(images, codes)``: int32 `[n, height * f, width * f, 3]` in 0..255
        and int32 `[n, height, width]`.
    """
    check_two_stage(prior, first_stage)
    height = prior.image_height if height is None else int(height)
    width = prior.image_width if width is None else int(width)
    if height < prior.image_height or width < prior.image_width:
        raise ValueError(f"a {height}x{width} code grid is smaller than the prior's "
                         f"{prior.image_height}x{prior.image_width} training grid.")
    if (height, width) == (prior.image_height, prior.image_width):
        codes = sample(prior, num_samples, temperature=temperature, seed=seed, labels=labels,
                       top_k=top_k, jit_compile=jit_compile)
    else:
        codes = sample_sliding_window(prior, num_samples, height, width, seed=seed,
                                      temperature=temperature, top_k=top_k, labels=labels,
                                      jit_compile=jit_compile, window_stride=window_stride)
    codes = np.asarray(codes, np.int32)[..., 0]
    images = np.asarray(first_stage.images_from_codes(codes), np.int32)
    return images, codes
