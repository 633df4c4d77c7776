"""tfds source: mocked TFDS data, and fast clear failures when the data is absent (no network)."""

import logging
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t2t_image.data import TfdsSource, make_dataset
from t2t_image.data.tfds_source import MANUAL_FILES


@pytest.fixture
def manual_dir(tmp_path):
    """A manual_dir holding placeholders for every file the supported datasets download."""
    folder = tmp_path / "manual"
    folder.mkdir()
    names = {f for files in MANUAL_FILES.values() for f in files}
    names |= set(TfdsSource("celeb_a").required_files())
    for name in names:
        (folder / name).write_bytes(b"placeholder")
    return folder


def _mock(num_examples):
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def test_cifar10_class_conditional(tmp_path, manual_dir):
    src = TfdsSource("cifar10", data_dir=tmp_path / "tfds", manual_dir=manual_dir)
    with _mock(12):
        ds, info = make_dataset(src, "train", 5, task="class_conditional", with_info=True)
        batches = list(ds.as_numpy_iterator())
    assert [len(b["targets"]) for b in batches] == [5, 5, 2]  # Evaluation keeps the last batch.
    b = batches[0]
    assert set(b) == {"targets", "labels"}
    assert b["targets"].dtype == np.uint8 and b["targets"].shape == (5, 32, 32, 3)
    assert b["labels"].dtype == np.int32 and ((b["labels"] >= 0) & (b["labels"] < 10)).all()
    # (Under mocking TFDS knows only the number of class names, not the names.)
    assert len(info.label_names) == 10 and info.num_classes == 10 and info.imagenet_version is None


def test_cifar10_super_resolution_pairs_are_block_means(tmp_path, manual_dir):
    src = TfdsSource("cifar10", data_dir=tmp_path / "tfds", manual_dir=manual_dir)
    with _mock(8):
        b = next(iter(make_dataset(src, "test", 8, task="super_resolution")))
    x = b["targets"].numpy().astype(np.float64)
    ref = np.floor(x.reshape(8, 8, 4, 8, 4, 3).mean(axis=(2, 4)))
    np.testing.assert_array_equal(b["inputs"].numpy(), ref.astype(np.uint8))


@pytest.mark.parametrize("name,size", [("imagenet_resized/32x32", 32), ("imagenet_resized/64x64", 64)])
def test_imagenet_resized_is_chrabaszcz_and_logged(tmp_path, manual_dir, caplog, name, size):
    src = TfdsSource(name, data_dir=tmp_path / "tfds", manual_dir=manual_dir)
    with _mock(4), caplog.at_level(logging.INFO):
        ds, info = make_dataset(src, "train", 4, task="class_conditional", image_size=size,
                                training=True, seed=0, with_info=True)
        b = next(iter(ds))
    assert b["targets"].shape == (4, size, size, 3) and b["labels"].dtype.name == "int32"
    assert info.imagenet_version == "chrabaszcz" and info.num_classes == 1000
    assert "Downsampled ImageNet version: chrabaszcz" in caplog.text
    with pytest.raises(ValueError, match="imagenet_version='oord' contradicts"):
        make_dataset(src, "train", 4, imagenet_version="oord")


def test_celeb_a_is_cropped_then_resized(tmp_path, manual_dir):
    src = TfdsSource("celeb_a", data_dir=tmp_path / "tfds", manual_dir=manual_dir)
    assert src.crop_box == "celeba"
    with _mock(3):
        b = next(iter(make_dataset(src, "train", 3, task="super_resolution")))
    assert b["targets"].shape == (3, 32, 32, 3) and b["inputs"].shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="has no feature 'label'"):
        with _mock(3):
            make_dataset(src, "train", 3, task="class_conditional")


def test_missing_dataset_fails_fast_with_instructions(tmp_path):
    # The autouse fixture refuses every socket: reaching the message proves no download was tried.
    with pytest.raises(FileNotFoundError) as err:
        make_dataset("tfds", "train", 4, source_kwargs={"name": "cifar10", "data_dir": tmp_path})
    message = str(err.value)
    assert "not prepared" in message and "cifar-10-binary.tar.gz" in message
    assert "manual_dir" in message and "download=True" in message


def test_manual_dir_lacking_files_lists_them(tmp_path):
    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "Imagenet32_train_npz.zip").write_bytes(b"x")
    src = TfdsSource("imagenet_resized/32x32", data_dir=tmp_path, manual_dir=manual)
    with pytest.raises(FileNotFoundError, match=r"lacks \['Imagenet32_val_npz.zip'\]"):
        make_dataset(src, "train", 4)


def test_offline_prepare_from_manual_dir_never_downloads(tmp_path):
    """Real TFDS preparation (not mocked) from a wrong manual file: a checksum error, no network."""
    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "cifar-10-binary.tar.gz").write_bytes(b"not the real archive")
    src = TfdsSource("cifar10", data_dir=tmp_path / "tfds", manual_dir=manual)
    with pytest.raises(Exception, match="wrong checksum") as err:
        make_dataset(src, "train", 4)
    assert any("unmodified official downloads" in note for note in err.value.__notes__)


def test_download_with_unreachable_host_fails_fast(tmp_path, monkeypatch):
    probed = []

    def unreachable(address, timeout=None):
        probed.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    src = TfdsSource("cifar10", data_dir=tmp_path, download=True, probe_timeout=0.5)
    with pytest.raises(FileNotFoundError, match="unreachable"):
        make_dataset(src, "train", 4)
    assert probed == [(("www.cs.toronto.edu", 443), 0.5)]


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="tfds.name"):
        TfdsSource("")
    with pytest.raises(ValueError, match="tfds.name='no_such_dataset_xyz'"):
        make_dataset(TfdsSource("no_such_dataset_xyz", data_dir=tmp_path), "train", 2)
    with pytest.raises(FileNotFoundError, match="tfds.manual_dir"):
        TfdsSource("cifar10", manual_dir=tmp_path / "absent")
    with pytest.raises(ValueError, match="tfds.download"):
        TfdsSource("cifar10", download="yes")
    with pytest.raises(ValueError, match="tfds.image_key='img'"):
        make_dataset(TfdsSource("cifar10", data_dir=tmp_path, image_key="img"), "train", 2)
