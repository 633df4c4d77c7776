"""make_dataset: settings validation, training vs evaluation behaviour, source selection."""

import numpy as np
import pytest

from t2t_image.data import SOURCES, NpzSource, get_source, make_dataset


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


def test_evaluation_is_one_deterministic_pass(tiny_npz):
    path, x, y = tiny_npz
    ds = make_dataset("npz", "train", 4, task="class_conditional", image_size=8, source_kwargs={"path": path})
    for _ in range(2):
        batches = list(ds.as_numpy_iterator())
        assert [len(b["targets"]) for b in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([b["targets"] for b in batches]), x)
        np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), y)


def test_training_shuffles_per_epoch_repeats_and_drops_remainder(tiny_npz):
    path, x, _ = tiny_npz
    ds = make_dataset("npz", "train", 5, image_size=8, training=True, seed=7, source_kwargs={"path": path})
    order = [[int(np.flatnonzero((x == img).all(axis=(1, 2, 3)))[0]) for img in b["targets"]]
             for b in ds.take(6).as_numpy_iterator()]
    epochs = [sorted(order[i] + order[i + 1]) for i in (0, 2, 4)]
    assert all(e == list(range(10)) for e in epochs)  # Each epoch is a permutation.
    assert len({tuple(order[i] + order[i + 1]) for i in (0, 2, 4)}) > 1  # Reshuffled per epoch.
    assert order[0] + order[1] != list(range(10))
    again = make_dataset("npz", "train", 5, image_size=8, training=True, seed=7, source_kwargs={"path": path})
    same = [[int(np.flatnonzero((x == img).all(axis=(1, 2, 3)))[0]) for img in b["targets"]]
            for b in again.take(6).as_numpy_iterator()]
    assert same == order  # Seeded.
    ds = make_dataset("npz", "train", 4, image_size=8, training=True, repeat=2, seed=1, source_kwargs={"path": path})
    assert [len(b["targets"]) for b in ds.as_numpy_iterator()] == [4] * 5  # 20 examples, full batches.
    assert ds.element_spec["targets"].shape.as_list() == [4, 8, 8, 3]  # Static batch for XLA.


def test_random_seed_is_drawn_and_reported(tiny_npz):
    path, _, _ = tiny_npz
    _, info = make_dataset("npz", "train", 2, image_size=8, training=True, source_kwargs={"path": path},
                           with_info=True)
    assert isinstance(info.seed, int) and info.shuffle and info.repeat is True and info.drop_remainder
    _, info = make_dataset("npz", "train", 2, image_size=8, source_kwargs={"path": path}, with_info=True)
    assert info.seed is None and not info.shuffle and info.repeat is False and not info.drop_remainder


@pytest.mark.parametrize("kwargs,message", [
    ({"task": "inpainting"}, "task must be one of"),
    ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    ({"batch_size": 2.0}, "batch_size must be an int"),
    ({"image_size": -8}, "image_size must be an int >= 1, got -8"),
    ({"task": "super_resolution", "input_size": 8, "image_size": 8}, "input_size must be smaller"),
    ({"task": "super_resolution", "input_size": 0}, "input_size must be an int >= 1, got 0"),
    ({"shuffle_buffer": 0}, "shuffle_buffer"),
    ({"training": "yes"}, "training must be a bool, got 'yes'"),
    ({"shuffle": 1}, "shuffle must be True, False or None, got 1"),
    ({"repeat": 0}, "repeat must be an int >= 1, got 0"),
    ({"seed": "abc"}, "seed must be an int or None, got 'abc'"),
    ({"imagenet_version": "downsampled"}, "imagenet_version must be None, 'oord' or 'chrabaszcz'"),
    ({"source_kwargs": [1]}, "source_kwargs must be a mapping"),
])
def test_bad_settings_name_the_setting(tiny_npz, kwargs, message):
    path, _, _ = tiny_npz
    kwargs = {"source_kwargs": {"path": path}, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_dataset("npz", "train", kwargs.pop("batch_size", 2), **kwargs)


def test_source_selection(tiny_npz):
    path, _, _ = tiny_npz
    assert sorted(SOURCES) == ["cifar10_archive", "image_folder", "npz", "tfds"]
    src = NpzSource(path)
    assert get_source(src) is src
    assert isinstance(get_source("npz", path=path), NpzSource)
    assert isinstance(get_source(NpzSource, path=path), NpzSource)
    with pytest.raises(ValueError, match="source must be one of"):
        get_source("hdf5")
    with pytest.raises(ValueError, match="already built source"):
        get_source(src, path=path)
