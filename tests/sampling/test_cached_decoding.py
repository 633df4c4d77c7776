"""Incremental decoding (call_step with key/value caches) against the full forward pass."""

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.layers.multi_head_attention import decoding_window
from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.ops.local_attention_2d import right_shift_block_raster, right_shift_blockwise
from tests import tiny_models
from tests.ops import attention_reference as ref

H, W = tiny_models.H, tiny_models.W


def tiny(cls=ImageTransformer, **overrides):
    return tiny_models.tiny(cls, **{"num_mixtures": 2, **overrides})


def independent_order(model):
    """Generation order from the definition: raster, or block-raster for local_2d."""
    rows, cols = model.grid_shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    if model.dec_attention_type != "local_2d":
        return np.arange(rows * cols)
    qh, qw = model.query_shape
    # Sort by block row, block column, row in block, column in block.
    return np.lexsort((c % qw, r % qh, c // qw, r // qh))


def step_outputs(full, model, position):
    """The full-pass outputs of one grid position: [batch, 256] or [batch, 10K]."""
    y, col = divmod(int(position), model.grid_shape[1])
    if model.likelihood == "cat":
        return full[:, y, col // model.num_channels, col % model.num_channels]
    return full[:, y, col]


def grid_values(images, model):
    """[batch, positions, values per position] in grid raster order."""
    rows, cols = model.grid_shape
    return images.reshape(images.shape[0], rows * cols, -1)


CASES = [
    ("local_1d", "cat", {}),
    ("local_1d", "dmol", {}),
    ("local_2d", "cat", {}),
    ("local_2d", "dmol", {}),
    ("global", "cat", {}),
    ("global", "dmol", {}),
    # local_2d with a query block that does not tile the grid (padding inside blocks).
    ("local_2d", "cat", dict(query_shape=(3, 5), memory_flange=(1, 1))),
    ("local_2d", "dmol", dict(query_shape=(3, 3), block_shift="block_raster")),
    # local_1d ring cache with a last, partial block (48 sub-pixels, blocks of 5).
    ("local_1d", "cat", dict(block_length=5)),
    # One block covers everything: local_1d degenerates to global causal attention.
    ("local_1d", "dmol", dict(block_length=16)),
    # Class-conditional, learned positions, pre-norm.
    ("local_2d", "cat", dict(num_classes=3, pos="emb", layer_preprocess_sequence="n",
                             layer_postprocess_sequence="da", block_shift="block_raster")),
]


# Encoder-decoder (Img2Img): the decoder also attends to the encoder memory.
ENCDEC_CASES = [("local_1d", "cat", {}), ("local_2d", "dmol", {}), ("global", "cat", {})]


ALL_CASES = ([(ImageTransformer,) + case for case in CASES]
             + [(Img2ImgTransformer,) + case for case in ENCDEC_CASES])


@pytest.mark.parametrize(
    "cls,attention,likelihood,overrides,window",
    [case + ("conditional",) for case in ALL_CASES]
    + [case + ("refreshed",) for case in ALL_CASES if case[1] == "local_2d"],
)
def test_cached_steps_equal_the_full_forward_pass(cls, attention, likelihood, overrides, window):
    # window="refreshed": local_2d window buffers filled by refresh_cache at each block's
    # first position and, to show it is correct anywhere, every 5th step; then
    # call_step(window_ready=True). "conditional": call_step gathers them itself.
    model = tiny(cls, dec_attention_type=attention, likelihood=likelihood, **overrides)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, H, W, 3)).astype(np.int32)
    garbage = rng.randint(0, 256, (2, H, W, 3)).astype(np.int32)
    features = {"targets": images}
    if model.num_classes:
        features["labels"] = np.array([2, 0], np.int32)
    if cls is Img2ImgTransformer:
        features["inputs"] = rng.randint(0, 256, (2, 2, 2, 3)).astype(np.int32)
    full = np.asarray(model(features))
    cache = model.init_cache(2, {k: v for k, v in features.items() if k != "targets"})
    ready = window == "refreshed"
    step = tf.function(lambda *args: model.call_step(*args, window_ready=ready))
    refresh = tf.function(model.refresh_cache)
    order = independent_order(model)
    done = np.zeros(len(order), bool)
    for t, position in enumerate(order):
        # Only the positions generated so far hold the image; the rest is garbage.
        canvas = np.where(done[None, :, None], grid_values(images, model),
                          grid_values(garbage, model)).reshape(images.shape)
        if ready and (model.window_refresh_positions()[position] or t % 5 == 3):
            cache = refresh(cache, tf.constant(int(position)))
        out, cache = step(tf.constant(canvas), cache, tf.constant(int(position)))
        np.testing.assert_allclose(np.asarray(out), step_outputs(full, model, position),
                                   atol=1e-5, rtol=0)
        done[position] = True


@pytest.mark.parametrize(
    "attention,grid,settings",
    [
        ("local_1d", (4, 12), dict(block_length=5)),
        ("local_1d", (4, 12), dict(block_length=30)),
        ("global", (3, 5), {}),
        ("local_2d", (4, 12), dict(query_shape=(2, 4), memory_flange=(1, 2))),
        ("local_2d", (5, 7), dict(query_shape=(2, 3), memory_flange=(2, 1))),
        ("local_2d", (4, 6), dict(query_shape=(3, 4), memory_flange=(0, 0))),
    ],
)
def test_decoding_window_is_the_attention_mask(attention, grid, settings):
    rows, cols = grid
    length = rows * cols
    window = decoding_window(attention, grid, **settings)
    if attention == "local_1d":
        expected = ref.local_1d_mask(length, settings["block_length"])
    elif attention == "global":
        expected = ref.causal_mask(length)
    else:
        expected = ref.masked_local_2d_mask(rows, cols, settings["query_shape"],
                                            settings["memory_flange"])
    if window is None:
        got = ref.causal_mask(length)
    else:
        indices, visible = window
        assert indices.min() >= 0 and indices.max() < length
        got = np.zeros((length, length), bool)
        for p in range(length):
            got[p, indices[p][visible[p]]] = True
            # No key position appears twice among the visible slots.
            assert len(set(indices[p][visible[p]])) == visible[p].sum()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(dec_attention_type="local_1d"),
        dict(dec_attention_type="local_2d", query_shape=(3, 5), block_shift="blockwise"),
        dict(dec_attention_type="local_2d", query_shape=(3, 5), block_shift="block_raster"),
        dict(dec_attention_type="local_2d", likelihood="dmol", query_shape=(3, 3)),
    ],
)
def test_decoder_input_sources_follow_the_shift_ops(overrides):
    model = tiny(**overrides)
    rows, cols = model.grid_shape
    # Shift the grid of (index + 1) with the ops of the full path; 0 marks zeros.
    index = np.arange(1, rows * cols + 1, dtype=np.float32).reshape(1, rows, cols, 1)
    if model.dec_attention_type == "local_2d":
        shift = right_shift_blockwise if model.block_shift == "blockwise" else \
            right_shift_block_raster
        shifted = np.asarray(shift(index, model.query_shape)).reshape(-1)
    else:
        shifted = np.concatenate([[0.0], index.reshape(-1)[:-1]])
    np.testing.assert_array_equal(model.decoder_input_sources(), shifted.astype(int) - 1)


def test_cache_api_errors():
    model = tiny()
    with pytest.raises(ValueError, match="built"):
        model.init_cache(1)
    model({"targets": np.zeros((1, H, W, 3), np.int32)})
    block = model.decoder_blocks[0]
    assert set(block.init_cache(3)) == {"self_attention"}
    # local_1d keeps a ring of the previous and current block: [batch, heads, 2 * 4, 16 / 2].
    cache = block.init_cache(3)["self_attention"]
    assert tuple(cache["key"].shape) == (3, 2, 8, 8)
    other = tiny(dec_attention_type="local_2d")
    other({"targets": np.zeros((1, H, W, 3), np.int32)})
    cache = other.decoder_blocks[0].init_cache(3)["self_attention"]
    assert tuple(cache["value"].shape) == (3, 2, H * W * 3, 8)
    conditional = tiny(num_classes=4)
    conditional({"targets": np.zeros((1, H, W, 3), np.int32), "labels": np.zeros(1, np.int32)})
    with pytest.raises(ValueError, match="num_classes=4"):
        conditional.init_cache(1)
