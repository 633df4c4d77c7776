"""Area resize and crop boxes against NumPy references built from the definitions."""

import numpy as np
import pytest
from PIL import Image

from t2t_image.data import ImageFolderSource, area_resize, make_dataset, parse_split
from t2t_image.data.preprocess import crop_box_for_shape, validate_crop_box


def block_mean(images, factor):
    n, h, w, c = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor, c).astype(np.float64).mean(axis=(2, 4))


def box_weights(n_in, n_out):
    """Area resampling matrix: output pixel o averages [o*s, (o+1)*s) with fractional overlaps."""
    s = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        for i in range(n_in):
            w[o, i] = max(0.0, min((o + 1) * s, i + 1) - max(o * s, i)) / s
    return w


def area_reference(images, size):
    images = images.astype(np.float64)
    wy = box_weights(images.shape[1], size)
    wx = box_weights(images.shape[2], size)
    return np.einsum("oi,nijc,pj->nopc", wy, images, wx)


def test_area_resize_is_floor_of_block_mean_on_cifar(shared_data):
    x = np.load(shared_data / "cifar10" / "cifar10_train_exact.npz")["x"][:500]
    out = area_resize(x, 8).numpy()
    assert out.dtype == np.uint8 and out.shape == (500, 8, 8, 3)
    mean = block_mean(x, 4)
    np.testing.assert_array_equal(out, np.floor(mean).astype(np.uint8))
    # Truncation, not rounding: it differs from rounding wherever the fraction is >= 0.5.
    assert (out != np.round(mean)).mean() > 0.2
    np.testing.assert_array_equal(area_resize(x, 32).numpy(), x)  # Same size: unchanged.
    np.testing.assert_array_equal(area_resize(x[0], (16, 8)).numpy(),
                                  np.floor(x[0].reshape(16, 2, 8, 4, 3).mean(axis=(1, 3))).astype(np.uint8))


def test_super_resolution_pairs_on_cifar(shared_data):
    x = np.load(shared_data / "cifar10" / "cifar10_train_exact.npz")["x"][:64]
    ds = make_dataset("npz", "train", 64, task="super_resolution",
                      source_kwargs={"path": shared_data / "cifar10" / "cifar10_train_exact.npz"})
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["targets"].numpy(), x)
    np.testing.assert_array_equal(batch["inputs"].numpy(), np.floor(block_mean(x, 4)).astype(np.uint8))


def _pil_rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_super_resolution_pairs_on_celeba_jpegs_integer_factor(shared_data, tmp_path):
    folder = shared_data / "celeba" / "img_align_celeba_89x109"
    files = sorted(folder.glob("*.jpg"))[:24]
    # A 64x64 box inside the 109x89 images: targets are 2x2 block means, inputs 8x8 block means.
    src = ImageFolderSource(folder, crop_box=(20, 10, 64, 64))
    batch = next(iter(make_dataset(src, "train[:24]", 24, task="super_resolution")))
    crops = np.stack([_pil_rgb(f)[20:84, 10:74] for f in files])
    np.testing.assert_array_equal(batch["targets"].numpy(), np.floor(block_mean(crops, 2)).astype(np.uint8))
    np.testing.assert_array_equal(batch["inputs"].numpy(), np.floor(block_mean(crops, 8)).astype(np.uint8))


def test_super_resolution_pairs_on_celeba_jpegs_t2t_crop(shared_data):
    folder = shared_data / "celeba" / "img_align_celeba_89x109"
    files = sorted(folder.glob("*.jpg"))[:16]
    src = ImageFolderSource(folder, crop_box="celeba")
    batch = next(iter(make_dataset(src, "train[:16]", 16, task="super_resolution")))
    # T2T's 138x138 box at half resolution: rows 20..88, columns 10..78 (69x69).
    crops = np.stack([_pil_rgb(f)[20:89, 10:79] for f in files])
    for key, size in (("targets", 32), ("inputs", 8)):
        out = batch[key].numpy().astype(np.int64)
        ref = area_reference(crops, size)
        floor = np.floor(ref).astype(np.int64)
        # Fractional factor: where the exact mean is (within float error) an integer k,
        # float32 may land on either side of k, so truncation gives k or k - 1;
        # everywhere else the result is exactly floor(mean).
        k = np.round(ref)
        near_integer = np.abs(ref - k) < 1e-3
        assert np.all((out == floor) | (near_integer & ((out == k) | (out == k - 1))))
        assert (out == floor).mean() > 0.99


def test_folder_pairs_track_the_shared_pillow_pairs(shared_data):
    """Same images, same order, same crop as the shared pairs (made with Pillow BOX, rounded)."""
    src = ImageFolderSource(shared_data / "celeba" / "img_align_celeba_89x109", crop_box="celeba")
    batch = next(iter(make_dataset(src, "train[:64]", 64, task="super_resolution")))
    pairs = np.load(shared_data / "celeba" / "celeba_train9000_32x32_8x8.npz")
    np.testing.assert_array_equal(pairs["image_id"][:64], np.arange(1, 65))
    diff = pairs["x32"][:64].astype(np.float64) - batch["targets"].numpy()
    per_image = np.abs(diff).mean(axis=(1, 2, 3))
    assert per_image.max() < 6.0  # Pillow's BOX samples pixel centres; TF integrates exactly.
    assert 0.2 < diff.mean() < 1.5  # Truncation makes ours lower on average.


def test_crop_box_presets_and_validation():
    assert crop_box_for_shape("celeba", 218, 178) == (40, 20, 138, 138)
    assert crop_box_for_shape("celeba", 109, 89) == (20, 10, 69, 69)
    assert crop_box_for_shape((1, 2, 3, 4), 10, 10) == (1, 2, 3, 4)
    assert validate_crop_box([1, 2, 3, 4]) == (1, 2, 3, 4)
    for bad in ("face", (1, 2, 3), (0, 0, 0, 5), (-1, 0, 4, 4), (0.5, 0, 4, 4), 7):
        with pytest.raises(ValueError, match="crop_box"):
            validate_crop_box(bad)


def test_split_parsing_matches_tfds_rounding():
    n = 5085
    train, held = parse_split("train[:90%]")[0], parse_split("train[90%:]")[0]
    cut = int(round(90 * n / 100.0))
    assert train.indices(n) == range(0, cut) and held.indices(n) == range(cut, n)
    assert parse_split("train[-100:]")[0].indices(n) == range(n - 100, n)
    assert parse_split("train[10:5]")[0].indices(n) == range(10, 10)
    assert parse_split("train[:99999]")[0].indices(n) == range(0, n)
    assert [p.name for p in parse_split("train[:10%]+test")] == ["train", "test"]
    for bad in ("", "train[::2]", "train[a:]", "train[:200%]", "tr ain]", None):
        with pytest.raises(ValueError, match="split"):
            parts = parse_split(bad)
            parts[0].indices(10)
