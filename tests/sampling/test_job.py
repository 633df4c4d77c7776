"""The sampling job of t2t-image-sampler, called from Python."""

import numpy as np
import pytest
from PIL import Image

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling import run_sampler
from t2t_image.sampling import sample
from t2t_image.sampling import write_grid
from t2t_image.sampling.files import read_inputs
from t2t_image.sampling.files import write_samples_npz


@pytest.fixture(scope="module")
def conditional():
    model = ImageTransformer(image_height=4, image_width=4, hidden_size=16, filter_size=16,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=3)
    model({"targets": np.zeros((1, 4, 4, 3), np.int32), "labels": np.zeros(1, np.int32)})
    model.output_layer.kernel.assign(model.output_layer.kernel * 10.0)
    return model


def test_batches_use_seed_plus_batch_index(conditional):
    got, conditioning, seconds = run_sampler(conditional, 3, 0.9, 7, label=2, batch_size=2,
                                             progress=False)
    np.testing.assert_array_equal(got[:2], sample(conditional, 2, 0.9, 7, labels=2))
    np.testing.assert_array_equal(got[2:], sample(conditional, 1, 0.9, 8, labels=2))
    np.testing.assert_array_equal(conditioning["labels"], [2, 2, 2])
    assert got.dtype == np.uint8 and seconds > 0


def test_window_stride_moves_the_sliding_window_like_the_library(conditional):
    from t2t_image.sampling import sample_sliding_window

    got = {}
    for stride in (1, 2):  # 4x4 training size; an 8x8 canvas needs a sliding window
        got[stride], _, _ = run_sampler(conditional, 2, 1.0, 5, label=1, progress=False,
                                        height=8, width=8, batch_size=2, window_stride=stride)
    want = sample_sliding_window(conditional, 2, 8, 8, seed=5, labels=np.full(2, 1),
                                 window_stride=(2, 2))
    np.testing.assert_array_equal(got[2], want)
    assert not np.array_equal(got[1], got[2])  # another window placement, other draws


def test_grid_states_its_layout_and_pairs_inputs_with_samples(tmp_path):
    sr = Img2ImgTransformer(input_height=2, input_width=2, image_height=4, image_width=4,
                            hidden_size=8, filter_size=8, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=1, block_length=4)
    rng = np.random.RandomState(0)
    inputs = rng.randint(0, 256, (2, 2, 2, 3)).astype(np.uint8)
    samples = rng.randint(0, 256, (3, 4, 4, 3)).astype(np.uint8)
    line = write_grid(tmp_path / "g.png", sr, samples, inputs=inputs)
    assert line == (f"Wrote a grid of 3 samples to {tmp_path / 'g.png'}: 2x4 tiles of 128 px, "
                    "row by row: pairs: each input, then its sample")
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 + 2 * 130, 2 + 4 * 130, 3)

    def tile(row, column):
        top, left = 2 + 130 * row, 2 + 130 * column
        return grid[top:top + 128:32, left:left + 128:32]  # one pixel per original pixel

    np.testing.assert_array_equal(tile(0, 0), inputs[0].repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(tile(0, 1), samples[0])
    np.testing.assert_array_equal(tile(0, 2), inputs[1].repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(tile(1, 0), inputs[0].repeat(2, 0).repeat(2, 1))  # 2 % 2
    np.testing.assert_array_equal(tile(1, 1), samples[2])
    line = write_grid(tmp_path / "c.png", sr, samples, complete=samples[0], columns=2)
    assert line.endswith(": 2x2 tiles of 128 px, row by row: first the image to complete, "
                         "then 3 samples")


def test_npz_round_trip(tmp_path):
    samples = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    path = write_samples_npz(str(tmp_path / "out" / "s"), samples, 3, 0.5,
                             {"labels": np.array([1, 2], np.int32)})
    assert path == str(tmp_path / "out" / "s.npz")
    with np.load(path) as data:
        np.testing.assert_array_equal(data["samples"], samples)
        assert int(data["seed"]) == 3 and float(data["temperature"]) == 0.5
        np.testing.assert_array_equal(data["labels"], [1, 2])
    np.savez(tmp_path / "x8.npz", x8=samples[0])  # one image [h, w, c] -> [1, h, w, c]
    np.testing.assert_array_equal(read_inputs(str(tmp_path / "x8.npz")), samples[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x8.npz"]
