"""Image preprocessing shared by all sources: crop boxes and T2T's area resize.

Exact semantics (what ``area_resize`` computes), as in Tensor2Tensor's
``image_utils.resize_by_area`` used by its CelebA and CIFAR-10 super-resolution
problems (``tf.to_int64(tf.image.resize_images(img, [size, size], AREA))``):

1. ``tf.image.resize(image, [size, size], method="area")`` in float32: every output
   pixel is the mean of the input over the output pixel's footprint (an
   ``in/size`` by ``in/size`` box; pixels cut by the box edge count with the
   fraction that lies inside it).
2. ``tf.cast(..., tf.uint8)``: truncation toward zero, not rounding.

For integer factors (32 -> 8 is a 4x4 block, 64 -> 32 a 2x2 block) the float32
mean is exact, so the result is exactly ``floor(block mean)``. For fractional
factors (CelebA's 138x138 or 69x69 crop to 32x32) the float32 mean can land just
below an integer, so a pixel may be one less than ``floor`` of the exact mean.
On average truncation makes values 0.5 lower than rounding would (Pillow's
``Image.BOX`` rounds). An image that already has the requested size is returned
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# T2T's CelebA crop (image_celeba / img2img_celeba): rows 40..177 and columns 20..157
# of the 218x178 aligned image, i.e. tf.image.crop_to_bounding_box(img, 40, 20, 138, 138).
CELEBA_CROP_BOX = (40, 20, 138, 138)
CELEBA_ALIGNED_SHAPE = (218, 178)

CropBox = tuple[int, int, int, int]


def validate_crop_box(crop_box, name: str = "crop_box") -> str | CropBox | None:
    """Checks a crop box setting and returns it normalized.

    Args:
      crop_box: None (no crop), ``"celeba"`` (T2T's CelebA face box, scaled to the
        image size: exact on the 218x178 aligned images and on half-resolution
        109x89 copies, where it is rows 20..88, columns 10..78), or
        ``(top, left, height, width)`` in pixels.
      name: the setting's name for error messages.

    Returns:
      None, ``"celeba"`` or a tuple of four python ints.

    Raises:
      ValueError: naming the setting and the value when it is none of the above.
    """
    if crop_box is None or crop_box == "celeba":
        return crop_box
    if isinstance(crop_box, str) or not isinstance(crop_box, Sequence) or len(crop_box) != 4:
        raise ValueError(
            f"{name} must be None, 'celeba' or (top, left, height, width), got {crop_box!r}"
        )
    try:
        box = tuple(int(v) for v in crop_box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold four integers, got {crop_box!r}") from None
    if any(float(v) != b for v, b in zip(crop_box, box)):
        raise ValueError(f"{name} must hold four integers, got {crop_box!r}")
    top, left, height, width = box
    if top < 0 or left < 0 or height <= 0 or width <= 0:
        raise ValueError(
            f"{name}=(top, left, height, width) needs top, left >= 0 and height, width > 0, "
            f"got {crop_box!r}"
        )
    return box


def crop_box_for_shape(crop_box: str | CropBox | None, height: int, width: int) -> CropBox | None:
    """Returns the pixel box ``(top, left, height, width)`` for an image of a given size.

    The ``"celeba"`` preset is ``CELEBA_CROP_BOX`` scaled by ``height / 218`` and
    ``width / 178`` with integer floor division.

    Args:
      crop_box: a value accepted by ``validate_crop_box``.
      height: image height in pixels.
      width: image width in pixels.

    Returns:
      None or a tuple of four ints.
    """
    if crop_box is None:
        return None
    if crop_box == "celeba":
        top, left, box_h, box_w = CELEBA_CROP_BOX
        full_h, full_w = CELEBA_ALIGNED_SHAPE
        return (top * height // full_h, left * width // full_w,
                box_h * height // full_h, box_w * width // full_w)
    return tuple(crop_box)


def crop_numpy(image: np.ndarray, crop_box) -> np.ndarray:
    """Crops an ``[h, w, c]`` array; raises ValueError when the box does not fit.

    Args:
      image: the image array.
      crop_box: a value accepted by ``validate_crop_box``.

    Returns:
      The cropped view.
    """
    box = crop_box_for_shape(crop_box, image.shape[0], image.shape[1])
    if box is None:
        return image
    top, left, h, w = box
    if h <= 0 or w <= 0 or top + h > image.shape[0] or left + w > image.shape[1]:
        raise ValueError(
            f"crop box (top={top}, left={left}, height={h}, width={w}) does not fit an image "
            f"of {image.shape[0]}x{image.shape[1]}"
        )
    return image[top:top + h, left:left + w]


def crop_tf(image, crop_box):
    """Crops ``[..., h, w, 3]`` images in TensorFlow (sizes may be dynamic).

    Equivalent to T2T's ``tf.image.crop_to_bounding_box`` for CelebA.

    Args:
      image: a 3-D or 4-D image tensor.
      crop_box: a value accepted by ``validate_crop_box``.

    Returns:
      The cropped tensor.
    """
    import tensorflow as tf  # here, so the NumPy pipeline runs without TensorFlow

    if crop_box is None:
        return image
    if crop_box == "celeba":
        shape = tf.shape(image)
        height, width = shape[-3], shape[-2]
        top, left, box_h, box_w = CELEBA_CROP_BOX
        full_h, full_w = CELEBA_ALIGNED_SHAPE
        return tf.image.crop_to_bounding_box(
            image, top * height // full_h, left * width // full_w,
            box_h * height // full_h, box_w * width // full_w)
    top, left, h, w = crop_box
    return tf.image.crop_to_bounding_box(image, top, left, h, w)


def area_resize(images, size):
    """Area-resizes images and truncates to uint8, exactly as T2T's ``resize_by_area``.

    See the module docstring for the exact arithmetic.

    Args:
      images: ``[h, w, c]`` or ``[b, h, w, c]`` images (uint8 or float), values in [0, 255].
      size: an int (square output) or ``(height, width)``.

    Returns:
      uint8 images of the requested size; the input itself (as uint8) when its
      static size already matches.
    """
    import tensorflow as tf  # here, so the NumPy pipeline runs without TensorFlow

    out_h, out_w = (size, size) if isinstance(size, int) else tuple(size)
    images = tf.convert_to_tensor(images)
    in_h, in_w = images.shape[-3], images.shape[-2]
    if in_h == out_h and in_w == out_w:
        return tf.cast(images, tf.uint8) if images.dtype != tf.uint8 else images
    resized = tf.image.resize(images, [out_h, out_w], method=tf.image.ResizeMethod.AREA)
    # tf.cast float32 -> uint8 truncates toward zero, as T2T's tf.to_int64 does.
    return tf.cast(resized, tf.uint8)
