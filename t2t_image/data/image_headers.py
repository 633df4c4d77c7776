"""Image files refused from their header's size, before any pixel is decoded.

A 17 KB PNG can declare 12000x12000 pixels (an "image bomb") and take
gigabytes to decode; Pillow only warns below twice its ``MAX_IMAGE_PIXELS``.
``open_image`` reads the header (Pillow's ``Image.open`` decodes nothing) and
refuses an image larger than a pixel limit, naming the file, its size and the
limit. No TensorFlow here: the
sampler reads its images before TensorFlow is imported.
"""

from PIL import Image

# The most pixels an image's header may declare before it is refused undecoded
# (150 MB decoded as RGB).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def check_max_image_pixels(value, setting):
    """Validates a pixel limit (an int >= 1); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{setting} must be an int >= 1 (pixels), got {value!r}")
    return value


def open_image(f, path: str, max_pixels: int, setting: str):
    """Opens an image with Pillow, refusing it from its header's size before any decoding.

    Args:
      f: a path or a binary file object.
      path: the name to put in messages.
      max_pixels: the most pixels (width x height) the header may declare.
      setting: the name of the limit's setting, for messages.

    Returns:
      The opened, not yet decoded ``PIL.Image.Image`` (close it).

    Raises:
      ValueError: naming the file, its size and the limit.
      Exception: whatever Pillow raises for an unreadable file.
    """
    try:
        img = Image.open(f)
    except Image.DecompressionBombError as e:  # beyond twice Pillow's own limit
        raise ValueError(f"{path}: refused before decoding: {e}") from e
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ValueError(f"{path} declares {width}x{height} = {width * height} pixels, more than "
                         f"{setting}={max_pixels}; refused before decoding (an image that "
                         "large takes gigabytes of memory to decode)")
    return img
