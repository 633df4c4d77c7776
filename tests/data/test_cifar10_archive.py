"""cifar10_archive: official-format archives built here, safe unpickling, safe tar handling."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from t2t_image.data import (
    CIFAR10_LABEL_NAMES,
    Cifar10ArchiveSource,
    load_cifar_pickle,
    make_dataset,
    parse_cifar_batch,
    read_cifar10_files,
    safe_extract_tar,
)
from tests.data.conftest import add_bytes, cifar_batch_bytes, py2_pickle


def _expected(parts, names):
    x = np.concatenate([parts[n][0] for n in names])
    y = np.concatenate([parts[n][1] for n in names])
    return x, y


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_py2_style_batch_round_trip(cifar_parts):
    x, y = cifar_parts["data_batch_1"]
    raw = cifar_batch_bytes(x, y)
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw  # The pre-numpy-2 name real files use.
    batch = load_cifar_pickle(raw, "data_batch_1")
    assert set(batch) == {"batch_label", "labels", "data", "filenames"}
    images, labels = parse_cifar_batch(batch)
    # Independent decoding of the row layout: pixel (r, c) of channel k sits at k*1024 + r*32 + c.
    rows = batch["data"]
    r, c = 7, 19
    for k in range(3):
        np.testing.assert_array_equal(images[:, r, c, k], rows[:, k * 1024 + r * 32 + c])
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    assert labels.dtype == np.int32


def test_official_batches_meta_loads(shared_data):
    meta = load_cifar_pickle((shared_data / "cifar10" / "batches.meta").read_bytes(), "batches.meta")
    assert [n.decode() for n in meta["label_names"]] == list(CIFAR10_LABEL_NAMES)
    assert meta["num_cases_per_batch"] == 10000 and meta["num_vis"] == 3072


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_accepted(cifar_parts, protocol):
    x, y = cifar_parts["data_batch_2"]
    raw = pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), b"labels": [int(v) for v in y]},
                       protocol=protocol)
    images, labels = parse_cifar_batch(load_cifar_pickle(raw))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)


def test_archive_and_folder_read_exactly(cifar_archive, cifar_parts, tmp_path):
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    x_train, y_train = _expected(cifar_parts, train_names)
    x_test, y_test = _expected(cifar_parts, ["test_batch"])
    folder = tmp_path / "extracted"
    safe_extract_tar(cifar_archive, folder)
    for path in (cifar_archive, folder, folder / "cifar-10-batches-py"):
        src = Cifar10ArchiveSource(path)
        train = src.load("train", shuffle=False, seed=None, with_labels=True)
        np.testing.assert_array_equal(train.images, x_train)
        np.testing.assert_array_equal(train.labels, y_train)
        assert train.label_names == list(CIFAR10_LABEL_NAMES)
        test = src.load("test", shuffle=False, seed=None, with_labels=True)
        np.testing.assert_array_equal(test.images, x_test)
        np.testing.assert_array_equal(test.labels, y_test)


def test_archive_pipeline_class_conditional_and_holdout(cifar_archive, cifar_parts):
    x_train, y_train = _expected(cifar_parts, [f"data_batch_{i}" for i in range(1, 6)])
    n = len(x_train)  # 35
    cut = int(round(0.8 * n))
    out = _collect(make_dataset("cifar10_archive", "train[:80%]", 4, task="class_conditional",
                                source_kwargs={"path": cifar_archive}))
    assert out["targets"].dtype == np.uint8 and out["targets"].shape == (cut, 32, 32, 3)
    assert out["labels"].dtype == np.int32
    np.testing.assert_array_equal(out["targets"], x_train[:cut])
    np.testing.assert_array_equal(out["labels"], y_train[:cut])
    held = _collect(make_dataset("cifar10_archive", "train[80%:]", 4, task="class_conditional",
                                 source_kwargs={"path": cifar_archive}))
    np.testing.assert_array_equal(held["targets"], x_train[cut:])
    with pytest.raises(ValueError, match="split"):
        make_dataset("cifar10_archive", "validation", 4, source_kwargs={"path": cifar_archive})


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    class EvilSystem:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for evil in (Evil(), EvilSystem(), {b"data": Evil(), b"labels": []}):
        raw = pickle.dumps(evil, protocol=2)
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
            load_cifar_pickle(raw, "evil")
        assert not marker.exists()
    # The same pickle inside an archive, in place of a training batch.
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py/test_batch", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        Cifar10ArchiveSource(archive).load("test", shuffle=False, seed=None, with_labels=False)
    assert not marker.exists()


def test_pickles_that_are_not_cifar_batches():
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar_pickle(py2_pickle([1, 2, 3]))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        parse_cifar_batch(load_cifar_pickle(py2_pickle({b"foo": 1})))
    with pytest.raises(ValueError, match=r"b'data' has dtype float32, shape \(2, 3072\)"):
        parse_cifar_batch({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]})
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        parse_cifar_batch({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})
    with pytest.raises(ValueError, match="not a readable CIFAR-10 pickle"):
        load_cifar_pickle(b"\x80\x02}q\x00(")  # Truncated.


def _archive_with(tmp_path, name, member_name, **info):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py/data_batch_1", b"x")
        add_bytes(tar, member_name, b"payload", **info)
    return path


def test_tar_member_outside_root_is_refused(tmp_path):
    outside = tmp_path / "escaped.txt"
    for i, name in enumerate(["../escaped.txt", "cifar-10-batches-py/../../escaped.txt", "/tmp/abs.txt"]):
        archive = _archive_with(tmp_path, f"bad{i}.tar.gz", name)
        with pytest.raises(ValueError, match="outside the archive root"):
            read_cifar10_files(archive)
        target = tmp_path / f"target{i}"
        with pytest.raises(ValueError, match="outside the archive root"):
            safe_extract_tar(archive, target)
        assert not target.exists() or not any(target.iterdir())  # Nothing extracted, not even the good member.
    assert not outside.exists()


def test_tar_link_member_is_refused(tmp_path):
    archive = _archive_with(tmp_path, "link.tar.gz", "cifar-10-batches-py/test_batch",
                            type=tarfile.SYMTYPE, linkname="/etc/passwd")
    with pytest.raises(ValueError, match="link or special file"):
        Cifar10ArchiveSource(archive).load("test", shuffle=False, seed=None, with_labels=False)


def test_missing_and_malformed_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Cifar10ArchiveSource(tmp_path / "nope.tar.gz")
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a tar archive"):
        Cifar10ArchiveSource(not_tar).load("train", shuffle=False, seed=None, with_labels=False)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        add_bytes(tar, "readme.txt", b"hi")
    with pytest.raises(FileNotFoundError, match="lacks"):
        Cifar10ArchiveSource(empty).load("test", shuffle=False, seed=None, with_labels=False)
    with pytest.raises(ValueError, match="cifar10_archive.path"):
        Cifar10ArchiveSource(None)


def test_safe_extract_writes_only_inside(cifar_archive, tmp_path):
    target = tmp_path / "t"
    files = safe_extract_tar(cifar_archive, target)
    assert sorted(os.path.basename(f) for f in files) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    assert all(os.path.realpath(f).startswith(str(target.resolve()) + os.sep) for f in files)
    with io.open(files[0], "rb") as f:
        assert f.read(2) == b"\x80\x02"


# Crafted pickles (issue 16): numpy's own globals with arguments no numpy pickle has.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _Dtype:
    """Pickles as numpy.dtype(typestr, False, True) with the given BUILD state."""

    def __init__(self, typestr, state):
        self.typestr, self.state = typestr, state

    def __reduce__(self):
        return (np.dtype, (self.typestr, False, True), self.state)


class _Array:
    """Pickles as numpy's _reconstruct(ndarray, (0,), b'b'), with BUILD state or without."""

    def __init__(self, state=None, shape=None):
        self.state, self.shape = state, shape

    def __reduce__(self):
        if self.state is None:  # _reconstruct(ndarray, shape, 'u1'): uninitialised memory.
            return (_RECONSTRUCT, (np.ndarray, self.shape, "u1"))
        return (_RECONSTRUCT, (np.ndarray, (0,), b"b"), self.state)


def _crafted_archive(tmp_path, data):
    """An archive whose data_batch_1 is a batch dict with the given b'data' object."""
    raw = py2_pickle({b"data": data, b"labels": [0] * 5, b"batch_label": b"crafted"})
    path = tmp_path / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)]:
            add_bytes(tar, f"cifar-10-batches-py/{name}", raw)
    return path


def _load_train(path):
    return Cifar10ArchiveSource(path).load("train", shuffle=False, seed=None, with_labels=True)


def test_crafted_subarray_dtype_is_refused_before_any_array_is_built(tmp_path):
    # The attack: an int64 dtype with a 10^7-element sub-array over 800 bytes read out of
    # bounds (exit 139) through the allow-listed numpy.dtype + BUILD.
    huge = _Dtype("i8", (3, "<", (np.dtype("i8"), (10**7,)), None, None, -1, -1, 0))
    crafted = _Array((1, (100,), huge, False, b"\x01" * 800))
    with pytest.raises(ValueError, match=r"member cifar-10-batches-py/data_batch_1: b'data': "
                                         r"array dtype is not a plain integer type .*sub-array"):
        _load_train(_crafted_archive(tmp_path, crafted))
    # Other dtypes than plain integers (object, float, structured) are refused by name.
    for typestr, state in [("O", (3, "|", None, None, None, -1, -1, 63)),
                           ("f8", (3, "<", None, None, None, -1, -1, 0)),
                           ("V8", (3, "|", None, ("a",), {"a": (np.dtype("u1"), 0)}, 8, 1, 16))]:
        raw = py2_pickle({b"data": _Array((1, (8,), _Dtype(typestr, state), False, b"\0" * 8))})
        with pytest.raises(ValueError, match="not a plain integer type"):
            load_cifar_pickle(raw, "crafted")


def test_crafted_reconstruct_without_build_is_refused(tmp_path):
    # _reconstruct without BUILD gave an uninitialised uint8[N, 3072] that passed every check.
    crafted = _Array(shape=(5, 3072))
    with pytest.raises(ValueError, match=r"data_batch_1: b'data': malformed numpy array "
                                         r"\(unexpected _reconstruct arguments\)"):
        _load_train(_crafted_archive(tmp_path, crafted))
    # numpy's own arguments, but the BUILD that fills the array left out.
    crafted = _Array(shape=(0,))
    crafted.__reduce__ = lambda: (_RECONSTRUCT, (np.ndarray, (0,), b"b"))
    with pytest.raises(ValueError, match=r"b'data': numpy array without its contents "
                                         r"\(no BUILD state\); refused rather than reading "
                                         r"uninitialised memory"):
        load_cifar_pickle(py2_pickle({b"data": crafted, b"labels": []}), "crafted")


def test_crafted_array_shorter_than_its_shape_is_refused(tmp_path):
    u1 = _Dtype("u1", (3, "|", None, None, None, -1, -1, 0))
    crafted = _Array((1, (5, 3072), u1, False, b"\x07" * 100))
    with pytest.raises(ValueError, match=r"data_batch_1: b'data': numpy array of shape "
                                         r"\(5, 3072\) and dtype uint8 needs 15360 bytes, the "
                                         r"file holds 100"):
        _load_train(_crafted_archive(tmp_path, crafted))
    # The same structure with all its bytes is a valid batch (the check is not a blanket refusal).
    ok = _Array((1, (5, 3072), u1, False, bytes(range(256)) * 60))
    images, labels = parse_cifar_batch(load_cifar_pickle(py2_pickle({b"data": ok, b"labels": [1] * 5})))
    assert images.shape == (5, 32, 32, 3) and images[0, 0, 1, 0] == 1 and list(labels) == [1] * 5


def test_truncated_and_garbage_pickles_name_the_file_and_member(tmp_path, cifar_parts):
    good = cifar_batch_bytes(*cifar_parts["data_batch_1"])
    archive = tmp_path / "truncated.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(1, 6):
            data = good[:len(good) // 2] if i == 3 else good
            add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", data)
    with pytest.raises(ValueError, match=rf"{archive} member cifar-10-batches-py/data_batch_3: "
                                         r"not a readable CIFAR-10 pickle: the pickle ends early"):
        _load_train(archive)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(good if i != 5 else b"\x80\x02}q\x00(\xff")
    with pytest.raises(ValueError, match=rf"{folder / 'data_batch_5'}: not a readable CIFAR-10 "
                                         r"pickle: pickle opcode b'\\xff' at byte 6 is not allowed"):
        _load_train(folder)


def test_oversized_member_is_refused_before_reading(tmp_path, monkeypatch):
    from t2t_image.data import cifar10_archive

    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(1, 6):
            add_bytes(tar, f"cifar-10-batches-py/data_batch_{i}", b"\0" * 4096)
    monkeypatch.setattr(cifar10_archive, "MAX_MEMBER_BYTES", 1024)
    with pytest.raises(ValueError, match=r"member cifar-10-batches-py/data_batch_1: 4096 bytes is "
                                         r"larger than any CIFAR-10 python file"):
        _load_train(archive)
