"""SavedModel export with explicit serving signatures: log_prob, sample, complete.

The exported graph needs TensorFlow only: ``tf.saved_model.load(path)`` works
in a process where t2t_image (and Keras) cannot be imported. Every endpoint
has an explicit input signature (integer pixels stay integers), so inputs of
another dtype or shape are refused by TensorFlow with the expected signature
in the error; value checks (label range, batch sizes, temperature, rows) run
inside the graph and raise ``InvalidArgumentError`` naming the input.
"""

import inspect
import math

import tensorflow as tf

from t2t_image.sampling.common import needs_inputs
from t2t_image.sampling.sampler import ensure_built
from t2t_image.sampling.sampler import sample_graph


def _specs(model):
    """TensorSpecs of the images and of the conditioning inputs."""
    images = tf.TensorSpec(
        [None, model.image_height, model.image_width, model.num_channels], tf.uint8, "images")
    conditioning = {}
    if model.num_classes is not None:
        conditioning["labels"] = tf.TensorSpec([None], tf.int32, "labels")
    if needs_inputs(model):
        conditioning["inputs"] = tf.TensorSpec(
            [None, model.input_height, model.input_width, model.num_channels], tf.uint8, "inputs")
    return images, conditioning


def _check_conditioning(model, conditioning, batch_size):
    """In-graph checks of labels/inputs against the batch size; returns int32 tensors."""
    checks, out = [], {}
    for name, value in conditioning.items():
        checks.append(tf.debugging.assert_equal(
            tf.shape(value)[0], batch_size,
            message=f"{name} must have one entry per image (the batch size)"))
        out[name] = tf.cast(value, tf.int32)
    if "labels" in conditioning:
        checks.append(tf.debugging.assert_non_negative(
            conditioning["labels"], message="labels must be >= 0"))
        checks.append(tf.debugging.assert_less(
            conditioning["labels"], model.num_classes,
            message=f"labels must be < num_classes={model.num_classes}"))
    return checks, out


def build_endpoints(model, jit_compile=True):
    """The exported functions, as plain Python callables with their signatures.

    T2T's serving functions (``serving_input_fn`` with ``infer``) in the
    form of ``ExportArchive`` endpoints; see ``export_saved_model``.

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
    height, shape = model.image_height, images_spec.shape[1:]
    loop = tf.function(
        lambda canvas, conditioning, seed, temperature, rows: sample_graph(
            model, canvas, conditioning, seed, temperature, rows),
        jit_compile=jit_compile,
    )

    def run_sampler(canvas, conditioning, seed, temperature, rows):
        checks, conditioning = _check_conditioning(model, conditioning, tf.shape(canvas)[0])
        checks.append(tf.debugging.assert_greater_equal(
            temperature, 0.0, message="temperature must be >= 0"))
        with tf.control_dependencies(checks):
            images = loop(canvas, conditioning, seed, temperature, rows)
        return {"images": tf.cast(images, tf.uint8)}

    def sample(num_samples, temperature, seed, *conditioning):
        """Samples ``num_samples`` images (seeded; temperature 0 = argmax)."""
        check = tf.debugging.assert_positive(num_samples, message="num_samples must be > 0")
        with tf.control_dependencies([check]):
            canvas = tf.zeros(tf.concat([[num_samples], shape], 0), tf.int32)
        return run_sampler(canvas, dict(zip(names, conditioning)), seed, temperature,
                           tf.constant(0, tf.int32))

    def complete(prefix, num_prefix_rows, temperature, seed, *conditioning):
        """Keeps the top ``num_prefix_rows`` rows of ``prefix`` and samples the rest."""
        checks = [
            tf.debugging.assert_non_negative(num_prefix_rows,
                                             message="num_prefix_rows must be >= 0"),
            tf.debugging.assert_less_equal(
                num_prefix_rows, height, message=f"num_prefix_rows must be <= {height}"),
        ]
        with tf.control_dependencies(checks):
            rows = tf.range(height)[None, :, None, None] < num_prefix_rows
            canvas = tf.where(rows, tf.cast(prefix, tf.int32), 0)
        return run_sampler(canvas, dict(zip(names, conditioning)), seed, temperature,
                           num_prefix_rows)

    def log_prob(images, *conditioning):
        """Per-image log-likelihood in nats and in bits per dimension."""
        checks, conditioning = _check_conditioning(model, dict(zip(names, conditioning)),
                                                   tf.shape(images)[0])
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
        "complete": (complete, [tf.TensorSpec(images_spec.shape, tf.uint8, "prefix"),
                                scalar(tf.int32, "num_prefix_rows")] + sampler_specs + cond),
        "log_prob": (log_prob, [images_spec] + cond),
    }
    return {name: (_named(fn, signature), signature)
            for name, (fn, signature) in endpoints.items()}


def _named(fn, signature):
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
    - ``complete(prefix: uint8[n, h, w, c], num_prefix_rows: int32[],
      temperature, seed [, labels | inputs])`` -> ``{"images"}``: keeps the
      top rows of ``prefix`` (image completion).
    - ``log_prob(images: uint8[n, h, w, c] [, labels | inputs])`` ->
      ``{"log_prob": float32[n] (nats), "bits_per_dim": float32[n]}``.

    ``labels`` exists for class-conditional models, ``inputs`` for
    encoder-decoder (super-resolution) models. Uses
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
