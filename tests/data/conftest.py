"""Fixtures for the data tests: no network, and official-format CIFAR-10 files built here."""

import io
import pickle
import socket
import tarfile

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a network connection fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a data test tried to use the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


class _Py2Pickler(pickle._Pickler):  # Pure-python pickler, so bytes can be written as py2 str.
    """Writes bytes the way Python 2's cPickle wrote ``str``: BINSTRING opcodes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle laid out like the official Python 2 CIFAR files.

    Bytes become BINSTRING (what ``encoding='bytes'`` reads back as bytes), and the
    array reconstructor is named ``numpy.core.multiarray`` as in files written
    before numpy 2.
    """
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue()
    assert b"_codecs" not in data
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch_bytes(images: np.ndarray, labels, batch_label=b"batch") -> bytes:
    """Encodes uint8 [N, 32, 32, 3] images as an official CIFAR-10 python batch."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane.
    return py2_pickle({
        b"batch_label": batch_label,
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(rows),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    })


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **info):
    member = tarfile.TarInfo(name)
    member.size = len(data)
    for key, value in info.items():
        setattr(member, key, value)
    tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def cifar_parts(shared_data):
    """Per batch name: (images, labels) taken from the shared exact CIFAR-10 images."""
    npz = np.load(shared_data / "cifar10" / "cifar10_train_exact.npz")
    x, y = npz["x"], npz["y"].astype(np.int64)
    parts = {}
    for i in range(1, 6):
        sel = np.flatnonzero(npz["batch"] == i)[:4 + i]  # 5..9 images per batch.
        parts[f"data_batch_{i}"] = (x[sel], y[sel])
    parts["test_batch"] = (x[-6:], y[-6:])
    parts["batches.meta"] = (shared_data / "cifar10" / "batches.meta").read_bytes()
    return parts


@pytest.fixture
def cifar_archive(tmp_path, cifar_parts):
    """A small cifar-10-python.tar.gz in the official layout."""
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        dir_info = tarfile.TarInfo("cifar-10-batches-py")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for name, value in cifar_parts.items():
            data = value if isinstance(value, bytes) else cifar_batch_bytes(*value)
            add_bytes(tar, f"cifar-10-batches-py/{name}", data)
    return path
