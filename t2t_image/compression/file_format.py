"""The ``.t2tc`` file format of ``t2t-image-compress`` (version 1).

All integers are big-endian; ``varint`` is LEB128 (7 bits a byte, low first)::

    magic        3 bytes   b"T2C"
    version      1 byte    1
    flags        1 byte    bit 0: JAX backend (else TensorFlow); bit 1: labels;
                           bit 2: low-resolution inputs (super-resolution models)
    model        4 bytes   the model's content fingerprint (first 4 bytes)
    environment  2 bytes   the versions that affect the probabilities (hash)
    height, width, channels, batch, count     varints
    per image:   [label varint] stream-length varint
    inputs       count * input_height * input_width * channels bytes (raw,
                 only with flag bit 2: the low-resolution images, 8 bits each)
    pixels CRC   4 bytes   CRC-32 of the original images (uint8, in order)
    streams      the rANS streams of the images, one after the other
    file CRC     4 bytes   CRC-32 of everything before it

``batch`` is the compiled batch the images were coded in (the decoder runs
the same); the model's sizes must match ``height, width, channels``. A
single 32x32 image of an unconditional model has 26 bytes of header and
checksums. Not a T2T format.
"""

import dataclasses
import zlib

import numpy as np

MAGIC = b"T2C"
VERSION = 1
BACKENDS = ("tensorflow", "jax")
_FLAG_JAX, _FLAG_LABELS, _FLAG_INPUTS = 1, 2, 4
_CRC_BYTES = 4


class CompressedFileError(ValueError):
    """A compressed file that cannot be decoded here; the message says why and what to do."""


@dataclasses.dataclass
class Header:
    """What a compressed file says about itself (everything but the streams).

    Attributes:
        backend: "tensorflow" or "jax".
        model: bytes, the first 4 bytes of the model's content fingerprint.
        environment: bytes (2), hash of the versions that affect the probabilities.
        height, width, channels: ints, the image size.
        batch: int, the compiled batch the images were coded in.
        labels: list of ints (class-conditional models) or None.
        lengths: list of ints, each image's stream length in bytes.
        inputs: bytes, the raw low-resolution images, or None.
        pixels_crc: int, CRC-32 of the original images.
        size: int, bytes of everything but the streams and the file CRC.
    """

    backend: str
    model: bytes
    environment: bytes
    height: int
    width: int
    channels: int
    batch: int
    labels: list
    lengths: list
    inputs: bytes
    pixels_crc: int
    size: int = 0


def _varint(value):
    value = int(value)
    if value < 0:
        raise ValueError(f"varints are non-negative, got {value}.")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data, name):
        self.data, self.at, self.name = data, 0, name

    def take(self, n):
        if self.at + n > len(self.data):
            raise CompressedFileError(f"{self.name}: truncated or corrupted (the header ends "
                                      f"after {len(self.data)} bytes).")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def varint(self):
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
            if shift > 63:
                raise CompressedFileError(f"{self.name}: corrupted header (an overlong number).")


def pack(header, streams):
    """The file's bytes: ``header`` (its ``lengths`` are set from ``streams``) and the streams."""
    flags = (_FLAG_JAX if header.backend == "jax" else 0) \
        | (_FLAG_LABELS if header.labels is not None else 0) \
        | (_FLAG_INPUTS if header.inputs is not None else 0)
    out = bytearray(MAGIC + bytes([VERSION, flags]) + header.model[:4] + header.environment[:2])
    for value in (header.height, header.width, header.channels, header.batch, len(streams)):
        out += _varint(value)
    for i, stream in enumerate(streams):
        if header.labels is not None:
            out += _varint(header.labels[i])
        out += _varint(len(stream))
    if header.inputs is not None:
        out += header.inputs
    out += header.pixels_crc.to_bytes(_CRC_BYTES, "big")
    for stream in streams:
        out += stream
    out += zlib.crc32(out).to_bytes(_CRC_BYTES, "big")
    return bytes(out)


def unpack(data, name="the file", input_bytes=None):
    """Reads and checks a file's header: ``(Header, streams)``.

    Checks, in this order, each with its own message: the magic number, the
    format version, the file CRC (a flipped byte anywhere, a truncated
    file), the lengths. Says nothing about the model (see ``check_model``).

    Args:
        data: bytes of the file.
        name: how to call the file in messages (e.g. its path).
        input_bytes: int, bytes of one low-resolution image (super-resolution
            models), or None.

    Returns:
        ``(Header, list of bytes)``.

    Raises:
        CompressedFileError: naming what is wrong.
    """
    data = bytes(data)
    if data[:len(MAGIC)] != MAGIC:
        raise CompressedFileError(
            f"{name} is not a t2t-image-compress file (it starts with {data[:4]!r}, not "
            f"{MAGIC!r}).")
    if len(data) < len(MAGIC) + 1:
        raise CompressedFileError(f"{name}: truncated ({len(data)} bytes).")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise CompressedFileError(
            f"{name} has format version {version}; this t2t_image reads version {VERSION} "
            "only: decompress it with the t2t_image release that wrote it.")
    if len(data) < len(MAGIC) + 2 + 6 + 2 * _CRC_BYTES or \
            zlib.crc32(data[:-_CRC_BYTES]) != int.from_bytes(data[-_CRC_BYTES:], "big"):
        raise CompressedFileError(
            f"{name} is corrupted or truncated (its CRC-32 does not match its {len(data)} "
            "bytes); nothing was decoded.")
    reader = _Reader(data[:-_CRC_BYTES], name)
    reader.take(len(MAGIC) + 1)
    flags = reader.take(1)[0]
    if flags & ~(_FLAG_JAX | _FLAG_LABELS | _FLAG_INPUTS):
        raise CompressedFileError(f"{name}: unknown flags {flags:#04x} in the header.")
    model, environment = reader.take(4), reader.take(2)
    height, width, channels, batch, count = (reader.varint() for _ in range(5))
    labels = [] if flags & _FLAG_LABELS else None
    lengths = []
    for _ in range(count):
        if labels is not None:
            labels.append(reader.varint())
        lengths.append(reader.varint())
    inputs = None
    if flags & _FLAG_INPUTS:
        if input_bytes is None:
            raise CompressedFileError(f"{name} holds low-resolution inputs: decompress it with "
                                      "its super-resolution model.")
        inputs = reader.take(count * input_bytes)
    pixels_crc = int.from_bytes(reader.take(_CRC_BYTES), "big")
    header = Header("jax" if flags & _FLAG_JAX else "tensorflow", model, environment, height,
                    width, channels, batch, labels, lengths, inputs, pixels_crc, reader.at)
    streams = []
    for length in lengths:
        streams.append(reader.take(length))
    if reader.at != len(reader.data):
        raise CompressedFileError(f"{name}: {len(reader.data) - reader.at} bytes after the "
                                  "last image; the file is corrupted.")
    return header, streams


def pixels_crc(images):
    """CRC-32 of uint8 images (their bytes in C order)."""
    return zlib.crc32(np.ascontiguousarray(images, np.uint8).tobytes())
