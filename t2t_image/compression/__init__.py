"""Lossless image compression from an Image Transformer's likelihood (``t2t-image-compress``).

``compress(model, images)`` returns the bytes of a ``.t2tc`` file,
``decompress(model, data)`` the images (and labels); see ``codec.py`` for the
method, ``file_format.py`` for the format, ``rans.py`` for the entropy coder
and ``graph.py`` for the compiled coding loop that both sides share.
"""

from t2t_image.compression.codec import (
    DEFAULT_BATCH_SIZE,
    check_file,
    compress,
    decompress,
    environment,
    read_header,
    weights_fingerprint,
)
from t2t_image.compression.file_format import CompressedFileError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "CompressedFileError",
    "check_file",
    "compress",
    "decompress",
    "environment",
    "read_header",
    "weights_fingerprint",
]
