"""Shared definitions of the samplers: generation order, per-step seeds, argument checks.

Both the slow reference sampler (``reference_sampler.py``) and the cached
sampler (``sampler.py``) generate the positions of the model's grid in the
same order and draw step ``t`` with the same stateless seed, so that with
equal logits they produce identical images; the sliding-window sampler
(``sliding_window.py``) draws with the same seeds and ``draw_values`` on
larger canvases.
"""

import functools

import numpy as np
from keras import ops

from t2t_image.ops.categorical import check_top_k
from t2t_image.ops.categorical import sample_categorical
from t2t_image.ops.dmol import sample_discretized_mix_logistic
from t2t_image.ops.local_attention_2d import block_raster_order

_INT64 = np.iinfo(np.int64)


def generation_order(model):
    """The order in which an autoregressive Image Transformer generates its grid.

    Positions are raster indices ``row * cols + col`` of ``model.grid_shape``
    (sub-pixels ``[h, channels * w]`` for ``likelihood="cat"``, pixels
    ``[h, w]`` for ``"dmol"``). ``local_1d`` and ``global`` decoders generate
    in raster order; ``local_2d`` decoders in block-raster order (query blocks
    in raster order, raster order inside a block, see
    ``t2t_image.ops.local_attention_2d.block_raster_order``).

    Parmar et al. 2018, Sec. 3.2 and Fig. 2 (generation orders of 1D and 2D
    local attention); T2T generates in raster order via ``Transformer.infer``.

    Args:
        model: an ``ImageTransformer`` (or subclass).

    Returns:
        NumPy int64 array of length ``rows * cols``.
    """
    rows, cols = model.grid_shape
    if model.dec_attention_type == "local_2d":
        return block_raster_order(rows, cols, model.query_shape)
    return np.arange(rows * cols, dtype=np.int64)


def step_coordinates(model, order=None):
    """Image coordinates written at each generation step.

    Args:
        model: an ``ImageTransformer``.
        order: optional generation order (default ``generation_order(model)``).

    Returns:
        ``(rows, cols, channels)``: NumPy int64 arrays of length
        ``len(order)``; step ``t`` writes pixel ``(rows[t], cols[t])``, channel
        ``channels[t]`` for "cat" models and all channels (``channels[t] == 0``)
        for "dmol" models.

    Parmar et al. 2018, Sec. 3.1 (a "cat" position is one channel of a pixel,
    a "dmol" position a whole pixel).
    """
    order = generation_order(model) if order is None else np.asarray(order)
    grid_cols = model.grid_shape[1]
    row, col = np.divmod(order, grid_cols)
    if model.likelihood == "cat":
        col, channel = np.divmod(col, model.num_channels)
    else:
        channel = np.zeros_like(col)
    return row.astype(np.int64), col.astype(np.int64), channel.astype(np.int64)


def _fold_to_int32(seed):
    """A Python int seed (int64 range) folded to 32 bits: low word XOR high word, as int32.

    Seeds in ``[0, 2**32)`` keep their value (as the int32 with the same bits).
    """
    word = int(seed) & 0xFFFFFFFFFFFFFFFF
    folded = (word ^ (word >> 32)) & 0xFFFFFFFF
    return folded - (1 << 32) if folded >= (1 << 31) else folded


def loop_seed(seed):
    """The sampling seed as the scalar tensor the compiled sampling loops take.

    TensorFlow: int64 (``step_seed`` stacks it with the step). JAX (64-bit
    integers are off by default): the seed folded to 32 bits
    (``_fold_to_int32``), the same value ``step_seed`` uses for Python ints
    there, so the Python-loop reference sampler and the compiled loop draw
    with identical keys. Distinct seeds within ``[0, 2**32)`` stay distinct.

    Args:
        seed: int (int64 range).

    Returns:
        Scalar int64 (TensorFlow) or int32 (JAX) tensor.
    """
    if keras_backend() == "jax":
        return ops.convert_to_tensor(np.int32(_fold_to_int32(seed)))
    return ops.convert_to_tensor(np.int64(seed))


def step_seed(seed, step):
    """The stateless seed of generation step ``step``: ``[seed, step]``.

    Works on Python ints (returns a NumPy array) and on integer tensors
    (returns a tensor of shape ``[2]``), so the Python-loop reference
    sampler and the compiled cached sampler derive identical seeds.
    TensorFlow: int64 ``[seed, step]``. JAX: int32 ``[seed folded to 32
    bits, step]`` (a tensor ``seed`` must come from ``loop_seed``, already
    folded); the ops turn it into the raw ``uint32[2]`` PRNG key.

    Not a T2T function (T2T samples with stateful ops).

    Args:
        seed: int or scalar integer tensor, the sampling seed.
        step: int or scalar integer tensor, the generation step index.

    Returns:
        Integer seed of shape ``[2]`` for ``t2t_image.ops.categorical`` samplers.
    """
    jax = keras_backend() == "jax"
    if isinstance(seed, (int, np.integer)) and isinstance(step, (int, np.integer)):
        if jax:
            return np.array([_fold_to_int32(seed), int(step)], dtype=np.int32)
        return np.array([int(seed), int(step)], dtype=np.int64)
    dtype = "int32" if jax else "int64"
    return ops.stack([ops.cast(seed, dtype), ops.cast(step, dtype)])


def keras_backend():
    """The Keras backend name ("tensorflow" or "jax"; see ``compiled.backend``)."""
    from t2t_image.sampling.compiled import backend

    return backend()


# XLA's stateless random bits differ from the TF CPU kernel's for the same seed, so
# under TensorFlow every draw goes through these XLA-compiled functions: eager calls
# (reference sampler), nested calls in a plain tf.function and inlined calls in an XLA
# loop then all produce the same values. No reduce_retracing: relaxed shapes would hide
# the static number of mixtures (the last dimension) that the DMOL sampler needs.
# Under JAX every draw is XLA-compiled by jax.jit (top_k static) for the same reason.
@functools.cache
def _compiled_draws(backend):
    if backend == "jax":
        import jax

        return (jax.jit(sample_categorical, static_argnames="top_k"),
                jax.jit(sample_discretized_mix_logistic))
    import tensorflow as tf

    return (tf.function(sample_categorical, jit_compile=True),
            tf.function(sample_discretized_mix_logistic, jit_compile=True))


def draw_values(likelihood, outputs, seed, temperature, top_k=None):
    """Draws the values of one generation step from the model outputs.

    All samplers draw through this function, always XLA-compiled (XLA's
    stateless random numbers differ from the TF kernel's for the same seed),
    so that equal outputs and seeds give equal values everywhere.

    Parmar et al. 2018, Sec. 3.2 and 5 (sampling the categorical or the
    discretized mixture of logistics, with temperature); top-k as in Esser
    et al. 2021.

    Args:
        likelihood: "cat" or "dmol".
        outputs: float32 tensor: logits `[batch, vocab_size]` ("cat") or
            mixture parameters `[batch, 10 * K]` ("dmol").
        seed: integer seed `[2]` (``step_seed``).
        temperature: float32 scalar (tensor), >= 0.
        top_k: None or 0 (off), or a static int in ``[1, vocab_size]``
            ("cat" only): draw among the ``top_k`` largest logits.

    Returns:
        int32 `[batch]` sub-pixel values ("cat") or `[batch, 3]` pixels ("dmol").

    Raises:
        ValueError: for ``top_k`` with ``likelihood="dmol"``.
    """
    backend = keras_backend()
    seed = ops.convert_to_tensor(seed, "int32" if backend == "jax" else "int64")
    temperature = ops.convert_to_tensor(temperature, "float32")
    top_k = check_top_k(top_k)  # 0 = off (None and 0 share one trace)
    draw_categorical, draw_dmol = _compiled_draws(backend)
    if likelihood == "cat":
        return draw_categorical(outputs, seed, temperature, top_k=top_k)
    if top_k:
        raise ValueError(
            f"top_k is only valid for likelihood='cat', got top_k={top_k} with "
            f"likelihood={likelihood!r}."
        )
    return draw_dmol(outputs, seed, temperature)


def output_dtype(model):
    """NumPy dtype of the samplers' results: uint8 if ``vocab_size <= 256``, else int32.

    8-bit images (and code grids of codebooks of at most 256 codes) stay
    uint8 as before; larger codebooks (Esser et al. 2021 use K = 1024 and
    more) need int32. Not a T2T function.

    Args:
        model: an ``ImageTransformer`` (or subclass).

    Returns:
        ``np.uint8`` or ``np.int32``.
    """
    return np.uint8 if model_vocab_size(model) <= 256 else np.int32


def model_vocab_size(model):
    """Values per sub-pixel of ``model``: its ``vocab_size`` (256 for older models).

    Args:
        model: an ``ImageTransformer`` (or subclass).

    Returns:
        int.
    """
    return int(getattr(model, "vocab_size", 256))


def _as_int_array(name, value):
    array = np.asarray(value)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer)
        or (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))
    ):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}.")
    return array.astype(np.int64)


def check_sampling_args(model, num_samples, temperature, seed, labels, inputs, prefix,
                        num_prefix_rows, top_k=None, height=None, width=None):
    """Validates the arguments of ``sample`` / ``reference_sample`` / ``sample_sliding_window``.

    Not a T2T function: the argument checking the samplers share (fail early,
    naming the argument). See ``t2t_image.sampling.sample`` for the meaning of
    the arguments.

    Args:
        model: an ``ImageTransformer`` (or subclass).
        num_samples, temperature, seed, labels, inputs, prefix, num_prefix_rows,
            top_k: as in ``sample``.
        height, width: ints, the size of the canvas the prefix is checked
            against (default: the model's ``image_height`` / ``image_width``;
            larger for ``sample_sliding_window``).

    Returns:
        A dict with ``num_samples`` (int), ``temperature`` (float), ``seed``
        (int), ``labels`` (int32 ``[n]`` or None), ``inputs`` (the array or
        None), ``prefix`` (int32 ``[n, height, width, C]`` whose first
        ``num_prefix_rows`` rows are the given rows, or None),
        ``num_prefix_rows`` (int) and ``top_k`` (int, 0 = off; ``vocab_size``
        is returned as 0, which draws the same values).

    Raises:
        ValueError: naming the offending argument and the value received.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    num_samples = int(num_samples)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not np.isfinite(float(temperature)) or float(temperature) < 0:
        raise ValueError(f"temperature must be a finite float >= 0, got {temperature!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not _INT64.min <= int(seed) <= _INT64.max:
        raise ValueError(f"seed must be an int (int64 range), got {seed!r}.")
    vocab_size = model_vocab_size(model)
    if top_k is not None and top_k != 0:
        if getattr(model, "likelihood", "cat") != "cat":
            raise ValueError(
                f"top_k is only valid for likelihood='cat' models, got top_k={top_k!r} for a "
                f"likelihood={model.likelihood!r} model."
            )
    top_k = check_top_k(top_k, vocab_size, "vocab_size")
    if top_k == vocab_size:  # the unrestricted draw (same noise): share its compiled loop
        top_k = 0

    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and labels is not None:
        raise ValueError("labels were given but the model is unconditional (num_classes=None).")
    if num_classes is not None:
        if labels is None:
            raise ValueError(
                f"the model is class-conditional (num_classes={num_classes}): pass labels "
                "(an int, or one class per sample)."
            )
        labels = _as_int_array("labels", labels)
        if labels.ndim == 0:
            labels = np.full((num_samples,), int(labels), np.int64)
        if labels.shape != (num_samples,):
            raise ValueError(
                f"labels must be an int or have shape [num_samples]=[{num_samples}], got "
                f"shape {labels.shape}."
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"labels must be in [0, {num_classes}) (num_classes={num_classes}), got values "
                f"in [{labels.min()}, {labels.max()}]."
            )
        labels = labels.astype(np.int32)

    if needs_inputs(model):
        expected = (num_samples, model.input_height, model.input_width, model.num_channels)
        if inputs is None:
            raise ValueError(
                f"this model is conditioned on low-resolution inputs: pass inputs of shape "
                f"{list(expected)} (input_height={model.input_height}, input_width="
                f"{model.input_width})."
            )
        inputs = _as_int_array("inputs", inputs)
        if inputs.shape != expected:
            raise ValueError(
                f"inputs must have shape {list(expected)} (num_samples, input_height, "
                f"input_width, num_channels), got shape {inputs.shape}."
            )
        if inputs.min() < 0 or inputs.max() > 255:
            raise ValueError(
                f"inputs values must be in 0..255, got values in [{inputs.min()}, {inputs.max()}]."
            )
        inputs = inputs.astype(np.int32)
    elif inputs is not None:
        raise ValueError("inputs were given but the model takes none (it has no encoder).")

    height_name = "image_height" if height is None else "height"
    height = model.image_height if height is None else int(height)
    width = model.image_width if width is None else int(width)
    channels = model.num_channels
    if isinstance(num_prefix_rows, bool) or not isinstance(num_prefix_rows, (int, np.integer)) \
            or not 0 <= num_prefix_rows <= height:
        raise ValueError(
            f"num_prefix_rows must be an int in [0, {height}] ({height_name}={height}), got "
            f"{num_prefix_rows!r}."
        )
    num_prefix_rows = int(num_prefix_rows)
    if prefix is None and num_prefix_rows > 0:
        raise ValueError(f"num_prefix_rows={num_prefix_rows} needs a prefix image.")
    if prefix is not None:
        if num_prefix_rows == 0:
            raise ValueError(
                "a prefix was given with num_prefix_rows=0: say how many of its top rows to keep."
            )
        prefix = _as_int_array("prefix", prefix)
        if prefix.ndim == 3:
            prefix = np.broadcast_to(prefix[None], (num_samples,) + prefix.shape)
        if (prefix.ndim != 4 or prefix.shape[0] != num_samples or prefix.shape[2:] != (width, channels)
                or prefix.shape[1] < num_prefix_rows):
            raise ValueError(
                f"prefix must have shape [num_samples={num_samples}, rows >= num_prefix_rows="
                f"{num_prefix_rows}, {width}, {channels}] (or one image without the batch axis), "
                f"got shape {prefix.shape}."
            )
        if prefix.min() < 0 or prefix.max() >= vocab_size:
            raise ValueError(
                f"prefix values must be in 0..{vocab_size - 1} (vocab_size={vocab_size}), got "
                f"values in [{prefix.min()}, {prefix.max()}]."
            )
        full = np.zeros((num_samples, height, width, channels), np.int32)
        full[:, :num_prefix_rows] = prefix[:, :num_prefix_rows]
        prefix = full
    return dict(num_samples=num_samples, temperature=float(temperature), seed=int(seed),
                labels=labels, inputs=inputs, prefix=prefix, num_prefix_rows=num_prefix_rows,
                top_k=top_k)


def needs_inputs(model):
    """Whether ``model`` is an encoder-decoder conditioned on ``features["inputs"]``.

    Parmar et al. 2018, Sec. 5.3 (super-resolution: the encoder reads the
    low-resolution image); T2T ``Img2imgTransformer``.

    Args:
        model: an ``ImageTransformer`` (or subclass).

    Returns:
        True for models with an ``input_grid_shape`` (``Img2ImgTransformer``),
        whose ``encode`` reads ``inputs`` `[batch, input_height, input_width,
        channels]`.
    """
    return hasattr(model, "input_grid_shape")


def dummy_features(model, batch_size=1):
    """All-zero features that build ``model``: targets plus labels or inputs as needed.

    Not a T2T function (Keras models are built by a first call).

    Args:
        model: an ``ImageTransformer`` (or subclass).
        batch_size: int.

    Returns:
        dict of int32 NumPy arrays: ``targets`` and, as the model needs them,
        ``labels`` `[batch]` and ``inputs``.
    """
    shape = (batch_size, model.image_height, model.image_width, model.num_channels)
    features = {"targets": np.zeros(shape, np.int32)}
    if getattr(model, "num_classes", None) is not None:
        features["labels"] = np.zeros((batch_size,), np.int32)
    if needs_inputs(model):
        features["inputs"] = np.zeros(
            (batch_size, model.input_height, model.input_width, model.num_channels), np.int32)
    return features


def conditioning_features(args):
    """The conditioning entries of a features dict, from ``check_sampling_args``.

    Args:
        args: the dict returned by ``check_sampling_args``.

    Returns:
        dict with ``labels`` (Sec. 5.2, class-conditional) and/or ``inputs``
        (Sec. 5.3, super-resolution) when given; empty otherwise.
    """
    features = {}
    if args["labels"] is not None:
        features["labels"] = args["labels"]
    if args["inputs"] is not None:
        features["inputs"] = args["inputs"]
    return features


def segment_ends(model, positions, starts):
    """For each decoding step, one past the last step decoded from its window buffers.

    local_2d decoders read their query block's key window from a buffer
    (``ImageTransformer.refresh_cache``) that is refilled at every run start
    and every query block start; other decoders need no refill, so a segment
    is the whole run. Used by ``decode_steps`` (one run: the generation order)
    and the cached sliding window (``cached_segments``'s runs). Not in T2T.

    Args:
        model: an ``ImageTransformer``.
        positions: int `[S]`, each step's raster index on the model's grid.
        starts: int `[R + 1]`, the first step of every run and ``S``.

    Returns:
        int64 `[S]`: the first step after step ``k`` that starts a run or a
        query block (``S`` after the last).
    """
    total = len(positions)
    boundary = np.zeros(total + 1, bool)
    boundary[starts] = True
    refresh = model.window_refresh_positions()
    if refresh is not None and total:
        boundary[:total] |= refresh[positions]
    following = np.flatnonzero(boundary)  # sorted, ends with `total`
    return following[np.searchsorted(following, np.arange(total), side="right")].astype(np.int64)
