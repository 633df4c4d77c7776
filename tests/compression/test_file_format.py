"""The .t2tc container: round trip, and a named refusal for every kind of bad file."""

import zlib

import numpy as np
import pytest

from t2t_image.compression import file_format
from t2t_image.compression.file_format import CompressedFileError, Header


def _header(**overrides):
    args = dict(backend="jax", model=bytes.fromhex("0123abcd"), environment=b"\x05\x06",
                height=32, width=32, channels=3, batch=2, labels=[3, 200], lengths=[],
                inputs=bytes(range(6)), pixels_crc=0xDEADBEEF)
    args.update(overrides)
    return Header(**args)


def test_round_trip_and_size():
    streams = [b"\x00\x80\x00\x00abc", bytes(300)]
    data = file_format.pack(_header(), streams)
    header, back = file_format.unpack(data, input_bytes=3)
    assert back == streams
    assert header == _header(lengths=[7, 300], size=header.size)
    # magic 3, version 1, flags 1, model 4, environment 2, sizes 5, labels 1 + 2 (200 > 127),
    # lengths 1 + 2, inputs 6, pixel CRC 4; file CRC 4 after the streams.
    assert header.size == 3 + 1 + 1 + 4 + 2 + 5 + 3 + 3 + 6 + 4
    assert len(data) == header.size + 307 + 4
    # An unconditional model's single 32x32 image: 26 bytes beside its stream.
    small = file_format.pack(_header(labels=None, inputs=None, batch=1), [bytes(1000)])
    assert len(small) - 1000 == 26


def test_every_flipped_byte_and_every_truncation_is_refused():
    data = file_format.pack(_header(), [b"\x00\x80\x00\x00abc", bytes(20)])
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(CompressedFileError):
            file_format.unpack(bytes(bad), input_bytes=3)
    for n in range(len(data)):
        with pytest.raises(CompressedFileError, match="truncated|not a t2t-image-compress"):
            file_format.unpack(data[:n], input_bytes=3)


def test_named_refusals():
    data = file_format.pack(_header(), [bytes(5), bytes(6)])
    with pytest.raises(CompressedFileError, match=r"x\.t2tc is not a t2t-image-compress file"):
        file_format.unpack(b"\x89PNG\r\n" + data[6:], name="x.t2tc")
    future = bytearray(data)
    future[3] = 2
    future[-4:] = zlib.crc32(future[:-4]).to_bytes(4, "big")
    with pytest.raises(CompressedFileError, match="format version 2; this t2t_image reads "
                                                  "version 1"):
        file_format.unpack(bytes(future), input_bytes=3)
    with pytest.raises(CompressedFileError, match="corrupted or truncated"):
        file_format.unpack(data[:-1] + bytes([data[-1] ^ 1]), input_bytes=3)
    with pytest.raises(CompressedFileError, match="super-resolution model"):
        file_format.unpack(data)  # holds inputs, and the model has none


def test_pixels_crc_sees_every_pixel():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    other = images.copy()
    other[1, 3, 2, 1] = 1
    assert file_format.pixels_crc(images) != file_format.pixels_crc(other)
    assert file_format.pixels_crc(images[:, ::-1]) == file_format.pixels_crc(images)
