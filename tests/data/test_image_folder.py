"""image_folder: real CelebA JPEGs, colour conversions, corrupt files counted and skipped."""

import logging
import os
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from t2t_image.data import ImageFolderSource, make_dataset


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture
def celeba_dir(shared_data):
    return shared_data / "celeba" / "img_align_celeba_89x109"


@pytest.fixture
def small_celeba(celeba_dir, tmp_path):
    """Ten real CelebA JPEGs copied to a temporary folder (never into the repository)."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for f in sorted(celeba_dir.glob("*.jpg"))[:10]:
        shutil.copy(f, folder / f.name)
    return folder


def test_celeba_super_resolution_shapes_and_order(celeba_dir):
    src = ImageFolderSource(celeba_dir, crop_box="celeba")
    ds, info = make_dataset(src, "train[:50]", 16, task="super_resolution", with_info=True)
    out = _collect(ds)
    assert out["targets"].dtype == np.uint8 and out["targets"].shape == (50, 32, 32, 3)
    assert out["inputs"].dtype == np.uint8 and out["inputs"].shape == (50, 8, 8, 3)
    assert info.num_examples == 50 and src.skipped.count == 0
    assert out["targets"].min() >= 0 and out["targets"].max() > 200  # Real photos span the range.
    # Evaluation is deterministic: same batches, in file order, twice.
    again = _collect(make_dataset(src, "train[:50]", 16, task="super_resolution"))
    np.testing.assert_array_equal(out["targets"], again["targets"])


def test_training_shuffle_is_seeded(celeba_dir):
    src = ImageFolderSource(celeba_dir, crop_box="celeba")

    def first_batches(seed):
        ds = make_dataset(src, "train[:40]", 8, training=True, seed=seed)
        return np.stack([b["targets"] for b in ds.take(6).as_numpy_iterator()])

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # 40 files, batches of 8: batches 0-4 are epoch 1 (each file once), batch 5 starts epoch 2.
    epoch = a[:5].reshape(40, -1)
    assert len({row.tobytes() for row in epoch}) == 40


def test_corrupt_files_are_skipped_counted_and_named(small_celeba, caplog):
    good = sorted(small_celeba.glob("*.jpg"))
    truncated = small_celeba / "zz_truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    garbage = small_celeba / "aa_garbage.png"
    garbage.write_bytes(b"this is not a png")
    src = ImageFolderSource(small_celeba)
    with caplog.at_level(logging.WARNING):
        out = _collect(make_dataset(src, "train", 4, image_size=16))
    assert out["targets"].shape == (10, 16, 16, 3)
    assert src.skipped.count == 2
    assert src.skipped.paths == sorted([str(garbage), str(truncated)])
    assert str(truncated) in caplog.text and str(garbage) in caplog.text
    assert "2 unreadable image file(s) skipped" in src.skipped.summary()
    # A second epoch skips them again without new warnings, and the count stays per file.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _collect(make_dataset(src, "train", 4, image_size=16))
    assert src.skipped.count == 2 and src.skipped.events == 4
    assert "skipping" not in caplog.text


def test_all_files_corrupt_fails_clearly(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff broken")
    ds = make_dataset(ImageFolderSource(tmp_path), "train", 2, training=True, seed=0)
    with pytest.raises(tf.errors.OpError, match="all 3 image files"):
        next(iter(ds))


def test_grey_rgba_palette_and_16bit_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "a_grey.png")
    Image.fromarray(np.dstack([rgb, np.full((8, 8), 7, np.uint8)]), "RGBA").save(tmp_path / "b_rgba.png")
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "c_palette.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "d_16bit.png")
    Image.fromarray(rgb).save(tmp_path / "e_rgb.png")
    out = _collect(make_dataset(ImageFolderSource(tmp_path), "train", 5, image_size=8))["targets"]
    assert out.shape == (5, 8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_array_equal(out[1], rgb)  # Alpha dropped, colour kept.
    np.testing.assert_array_equal(out[2], np.asarray(pal.convert("RGB")))
    np.testing.assert_array_equal(out[3], np.repeat(grey[..., None], 3, axis=-1))  # 16 -> 8 bits.
    np.testing.assert_array_equal(out[4], rgb)


def test_crop_box_too_large_is_a_counted_skip(small_celeba):
    src = ImageFolderSource(small_celeba, crop_box=(0, 0, 100, 100))  # Images are 109x89.
    with pytest.raises(tf.errors.OpError, match="unreadable"):
        next(iter(make_dataset(src, "train", 2)))
    assert src.skipped.count == 10
    assert "does not fit" in next(iter(src.skipped.reasons.values()))


def test_class_subfolders(small_celeba, tmp_path):
    root = tmp_path / "classes"
    files = sorted(small_celeba.glob("*.jpg"))
    for i, f in enumerate(files):
        cls = root / ("cat" if i < 4 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, cls / f.name)
    ds, info = make_dataset(ImageFolderSource(root, label_mode="subdirs", crop_box="celeba"), "train", 10,
                            task="class_conditional", with_info=True)
    out = _collect(ds)
    assert info.label_names == ["cat", "dog"] and info.num_classes == 2
    np.testing.assert_array_equal(out["labels"], [0] * 4 + [1] * 6)
    flat = _collect(make_dataset(ImageFolderSource(small_celeba, crop_box="celeba"), "train", 10))
    np.testing.assert_array_equal(out["targets"], flat["targets"])


def test_bad_folders_and_settings(tmp_path, small_celeba):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files"):
        make_dataset(ImageFolderSource(empty), "train", 2)
    with pytest.raises(ValueError, match="label_mode"):
        make_dataset(ImageFolderSource(small_celeba), "train", 2, task="class_conditional")
    with pytest.raises(ValueError, match="image_folder.label_mode"):
        ImageFolderSource(small_celeba, label_mode="folders")
    with pytest.raises(ValueError, match="image_folder.crop_box"):
        ImageFolderSource(small_celeba, crop_box=(0, 0, 0, 10))
    with pytest.raises(ValueError, match="selects no image files"):
        make_dataset(ImageFolderSource(small_celeba), "train[20:]", 2)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo is not available on this OS")
def test_fifo_named_like_an_image_is_skipped_at_listing_and_never_opened(small_celeba, caplog):
    # A FIFO named zz.jpg hung evaluation forever (opening it waits for a writer).
    fifo = small_celeba / "zz.jpg"
    os.mkfifo(fifo)
    nested = small_celeba / "sub"
    nested.mkdir()
    os.mkfifo(nested / "a.png")
    done = threading.Event()

    def unblock():  # Should the code ever block on a FIFO, fail the test instead of hanging.
        while not done.wait(10):
            for path in (fifo, nested / "a.png"):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass  # No reader blocked on it.

    threading.Thread(target=unblock, daemon=True).start()
    for recursive in (True, False):
        src = ImageFolderSource(small_celeba, recursive=recursive)
        with caplog.at_level(logging.WARNING):
            out = _collect(make_dataset(src, "train", 4, image_size=8))  # One pass, no hang.
        assert out["targets"].shape == (10, 8, 8, 3)
        expected = [str(nested / "a.png"), str(fifo)] if recursive else [str(fifo)]
        assert src.skipped.paths == expected
        assert "not a regular file" in src.skipped.reasons[str(fifo)]
        assert f"skipping {fifo}: not a regular file" in caplog.text
    # Opened directly (e.g. replaced by a FIFO after listing): refused at once, not blocked.
    from t2t_image.data import decode_image_file
    with pytest.raises(ValueError, match="is not a regular file"):
        decode_image_file(str(fifo))
    done.set()


def test_tiny_image_with_celeba_crop_is_a_counted_skip(small_celeba):
    # A 1x1 PNG: the scaled CelebA box is 0x0; this crashed after training with
    # "input image must be of non-zero size" although the README promises a counted skip.
    tiny = small_celeba / "00_tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    src = ImageFolderSource(small_celeba, crop_box="celeba")
    out = _collect(make_dataset(src, "train", 4, image_size=8))
    assert out["targets"].shape == (10, 8, 8, 3)
    assert src.skipped.paths == [str(tiny)]
    assert "does not fit an image of 1x1" in src.skipped.reasons[str(tiny)]


def test_more_class_folders_than_num_classes_fail_when_the_dataset_is_built(small_celeba, tmp_path):
    root = tmp_path / "classes"
    for i, f in enumerate(sorted(small_celeba.glob("*.jpg"))[:3]):
        (root / f"c{i}").mkdir(parents=True)
        shutil.copy(f, root / f"c{i}" / f.name)
    src = ImageFolderSource(root, label_mode="subdirs")
    with pytest.raises(ValueError, match=rf"image_folder\(train=\['{root}'\]\) split 'train': 3 "
                                         r"files: the data has 3 classes \(labels up to 2\) but "
                                         r"num_classes=2"):
        make_dataset(src, "train", 2, task="class_conditional", num_classes=2)
    make_dataset(src, "train", 2, task="class_conditional", num_classes=3)


def test_image_bombs_are_refused_from_their_header_before_decoding(small_celeba):
    """Issue 24: a 17 KB PNG declaring 12000x12000 pixels was decoded (2.3 GB) and trained on."""
    import resource
    import warnings

    from tests.image_bombs import write_png_bomb

    bomb = small_celeba / "bomb.png"
    assert write_png_bomb(bomb, 12000, 12000) < 20_000
    huge = small_celeba / "huge.png"  # beyond twice Pillow's own limit: its error, named
    write_png_bomb(huge, 20000, 20000)
    src = ImageFolderSource(small_celeba)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        out = _collect(make_dataset(src, "train", 4, image_size=16))
    # Decoding the bomb alone would take 144 MB (mode "1" as bytes) plus 432 MB of RGB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB
    assert out["targets"].shape == (10, 16, 16, 3)
    assert src.skipped.paths == [str(bomb), str(huge)]
    assert ("12000x12000 = 144000000 pixels, more than image_folder.max_image_pixels=50000000; "
            "refused before decoding") in src.skipped.reasons[str(bomb)]
    assert "refused before decoding" in src.skipped.reasons[str(huge)]
    # The limit is a setting: lowered below the real images' 89x109, every file is refused.
    with pytest.raises(ValueError, match="image_folder.max_image_pixels must be an int >= 1"):
        ImageFolderSource(small_celeba, max_image_pixels=0)
    strict = ImageFolderSource(small_celeba, max_image_pixels=89 * 109 - 1)
    with pytest.raises(tf.errors.OpError, match="all 12 image files"):
        next(iter(make_dataset(strict, "train", 4, image_size=16)))
