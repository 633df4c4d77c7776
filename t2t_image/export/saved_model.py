"""SavedModel export with explicit serving signatures: log_prob, sample, complete.

The exported graph needs TensorFlow only: ``tf.saved_model.load(path)`` works
in a process where t2t_image (and Keras) cannot be imported. Every endpoint
has an explicit input signature (integer pixels stay integers), so inputs of
another dtype or shape are refused by TensorFlow with the expected signature
in the error. Every value is checked inside the graph before it is used
(label range, batch sizes, ``num_samples``, finite ``temperature >= 0``,
``num_prefix_rows``, pixel values below ``vocab_size``): a bad request raises
``InvalidArgumentError`` whose message names the input and the bad value, and
the serving process carries on. The checks matter beyond the message: an
out-of-range id in an embedding lookup raises on CPU but silently reads zeros
on GPU.
"""

import inspect
import math

import tensorflow as tf

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


def _assert(condition, message, *values):
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
    return _assert(
        tf.logical_and(smallest >= low, largest < high),
        f"{name} must be in [{low}, {high}){note}, got values in [min, max] =",
        smallest, largest)


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
        checks.append(_assert(
            tf.equal(entries, batch_size),
            f"{name} must have one entry per image: got [entries] [images] =",
            entries, batch_size))
        out[name] = tf.cast(value, tf.int32)
    if "labels" in conditioning:
        checks.append(range_check("labels", conditioning["labels"], 0, model.num_classes,
                                   f" (num_classes={model.num_classes})"))
    return checks, out


def build_endpoints(model, jit_compile=True):
    """The exported functions, as plain Python callables with their signatures.

    T2T's serving functions (``serving_input_fn`` with ``infer``) in the
    form of ``ExportArchive`` endpoints; see ``export_saved_model``. Every
    function checks its argument values first (``InvalidArgumentError``
    naming the argument and the value), in eager calls and in the SavedModel.

    Args:
        model: an ``ImageTransformer`` (or subclass); built if needed.
        jit_compile: bool, compile the sampling loop with XLA.

    Returns:
        dict name -> (fn, input_signature) for ``sample``, ``complete`` and
        ``log_prob``; each fn takes its inputs as positional tensors in
        signature order and returns a dict of tensors.
    """
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
        checks = checks + more + [_assert(
            tf.logical_and(tf.math.is_finite(temperature), temperature >= 0.0),
            "temperature must be a finite float >= 0 (0: argmax), got", temperature)]
        with tf.control_dependencies(checks):
            images = loop(canvas, conditioning, seed, temperature, rows)
        return {"images": tf.cast(images, pixel_dtype)}

    def sample(num_samples, temperature, seed, *conditioning):
        """Samples ``num_samples`` images (seeded; temperature 0 = argmax)."""
        check = _assert(num_samples > 0, "num_samples must be > 0, got", num_samples)
        with tf.control_dependencies([check]):
            canvas = tf.zeros(tf.concat([[num_samples], shape], 0), tf.int32)
        return run_sampler(canvas, dict(zip(names, conditioning)), seed, temperature,
                           tf.constant(0, tf.int32), [check])

    def complete(prefix, num_prefix_rows, temperature, seed, *conditioning):
        """Keeps the top ``num_prefix_rows`` rows of ``prefix`` and samples the rest."""
        rows = num_prefix_rows
        checks = [
            _assert(tf.shape(prefix)[0] > 0,
                    "prefix must hold at least one image (one per sample), got [images] =",
                    tf.shape(prefix)[0]),
            _assert(tf.logical_and(rows >= 0, rows <= height),
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
        checks += _check_pixels(model, "images", images)
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
    return {name: (with_signature_names(fn, signature), signature)
            for name, (fn, signature) in endpoints.items()}


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


def export_saved_model(model, export_dir, jit_compile=True, verbose=False):
    """Writes ``model`` as a TF SavedModel with sampling and likelihood endpoints.

    Endpoints (also SavedModel signatures; ``serving_default`` is ``sample``):

    - ``sample(num_samples: int32[], temperature: float32[], seed: int64[]
      [, labels: int32[n] | inputs: uint8[n, h_in, w_in, c]])`` ->
      ``{"images": uint8[n, h, w, c]}``; the same images as
      ``t2t_image.sampling.sample(model, n, temperature, seed, ...)``.
      Images are int32 instead of uint8 where ``vocab_size > 256``.
    - ``complete(prefix: uint8[n, h, w, c], num_prefix_rows: int32[],
      temperature, seed [, labels | inputs])`` -> ``{"images"}``: keeps the
      top rows of ``prefix`` (image completion).
    - ``log_prob(images: uint8[n, h, w, c] [, labels | inputs])`` ->
      ``{"log_prob": float32[n] (nats), "bits_per_dim": float32[n]}``.

    ``labels`` exists for class-conditional models, ``inputs`` for
    encoder-decoder (super-resolution) models. Requests are validated in the
    graph: ``num_samples > 0``, finite ``temperature >= 0``, labels in
    ``[0, num_classes)``, one label/input per image, ``num_prefix_rows`` in
    ``[0, image_height]``, at least one prefix image, pixel values below
    ``vocab_size``; a bad one raises ``tf.errors.InvalidArgumentError`` naming
    the input and the value, and leaves the loaded model usable. Uses
    ``keras.export.ExportArchive``; T2T's ``export`` / serving input
    functions served decoding the same way.

    Args:
        model: an ``ImageTransformer`` (or subclass); built if needed.
        export_dir: path of the SavedModel directory.
        jit_compile: bool, compile the sampling loop with XLA when it runs.
        verbose: bool, let Keras print the endpoints.

    Returns:
        ``export_dir``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    # "sample" first: ExportArchive makes the first endpoint serving_default.
    for name, (fn, signature) in build_endpoints(model, jit_compile).items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(str(export_dir), verbose=verbose)
    return export_dir
