"""The sampling job of t2t-image-sampler, called from Python."""

import os

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


def test_samples_stream_into_the_npz_and_the_grid_comes_last_and_capped(tmp_path, conditional,
                                                                         monkeypatch):
    """Issue 24: 20,000 samples made a 1 GB grid before the .npz was written (3 GB peak), and
    --num_samples=10**12 a raw MemoryError."""
    from t2t_image.sampling import job
    from t2t_image.sampling.arguments import SamplingArgumentError
    from t2t_image.sampling.job import sample_to_files

    assert job.MAX_GRID_SAMPLES == 1024  # a grid of 1024 tiles of 128 px: 50 MB
    MAX_GRID_SAMPLES = 9  # here, to sample few images
    monkeypatch.setattr(job, "MAX_GRID_SAMPLES", MAX_GRID_SAMPLES)

    grid, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    with pytest.raises(SamplingArgumentError, match=f"--num_samples={MAX_GRID_SAMPLES + 1}: the "
                       f"grid \\(--output\\) shows at most {MAX_GRID_SAMPLES} samples; pass --npz"):
        sample_to_files(conditional, MAX_GRID_SAMPLES + 1, grid, label=1, progress=False)
    # More than the disk holds: refused after the first batch, nothing left behind.
    with pytest.raises(SamplingArgumentError, match=r"--num_samples=1000000000000: --npz=.* "
                       r"would take 52000000000000 bytes \(52 per sample\), more than the"):
        sample_to_files(conditional, 10 ** 12, grid, str(npz), label=2, batch_size=5,
                        progress=False, jit_compile=False)
    assert os.listdir(tmp_path) == []
    n, batch = MAX_GRID_SAMPLES + 1, 5  # two batches of one shape: one compilation
    lines, seconds = sample_to_files(conditional, n, grid, str(npz), seed=3, label=2,
                                     batch_size=batch, progress=False, jit_compile=False)
    assert lines[0].startswith(f"Wrote a grid of the first {MAX_GRID_SAMPLES} of {n} samples")
    assert lines[1] == f"Wrote the samples to {npz} (uint8 [n, h, w, c] under 'samples')"
    with np.load(npz) as data:
        assert data["samples"].shape == (n, 4, 4, 3)
        np.testing.assert_array_equal(data["samples"][batch:],
                                      sample(conditional, batch, seed=4, labels=2,
                                             jit_compile=False))  # batch 1
        np.testing.assert_array_equal(data["labels"], np.full(n, 2))
        assert int(data["seed"]) == 3 and float(data["temperature"]) == 1.0
        first = data["samples"][:MAX_GRID_SAMPLES]
    shown = np.asarray(Image.open(grid))
    assert shown.shape == (2 + 3 * 130, 2 + 3 * 130, 3)  # the first 9 tiles of 128 px
    np.testing.assert_array_equal(shown[2 + 2 * 130:2 + 2 * 130 + 128:32,
                                        2 + 2 * 130:2 + 2 * 130 + 128:32], first[-1])
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "s.npz"]


def test_npz_writer_streams_codes_and_conditioning_and_leaves_nothing_when_stopped(tmp_path):
    from t2t_image.sampling.files import SamplesNpzWriter

    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (5, 2, 3, 3)).astype(np.uint8)
    codes = rng.randint(0, 9, (5, 2, 2)).astype(np.int32)
    inputs = rng.randint(0, 256, (2, 1, 1, 3)).astype(np.uint8)
    with SamplesNpzWriter(str(tmp_path / "a"), 5) as writer:
        writer.CHUNK = 2  # conditioning copied two samples at a time
        writer.add(images[:3], codes[:3])
        writer.add(images[3:], codes[3:])
        path = writer.finish({"seed": 7}, lambda start, count: {
            "inputs": inputs[(start + np.arange(count)) % 2]})
    with np.load(path) as data:
        assert sorted(data.files) == ["codes", "inputs", "samples", "seed"]
        np.testing.assert_array_equal(data["samples"], images)
        np.testing.assert_array_equal(data["codes"], codes)
        np.testing.assert_array_equal(data["inputs"], inputs[np.arange(5) % 2])
    with pytest.raises(KeyboardInterrupt):
        with SamplesNpzWriter(str(tmp_path / "b.npz"), 5) as writer:
            writer.add(images[:3], codes[:3])
            raise KeyboardInterrupt  # a signal mid-job
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]


def test_image_bombs_to_complete_are_refused_from_their_header(tmp_path):
    """Issue 24: a 17 KB PNG of 12000x12000 pixels was decoded (1.6 GB, 33 s) before its size
    was refused; one of 20000x20000 gave a raw DecompressionBombError."""
    import resource

    from t2t_image.sampling.arguments import SamplingArgumentError
    from t2t_image.sampling.files import check_image
    from t2t_image.sampling.files import read_image
    from tests.image_bombs import write_png_bomb

    bomb, huge, small = tmp_path / "bomb.png", tmp_path / "huge.png", tmp_path / "small.png"
    write_png_bomb(bomb, 12000, 12000)
    write_png_bomb(huge, 20000, 20000)
    write_png_bomb(small, 40, 30)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SamplingArgumentError, match=f"--complete={bomb} declares 12000x12000 = "
                       "144000000 pixels, more than the sampler's limit=50000000; refused before "
                       "decoding"):
        check_image(str(bomb), "complete")
    with pytest.raises(SamplingArgumentError, match=f"--complete={huge}: refused before "
                       "decoding: Image size \\(400000000 pixels\\)"):
        read_image(str(huge), "complete")
    # Within the limit but not the model's size: refused from the header, not decoded.
    with pytest.raises(SamplingArgumentError, match=r"--complete images are 30x40x3 \(height x "
                       "width x channels; from the file's header, not decoded\\), the model "
                       "expects 4x4x3"):
        read_image(str(small), "complete", size=(4, 4))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB
    assert read_image(str(small), "complete", size=(30, 40)).shape == (30, 40, 3)
