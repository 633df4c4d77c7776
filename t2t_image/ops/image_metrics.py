"""Image-quality metrics on 8-bit images."""

import math

from keras import ops

_LOG10 = math.log(10.0)


def psnr(images_a, images_b, max_value=255.0):
    """Peak signal-to-noise ratio of each image pair, in dB.

    ``PSNR = 10 * log10(max_value**2 / MSE)`` with the mean squared error
    taken over every pixel and channel of one image. Identical images give
    ``+inf``. Used to score reconstructions of the VQ autoencoder (Esser et
    al. 2021, "Taming Transformers", Sec. 4.3 / Table 2 report PSNR-like
    reconstruction quality); not a T2T function.

    Args:
        images_a: tensor `[batch, ...]` of intensities in 0..max_value (ints
            or floats), e.g. uint8 `[batch, height, width, channels]`.
        images_b: tensor of the same shape.
        max_value: float, the largest possible intensity (255 for 8 bits).

    Returns:
        float32 tensor `[batch]`.

    Raises:
        ValueError: if the shapes differ or the inputs have rank < 2.

    Example:
    >>> a = np.zeros((1, 2, 2, 3), "uint8")
    >>> float(psnr(a, a + 1)[0])  # MSE 1
    48.130...
    """
    images_a = ops.convert_to_tensor(images_a)
    images_b = ops.convert_to_tensor(images_b)
    shape_a, shape_b = tuple(images_a.shape), tuple(images_b.shape)
    if len(shape_a) < 2 or len(shape_a) != len(shape_b) or any(
        a is not None and b is not None and a != b for a, b in zip(shape_a, shape_b)
    ):
        raise ValueError(
            "psnr needs images_a and images_b of the same shape [batch, ...], got "
            f"images_a.shape={shape_a} and images_b.shape={shape_b}."
        )
    # The error and the log are computed in float32 (uint8 differences would wrap).
    diff = ops.cast(images_a, "float32") - ops.cast(images_b, "float32")
    axes = tuple(range(1, len(shape_a)))
    mse = ops.mean(ops.square(diff), axis=axes)
    return (20.0 * math.log10(float(max_value))) - 10.0 * ops.log(mse) / _LOG10
