"""Tests of the super-resolution evaluation: bits/dim, consistency, sample grids."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from t2t_image.evaluation import box_downsample
from t2t_image.evaluation import consistency
from t2t_image.evaluation import downsampling_factor
from t2t_image.evaluation import evaluate_super_resolution
from t2t_image.evaluation import make_sample_fn
from t2t_image.evaluation import nearest_upsample
from t2t_image.evaluation import nll_bits_per_dim
from t2t_image.evaluation import sample_grid
from t2t_image.evaluation import write_sample_grid
from t2t_image.evaluation.super_resolution import shuffled_inputs
from t2t_image.evaluation.super_resolution import upsample_baselines
from t2t_image.models.img2img_transformer import Img2ImgTransformer
from t2t_image.sampling import reference_sample


def images(n, size, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3)).astype("uint8")


def tiny_model():
    model = Img2ImgTransformer(
        input_height=2, input_width=2, image_height=4, image_width=4, hidden_size=16,
        filter_size=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        block_length=4, layer_prepostprocess_dropout=0.0,
    )
    model({"inputs": images(1, 2), "targets": images(1, 4)})
    return model


# ------------------------------------------------------------- resampling
def test_box_downsample_is_the_block_mean_and_tf_area_resize():
    x = images(2, 8, seed=1)
    for factor in (1, 2, 4, 8):
        got = box_downsample(x, factor)
        size = 8 // factor
        expected = np.zeros((2, size, size, 3))
        for n in range(2):
            for i in range(size):
                for j in range(size):
                    block = x[n, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor]
                    expected[n, i, j] = block.reshape(-1, 3).astype(float).mean(0)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        area = tf.image.resize(x.astype("float32"), (size, size), method="area").numpy()
        np.testing.assert_allclose(got, area, atol=1e-3)


def test_nearest_upsample_repeats_pixels():
    x = images(1, 2, seed=2)
    up = nearest_upsample(x, 3)
    assert up.shape == (1, 6, 6, 3) and up.dtype == np.uint8
    for i in range(6):
        for j in range(6):
            np.testing.assert_array_equal(up[0, i, j], x[0, i // 3, j // 3])
    np.testing.assert_array_equal(box_downsample(up, 3), x)


@pytest.mark.parametrize(
    "low,high,pattern",
    [((8, 8, 3), (30, 30, 3), "8x8x3"), ((8, 8, 3), (32, 16, 3), "32x16x3"),
     ((8, 8, 3), (32, 32, 1), "32x32x1")],
)
def test_downsampling_factor_rejects_non_integer_ratios(low, high, pattern):
    with pytest.raises(ValueError, match=pattern):
        downsampling_factor(low, high)
    assert downsampling_factor((2, 8, 8, 3), (2, 32, 32, 3)) == 4


def test_box_downsample_rejects_a_factor_that_does_not_divide():
    with pytest.raises(ValueError, match="factor=3"):
        box_downsample(images(1, 8), 3)


# ------------------------------------------------------------- consistency
def test_consistency_is_the_mse_on_the_unit_scale():
    low = images(3, 8, seed=3)
    high = images(3, 32, seed=4)
    got = consistency(low, high)
    # Brute force from the definition: mean over pixels and channels of the
    # squared difference between the 4x4 block means and the input, in [0, 1].
    expected = []
    for n in range(3):
        total = 0.0
        for i in range(8):
            for j in range(8):
                for c in range(3):
                    mean = high[n, 4 * i:4 * i + 4, 4 * j:4 * j + 4, c].astype(float).mean()
                    total += (mean / 255.0 - low[n, i, j, c] / 255.0) ** 2
        expected.append(total / (8 * 8 * 3))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_consistency_of_exact_and_shifted_upsamplings():
    low = np.random.RandomState(5).randint(20, 200, size=(2, 8, 8, 3)).astype("uint8")
    np.testing.assert_array_equal(consistency(low, nearest_upsample(low, 4)), 0.0)
    shifted = nearest_upsample(low, 4).astype(int) + 51  # +0.2 on the unit scale
    np.testing.assert_allclose(consistency(low, shifted), 0.2 ** 2, rtol=1e-12)
    # One channel off by 0.2 in every pixel: MSE over channels, not a per-pixel norm.
    one = nearest_upsample(low, 4).astype(int)
    one[..., 1] += 51
    np.testing.assert_allclose(consistency(low, one), 0.2 ** 2 / 3, rtol=1e-12)


def test_consistency_checks_batch_sizes():
    with pytest.raises(ValueError, match="same number of images"):
        consistency(images(2, 8), images(3, 32))


# --------------------------------------------------------------------- NLL
def _reference_bits(model, batches):
    nats, count = 0.0, 0
    for batch in batches:
        logits = np.asarray(model(batch), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        chosen = np.take_along_axis(logp, batch["targets"][..., None].astype(int), -1)
        nats -= chosen.sum()
        count += len(batch["targets"])
    return nats / (count * 4 * 4 * 3 * np.log(2.0))


def test_nll_is_the_mean_over_all_images_not_over_batches():
    model = tiny_model()
    low, high = images(7, 2, seed=6), images(7, 4, seed=7)
    batches = [{"inputs": low[a:b], "targets": high[a:b]} for a, b in ((0, 3), (3, 6), (6, 7))]
    got = nll_bits_per_dim(model, batches)
    np.testing.assert_allclose(got, _reference_bits(model, batches), rtol=1e-5)
    batch_means = np.mean([_reference_bits(model, [b]) for b in batches])
    assert abs(got - batch_means) > 1e-4  # the short last batch does not weigh 1/3
    np.testing.assert_allclose(
        nll_bits_per_dim(model, batches, max_batches=2), _reference_bits(model, batches[:2]),
        rtol=1e-5,
    )
    dataset = tf.data.Dataset.from_tensor_slices({"inputs": low, "targets": high}).batch(3)
    np.testing.assert_allclose(nll_bits_per_dim(model, dataset), got, rtol=1e-5)


def test_nll_needs_inputs_and_targets():
    model = tiny_model()
    with pytest.raises(ValueError, match="'inputs'"):
        nll_bits_per_dim(model, [{"targets": images(1, 4)}])
    with pytest.raises(ValueError, match="no images"):
        nll_bits_per_dim(model, [])


# --------------------------------------------------------------------- grid
def test_sample_grid_layout_and_png(tmp_path):
    low, originals = images(2, 2, seed=8), images(2, 8, seed=9)
    samples = {1.0: images(2, 8, seed=10), 0.9: images(2, 8, seed=11),
               0.8: images(2, 8, seed=12)}
    path = tmp_path / "sub" / "grid.png"
    grid = write_sample_grid(path, low, samples, originals, padding=1)
    assert grid.shape == (2 * 9 + 1, 5 * 9 + 1, 3) and grid.dtype == np.uint8
    columns = [nearest_upsample(low, 4), samples[1.0], samples[0.9], samples[0.8], originals]
    for row in range(2):
        for col, tile in enumerate(columns):
            top, left = 1 + 9 * row, 1 + 9 * col
            np.testing.assert_array_equal(grid[top:top + 8, left:left + 8], tile[row])
    assert (grid[0] == 255).all() and (grid[:, 9] == 255).all()
    with Image.open(path) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), grid)
    same = sample_grid(low, list(samples.values()), originals, padding=1)
    np.testing.assert_array_equal(same, grid)
    # Scaled for viewing: every tile 2x (8 -> 16 px), the layout unchanged.
    big = sample_grid(low, samples, originals, padding=1, min_tile_size=16)
    assert big.shape == (2 * 17 + 1, 5 * 17 + 1, 3)
    np.testing.assert_array_equal(big[1 + 17:1 + 17 + 16:2, 1 + 34:1 + 34 + 16:2],
                                  samples[0.9][1])


def test_sample_grid_rejects_mismatched_columns():
    with pytest.raises(ValueError, match="every column"):
        sample_grid(images(2, 2), [images(2, 4)], images(2, 8))


# ---------------------------------------------------------------- all-in-one
def test_evaluate_with_a_known_sampler(tmp_path):
    model = tiny_model()
    low = np.minimum(images(5, 2, seed=13), 200)
    high = images(5, 4, seed=14)
    batches = [{"inputs": low[a:b], "targets": high[a:b]} for a, b in ((0, 2), (2, 4), (4, 5))]
    calls = []

    def offset(temperature):
        return int(round(10 * temperature))  # 10, 9, 8

    def sample_fn(inputs, temperature, seed):
        # The upsampled input, brighter by offset(t): consistency (offset / 255)^2.
        calls.append((temperature, seed))
        return nearest_upsample(np.asarray(inputs), 2).astype(np.int32) + offset(temperature)

    result = evaluate_super_resolution(
        model, batches, sample_fn, seed=100, sample_batches=2, grid_path=tmp_path / "g.png",
        grid_examples=3,
    )
    np.testing.assert_allclose(result["bits_per_dim"], nll_bits_per_dim(model, batches),
                               rtol=1e-6)
    assert result["num_images"] == 5 and result["num_sampled"] == 4
    assert sorted(calls) == sorted((t, s) for t in (1.0, 0.9, 0.8) for s in (100, 101))
    for t in (1.0, 0.9, 0.8):
        np.testing.assert_allclose(result["consistency"][t], (offset(t) / 255.0) ** 2,
                                   rtol=1e-12)
    with Image.open(result["grid_path"]) as png:
        assert png.size == (5 * 6 + 2, 3 * 6 + 2)
        grid = np.asarray(png.convert("RGB"))
    # Row 2, column 2 (temperature 0.9) is the third example's upsampled input + 9.
    np.testing.assert_array_equal(grid[2 + 2 * 6:2 + 2 * 6 + 4, 2 + 2 * 6:2 + 2 * 6 + 4],
                                  nearest_upsample(low[2:3], 2)[0] + 9)


def test_evaluation_scores_shuffled_inputs_and_psnr(tmp_path):
    model = tiny_model()
    low, high = images(4, 2, seed=3), images(4, 4, seed=4)
    batches = [{"inputs": low[:3], "targets": high[:3]}, {"inputs": low[3:], "targets": high[3:]}]

    def sample_fn(inputs, temperature, seed):  # the originals themselves, then off by 16
        return high[:3].astype(np.int32) + (0 if temperature == 1.0 else 16)

    result = evaluate_super_resolution(model, batches, sample_fn, sample_batches=1)
    # The batch of one has no other input to borrow: only the first batch is shuffled.
    rolled = {"inputs": np.roll(low[:3], 1, axis=0), "targets": high[:3]}
    np.testing.assert_allclose(result["bits_per_dim_shuffled_inputs"],
                               nll_bits_per_dim(model, [rolled]), rtol=1e-6)
    assert result["psnr"][1.0] == 100.0  # identical images, capped
    expected = 10 * np.log10(255.0**2 / 16**2)
    np.testing.assert_allclose(result["psnr"][0.9], expected, rtol=1e-5)
    nearest = nearest_upsample(low[:3], 2)
    np.testing.assert_array_equal(upsample_baselines(low[:3], 4)["nearest"], nearest)
    mse = ((nearest.astype(float) - high[:3]) ** 2).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(result["psnr_baselines"]["nearest"],
                               np.mean(10 * np.log10(255.0**2 / mse)), rtol=1e-5)
    np.testing.assert_array_equal(shuffled_inputs(batches[0])["inputs"][0], low[2])


def test_evaluate_with_the_reference_sampler(tmp_path):
    model = tiny_model()
    low, high = images(2, 2, seed=15), images(2, 4, seed=16)

    sample_fn = make_sample_fn(model, "reference")
    result = evaluate_super_resolution(
        model, [{"inputs": low, "targets": high}], sample_fn, temperatures=(1.0, 0.8),
        grid_path=tmp_path / "grid.png",
    )
    assert set(result["consistency"]) == {1.0, 0.8}
    for t in (1.0, 0.8):
        drawn = reference_sample(model, 2, temperature=t, seed=0, inputs=low)
        np.testing.assert_array_equal(sample_fn(low, t, 0), drawn)
        expected = consistency(low, drawn).mean()
        np.testing.assert_allclose(result["consistency"][t], expected, rtol=1e-12)
    assert 7.0 < result["bits_per_dim"] < 9.5  # untrained: about uniform
    assert (tmp_path / "grid.png").is_file()


def test_make_sample_fn_rejects_an_unknown_sampler():
    with pytest.raises(ValueError, match="sampler"):
        make_sample_fn(None, "greedy")


def test_evaluate_rejects_a_grid_without_a_sampler(tmp_path):
    with pytest.raises(ValueError, match="sample_fn"):
        evaluate_super_resolution(tiny_model(), [], grid_path=tmp_path / "g.png")
