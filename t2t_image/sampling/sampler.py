"""The fast sampler: incremental decoding with key/value caches in one compiled loop.

Every generation step runs the model on one position only
(``ImageTransformer.call_step``), reading the keys/values of earlier positions
from per-layer caches; the loop over all steps is a single
``keras.ops.while_loop`` (``tf.while_loop`` / ``jax.lax.while_loop``) in one
compiled function (``compiled.compiled``: a ``tf.function``, XLA by default,
or ``jax.jit``). With the same seed it draws exactly what ``reference_sample``
draws under the same backend: step ``t`` uses the stateless seed
``step_seed(seed, t)`` on the logits of the same position.

Written once with ``keras.ops`` for the TensorFlow and JAX backends; only the
compilation (``compiled.py``) is backend-specific.
"""

import numpy as np
from keras import ops

from t2t_image.sampling.common import (
    check_sampling_args,
    conditioning_features,
    draw_values,
    dummy_features,
    generation_order,
    loop_seed,
    output_dtype,
    segment_ends,
    step_coordinates,
    step_seed,
)
from t2t_image.sampling.compiled import compiled, finished


def num_steps(model):
    """Number of generation steps of ``model``: its grid positions.

    Parmar et al. 2018, Sec. 3.1: one step per sub-pixel ("cat",
    ``h * w * channels``) or per pixel ("dmol", ``h * w``).

    Args:
        model: an ``ImageTransformer``.

    Returns:
        int.
    """
    rows, cols = model.grid_shape
    return rows * cols


def run_steps(model, canvas, cache, start, stop, choose, carry=(), given=None):
    """Runs decoding steps ``[start, stop)`` as one ``keras.ops.while_loop``.

    Step ``t`` runs ``model.call_step`` at ``generation_order(model)[t]``,
    asks ``choose`` for the values of that position and writes them into
    ``canvas`` (a "cat" sub-pixel, or a "dmol" pixel and its channels).
    ``choose`` decides what a step writes: the sampler draws a value
    (``decode_steps``), the compression codec writes the true value or the
    one its entropy decoder read (``t2t_image.compression``); both run this
    same loop. Backend-neutral (``keras.ops``); trace it inside a compiled
    function (``compiled.compiled``).

    T2T ``fast_decode`` (its ``tf.while_loop`` over cached decoding steps).

    Args:
        model: a built ``ImageTransformer``.
        canvas: int32 tensor `[batch, height, width, channels]`.
        cache: the model's decoding cache (``model.init_cache``).
        start: scalar int32 tensor, first step.
        stop: scalar int32 tensor, one past the last step.
        choose: ``choose(outputs, t, current, carry) -> (values, carry)``:
            ``outputs`` float32 `[batch, vocab_size]` ("cat") or `[batch, 10 *
            K]` ("dmol"), ``current`` the canvas's values at the step's
            position (`[batch]` "cat", `[batch, channels]` "dmol"); returns
            values of that shape (any integer dtype) and the new ``carry``.
        carry: nested tensors threaded through the steps for ``choose``.
        given: optional int32 tensor shaped like ``canvas``: ``current`` is
            read from it instead of from ``canvas``.

    Returns:
        ``(canvas, cache, carry)`` after the steps.
    """
    order = generation_order(model)
    rows, cols, channels = (ops.convert_to_tensor(a.astype(np.int32))
                            for a in step_coordinates(model, order))
    order = ops.convert_to_tensor(order.astype(np.int32))
    cat = model.likelihood == "cat"

    refresh = model.window_refresh_positions()

    def body(t, canvas, cache, carry):
        out, cache = model.call_step(canvas, cache, ops.take(order, t),
                                     window_ready=refresh is not None)
        y, x = ops.take(rows, t), ops.take(cols, t)
        batch = ops.shape(canvas)[0]
        if cat:
            begin, size = (0, y, x, ops.take(channels, t)), (batch, 1, 1, 1)
        else:
            begin, size = (0, y, x, 0), (batch, 1, 1, model.num_channels)
        current = ops.reshape(ops.slice(canvas if given is None else given, begin, size),
                              (batch, -1))
        value, carry = choose(out, t, current[:, 0] if cat else current, carry)
        value = ops.reshape(ops.cast(value, canvas.dtype), size)
        return t + 1, ops.slice_update(canvas, begin, value), cache, carry

    if refresh is None:
        _, canvas, cache, carry = ops.while_loop(
            lambda t, canvas, cache, carry: t < stop, body, (start, canvas, cache, carry)
        )
        return canvas, cache, carry

    # local_2d: an outer loop over query blocks refreshes the window buffers
    # (refresh_cache), an inner loop decodes the block's steps from them.
    total = num_steps(model)
    block_end = segment_ends(model, generation_order(model), np.array([0, total]))
    block_end = ops.convert_to_tensor(block_end.astype(np.int32))

    def block_body(t, canvas, cache, carry):
        cache = model.refresh_cache(cache, ops.take(order, t))
        end = ops.minimum(ops.take(block_end, t), stop)
        return ops.while_loop(lambda t, canvas, cache, carry: t < end, body,
                              (t, canvas, cache, carry))

    _, canvas, cache, carry = ops.while_loop(
        lambda t, canvas, cache, carry: t < stop, block_body, (start, canvas, cache, carry)
    )
    return canvas, cache, carry


def decode_steps(model, canvas, cache, seed, temperature, num_prefix_rows, start, stop,
                 top_k=0):
    """Runs generation steps ``[start, stop)``, drawing every value (``run_steps``).

    Step ``t`` decodes the position ``generation_order(model)[t]`` with
    ``model.call_step``, draws its value with seed ``step_seed(seed, t)``
    (``draw_values``: ``sample_categorical`` for a "cat" sub-pixel,
    ``sample_discretized_mix_logistic`` for a "dmol" pixel and its three
    channels) and writes it into ``canvas``, except in the top
    ``num_prefix_rows`` rows, whose given values are kept (their steps still
    run, to fill the caches). Backend-neutral (``keras.ops``); trace it inside
    a compiled function (``compiled.compiled``).

    T2T ``fast_decode`` (its ``tf.while_loop`` over cached decoding steps);
    Parmar et al. 2018, Sec. 5 (sampling) and Table 2 (completions).

    Args:
        model: a built ``ImageTransformer``.
        canvas: int32 tensor `[batch, height, width, channels]`.
        cache: the model's decoding cache (``model.init_cache``).
        seed: scalar integer tensor (``loop_seed``).
        temperature: scalar float32 tensor (>= 0; 0 = argmax).
        num_prefix_rows: scalar int32 tensor.
        start: scalar int32 tensor, first step.
        stop: scalar int32 tensor, one past the last step.
        top_k: static int, 0 (off) or draw among the ``top_k`` largest
            logits ("cat" only; see ``draw_values``).

    Returns:
        ``(canvas, cache)`` after the steps.
    """
    rows = ops.convert_to_tensor(step_coordinates(model)[0].astype(np.int32))

    def draw(out, t, current, carry):
        value = draw_values(model.likelihood, out, step_seed(seed, t), temperature, top_k)
        prefix = ops.take(rows, t) < num_prefix_rows
        return ops.where(prefix, current, ops.cast(value, current.dtype)), carry

    canvas, cache, _ = run_steps(model, canvas, cache, start, stop, draw)
    return canvas, cache


def sample_graph(model, canvas, conditioning, seed, temperature, num_prefix_rows, top_k=0):
    """The whole cached sampler as ``keras.ops`` (to be traced in a compiled function).

    Runs ``model.init_cache`` (the encoder, once) and all generation steps
    (``decode_steps``). No argument checking: see ``sample``. T2T
    ``fast_decode`` (cache initialisation and decoding loop); Parmar et al.
    2018, Sec. 5.

    Args:
        model: a built ``ImageTransformer``.
        canvas: int32 `[batch, height, width, channels]`, zeros or the prefix image.
        conditioning: dict of tensors (``labels`` `[batch]`, ``inputs``), maybe empty.
        seed: scalar integer tensor (``loop_seed``).
        temperature: scalar float32 tensor.
        num_prefix_rows: scalar int32 tensor.
        top_k: static int, 0 (off) or the top-k of "cat" draws.

    Returns:
        int32 `[batch, height, width, channels]`, the sampled images.
    """
    cache = model.init_cache(ops.shape(canvas)[0], conditioning)
    canvas, _ = decode_steps(model, canvas, cache, seed, temperature, num_prefix_rows,
                             _int32(0), _int32(num_steps(model)), top_k)
    return canvas


def _int32(value):
    return ops.convert_to_tensor(np.int32(value))


def ensure_built(model):
    """Builds ``model`` (if needed) by calling it on all-zero features.

    Not a T2T function (Keras builds weights on the first call).

    Args:
        model: an ``ImageTransformer`` (or subclass).
    """
    if not model.built:
        model(dummy_features(model), training=False)


def sample(model, num_samples, temperature=1.0, seed=0, labels=None, inputs=None, prefix=None,
           num_prefix_rows=0, jit_compile=True, progress=None, progress_chunks=32, top_k=None):
    """Samples images with cached incremental decoding (fast).

    Unconditional, class-conditional (``labels``), conditioned on ``inputs``
    (e.g. low-resolution images for super-resolution with an Img2Img model),
    and image completion (the top ``num_prefix_rows`` rows of ``prefix`` are
    kept exactly, the rest is sampled: Parmar et al. 2018, Table 2). Positions
    are generated in the model's generation order, one sub-pixel (or code) per
    step for "cat" models, one pixel (three channels) for "dmol". With the same
    seed (and ``top_k``) the result equals ``reference_sample`` (which
    recomputes the full model at every step), up to float rounding of the
    logits.

    The samples depend on ``seed`` and also on ``num_samples`` (the noise of
    a step is drawn for the whole batch at once).

    Parmar et al. 2018, Sec. 5 (samples, temperature); T2T ``fast_decode``
    with sampling (``sampling_method="random"``, ``sampling_temp``).

    Args:
        model: an ``ImageTransformer`` (or subclass).
        num_samples: int, number of images.
        temperature: float >= 0: logits are divided by it ("cat"; for "dmol"
            the component logits and the logistic scales); 0 is argmax.
        seed: int, the sampling seed.
        labels: int or int array `[num_samples]`, classes of a class-conditional model.
        inputs: array `[num_samples, ...]`, ``features["inputs"]`` of an
            encoder-decoder model.
        prefix: int array `[num_samples, rows, width, channels]` (or one image
            `[rows, width, channels]`) for completion.
        num_prefix_rows: int, how many top rows of ``prefix`` to keep.
        jit_compile: bool, compile the loop with XLA (much faster on CPU);
            under JAX the loop is always XLA-compiled (``jax.jit``).
        progress: optional callable ``progress(steps_done, num_steps)``; when
            given, the loop runs in ``progress_chunks`` compiled chunks and
            reports after each (the samples are the same).
        progress_chunks: int, number of chunks when ``progress`` is given.
        top_k: None or 0 (off), or an int in ``[1, vocab_size]``: each value
            is drawn among the ``top_k`` most likely ("cat" models only;
            Esser et al. 2021).

    Returns:
        NumPy array `[num_samples, height, width, channels]`, uint8 when the
        model's ``vocab_size <= 256`` (images), int32 otherwise (codes).

    Raises:
        ValueError: on invalid arguments (named in the message).
    """
    args = check_sampling_args(model, num_samples, temperature, seed, labels, inputs, prefix,
                               num_prefix_rows, top_k)
    top_k = args["top_k"]
    dtype = output_dtype(model)
    conditioning = conditioning_features(args)
    ensure_built(model)
    shape = (args["num_samples"], model.image_height, model.image_width, model.num_channels)
    canvas = ops.convert_to_tensor(
        np.zeros(shape, np.int32) if args["prefix"] is None else args["prefix"])
    conditioning = {k: ops.convert_to_tensor(v) for k, v in conditioning.items()}
    seed = loop_seed(args["seed"])
    temperature = ops.convert_to_tensor(np.float32(args["temperature"]))
    prefix_rows = _int32(args["num_prefix_rows"])

    if progress is None:
        run = compiled(model, f"sample/top_k={top_k}", jit_compile, lambda: (
            lambda canvas, conditioning, seed, temperature, prefix_rows: sample_graph(
                model, canvas, conditioning, seed, temperature, prefix_rows, top_k)))
        images = run(canvas, conditioning, seed, temperature, prefix_rows)
        return np.asarray(images).astype(dtype)

    init = compiled(model, "init_cache", jit_compile, lambda: (
        lambda canvas, conditioning: model.init_cache(ops.shape(canvas)[0], conditioning)))
    steps = compiled(model, f"decode_steps/top_k={top_k}", jit_compile, lambda: (
        lambda canvas, cache, seed, temperature, prefix_rows, start, stop: decode_steps(
            model, canvas, cache, seed, temperature, prefix_rows, start, stop, top_k)))
    cache = init(canvas, conditioning)
    total = num_steps(model)
    bounds = np.linspace(0, total, max(1, min(int(progress_chunks), total)) + 1).astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        canvas, cache = steps(canvas, cache, seed, temperature, prefix_rows,
                              _int32(start), _int32(stop))
        finished(canvas)
        progress(int(stop), total)
    return np.asarray(canvas).astype(dtype)
