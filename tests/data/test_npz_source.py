"""npz source: shapes, dtypes, label alignment on the shared CIFAR-10 images, bad files."""

import logging

import numpy as np
import pytest

from t2t_image.data import CIFAR10_LABEL_NAMES, NpzSource, load_cifar_pickle, make_dataset


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture
def cifar_npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def test_label_names_and_per_class_counts(cifar_npz, shared_data):
    raw = np.load(cifar_npz)
    ds, info = make_dataset("npz", "train", 500, task="class_conditional",
                            source_kwargs={"path": cifar_npz}, with_info=True)
    out = _collect(ds)
    # Evaluation pipeline: one pass, in file order, nothing dropped.
    assert out["targets"].dtype == np.uint8 and out["targets"].shape == (5085, 32, 32, 3)
    assert out["labels"].dtype == np.int32 and out["labels"].shape == (5085,)
    np.testing.assert_array_equal(out["targets"], raw["x"])
    np.testing.assert_array_equal(out["labels"], raw["y"])
    # Label names agree with the official metadata file, read with the safe unpickler.
    meta = load_cifar_pickle((shared_data / "cifar10" / "batches.meta").read_bytes())
    assert info.label_names == [n.decode() for n in meta["label_names"]] == list(CIFAR10_LABEL_NAMES)
    assert info.num_classes == 10 and info.num_examples == 5085
    counts = np.bincount(out["labels"], minlength=10)
    np.testing.assert_array_equal(counts, [517, 524, 490, 493, 537, 475, 503, 516, 529, 501])


def test_shuffled_training_keeps_labels_with_images(cifar_npz, shared_data):
    raw = np.load(cifar_npz)
    by_image = {img.tobytes(): int(lab) for img, lab in zip(raw["x"], raw["y"])}
    assert len(by_image) == len(raw["x"])  # Images are distinct, so the lookup is exact.
    # Independent check of the labels themselves: the JPEG copy of data_batch_1 (other
    # origin) carries the same labels for the same (lossy) images.
    jpeg = np.load(shared_data / "cifar10" / "cifar10_jpeg_train_batch1.npz")
    first = np.flatnonzero(raw["batch"] == 1)
    np.testing.assert_array_equal(raw["y"][first], jpeg["y"][raw["index_in_batch"][first]])
    err = np.abs(raw["x"][first].astype(int) - jpeg["x"][raw["index_in_batch"][first]].astype(int))
    # (The JPEG copy's error is about 5.8/255 on average and at most 13/255 per image.)
    assert err.reshape(len(first), -1).mean(axis=1).max() < 14 and err.mean() < 8

    ds = make_dataset("npz", "train", 64, task="class_conditional", training=True, seed=3,
                      source_kwargs={"path": cifar_npz})
    seen = []
    for batch in ds.take(20):
        assert batch["targets"].shape == (64, 32, 32, 3)
        for img, lab in zip(batch["targets"].numpy(), batch["labels"].numpy()):
            assert by_image[img.tobytes()] == lab
            seen.append(img.tobytes())
    assert len(set(seen)) == len(seen)  # 1280 < one epoch: a permutation, no repeats.
    first_labels = [by_image[s] for s in seen[:64]]
    assert first_labels != list(raw["y"][:64])  # Shuffled.


def test_holdout_splits_are_disjoint_and_cover(cifar_npz):
    src = NpzSource(cifar_npz)
    train = _collect(make_dataset(src, "train[:90%]", 256))["targets"]
    held = _collect(make_dataset(src, "train[90%:]", 256))["targets"]
    assert len(train) == 4576 and len(held) == 509  # round(0.9 * 5085) = 4576, as TFDS.
    raw = np.load(cifar_npz)["x"]
    np.testing.assert_array_equal(np.concatenate([train, held]), raw)


def test_precomputed_inputs_and_imagenet_standin(shared_data, caplog):
    pairs = shared_data / "celeba" / "celeba_train9000_32x32_8x8.npz"
    raw = np.load(pairs)
    ds = make_dataset("npz", "train[:40]", 16, task="super_resolution",
                      source_kwargs={"path": pairs, "image_key": "x32", "inputs_key": "x8"})
    out = _collect(ds)
    np.testing.assert_array_equal(out["targets"], raw["x32"][:40])
    np.testing.assert_array_equal(out["inputs"], raw["x8"][:40])
    with pytest.raises(ValueError, match="input_size=4"):
        make_dataset("npz", "train", 4, task="super_resolution", input_size=4,
                     source_kwargs={"path": pairs, "image_key": "x32", "inputs_key": "x8"})

    inet = shared_data / "imagenet32" / "imagenet_sample1000_64x64.npz"
    with caplog.at_level(logging.INFO):
        ds, info = make_dataset("npz", "train", 10, task="class_conditional", image_size=64,
                                source_kwargs={"path": inet, "imagenet_version": "oord"}, with_info=True)
    batch = next(iter(ds))
    assert batch["targets"].shape == (10, 64, 64, 3) and batch["labels"].dtype.name == "int32"
    np.testing.assert_array_equal(batch["labels"].numpy(), np.load(inet)["label"][:10])
    assert info.imagenet_version == "oord" and info.num_classes == 1000
    assert "Downsampled ImageNet version: oord" in caplog.text
    assert "Dataset: npz(" in caplog.text and "task=class_conditional" in caplog.text
    # Area-resizing the 64x64 version to 32x32 is the 2x2 block mean, truncated.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        ds = make_dataset("npz", "train[:10]", 10, image_size=32, source_kwargs={"path": inet})
    assert "area-resized from 64x64 to 32x32" in caplog.text
    assert "imagenet_version is not set" in caplog.text
    x64 = np.load(inet)["x"][:10].astype(np.float64)
    ref = np.floor(x64.reshape(10, 32, 2, 32, 2, 3).mean(axis=(2, 4)))
    np.testing.assert_array_equal(next(iter(ds))["targets"].numpy(), ref.astype(np.uint8))


def test_flat_channel_first_layout_and_label_offset(tmp_path, shared_data):
    x = np.load(shared_data / "cifar10" / "cifar10_train_exact.npz")["x"][:12]
    flat = x.transpose(0, 3, 1, 2).reshape(12, -1)  # Chrabaszcz et al. npz layout, 1-based labels.
    np.savez(tmp_path / "batch_1.npz", data=flat[:6], labels=np.arange(1, 7))
    np.savez(tmp_path / "batch_2.npz", data=flat[6:], labels=np.arange(7, 13))
    ds = make_dataset("npz", "train", 12, task="class_conditional",
                      source_kwargs={"path": str(tmp_path / "batch_*.npz"), "label_offset": -1})
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["targets"].numpy(), x)
    np.testing.assert_array_equal(batch["labels"].numpy(), np.arange(12))


def test_bad_npz_files(tmp_path):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    cases = [
        (save("f32.npz", x=np.zeros((2, 8, 8, 3), np.float32)),
         r"array 'x' .* has dtype float32 and shape \(2, 8, 8, 3\); expected uint8 \[N, h, w, 3\]"),
        (save("grey.npz", x=np.zeros((2, 8, 8), np.uint8)),
         r"array 'x' .* has dtype uint8 and shape \(2, 8, 8\); expected uint8 \[N, h, w, 3\]"),
        (save("rgba.npz", x=np.zeros((2, 8, 8, 4), np.uint8)), r"shape \(2, 8, 8, 4\)"),
        (save("nokey.npz", pixels=np.zeros((2, 8, 8, 3), np.uint8)), r"no image array.*\['pixels'\]"),
        (save("badlab.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(3, np.int64)),
         r"array 'y' .* shape \(3,\); expected integers of shape \(2,\)"),
        (save("floatlab.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(2, np.float32)),
         r"array 'y' .* has dtype float32"),
        (save("obj.npz", x=np.array([None, 1], dtype=object)), r"object arrays"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            make_dataset("npz", "train", 2, task="class_conditional", source_kwargs={"path": path})
    not_npz = tmp_path / "junk.npz"
    not_npz.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        make_dataset("npz", "train", 2, source_kwargs={"path": not_npz})
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        NpzSource(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        NpzSource(str(tmp_path / "none_*.npz"))
    unlabelled = save("unl.npz", x=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="needs labels"):
        make_dataset("npz", "train", 2, task="class_conditional", source_kwargs={"path": unlabelled})
    with pytest.raises(ValueError, match="npz has splits \\['train'\\]"):
        make_dataset("npz", "test", 2, source_kwargs={"path": unlabelled})
    with pytest.raises(ValueError, match="exactly one of path"):
        NpzSource()
    with pytest.raises(ValueError, match="imagenet_version"):
        NpzSource(unlabelled, imagenet_version="imagenet")


def _npz_with_header(path, shape, data=b"\0" * 64):
    """An .npz whose array 'x' has a hand-written header claiming ``shape`` (uint8)."""
    import zipfile

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header = header.ljust(117) + "\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                    + header.encode() + data)
    return path


def test_npz_with_a_huge_claimed_header_names_the_file(tmp_path):
    # 3 PiB claimed over 64 bytes: numpy would try to allocate it (raw _ArrayMemoryError).
    path = _npz_with_header(tmp_path / "huge.npz", (2**40, 32, 32, 3))
    with pytest.raises(ValueError, match=rf"array 'x' in {path} claims shape \(1099511627776, "
                                         r"32, 32, 3\) of uint8 \(3377699720527872 bytes\) but "
                                         r"the file holds 64 bytes"):
        NpzSource(path).load("train", shuffle=False, seed=None, with_labels=False)
    # The same writer with an honest header reads back (the check is not a blanket refusal).
    ok = _npz_with_header(tmp_path / "ok.npz", (1, 4, 4, 3), bytes(range(48)) + b"")
    data = NpzSource(ok).load("train", shuffle=False, seed=None, with_labels=False)
    np.testing.assert_array_equal(data.images.ravel(), np.arange(48))


def test_labels_outside_num_classes_fail_when_the_dataset_is_built(tmp_path, cifar_npz,
                                                                   cifar_archive):
    path = tmp_path / "labels.npz"
    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(path, x=x, y=np.array([0, 1, 12, 2]))
    with pytest.raises(ValueError, match=rf"{path}.*label 12 \(example 2; 1 labels in all\) is "
                                         r"outside \[0, num_classes=10\)"):
        make_dataset("npz", "train", 2, task="class_conditional", num_classes=10,
                     source_kwargs={"path": path})
    np.savez(path, x=x, y=np.array([0, 1, 3, 2]), label_names=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=rf"'y' in {path} has label 3 at index 2, but "
                                         r"'label_names' names only 3 classes"):
        make_dataset("npz", "train", 2, task="class_conditional", source_kwargs={"path": path})
    # CIFAR-10 (npz and the official archive) with a model of fewer classes.
    for source, kwargs in (("npz", {"path": cifar_npz}), ("cifar10_archive", {"path": cifar_archive})):
        with pytest.raises(ValueError, match=r"is outside \[0, num_classes=5\); set num_classes "
                                             r"to the data's 10 classes"):
            make_dataset(source, "train", 4, task="class_conditional", num_classes=5,
                         source_kwargs=kwargs)
        make_dataset(source, "train", 4, task="class_conditional", num_classes=10,
                     source_kwargs=kwargs)  # Exactly enough classes: accepted.
