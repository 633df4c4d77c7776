"""Image bombs for tests: valid PNGs of huge declared size in a few KB, written in a few MB.

A 1-bit greyscale PNG of zeros: each row is a filter byte plus ``width / 8`` bytes, and
the rows are compressed one at a time, so writing a 20000x20000 image needs neither its
50 MB of packed bits nor the 1.2 GB an RGB decode of it takes.
"""

import struct
import zlib


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width, height):
    """The bytes of a valid all-black ``width`` x ``height`` PNG (1-bit grey)."""
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def write_png_bomb(path, width, height):
    """Writes ``png_bomb(width, height)`` to ``path``; returns the file's size in bytes."""
    data = png_bomb(width, height)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
