"""Image grids of samples: layout, PNG files, the trainer's summary grid."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from t2t_image.models import ImageTransformer
from t2t_image.sampling import image_grid
from t2t_image.sampling import sample
from t2t_image.sampling import sample_grid_for_summary
from t2t_image.sampling import write_image_grid


def test_grid_places_every_image_row_by_row(tmp_path):
    images = np.arange(5 * 2 * 3 * 3).reshape(5, 2, 3, 3).astype(np.uint8)
    grid = image_grid(images, num_columns=2, padding=1, pad_value=7)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 3) and grid.dtype == np.uint8
    for i in range(5):
        top, left = 1 + (i // 2) * 3, 1 + (i % 2) * 4
        np.testing.assert_array_equal(grid[top:top + 2, left:left + 3], images[i])
    mask = np.ones(grid.shape[:2], bool)
    for i in range(5):
        top, left = 1 + (i // 2) * 3, 1 + (i % 2) * 4
        mask[top:top + 2, left:left + 3] = False
    assert (grid[mask] == 7).all()  # padding and the empty sixth tile
    # Default: about square.
    assert image_grid(images, padding=0).shape == (2 * 2, 3 * 3, 3)
    written = write_image_grid(tmp_path / "sub" / "g.png", images, num_columns=5)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png")), written)


@pytest.mark.parametrize(
    "images,kwargs,pattern",
    [
        (np.zeros((2, 4, 4)), {}, "shape"),
        (np.full((1, 2, 2, 3), 256), {}, "0..255"),
        (np.zeros((1, 2, 2, 3)), dict(num_columns=0), "num_columns"),
        (np.zeros((1, 2, 2, 3)), dict(padding=-1), "padding"),
    ],
)
def test_grid_rejects_bad_arguments(images, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        image_grid(images, **kwargs)


def test_summary_grid_samples_the_labels_of_the_eval_batch():
    model = ImageTransformer(image_height=4, image_width=4, hidden_size=8, filter_size=8,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=3)
    features = {"targets": np.zeros((6, 4, 4, 3), np.uint8),
                "labels": np.array([2, 1, 0, 2, 1, 0], np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(6)
    grid = sample_grid_for_summary(model, 4, seed=3, eval_dataset=dataset)
    expected = sample(model, 4, seed=3, labels=[2, 1, 0, 2])
    np.testing.assert_array_equal(grid, image_grid(expected, min_tile_size=128))
    # Without a dataset the classes cycle 0, 1, 2, ...
    grid = sample_grid_for_summary(model, 2, seed=3)
    np.testing.assert_array_equal(
        grid, image_grid(sample(model, 2, seed=3, labels=[0, 1]), min_tile_size=128))


def test_viewable_grid_scales_tiles_up_nearest_neighbour(tmp_path):
    """8x8 tiles become 128x128 (factor 16), each pixel a 16x16 block, 2 px borders."""
    from PIL import Image

    images = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    grid = write_image_grid(tmp_path / "g.png", images, num_columns=3, min_tile_size=128)
    assert grid.shape == (2 + 128 + 2, 3 * (128 + 2) + 2, 3)
    with Image.open(tmp_path / "g.png") as png:
        assert png.size == (3 * 130 + 2, 132)
    tile = grid[2:130, 2 + 130:2 + 130 + 128]
    np.testing.assert_array_equal(tile, np.repeat(np.repeat(images[1], 16, 0), 16, 1))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # written then renamed
    # 20x12 images: the smaller side decides (ceil(128 / 12) = 11).
    assert image_grid(np.zeros((1, 20, 12, 1), np.uint8), min_tile_size=128,
                      padding=0).shape == (220, 132, 1)
