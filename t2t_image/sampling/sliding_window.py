"""Sliding-window sampling: canvases larger than the model's training grid.

The second stage of "Taming Transformers" (Esser et al. 2021, Sec. 3.2 and
Fig. 4) samples code grids larger than the grid its transformer was trained
on: every position is drawn from the logits of a training-size window of the
canvas that contains it. The window is placed as centred on the position as
possible horizontally and with the position on its middle row or lower
vertically (clamped to the canvas):

    top  = clip(row - image_height // 2, 0, height - image_height)
    left = clip(col - image_width // 2,  0, width  - image_width)

For ``local_2d`` models the canvas is generated in block-raster order with
the model's ``query_shape`` and the offsets are snapped to the query-block
grid (see ``sliding_window_plan``), so that everything the window's causal
mask exposes has already been generated.

By default the window's keys/values are cached: each time the window moves
one parallel pass over it rebuilds the caches, then every position is one
cached step (``cached_sliding_window_steps``); ``window_stride`` makes the
window move less often. The reference (``cached=False``) runs a full
forward pass of the window per step (like ``reference_sample``),
inside one ``keras.ops.while_loop`` in one compiled function (a
``tf.function``, XLA by default, or ``jax.jit``: ``compiled.py``); values
are drawn with the per-step seeds and the draw function of ``sample``
(``step_seed``, ``draw_values``), so on a canvas of the training size the
result equals ``sample`` with the same seed under the same backend.
"""

import math

import numpy as np
from keras import ops

from t2t_image.ops.local_attention_2d import block_raster_order
from t2t_image.sampling.common import (
    check_sampling_args,
    conditioning_features,
    draw_values,
    loop_seed,
    needs_inputs,
    output_dtype,
    segment_ends,
    step_seed,
)
from t2t_image.sampling.compiled import compiled, finished
from t2t_image.sampling.sampler import ensure_built


def _canvas_size(name, value, minimum, setting):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{name} must be an int >= {setting}={minimum} (the model's training grid), got "
            f"{name}={value!r}."
        )
    return int(value)


def _window_stride(value, h, w, height, width):
    """``window_stride`` as (rows, cols), checked: ints in [1, training size]."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                             for v in pair) \
            or not (1 <= pair[0] <= h and 1 <= pair[1] <= w):
        raise ValueError(
            f"window_stride must be an int or (rows, cols) with 1 <= rows <= image_height={h} "
            f"and 1 <= cols <= image_width={w}, got window_stride={value!r}."
        )
    if (height - h) % pair[0] or (width - w) % pair[1]:
        raise ValueError(
            f"window_stride={value!r} must divide height - image_height={height - h} (rows) "
            f"and width - image_width={width - w} (cols), got height={height}, width={width}."
        )
    return int(pair[0]), int(pair[1])


def _window_offset(position, desired, size, canvas, multiple, prefer_lower):
    """Window start for ``position``: a multiple of ``multiple`` that keeps it inside.

    Among the valid starts (``start <= position < start + size`` and
    ``0 <= start <= canvas - size``, multiples of ``multiple``) returns the
    largest one ``<= desired`` when ``prefer_lower`` (window moved up: the
    position ends at the middle row or lower), else the one nearest to
    ``desired`` (ties: the lower one). None if there is none.
    """
    lo, hi = max(0, position - size + 1), min(position, canvas - size)
    first = -(-lo // multiple) * multiple
    candidates = np.arange(first, hi + 1, multiple)
    if candidates.size == 0:
        return None
    if prefer_lower and (candidates <= desired).any():
        return int(candidates[candidates <= desired].max())
    return int(candidates[np.argmin(np.abs(candidates - desired))])


def sliding_window_plan(model, height, width, window_stride=(1, 1)):
    """The static schedule of sliding-window sampling on a ``height x width`` canvas.

    Step ``t`` generates position ``order[t]`` of the canvas grid (sub-pixels
    ``[height, channels * width]`` for "cat", pixels for "dmol"): raster order
    for "local_1d" / "global" decoders, block-raster order with the model's
    ``query_shape`` for "local_2d" (the model's own generation order when the
    canvas has the training size). Its window (the training-size crop whose
    model outputs give the step's logits) starts at pixel row
    ``clip(row - image_height // 2, 0, height - image_height)`` and pixel
    column ``clip(col - image_width // 2, 0, width - image_width)``.

    For "local_2d" these offsets are snapped to multiples of the query block
    (rows: ``query_shape[0]``; columns: the smallest whole number of pixels
    that is a whole number of query-block columns on the grid). Then each
    window block is a canvas block, and the window's block-raster key of a
    position is the canvas's minus a constant, so every position before the
    current one in the window's order (all that its causal mask and input
    shift can expose) was generated before it on the canvas. Vertically the
    snapped window moves up (the position stays on the middle row or lower);
    horizontally it goes to the nearest valid offset. "local_1d" / "global"
    windows need no snapping: raster order on a window is raster order on
    the canvas.

    Esser et al. 2021, Sec. 3.2 / Fig. 4 (sliding attention window); the
    snapping extends it to the block-raster order of Parmar et al. 2018,
    Sec. 3.2 (local 2D attention).

    Args:
        model: an ``ImageTransformer``.
        height: int >= ``model.image_height``, canvas rows (pixels or codes).
        width: int >= ``model.image_width``, canvas columns.
        window_stride: (rows, cols) in pixels: window offsets are also snapped
            to multiples of these (default (1, 1): the formula above). A
            larger stride moves the window less often, so the cached sampler
            re-encodes it less often (``sample_sliding_window``).

    Returns:
        dict of NumPy int64 arrays, one entry per step: ``order`` (canvas grid
        raster index), ``rows``, ``cols``, ``channels`` (the pixel and channel
        written; channel 0 for "dmol", which writes the whole pixel),
        ``tops``, ``lefts`` (window offsets in pixels).

    Raises:
        ValueError: for a canvas smaller than the training grid, or a
            "local_2d" configuration where snapped windows cannot cover every
            position (the message says which size to change).
    """
    h, w = model.image_height, model.image_width
    height = _canvas_size("height", height, h, "image_height")
    width = _canvas_size("width", width, w, "image_width")
    cat = model.likelihood == "cat"
    per_pixel = model.num_channels if cat else 1  # grid columns per pixel
    grid_cols = per_pixel * width
    stride_rows, stride_cols = _window_stride(window_stride, h, w, height, width)
    row_multiple = col_multiple = 1
    if model.dec_attention_type == "local_2d":
        qh, qw = model.query_shape
        order = block_raster_order(height, grid_cols, (qh, qw))
        row_multiple = qh
        col_multiple = math.lcm(per_pixel, qw) // per_pixel  # pixels
        unit = "sub-pixel columns" if per_pixel > 1 else "columns"
        if (height - h) % qh:
            raise ValueError(
                f"sliding-window sampling of a local_2d model needs window rows aligned to "
                f"query_shape[0]={qh}: height - image_height must be a multiple of {qh}, got "
                f"height={height}, image_height={h}."
            )
        if (width - w) % col_multiple or w < col_multiple:
            raise ValueError(
                f"sliding-window sampling of a local_2d model needs window columns aligned to "
                f"query_shape[1]={qw} {unit}, i.e. offsets in multiples of {col_multiple} "
                f"pixels: width - image_width must be a multiple of {col_multiple} and "
                f"image_width >= {col_multiple}, got width={width}, image_width={w}."
            )
    else:
        order = np.arange(height * grid_cols, dtype=np.int64)
    row_multiple = math.lcm(row_multiple, stride_rows)
    col_multiple = math.lcm(col_multiple, stride_cols)
    rows, grid_col = np.divmod(order, grid_cols)
    cols, channels = np.divmod(grid_col, per_pixel)
    # The window's top depends only on the row, its left only on the column.
    top_of_row = [_window_offset(y, min(max(y - h // 2, 0), height - h), h, height,
                                 row_multiple, prefer_lower=True) for y in range(height)]
    left_of_col = [_window_offset(x, min(max(x - w // 2, 0), width - w), w, width,
                                  col_multiple, prefer_lower=False) for x in range(width)]
    if None in top_of_row or None in left_of_col:  # excluded by the checks above
        raise ValueError(
            f"no aligned {h}x{w} window covers every pixel of a {height}x{width} canvas "
            f"(query_shape={model.query_shape}, window_stride={window_stride}): offsets are "
            f"multiples of {row_multiple} rows and {col_multiple} columns; choose a "
            f"window_stride that divides height - image_height and width - image_width."
        )
    tops = np.asarray(top_of_row, np.int64)[rows]
    lefts = np.asarray(left_of_col, np.int64)[cols]
    return dict(order=order.astype(np.int64), rows=rows.astype(np.int64),
                cols=cols.astype(np.int64), channels=channels.astype(np.int64),
                tops=tops, lefts=lefts)


def sliding_window_steps(model, canvas, conditioning, seed, temperature, plan, start, stop,
                         top_k=0):
    """Runs sliding-window steps ``plan[start:stop]`` as one ``keras.ops.while_loop``.

    Entry ``k`` of ``plan`` (int32 tensors ``[S]``: ``steps``, ``rows``,
    ``cols``, ``channels``, ``tops``, ``lefts``) crops the window
    ``canvas[:, top:top + image_height, left:left + image_width]``
    (``ops.slice``, a dynamic slice), runs the full model on it, takes the
    outputs at the position's index inside the window and draws its value
    with seed ``[seed, steps[k]]`` through ``draw_values``.

    Esser et al. 2021, Sec. 3.2 (sliding-window sampling); T2T
    ``Transformer.infer`` without a cache, on a window.

    Args:
        model: a built ``ImageTransformer``.
        canvas: int32 `[batch, height, width, channels]`.
        conditioning: dict of tensors (``labels`` `[batch]`), maybe empty.
        seed: scalar integer tensor (``loop_seed``).
        temperature: scalar float32 tensor (>= 0; 0 = argmax).
        plan: dict of int32 tensors, see above.
        start: scalar int32 tensor, first plan entry.
        stop: scalar int32 tensor, one past the last plan entry.
        top_k: static int, 0 (off) or the top-k of "cat" draws.

    Returns:
        int32 `[batch, height, width, channels]`, the canvas after the steps.
    """
    h, w, c = model.image_height, model.image_width, model.num_channels
    cat = model.likelihood == "cat"

    def body(k, canvas):
        y, x = ops.take(plan["rows"], k), ops.take(plan["cols"], k)
        top, left = ops.take(plan["tops"], k), ops.take(plan["lefts"], k)
        window = ops.slice(canvas, (0, top, left, 0), (ops.shape(canvas)[0], h, w, c))
        out = model(dict(conditioning, targets=window), training=False)
        if cat:
            channel = ops.take(plan["channels"], k)
            outputs = out[:, y - top, x - left, channel]
        else:
            outputs = out[:, y - top, x - left]
        seed_t = step_seed(seed, ops.take(plan["steps"], k))
        value = draw_values(model.likelihood, outputs, seed_t, temperature, top_k)
        if cat:
            value, begin = value[:, None, None, None], (0, y, x, channel)
        else:
            value, begin = value[:, None, None, :], (0, y, x, 0)
        return k + 1, ops.slice_update(canvas, begin, ops.cast(value, canvas.dtype))

    _, canvas = ops.while_loop(lambda k, canvas: k < stop, body, (start, canvas))
    return canvas


def cached_segments(model, plan):
    """Splits the (kept) steps of a plan into runs decoded from one window cache.

    A run is a maximal sequence of consecutive steps with the same window
    whose positions follow each other in the window's own generation order
    (raster, or block-raster for "local_2d"). Before a run the window's
    caches are rebuilt by one parallel pass over the window
    (``ImageTransformer.prefill_cache``): every position the run's first
    step can see was generated before the run started. Inside a run every
    step is one ``call_step``. Not in T2T.

    Args:
        model: an ``ImageTransformer``.
        plan: dict of NumPy arrays (``sliding_window_plan``, possibly with
            the prefix steps removed).

    Returns:
        ``(window_positions, starts)``: int64 `[S]`, each step's raster index
        on the window grid; int64 `[R + 1]`, the first step of every run and
        the number of steps.
    """
    h, w = model.image_height, model.image_width
    per_pixel = model.num_channels if model.likelihood == "cat" else 1
    window_cols = per_pixel * w
    position = ((plan["rows"] - plan["tops"]) * window_cols
                + (plan["cols"] - plan["lefts"]) * per_pixel + plan["channels"])
    if len(position) == 0:
        return position.astype(np.int64), np.zeros(1, np.int64)
    rank = position
    if model.dec_attention_type == "local_2d":
        rank = np.argsort(block_raster_order(h, window_cols, model.query_shape))[position]
    moved = (np.diff(plan["tops"]) != 0) | (np.diff(plan["lefts"]) != 0) | (np.diff(rank) != 1)
    starts = np.concatenate([[0], np.nonzero(moved)[0] + 1, [len(position)]])
    return position.astype(np.int64), starts.astype(np.int64)


def cached_sliding_window_steps(model, canvas, cache, conditioning, seed, temperature, plan,
                                start, stop, top_k=0):
    """Runs runs ``[start, stop)`` of a plan with window caches (``cached_segments``).

    Each run crops its window, rebuilds the decoding caches with one pass
    over it (``prefill_cache``) and decodes its steps with ``call_step``,
    drawing as ``sliding_window_steps`` does (same seeds, same positions),
    so the canvas equals the uncached one up to float rounding of the
    logits. Nested ``keras.ops.while_loop``s: runs, window-buffer segments, steps.

    Args:
        model: a built decoder-only ``ImageTransformer``.
        canvas: int32 `[batch, height, width, channels]`.
        cache: the model's decoding cache (``init_cache``).
        conditioning: dict of tensors (``labels``), maybe empty.
        seed, temperature: as in ``sliding_window_steps``.
        plan: dict of int32 tensors: ``steps``, ``rows``, ``cols``,
            ``channels``, ``tops``, ``lefts``, ``positions``, ``ends``
            (``segment_ends``) `[S]` and ``starts`` `[R + 1]`.
        start: scalar int32 tensor, first run.
        stop: scalar int32 tensor, one past the last run.
        top_k: static int.

    Returns:
        ``(canvas, cache)`` after the runs.
    """
    h, w, c = model.image_height, model.image_width, model.num_channels
    cat = model.likelihood == "cat"

    def crop(canvas, k):
        top, left = ops.take(plan["tops"], k), ops.take(plan["lefts"], k)
        return ops.slice(canvas, (0, top, left, 0), (ops.shape(canvas)[0], h, w, c))

    ready = model.window_refresh_positions() is not None

    def step(k, canvas, cache):
        out, cache = model.call_step(crop(canvas, k), cache, ops.take(plan["positions"], k),
                                     window_ready=ready)
        y, x = ops.take(plan["rows"], k), ops.take(plan["cols"], k)
        seed_k = step_seed(seed, ops.take(plan["steps"], k))
        value = draw_values(model.likelihood, out, seed_k, temperature, top_k)
        if cat:
            value, begin = value[:, None, None, None], (0, y, x, ops.take(plan["channels"], k))
        else:
            value, begin = value[:, None, None, :], (0, y, x, 0)
        return k + 1, ops.slice_update(canvas, begin, ops.cast(value, canvas.dtype)), cache

    def run(r, canvas, cache):
        first, end = ops.take(plan["starts"], r), ops.take(plan["starts"], r + 1)
        cache = model.prefill_cache(dict(conditioning, targets=crop(canvas, first)), cache,
                                    ops.take(plan["positions"], first))
        _, canvas, cache = ops.while_loop(lambda k, canvas, cache: k < end, segment,
                                          (first, canvas, cache))
        return r + 1, canvas, cache

    def segment(k, canvas, cache):
        # Steps decoded from one fill of the local_2d window buffers (the whole run
        # for other decoders); prefill_cache has filled them at the run's start.
        if ready:
            cache = model.refresh_cache(cache, ops.take(plan["positions"], k))
        end = ops.take(plan["ends"], k)
        return ops.while_loop(lambda k, canvas, cache: k < end, step, (k, canvas, cache))

    _, canvas, cache = ops.while_loop(lambda r, canvas, cache: r < stop, run,
                                      (start, canvas, cache))
    return canvas, cache


def sample_sliding_window(model, num_samples, height, width, *, seed=0, temperature=1.0,
                          top_k=None, labels=None, prefix=None, num_prefix_rows=0,
                          jit_compile=True, progress=None, progress_chunks=32,
                          window_stride=(1, 1), cached=True):
    """Samples a ``height x width`` canvas, larger than the training grid, with a sliding window.

    Every position (a code of a code prior; a sub-pixel or pixel of an image
    model) is drawn from the model's outputs on the training-size window of
    the canvas that contains it (``sliding_window_plan``: centred
    horizontally, the position on the window's middle row or lower, clamped
    to the canvas; snapped to query blocks for "local_2d"), in the canvas
    generation order, with seed ``[seed, t]`` at step ``t`` and the draw of
    ``sample`` (temperature, ``top_k``). On a canvas of the training size the
    window is the whole image and the result equals ``sample(model,
    num_samples, temperature, seed, ...)`` (up to float rounding of the
    logits, as between ``sample`` and ``reference_sample``).

    Unconditional, class-conditional (``labels``: one class for the whole
    canvas) and completion (the top ``num_prefix_rows`` rows of ``prefix``,
    a ``height x width`` canvas, are kept; their steps are skipped, the other
    steps keep their seeds). Encoder-decoder models (``inputs``) are not
    supported: their conditioning image belongs to one training-size target.

    Cost (``cached=True``): one parallel pass over the window each time the
    window moves (or the generation order leaves the window's own order),
    which rebuilds the key/value caches (``cached_segments``), and one
    cached step per position otherwise; ``window_stride`` makes the window
    move less often (fewer passes; a different, equally valid placement).
    ``cached=False`` (the reference): one full forward pass of the window
    per position; both give the same canvas for the same seed (up to float
    rounding of the logits, as between ``sample`` and ``reference_sample``).

    Esser et al. 2021, "Taming Transformers for High-Resolution Image
    Synthesis", Sec. 3.2 and Fig. 4 (sliding attention window); the
    per-position sampling is that of Parmar et al. 2018, Sec. 5.

    Args:
        model: an ``ImageTransformer`` (not an encoder-decoder).
        num_samples: int, number of canvases.
        height: int >= ``model.image_height``, canvas rows.
        width: int >= ``model.image_width``, canvas columns.
        seed: int, the sampling seed.
        temperature: float >= 0; 0 takes the argmax.
        top_k: None or 0 (off), or an int in ``[1, vocab_size]`` ("cat" only).
        labels: int or int array `[num_samples]` for class-conditional models.
        prefix: int array `[num_samples, rows, width, channels]` (or one
            canvas without the batch axis) whose top ``num_prefix_rows`` rows
            are kept.
        num_prefix_rows: int in ``[0, height]``.
        jit_compile: bool, compile the loop with XLA (draws are XLA-compiled
            either way).
        progress: optional callable ``progress(steps_done, num_steps)``; the
            loop then runs in ``progress_chunks`` compiled chunks (same result).
        progress_chunks: int, number of chunks when ``progress`` is given.
        window_stride: int or (rows, cols) in pixels: window offsets are
            snapped to multiples of it (``sliding_window_plan``); must divide
            ``height - image_height`` / ``width - image_width``.
        cached: bool, reuse keys/values while the window stays (default) or
            run the full window per position (the reference).

    Returns:
        NumPy array `[num_samples, height, width, channels]`: uint8 when the
        model's ``vocab_size <= 256``, int32 otherwise.

    Raises:
        ValueError: on invalid arguments or an unsupported window
            configuration (named in the message).
    """
    if needs_inputs(model):
        raise ValueError(
            "sample_sliding_window does not support encoder-decoder models (features['inputs'] "
            f"conditions one {model.image_height}x{model.image_width} target); got "
            f"{type(model).__name__}."
        )
    plan = sliding_window_plan(model, height, width, window_stride)
    args = check_sampling_args(model, num_samples, temperature, seed, labels, None, prefix,
                               num_prefix_rows, top_k, height=height, width=width)
    top_k = args["top_k"]
    ensure_built(model)
    keep = plan["rows"] >= args["num_prefix_rows"]  # prefix steps are skipped
    steps = np.nonzero(keep)[0]
    plan = {name: plan[name][keep] for name in ("rows", "cols", "channels", "tops", "lefts")}
    plan["steps"] = steps
    total = len(steps)
    if cached:
        plan["positions"], plan["starts"] = cached_segments(model, plan)
        plan["ends"] = segment_ends(model, plan["positions"], plan["starts"])
    plan = {name: ops.convert_to_tensor(value.astype(np.int32)) for name, value in plan.items()}
    shape = (args["num_samples"], int(height), int(width), model.num_channels)
    canvas = ops.convert_to_tensor(
        np.zeros(shape, np.int32) if args["prefix"] is None else args["prefix"])
    conditioning = {k: ops.convert_to_tensor(v) for k, v in conditioning_features(args).items()}
    seed = loop_seed(args["seed"])
    temperature = ops.convert_to_tensor(np.float32(args["temperature"]))
    if cached:
        starts = np.asarray(plan["starts"])
        units = len(starts) - 1  # runs
        cache = compiled(model, "init_cache", jit_compile, lambda: (
            lambda canvas, conditioning: model.init_cache(ops.shape(canvas)[0], conditioning)))(
            canvas, conditioning)
        run = compiled(model, f"sliding_window_cached/top_k={top_k}", jit_compile, lambda: (
            lambda canvas, cache, conditioning, seed, temperature, plan, start, stop:
            cached_sliding_window_steps(model, canvas, cache, conditioning, seed, temperature,
                                        plan, start, stop, top_k)))
    else:
        units = total
        run = compiled(model, f"sliding_window/top_k={top_k}", jit_compile, lambda: (
            lambda canvas, conditioning, seed, temperature, plan, start, stop:
            sliding_window_steps(model, canvas, conditioning, seed, temperature, plan, start,
                                 stop, top_k)))
    chunks = 1 if progress is None else max(1, min(int(progress_chunks), units))
    bounds = np.linspace(0, units, chunks + 1).astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        start_, stop_ = (ops.convert_to_tensor(np.int32(b)) for b in (start, stop))
        if cached:
            canvas, cache = run(canvas, cache, conditioning, seed, temperature, plan, start_,
                                stop_)
        else:
            canvas = run(canvas, conditioning, seed, temperature, plan, start_, stop_)
        if progress is not None:
            finished(canvas)
            progress(int(starts[stop]) if cached else int(stop), total)
    return np.asarray(canvas).astype(output_dtype(model))
