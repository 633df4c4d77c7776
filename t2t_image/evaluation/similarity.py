"""Super-resolution metrics of the paper's Section 5.3 beyond `super_resolution`.

* `bicubic_consistency`: consistency as the Image Transformer paper defines it
  (the sample downsampled *bicubically* to the input size, mean squared error
  on a [0, 1] scale), next to `consistency`'s box (area) downsampling, which is
  the downsampling that made the inputs.
* `ms_ssim` and `nearest_training_ms_ssim`: the paper's copying check, the
  MS-SSIM between a sample and the training image whose low-resolution version
  is nearest (L2) to the sample's own downsampled version (paper: 44.3 on 50
  CelebA validation samples, i.e. 0.443 on the 0..1 scale returned here).

MS-SSIM at 32x32: ``tf.image.ssim_multiscale``'s defaults (5 scales, 11-pixel
Gaussian filter) need images of at least 176 pixels. Here the first three of
its power factors are used, renormalised to sum to 1, with a 3-pixel filter
(32 -> 16 -> 8 pixels; the filter fits the coarsest scale). Numbers are
therefore not the 5-scale MS-SSIM of larger images.
"""

import numpy as np

from t2t_image.evaluation.super_resolution import _check_images
from t2t_image.evaluation.super_resolution import box_downsample
from t2t_image.evaluation.super_resolution import consistency_after
from t2t_image.evaluation.super_resolution import downsampling_factor

# tf.image.ssim_multiscale's five power factors (Wang et al. 2003), first three renormalised.
_TF_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
POWER_FACTORS_3 = tuple(p / sum(_TF_POWER_FACTORS[:3]) for p in _TF_POWER_FACTORS[:3])
FILTER_SIZE = 3


def bicubic_downsample(images, size):
    """Pillow BICUBIC resize of each channel (float, no rounding) to ``size`` x ``size``.

    Args:
        images: array `[batch, H, W, channels]` on any scale (e.g. uint8 0..255).
        size: int, the output height and width.

    Returns:
        float64 array `[batch, size, size, channels]` on the scale of ``images``.
    """
    from PIL import Image

    images = _check_images("images", images).astype(np.float32)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got size={size!r}.")
    out = np.empty(images.shape[:1] + (size, size) + images.shape[3:], np.float64)
    for i, image in enumerate(images):
        for c in range(image.shape[-1]):
            channel = Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
            out[i, ..., c] = np.asarray(channel.resize((size, size), Image.BICUBIC))
    return out


def bicubic_consistency(low_res, samples):
    """Per-image consistency with the sample downsampled bicubically (paper, Sec. 5.3).

    As `t2t_image.evaluation.consistency` (MSE over pixels and channels on a
    [0, 1] scale, lower is better) but the sample is reduced to the input size
    with `bicubic_downsample` instead of a box filter.

    Args:
        low_res: uint8 (or 0..255) array `[batch, h, w, channels]`.
        samples: uint8 (or 0..255) array `[batch, f * h, f * w, channels]`.

    Returns:
        float64 array `[batch]`.
    """
    def downsample(images, factor):
        return bicubic_downsample(images, images.shape[1] // factor)

    return consistency_after(low_res, samples, downsample)


def ms_ssim(images_a, images_b, power_factors=POWER_FACTORS_3, filter_size=FILTER_SIZE,
            max_val=255.0):
    """Per-pair MS-SSIM (``tf.image.ssim_multiscale``, computed in float32).

    Args:
        images_a, images_b: arrays `[batch, H, W, channels]` on the 0..``max_val`` scale.
        power_factors: one weight per scale (default: three, see the module doc).
        filter_size: int, the Gaussian filter size of every scale.
        max_val: the dynamic range of the images.

    Returns:
        float64 array `[batch]`, 1.0 for identical images.
    """
    import tensorflow as tf

    a = _check_images("images_a", images_a)
    b = _check_images("images_b", images_b)
    if a.shape != b.shape:
        raise ValueError(f"images_a and images_b must have one shape, got {a.shape} and "
                         f"{b.shape}.")
    coarsest = min(a.shape[1:3]) // 2 ** (len(power_factors) - 1)
    if coarsest < filter_size:
        raise ValueError(f"{len(power_factors)} scales of {a.shape[1]}x{a.shape[2]} images "
                         f"leave {coarsest} pixels at the coarsest, less than "
                         f"filter_size={filter_size}: use fewer power_factors or a smaller "
                         "filter.")
    scores = tf.image.ssim_multiscale(tf.constant(a, tf.float32), tf.constant(b, tf.float32),
                                      max_val, power_factors=power_factors,
                                      filter_size=filter_size)
    return np.asarray(scores, np.float64)


def nearest_training_ms_ssim(samples, train_low_res, train_images, **ms_ssim_kwargs):
    """The paper's copying check: MS-SSIM to the training image nearest in low resolution.

    Each sample is box-downsampled (`box_downsample`) to the training inputs'
    size; the training image whose low-resolution version is nearest in L2 is
    the candidate the model could have copied; its MS-SSIM with the sample is
    returned. Image Transformer, Section 5.3 (paper: 44.3 on 50 samples).

    Args:
        samples: uint8 `[n, H, W, c]`.
        train_low_res: uint8 `[m, h, w, c]`, the training inputs.
        train_images: uint8 `[m, H, W, c]`, the matching training images.
        **ms_ssim_kwargs: passed to `ms_ssim`.

    Returns:
        dict with ``ms_ssim`` (float64 `[n]`), ``index`` (int `[n]`, the nearest
        training image of each sample) and ``l2`` (float64 `[n]`, its distance
        on the 0..255 scale).
    """
    samples = _check_images("samples", samples)
    train_low_res = _check_images("train_low_res", train_low_res)
    train_images = _check_images("train_images", train_images)
    if len(train_low_res) != len(train_images) or not len(train_images):
        raise ValueError(f"train_low_res and train_images must hold the same non-zero number "
                         f"of images, got {len(train_low_res)} and {len(train_images)}.")
    if train_images.shape[1:] != samples.shape[1:]:
        raise ValueError(f"train_images must have the samples' shape {samples.shape[1:]}, got "
                         f"{train_images.shape[1:]}.")
    factor = downsampling_factor(train_low_res.shape, samples.shape)
    low = box_downsample(samples, factor).reshape(len(samples), -1)
    train = train_low_res.reshape(len(train_low_res), -1).astype(np.float64)
    distances = (np.square(low).sum(1)[:, None] - 2.0 * low @ train.T
                 + np.square(train).sum(1)[None, :])
    index = np.argmin(distances, axis=1)
    l2 = np.sqrt(np.maximum(distances[np.arange(len(index)), index], 0.0))
    scores = ms_ssim(samples, train_images[index], **ms_ssim_kwargs)
    return {"ms_ssim": scores, "index": index, "l2": l2}
