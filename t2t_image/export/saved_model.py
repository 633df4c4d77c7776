"""SavedModel export with explicit serving signatures: log_prob, sample, complete.

The exported graph needs TensorFlow only: ``tf.saved_model.load(path)`` works
in a process where t2t_image (and Keras) cannot be imported. Every endpoint
has an explicit input dtype (integer pixels stay integers; another dtype is
refused by TensorFlow when the call is bound, with the expected dtype in the
error). Shapes are left open in the signatures and checked inside the graph
like every value (rank and sizes, label range, batch sizes, ``num_samples`` up
to the export's ``max_num_samples``, finite ``temperature >= 0``,
``num_prefix_rows``, pixel values below ``vocab_size``): a bad request raises
``InvalidArgumentError`` whose message names the input, the allowed range or
shape and the bad value, through ``tf.saved_model.load`` as through the
signatures (which TensorFlow never checks for shape), and the serving process
carries on. The checks matter beyond the message: an out-of-range id in an
embedding lookup raises on CPU but silently reads zeros on GPU, and one
request for many samples could exhaust the host's memory.

TensorFlow (2.21) itself puts ``Graph execution error:`` and the failing node
on the first lines of any error raised inside a loaded function, and Python
code of the exporting ``tf.Module`` is not saved, so the check's message
(``assertion failed: [<input> must ...] [<value>]``) is the first line of
the message after TensorFlow's header, not of the whole text.
"""

DEFAULT_MAX_NUM_SAMPLES = 64

import inspect
import math

import tensorflow as tf

from t2t_image.export.atomic import write_folder_atomically
from t2t_image.sampling.common import needs_inputs
from t2t_image.sampling.sampler import ensure_built
from t2t_image.sampling.sampler import sample_graph


def _vocab_size(model):
    """Values per sub-pixel of the targets (256 for models without ``vocab_size``)."""
    return int(getattr(model, "vocab_size", 256))


def _pixel_dtype(model):
    """dtype of images in the signatures: uint8 when every value fits, else int32."""
    return tf.uint8 if _vocab_size(model) <= 256 else tf.int32


def _specs(model):
    """TensorSpecs of the images and of the conditioning inputs."""
    images = tf.TensorSpec(
        [None, model.image_height, model.image_width, model.num_channels], _pixel_dtype(model),
        "images")
    conditioning = {}
    if model.num_classes is not None:
        conditioning["labels"] = tf.TensorSpec([None], tf.int32, "labels")
    if needs_inputs(model):
        # The low-resolution inputs are 8-bit images whatever the targets' vocab_size.
        conditioning["inputs"] = tf.TensorSpec(
            [None, model.input_height, model.input_width, model.num_channels], tf.uint8, "inputs")
    return images, conditioning


def in_graph_check(condition, message, *values):
    """An in-graph check: ``InvalidArgumentError`` "message [value] ..." unless ``condition``.

    Eager calls raise at once; in a graph the op runs before whatever is put
    under ``tf.control_dependencies`` of it.
    """
    return tf.debugging.Assert(condition, [message, *values], summarize=8)


def range_check(name, value, low, high, note=""):
    """Checks ``low <= value < high`` everywhere; the message shows the bad extremes."""
    value = tf.cast(value, tf.int64)
    empty = tf.equal(tf.size(value), 0)
    smallest = tf.where(empty, tf.constant(low, tf.int64), tf.reduce_min(value))
    largest = tf.where(empty, tf.constant(low, tf.int64), tf.reduce_max(value))
    return in_graph_check(
        tf.logical_and(smallest >= low, largest < high),
        f"{name} must be in [{low}, {high}){note}, got values in [min, max] =",
        smallest, largest)


def _format_shape(shape):
    dims = ["n" if i == 0 and d is None else "?" if d is None else str(d)
            for i, d in enumerate(shape)]
    return "[" + ", ".join(dims) + "]"


def shape_check(name, value, shape):
    """Checks the rank and the known sizes of ``value`` (of any shape) against ``shape``."""
    shape = tf.TensorShape(shape)
    rank = len(shape)
    actual = tf.shape(value)
    padded = tf.concat([actual, tf.zeros([rank], tf.int32)], 0)[:rank]  # safe if rank differs
    ok = tf.equal(tf.size(actual), rank)
    for i, dim in enumerate(shape.as_list()):
        if dim is not None:
            ok = tf.logical_and(ok, tf.equal(padded[i], dim))
    what = "be a scalar (shape [])" if rank == 0 else f"have shape {_format_shape(shape.as_list())}"
    return in_graph_check(ok, f"{name} must {what}, got shape", actual)


def _hide_static_shape(value, spec):
    """``value`` with an unknown static shape (a no-op at run time).

    A caller that knows a wrong static shape (the wrapper TensorFlow traces
    around a loaded function with optional arguments knows the request's
    shapes) would otherwise fail in shape inference, before the checks run,
    with TensorFlow's message about some inner op instead of ours.
    """
    other = tf.zeros([0 if d is None else d for d in spec.shape.as_list()] + [0], spec.dtype)
    return tf.cond(tf.size(value) >= 0, lambda: value, lambda: other)


def with_shape_checks(fn, signature):
    """``fn(*args)`` behind in-graph shape checks; returns it with the open signature.

    Args:
        fn: a function of tensors with the shapes of ``signature``.
        signature: its ``TensorSpec``s with the shapes the caller must give.

    Returns:
        ``(checked_fn, open_signature)``: the specs keep their dtype and name but
        any shape, so a wrong shape reaches the graph's check (a message naming
        the input and the expected shape) instead of TensorFlow's binding error,
        and the signatures (which TensorFlow does not check) cannot feed the
        model a wrong shape.
    """
    def checked(*args):
        # A spec of unknown rank is already open: its function checks it itself.
        checks = [shape_check(spec.name, value, spec.shape)
                  for spec, value in zip(signature, args) if spec.shape.rank is not None]
        shaped = []
        with tf.control_dependencies(checks):
            for spec, value in zip(signature, args):
                value = tf.identity(value)  # Runs only after every check has passed,
                if spec.shape.rank is not None:
                    value = _hide_static_shape(value, spec)
                value.set_shape(spec.shape)  # so the static shape is what it holds.
                shaped.append(value)
        return fn(*shaped)

    checked.__name__, checked.__doc__ = fn.__name__, fn.__doc__
    return checked, [tf.TensorSpec(None, spec.dtype, spec.name) for spec in signature]


def count_check(name, count, max_num_samples, what):
    """Checks ``1 <= count <= max_num_samples`` (the per-call bound of the export)."""
    return in_graph_check(
        tf.logical_and(count >= 1, count <= max_num_samples),
        f"{name} must be in [1, {max_num_samples}] {what} (max_num_samples={max_num_samples}, "
        "set at export), got", count)


def _check_pixels(model, name, value):
    """Range check of target pixels against ``vocab_size`` (none needed for uint8 and 256)."""
    vocab_size = _vocab_size(model)
    if vocab_size == 256 and value.dtype == tf.uint8:
        return []
    return [range_check(name, value, 0, vocab_size, f" (vocab_size={vocab_size})")]


def _check_conditioning(model, conditioning, batch_size):
    """In-graph checks of labels/inputs against the batch size; returns int32 tensors."""
    checks, out = [], {}
    for name, value in conditioning.items():
        entries = tf.shape(value)[0]
        checks.append(in_graph_check(
            tf.equal(entries, batch_size),
            f"{name} must have one entry per image: got [entries] [images] =",
            entries, batch_size))
        out[name] = tf.cast(value, tf.int32)
    if "labels" in conditioning:
        checks.append(range_check("labels", conditioning["labels"], 0, model.num_classes,
                                   f" (num_classes={model.num_classes})"))
    return checks, out


def build_endpoints(model, jit_compile=True, max_num_samples=DEFAULT_MAX_NUM_SAMPLES):
    """The exported functions, as plain Python callables with their signatures.

    T2T's serving functions (``serving_input_fn`` with ``infer``) in the
    form of ``ExportArchive`` endpoints; see ``export_saved_model``. Every
    function checks its argument values first (``InvalidArgumentError``
    naming the argument and the value), in eager calls and in the SavedModel.

    Args:
        model: an ``ImageTransformer`` (or subclass); built if needed.
        jit_compile: bool, compile the sampling loop with XLA.
        max_num_samples: int, the most images one call may sample, complete or
            score (``DEFAULT_MAX_NUM_SAMPLES``).

    Returns:
        dict name -> (fn, input_signature) for ``sample``, ``complete`` and
        ``log_prob``; each fn takes its inputs as positional tensors in
        signature order and returns a dict of tensors. The signatures leave
        shapes open; each fn checks them (``with_shape_checks``).
    """
    if isinstance(max_num_samples, bool) or not isinstance(max_num_samples, int) \
            or max_num_samples < 1:
        raise ValueError(f"max_num_samples must be an int >= 1, got {max_num_samples!r}")
    ensure_built(model)
    images_spec, conditioning_specs = _specs(model)
    names = list(conditioning_specs)
    scalar = lambda dtype, name: tf.TensorSpec([], dtype, name)  # noqa: E731
    height, shape, pixel_dtype = model.image_height, images_spec.shape[1:], images_spec.dtype
    loop = tf.function(
        lambda canvas, conditioning, seed, temperature, rows: sample_graph(
            model, canvas, conditioning, seed, temperature, rows),
        jit_compile=jit_compile,
    )

    def run_sampler(canvas, conditioning, seed, temperature, rows, checks):
        more, conditioning = _check_conditioning(model, conditioning, tf.shape(canvas)[0])
        checks = checks + more + [in_graph_check(
            tf.logical_and(tf.math.is_finite(temperature), temperature >= 0.0),
            "temperature must be a finite float >= 0 (0: argmax), got", temperature)]
        with tf.control_dependencies(checks):
            images = loop(canvas, conditioning, seed, temperature, rows)
        return {"images": tf.cast(images, pixel_dtype), "seed": tf.identity(seed)}

    def sample(num_samples, temperature, seed, *conditioning):
        """Samples ``num_samples`` images (seeded; temperature 0 = argmax)."""
        check = count_check("num_samples", num_samples, max_num_samples, "images")
        with tf.control_dependencies([check]):
            canvas = tf.zeros(tf.concat([[num_samples], shape], 0), tf.int32)
        return run_sampler(canvas, dict(zip(names, conditioning)), seed, temperature,
                           tf.constant(0, tf.int32), [check])

    def complete(prefix, num_prefix_rows, temperature, seed, *conditioning):
        """Keeps the top ``num_prefix_rows`` rows of ``prefix`` and samples the rest."""
        rows = num_prefix_rows
        checks = [
            count_check("prefix", tf.shape(prefix)[0], max_num_samples,
                        "images (one per sample)"),
            in_graph_check(tf.logical_and(rows >= 0, rows <= height),
                    f"num_prefix_rows must be in [0, {height}] (image_height={height}), got",
                    rows),
        ] + _check_pixels(model, "prefix", prefix)
        with tf.control_dependencies(checks):
            kept = tf.range(height)[None, :, None, None] < rows
            canvas = tf.where(kept, tf.cast(prefix, tf.int32), 0)
        return run_sampler(canvas, dict(zip(names, conditioning)), seed, temperature, rows,
                           checks)

    def log_prob(images, *conditioning):
        """Per-image log-likelihood in nats and in bits per dimension."""
        checks, conditioning = _check_conditioning(model, dict(zip(names, conditioning)),
                                                   tf.shape(images)[0])
        checks += _check_pixels(model, "images", images) + [in_graph_check(
            tf.shape(images)[0] <= max_num_samples,
            f"images must hold at most {max_num_samples} images (max_num_samples="
            f"{max_num_samples}, set at export), got", tf.shape(images)[0])]
        with tf.control_dependencies(checks):
            features = dict(conditioning, targets=tf.cast(images, tf.int32))
            nats = model.log_prob_from_logits(model(features, training=False),
                                              features["targets"])
        return {"log_prob": nats,
                "bits_per_dim": -nats / (model.num_dims * math.log(2.0))}

    sampler_specs = [scalar(tf.float32, "temperature"), scalar(tf.int64, "seed")]
    cond = [conditioning_specs[n] for n in names]
    endpoints = {
        "sample": (sample, [scalar(tf.int32, "num_samples")] + sampler_specs + cond),
        "complete": (complete, [tf.TensorSpec(images_spec.shape, pixel_dtype, "prefix"),
                                scalar(tf.int32, "num_prefix_rows")] + sampler_specs + cond),
        "log_prob": (log_prob, [images_spec] + cond),
    }
    out = {}
    for name, (fn, signature) in endpoints.items():
        checked, open_signature = with_shape_checks(fn, signature)
        out[name] = (with_signature_names(checked, open_signature), open_signature)
    return out


# Defaults of the sampling endpoints: their arguments after the required ones.
SAMPLING_DEFAULTS = {"temperature": 1.0, "seed": None}


def random_seed():
    """A fresh int64 seed >= 0 on every call, different in every process.

    Seeds 0/0 make the kernel seed itself from the OS, whatever global seed
    the exporting process had set (``tf.random.uniform`` would bake that in).
    """
    return tf.raw_ops.RandomUniformInt(shape=tf.constant([], tf.int32),
                                       minval=tf.constant(0, tf.int64),
                                       maxval=tf.constant(2 ** 63 - 1, tf.int64), seed=0, seed2=0)


def with_sampling_defaults(fn, signature):
    """A ``tf.function`` of ``fn`` whose ``temperature`` and ``seed`` may be left out.

    The Python signature becomes ``(required..., temperature=1.0, seed=None,
    *, conditioning...)``: ``seed=None`` draws a random seed (``random_seed``)
    that the result reports under ``"seed"``. Two concrete functions are
    traced: seed given first (so it is the SavedModel signature, which needs
    every input), then seed absent. Each holds ``fn``'s checks (not a call of
    one traced ``fn``: TensorFlow would then infer shapes from the inputs of
    a call before the checks run, and a wrong shape would fail with its
    message instead of ours); the sampling loop inside is one function,
    stored once.

    Args:
        fn: a function of the tensors of ``signature`` (in order), which holds
            ``temperature`` and ``seed`` after the required inputs.
        signature: its ``TensorSpec``s.

    Returns:
        The traced ``tf.function``.
    """
    names = [spec.name for spec in signature]
    first = names.index("temperature")
    assert names[first:first + 2] == list(SAMPLING_DEFAULTS), names
    parameter = inspect.Parameter
    python_signature = inspect.Signature(
        [parameter(n, parameter.POSITIONAL_OR_KEYWORD) for n in names[:first]]
        + [parameter(n, parameter.POSITIONAL_OR_KEYWORD, default=d)
           for n, d in SAMPLING_DEFAULTS.items()]
        + [parameter(n, parameter.KEYWORD_ONLY) for n in names[first + 2:]])

    def endpoint(*args, **kwargs):
        values = python_signature.bind(*args, **kwargs)
        values.apply_defaults()
        values = dict(values.arguments)
        if values["seed"] is None:
            values["seed"] = random_seed()
        return fn(*[values[n] for n in names])

    endpoint.__name__, endpoint.__doc__ = fn.__name__, fn.__doc__
    endpoint.__signature__ = python_signature
    traced = tf.function(endpoint, autograph=False)
    specs = dict(zip(names, signature))
    required = [specs[n] for n in names[:first]]
    conditioning = {n: specs[n] for n in names[first + 2:]}
    traced.get_concrete_function(*required, specs["temperature"], specs["seed"], **conditioning)
    traced.get_concrete_function(*required, specs["temperature"], None, **conditioning)
    return traced


def add_endpoints(archive, endpoints):
    """Adds ``{name: (fn, signature)}`` to a Keras ``ExportArchive``, in order.

    Endpoints with a ``seed`` input get the sampling defaults
    (``with_sampling_defaults``); the others keep their exact signature.
    """
    for name, (fn, signature) in endpoints.items():
        if "seed" in [spec.name for spec in signature]:
            archive.add_endpoint(name, with_sampling_defaults(fn, signature))
        else:
            archive.add_endpoint(name, fn, input_signature=signature)


def with_signature_names(fn, signature):
    """``fn(*args)`` with a Python signature naming every argument after its spec.

    The SavedModel signatures take their input names from the Python
    parameters, so the conditioning argument is called ``labels`` or
    ``inputs`` rather than ``conditioning_0``.
    """
    def wrapper(*args):
        return fn(*args)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__signature__ = inspect.Signature([
        inspect.Parameter(spec.name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for spec in signature
    ])
    return wrapper


def export_saved_model(model, export_dir, jit_compile=True, verbose=False,
                       max_num_samples=DEFAULT_MAX_NUM_SAMPLES):
    """Writes ``model`` as a TF SavedModel with sampling and likelihood endpoints.

    Endpoints (also SavedModel signatures; ``serving_default`` is ``sample``):

    - ``sample(num_samples: int32[], temperature: float32[] = 1.0,
      seed: int64[] = None, *, labels: int32[n] | inputs: uint8[n, h_in,
      w_in, c])`` -> ``{"images": uint8[n, h, w, c], "seed": int64[]}``; with
      a seed, the same images as ``t2t_image.sampling.sample(model, n,
      temperature, seed, ...)``; without one, a random seed, returned under
      ``"seed"`` (passing it back reproduces the images). Images are int32
      instead of uint8 where ``vocab_size > 256``.
    - ``complete(prefix: uint8[n, h, w, c], num_prefix_rows: int32[],
      temperature=1.0, seed=None, *, labels | inputs)`` -> ``{"images",
      "seed"}``: keeps the top rows of ``prefix`` (image completion).
    - ``log_prob(images: uint8[n, h, w, c], labels | inputs)`` ->
      ``{"log_prob": float32[n] (nats), "bits_per_dim": float32[n]}``.

    The defaults hold for ``loaded.sample(...)`` (Python, any keyword or the
    leading arguments by position; the conditioning by keyword); the
    SavedModel signatures (``loaded.signatures[...]``, TF Serving) take every
    input by name, none optional. docs/serving.md shows every call.
    ``labels`` exists for class-conditional models, ``inputs`` for
    encoder-decoder (super-resolution) models. Requests are validated in the
    graph: every input's rank and sizes, ``num_samples`` (and the images of
    ``complete``/``log_prob``) in ``[1, max_num_samples]``, finite
    ``temperature >= 0``, labels in ``[0, num_classes)``, one label/input per
    image, ``num_prefix_rows`` in ``[0, image_height]``, pixel values below
    ``vocab_size``; a bad one raises ``tf.errors.InvalidArgumentError`` naming
    the input, the allowed range or shape and the value, and leaves the loaded
    model usable. The folder is written beside ``export_dir`` and swapped in
    (``atomic.write_folder_atomically``): an existing export is replaced, and
    a kill at any point leaves the old or the new one. Uses
    ``keras.export.ExportArchive``; T2T's ``export`` / serving input
    functions served decoding the same way.

    Args:
        model: an ``ImageTransformer`` (or subclass); built if needed.
        export_dir: path of the SavedModel directory.
        jit_compile: bool, compile the sampling loop with XLA when it runs.
        verbose: bool, let Keras print the endpoints.
        max_num_samples: int, the most images one request may ask for
            (memory grows with it: the sampling cache of a 12-layer d-512 model
            takes about 150 MB per image).

    Returns:
        ``export_dir``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    # "sample" first: ExportArchive makes the first endpoint serving_default.
    add_endpoints(archive, build_endpoints(model, jit_compile, max_num_samples))
    return write_folder_atomically(
        export_dir, lambda folder: archive.write_out(folder, verbose=verbose))
