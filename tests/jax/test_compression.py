"""Lossless compression under the JAX backend: bit-exact round trips, the backend in the file."""

import zlib

import numpy as np
import pytest

from t2t_image.compression import CompressedFileError, compress, decompress, read_header
from t2t_image.models import ImageTransformer, Img2ImgTransformer
from tests.tiny_models import bad_model


@pytest.mark.parametrize("cls,overrides,labels", [
    (ImageTransformer, dict(dec_attention_type="local_2d", likelihood="dmol", num_classes=4),
     np.array([3, 0, 1])),
    (Img2ImgTransformer, dict(dec_attention_type="local_1d"), None),
])
def test_round_trip_under_jax(cls, overrides, labels):
    model = bad_model(cls, scale=3.0, **overrides)
    images = np.random.RandomState(0).randint(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    images[1] = 0
    stats, back = {}, {}
    data = compress(model, images, labels, batch_size=2, stats=stats)
    assert read_header(data, model=model)[0].backend == "jax"
    decoded, decoded_labels = decompress(model, data, stats=back)
    np.testing.assert_array_equal(decoded, images)
    np.testing.assert_array_equal(back["model_bits"], stats["model_bits"])
    if labels is not None:
        np.testing.assert_array_equal(decoded_labels, labels)
    # A TensorFlow file is refused by name (flags bit 0 is the backend).
    tf_file = bytearray(data)
    tf_file[4] ^= 1
    tf_file[-4:] = zlib.crc32(tf_file[:-4]).to_bytes(4, "big")
    with pytest.raises(CompressedFileError, match="KERAS_BACKEND=tensorflow"):
        decompress(model, bytes(tf_file))
