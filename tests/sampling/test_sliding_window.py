"""Sliding-window sampling of canvases larger than the training grid (Taming Transformers)."""

import numpy as np
import pytest

from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.ops.local_attention_2d import block_raster_order
from t2t_image.sampling import generation_order
from t2t_image.sampling import reference_sample
from t2t_image.sampling import sample
from t2t_image.sampling.common import dummy_features
from t2t_image.sampling.common import segment_ends
from t2t_image.sampling.sliding_window import cached_segments
from t2t_image.sampling.sliding_window import sample_sliding_window
from t2t_image.sampling.sliding_window import sliding_window_plan
from tests.sampling.test_sampler import _dmol_mode

H = W = 4  # training grid of the small models


def prior(attention="local_2d", channels=1, vocab_size=16, likelihood="cat", layers=2,
          scale=None, **overrides):
    """A small model with deliberately sharp random outputs, so wrong draws show."""
    args = dict(image_height=H, image_width=W, num_channels=channels, vocab_size=vocab_size,
                likelihood=likelihood, hidden_size=16, filter_size=24, num_heads=2,
                num_decoder_layers=layers, dec_attention_type=attention, block_length=4,
                query_shape=(2, 2), memory_flange=(1, 2), num_mixtures=2,
                layer_prepostprocess_dropout=0.0)
    args.update(overrides)
    model = ImageTransformer(**args)
    model(dummy_features(model))
    if scale is None:
        scale = 20.0 if likelihood == "cat" else 4.0
    model.output_layer.kernel.assign(model.output_layer.kernel * scale)
    return model


def rgb(attention="local_1d", **overrides):
    return prior(attention, channels=3, vocab_size=256, **overrides)


def unsnapped_plan(model, height, width):
    """The plan with the raw window formula (no query-block snapping): the negative control."""
    plan = sliding_window_plan(model, height, width)
    plan["tops"] = np.clip(plan["rows"] - H // 2, 0, height - H)
    plan["lefts"] = np.clip(plan["cols"] - W // 2, 0, width - W)
    return plan


# ------------------------------------------------------------------------ plan
def test_plan_offsets_follow_the_window_formula():
    # Raster models: exactly clip(i - h//2, 0, H - h), clip(j - w//2, 0, W - w).
    model = rgb(layers=1)
    plan = sliding_window_plan(model, 7, 9)
    np.testing.assert_array_equal(plan["order"], np.arange(7 * 27))
    rows, sub = np.divmod(np.arange(7 * 27), 27)
    np.testing.assert_array_equal(plan["rows"], rows)
    np.testing.assert_array_equal(plan["cols"], sub // 3)
    np.testing.assert_array_equal(plan["channels"], sub % 3)
    np.testing.assert_array_equal(plan["tops"], np.clip(rows - 2, 0, 3))
    np.testing.assert_array_equal(plan["lefts"], np.clip(sub // 3 - 2, 0, 5))
    # local_2d, query blocks 2x2 on an 8x8 code canvas: block-raster order, offsets snapped
    # (rows moved up so the code stays on the middle row or lower, columns to the nearest).
    model = prior(layers=1)
    plan = sliding_window_plan(model, 8, 8)
    np.testing.assert_array_equal(plan["order"], block_raster_order(8, 8, (2, 2)))
    top_of_row = dict(zip(plan["rows"], plan["tops"]))
    assert [top_of_row[y] for y in range(8)] == [0, 0, 0, 0, 2, 2, 4, 4]
    left_of_col = dict(zip(plan["cols"], plan["lefts"]))
    assert [left_of_col[x] for x in range(8)] == [0, 0, 0, 0, 2, 2, 4, 4]
    # Every code lies in its window, and the windows tile the canvas with query blocks.
    assert (plan["rows"] - plan["tops"] >= 0).all() and (plan["rows"] - plan["tops"] < H).all()
    assert (plan["cols"] - plan["lefts"] >= 0).all() and (plan["cols"] - plan["lefts"] < W).all()
    # RGB sub-pixels with 4-column query blocks: offsets in multiples of lcm(3, 4) / 3 = 4 pixels.
    plan = sliding_window_plan(rgb("local_2d", query_shape=(2, 4), layers=1), 6, 8)
    assert set(plan["lefts"]) == {0, 4} and set(plan["tops"]) == {0, 2}
    # A canvas of the training size: one window, the model's own generation order.
    for model in (rgb(layers=1), prior(layers=1)):
        plan = sliding_window_plan(model, H, W)
        np.testing.assert_array_equal(plan["order"], generation_order(model))
        assert not plan["tops"].any() and not plan["lefts"].any()


def influence(model):
    """influence[t, s]: does changing the window's grid position s change the output at t."""
    rows, cols = model.grid_shape
    positions = rows * cols
    cat = model.likelihood == "cat"
    base = np.random.RandomState(7).randint(0, model.vocab_size, (1, H, W, model.num_channels))
    images = np.repeat(base, positions + 1, axis=0)
    for s in range(positions):
        y, col = divmod(s, cols)
        if cat:
            x, c = divmod(col, model.num_channels)
            images[s + 1, y, x, c] = (images[s + 1, y, x, c] + model.vocab_size // 2) \
                % model.vocab_size
        else:
            images[s + 1, y, col] = (images[s + 1, y, col] + 97) % 256
    out = np.asarray(model({"targets": images.astype(np.int32)}))
    out = out.reshape(positions + 1, positions, -1)
    return (np.abs(out[1:] - out[:1]).max(-1) > 1e-6).T


def exposure_violations(model, plan, height, width):
    """Steps whose output (per the real model) depends on a canvas position not yet drawn."""
    per_pixel = model.num_channels if model.likelihood == "cat" else 1
    window_cols, canvas_cols = per_pixel * W, per_pixel * width
    rank = np.empty(len(plan["order"]), np.int64)
    rank[plan["order"]] = np.arange(len(plan["order"]))
    seen = influence(model)
    bad = 0
    for t in range(len(plan["order"])):
        top, left = plan["tops"][t], plan["lefts"][t]
        local = (plan["rows"][t] - top) * window_cols + per_pixel * (plan["cols"][t] - left) \
            + plan["channels"][t]
        sources = np.nonzero(seen[local])[0]
        canvas = (top + sources // window_cols) * canvas_cols + per_pixel * left \
            + sources % window_cols
        bad += int((rank[canvas] >= t).any())
    return bad


@pytest.mark.parametrize(
    "make,height,width",
    [
        (lambda: rgb("local_1d"), 8, 8),
        (lambda: rgb("global"), 7, 6),
        (lambda: prior("local_2d"), 8, 8),
        (lambda: prior("local_2d", block_shift="block_raster", query_shape=(2, 3),
                       memory_flange=(2, 1)), 8, 10),
        (lambda: rgb("local_2d", query_shape=(2, 4), memory_flange=(1, 4)), 8, 8),
        (lambda: prior("local_2d", channels=3, vocab_size=256, likelihood="dmol"), 6, 8),
    ],
)
def test_windows_expose_only_generated_positions(make, height, width):
    model = make()
    plan = sliding_window_plan(model, height, width)
    assert exposure_violations(model, plan, height, width) == 0
    if model.dec_attention_type == "local_2d":
        # The snapping is needed: the raw window formula exposes undrawn positions.
        assert exposure_violations(model, unsnapped_plan(model, height, width),
                                   height, width) > 0


# -------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "make,kwargs,jit",
    [
        (lambda: prior("local_1d", layers=1), dict(top_k=5), False),
        (lambda: rgb("local_1d", layers=1), {}, False),
        (lambda: prior("local_2d", layers=1, num_classes=3), dict(labels=[2, 0]), False),
        (lambda: rgb("local_2d", layers=1, query_shape=(2, 4), memory_flange=(1, 4)),
         dict(top_k=40), True),
    ],
)
def test_training_size_canvas_equals_sample(make, kwargs, jit):
    model = make()
    # The draws are XLA-compiled whether the loop is or not (the cheaper loop is used).
    got = sample_sliding_window(model, 2, H, W, seed=6, temperature=0.9, jit_compile=jit,
                                **kwargs)
    assert got.dtype == np.uint8 and got.shape == (2, H, W, model.num_channels)
    np.testing.assert_array_equal(got, sample(model, 2, temperature=0.9, seed=6, **kwargs))
    assert len(np.unique(got)) > 3 and not np.array_equal(got[0], got[1])
    if jit:
        np.testing.assert_array_equal(
            got, reference_sample(model, 2, temperature=0.9, seed=6, **kwargs))


@pytest.mark.parametrize(
    "make",
    [lambda: prior("local_2d", layers=1, vocab_size=300), lambda: rgb("local_1d", layers=1)],
)
def test_twice_the_training_size_fills_a_valid_canvas_deterministically(make):
    model = make()
    bias = model.output_layer.bias.numpy()
    bias[0] = -1e4  # value 0 is never drawn: a 0 left in the canvas is an unwritten position
    model.output_layer.bias.assign(bias)
    canvas = sample_sliding_window(model, 2, 2 * H, 2 * W, seed=1, temperature=1.0)
    assert canvas.shape == (2, 2 * H, 2 * W, model.num_channels)
    assert canvas.dtype == (np.int32 if model.vocab_size > 256 else np.uint8)
    assert canvas.min() >= 1 and canvas.max() < model.vocab_size
    assert len(np.unique(canvas)) > 10
    np.testing.assert_array_equal(
        sample_sliding_window(model, 2, 2 * H, 2 * W, seed=1, temperature=1.0), canvas)
    other = sample_sliding_window(model, 2, 2 * H, 2 * W, seed=2)
    assert np.mean(other != canvas) > 0.3
    if model.vocab_size > 256:
        # The loop without XLA draws the same values (the draws are always XLA-compiled).
        np.testing.assert_array_equal(
            sample_sliding_window(model, 2, 2 * H, 2 * W, seed=1, jit_compile=False), canvas)


@pytest.mark.parametrize(
    "make,height,width",
    [
        (lambda: prior("local_1d", channels=3, vocab_size=7), 6, 7),
        (lambda: prior("local_2d"), 8, 8),
        (lambda: rgb("local_2d", query_shape=(2, 4), memory_flange=(1, 4)), 6, 12),
        (lambda: prior("local_2d", layers=1, channels=3, vocab_size=256, likelihood="dmol"),
         8, 6),
    ],
)
def test_temperature_zero_canvas_is_the_mode_of_every_window(make, height, width):
    # Each value was drawn (as the mode) from its window when only earlier positions were
    # set; if the window exposed nothing drawn later, the final canvas gives the same outputs.
    model = make()
    canvas = sample_sliding_window(model, 2, height, width, seed=5, temperature=0.0,
                                   jit_compile=False)
    plan = sliding_window_plan(model, height, width)
    cat = model.likelihood == "cat"
    checked = 0
    for top, left in set(zip(plan["tops"], plan["lefts"])):
        window = canvas[:, top:top + H, left:left + W].astype(np.int32)
        out = np.asarray(model({"targets": window}), np.float64)
        mode = out.argmax(-1) if cat else _dmol_mode(out)
        steps = (plan["tops"] == top) & (plan["lefts"] == left)
        y, x = plan["rows"][steps], plan["cols"][steps]
        if cat:
            c = plan["channels"][steps]
            np.testing.assert_array_equal(canvas[:, y, x, c], mode[:, y - top, x - left, c])
        else:
            np.testing.assert_array_equal(canvas[:, y, x], mode[:, y - top, x - left])
        checked += int(steps.sum())
    assert checked == len(plan["order"])
    assert len(np.unique(canvas)) > 3


def test_class_conditioning_prefix_and_progress():
    model = prior("local_2d", layers=1, num_classes=4)

    def run(**kwargs):
        return sample_sliding_window(model, 2, 6, 8, seed=4, jit_compile=False, **kwargs)

    a, b, c = run(labels=[0, 0]), run(labels=2), run(labels=[0, 2])
    assert not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(c[0], a[0])  # a sample's label affects only that sample
    np.testing.assert_array_equal(c[1], b[1])
    # Completion: the top rows of a 6x8 canvas are kept, the rest follows them.
    prefix = np.random.RandomState(3).randint(0, 16, (2, 6, 8, 1))
    done = run(labels=1, prefix=prefix, num_prefix_rows=3)
    np.testing.assert_array_equal(done[:, :3], prefix[:, :3])
    assert not np.array_equal(done[:, 3:], run(labels=1)[:, 3:])
    assert not np.array_equal(done[:, 3:], prefix[:, 3:])
    # On the training size, completion equals the reference sampler's (and so the cached
    # sampler's, see test_sampler.py).
    small = prior("local_1d", layers=1)
    np.testing.assert_array_equal(
        sample_sliding_window(small, 2, H, W, seed=2, prefix=prefix[:, :2, :W],
                              num_prefix_rows=1, jit_compile=False),
        reference_sample(small, 2, seed=2, prefix=prefix[:, :2, :W], num_prefix_rows=1))
    calls = []
    chunked = run(labels=[0, 2], progress=lambda done, total: calls.append((done, total)),
                  progress_chunks=4)
    np.testing.assert_array_equal(chunked, c)
    assert len(calls) == 4 and calls[-1] == (48, 48)


@pytest.mark.parametrize(
    "make,kwargs,pattern",
    [
        (prior, dict(height=3, width=8), r"height must be an int >= image_height=4"),
        (prior, dict(height=8, width=2), "width"),
        (prior, dict(height=7, width=8), r"height - image_height must be a multiple of 2"),
        (lambda: rgb("local_2d", query_shape=(2, 4)), dict(height=8, width=6),
         r"multiples of 4 pixels"),
        (lambda: rgb("local_2d", query_shape=(2, 5)), dict(height=8, width=9),
         r"image_width >= 5"),
        (lambda: prior(likelihood="dmol", channels=3, vocab_size=256), dict(top_k=3),
         "top_k.*likelihood='cat'"),
        (prior, dict(top_k=17), r"top_k.*vocab_size=16"),
        (prior, dict(labels=[1, 1]), "unconditional"),
        (prior, dict(prefix=np.zeros((2, 2, W, 1)), num_prefix_rows=1), "prefix must have shape"),
        (prior, dict(prefix=np.full((2, 2, 8, 1), 16), num_prefix_rows=1), "vocab_size=16"),
        (prior, dict(num_prefix_rows=9), r"num_prefix_rows.*height=8"),
        (prior, dict(window_stride=3), r"window_stride=3 must divide height - image_height=4"),
        (prior, dict(window_stride=(0, 1)), r"window_stride must be an int or \(rows, cols\)"),
    ],
)
def test_invalid_arguments_are_named(make, kwargs, pattern):
    args = dict(height=8, width=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        sample_sliding_window(make(), 2, **args)


def test_encoder_decoder_models_are_rejected():
    model = Img2ImgTransformer(input_height=2, input_width=2, image_height=H, image_width=W,
                               hidden_size=16, filter_size=24, num_heads=2,
                               num_encoder_layers=1, num_decoder_layers=1, block_length=4)
    with pytest.raises(ValueError, match="encoder-decoder"):
        sample_sliding_window(model, 1, 8, 8)


# ------------------------------------------------------------- cached windows
@pytest.mark.parametrize(
    "make,stride,kwargs",
    [
        # Raster windows moving every pixel (today's placement) and every 2 pixels.
        (lambda: rgb("local_1d"), (1, 1), dict(prefix=np.full((8, 8, 3), 9), num_prefix_rows=3)),
        (lambda: prior("global", channels=3, vocab_size=256, likelihood="dmol"), (2, 2), {}),
        (lambda: prior("local_2d", num_classes=3), (2, 4), dict(labels=[2, 0], top_k=5)),
    ],
)
def test_cached_windows_equal_the_uncached_reference(make, stride, kwargs):
    model = make()
    got = sample_sliding_window(model, 2, 8, 8, seed=4, window_stride=stride, **kwargs)
    want = sample_sliding_window(model, 2, 8, 8, seed=4, window_stride=stride, cached=False,
                                 **kwargs)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 5 and not np.array_equal(got[0], got[1])


def test_a_larger_stride_moves_the_window_less_often():
    model = rgb("local_1d", layers=1)
    runs = {}
    for stride in (1, 2, 4):
        plan = sliding_window_plan(model, 8, 8, window_stride=stride)
        positions, starts = cached_segments(model, plan)
        runs[stride] = len(starts) - 1
        # Each step's window position is inside the window, and every run is one window.
        assert positions.min() >= 0 and positions.max() < H * W * 3
        for a, b in zip(starts[:-1], starts[1:]):
            assert len({(t, l) for t, l in zip(plan["tops"][a:b], plan["lefts"][a:b])}) == 1
            np.testing.assert_array_equal(np.diff(positions[a:b]), 1)
        assert np.all(plan["tops"] % stride == 0) and np.all(plan["lefts"] % stride == 0)
    # 8 canvas rows, windows per row: 1 + 4 moving (stride 1), 3 (stride 2), 2 (stride 4).
    assert runs[1] > runs[2] > runs[4] == 8 * 2


@pytest.mark.parametrize("attention", ["local_2d", "local_1d"])
def test_window_buffer_segments_split_runs_at_query_blocks(attention):
    model = rgb(attention, layers=1, query_shape=(2, 4))
    plan = sliding_window_plan(model, 8, 12, window_stride=(2, 4))
    positions, starts = cached_segments(model, plan)
    ends = segment_ends(model, positions, starts)
    run_end = starts[np.searchsorted(starts, np.arange(len(positions)), side="right")]
    if attention == "local_1d":  # no window buffers: a segment is the whole run
        np.testing.assert_array_equal(ends, run_end)
        return
    assert np.all(ends > np.arange(len(positions))) and np.all(ends <= run_end)
    cols = model.grid_shape[1]
    block = (positions // cols // 2) * 100 + (positions % cols) // 4
    first = np.r_[True, ends[:-1] != ends[1:]]  # the steps that start a segment
    for k in np.flatnonzero(first):
        assert len(set(block[k:ends[k]])) == 1  # one query block per segment
    refresh = model.window_refresh_positions()[positions]
    assert np.all(first[refresh]) and np.all(first[starts[:-1]])
    assert first.sum() > len(starts) - 1  # some runs span several query blocks
