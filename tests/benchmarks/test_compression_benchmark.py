"""benchmarks/compression.py: its held-out images and its baselines (lossless, sizes)."""

import importlib.util
import pathlib

import numpy as np
import pytest

pytest.importorskip("imagecodecs")
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compression_benchmark",
                                                  REPO / "benchmarks" / "compression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_images_are_the_validation_split(bench, shared_data):
    images, labels, inputs = bench.held_out("cifar10", 3)
    with np.load(shared_data / "cifar10" / "cifar10_train_exact.npz") as data:
        # train[90%:] of 5,085 images starts at 4,576 (509 images, as the trainer evaluates).
        np.testing.assert_array_equal(images, data["x"][4576:4579])
        np.testing.assert_array_equal(labels, data["y"][4576:4579])
    assert inputs is None
    images, labels, inputs = bench.held_out("celeba", 2)
    with np.load(shared_data / "celeba" / "celeba_train9000_32x32_8x8.npz") as data:
        np.testing.assert_array_equal(images, data["x32"][8100:8102])
        np.testing.assert_array_equal(inputs, data["x8"][8100:8102])
    assert labels is None


def test_baselines_are_lossless_and_measured(bench):
    rng = np.random.RandomState(0)
    images = np.stack([rng.randint(0, 256, (8, 8, 3)), np.zeros((8, 8, 3)),
                       np.full((8, 8, 3), 255)]).astype(np.uint8)
    codecs = bench.classical_codecs()
    assert len(codecs) == 4
    for name, (encode, decode) in codecs.items():
        sizes, encode_rate, decode_rate = bench.measure_classical(images, encode, decode)
        # Noise costs more than a constant image; every codec decodes exactly (checked inside).
        assert sizes[0] > sizes[1] and encode_rate > 0 and decode_rate > 0, name
    with pytest.raises(AssertionError, match="not lossless"):
        bench.measure_classical(images, codecs["PNG (Pillow, level 9)"][0],
                                lambda data: np.zeros((8, 8, 3), np.uint8))
