"""SavedModel export of a two-stage model: the prior's sampler and the first stage's codec.

Like ``t2t_image.export.export_saved_model``, the exported graph needs only
TensorFlow, every endpoint has an explicit signature, and every value is
checked in the graph (a bad request raises ``InvalidArgumentError`` naming
the input and the value, and the serving process carries on).
"""

import math

import tensorflow as tf

from t2t_image.export.atomic import write_folder_atomically
from t2t_image.export.saved_model import DEFAULT_MAX_NUM_SAMPLES
from t2t_image.export.saved_model import add_endpoints
from t2t_image.export.saved_model import build_endpoints
from t2t_image.export.saved_model import count_check
from t2t_image.export.saved_model import in_graph_check
from t2t_image.export.saved_model import range_check
from t2t_image.export.saved_model import with_shape_checks
from t2t_image.export.saved_model import with_signature_names
from t2t_image.sampling.sampler import ensure_built
from t2t_image.two_stage.sampler import check_two_stage


def build_two_stage_endpoints(prior, first_stage, jit_compile=True,
                              max_num_samples=DEFAULT_MAX_NUM_SAMPLES):
    """The exported functions of a two-stage model, with their input signatures.

    Args:
        prior: a code prior (``ImageTransformer``, ``num_channels=1``).
        first_stage: its ``VQAutoencoder``.
        jit_compile: bool, compile the prior's sampling loop with XLA.
        max_num_samples: int, the most images (or grids) one call may ask for.

    Returns:
        dict name -> (fn, input_signature) for ``sample``, ``decode``,
        ``encode`` and ``log_prob`` (shapes open in the signatures, checked in
        the graph).
    """
    ensure_built(prior)
    ensure_built(first_stage)
    check_two_stage(prior, first_stage)
    prior_endpoints = build_endpoints(prior, jit_compile, max_num_samples)
    prior_sample, prior_sample_signature = prior_endpoints["sample"]
    prior_log_prob, prior_log_prob_signature = prior_endpoints["log_prob"]
    codebook_size = first_stage.codebook_size
    h, w = prior.image_height, prior.image_width
    image_shape = [None, first_stage.image_height, first_stage.image_width,
                   first_stage.num_channels]

    def to_images(codes):
        return tf.cast(first_stage.images_from_codes(codes), tf.uint8)

    def sample(*args):
        """Samples code grids with the prior and decodes them to images."""
        out = prior_sample(*args)
        codes = tf.cast(out["images"][..., 0], tf.int32)
        return {"images": to_images(codes), "codes": codes, "seed": out["seed"]}

    def count(name, value, what):
        return count_check(name, tf.shape(value)[0], max_num_samples, what)

    def decode(codes):
        """Images of code grids of any size (the decoder is convolutional)."""
        shape = tf.shape(codes)
        checks = [
            count("codes", codes, "grids"),
            in_graph_check(tf.reduce_all(shape[1:] >= 1),
                    "codes must hold grids of at least 1x1 codes, got shape", shape),
            range_check("codes", codes, 0, codebook_size, f" (codebook_size={codebook_size})"),
        ]
        with tf.control_dependencies(checks):
            return {"images": to_images(tf.identity(codes))}

    def encode(images):
        """The code grids of images (nearest codebook entries)."""
        with tf.control_dependencies([count("images", images, "images")]):
            images = tf.cast(images, tf.int32)
        return {"codes": tf.cast(first_stage.encode_to_codes(images), tf.int32)}

    def log_prob(codes, *conditioning):
        """The prior's log-likelihood of code grids: nats and bits per code."""
        check = range_check("codes", codes, 0, codebook_size,
                            f" (codebook_size={codebook_size})")
        with tf.control_dependencies([check]):
            grids = tf.cast(codes, prior_log_prob_signature[0].dtype)[..., None]
        nats = prior_log_prob(grids, *conditioning)["log_prob"]
        return {"log_prob": nats, "bits_per_code": -nats / (h * w * math.log(2.0))}

    codes_spec = tf.TensorSpec([None, h, w], tf.int32, "codes")
    # The prior's endpoints check their own shapes; the conditioning specs of
    # log_prob are open there, and checked again by prior_log_prob.
    checked = {
        "decode": with_shape_checks(decode, [tf.TensorSpec([None, None, None], tf.int32,
                                                           "codes")]),
        "encode": with_shape_checks(encode, [tf.TensorSpec(image_shape, tf.uint8, "images")]),
        "log_prob": with_shape_checks(log_prob, [codes_spec] + prior_log_prob_signature[1:]),
    }
    endpoints = {"sample": (sample, prior_sample_signature), **checked}
    return {name: (with_signature_names(fn, signature), signature)
            for name, (fn, signature) in endpoints.items()}


def export_two_stage_saved_model(prior, first_stage, export_dir, jit_compile=True, verbose=False,
                                 max_num_samples=DEFAULT_MAX_NUM_SAMPLES):
    """Writes a two-stage model as one TF SavedModel (Esser et al. 2021's sampler).

    Endpoints (also signatures; ``serving_default`` is ``sample``):

    - ``sample(num_samples: int32[], temperature: float32[] = 1.0,
      seed: int64[] = None, *, labels: int32[n])`` -> ``{"images":
      uint8[n, H, W, 3], "codes": int32[n, h, w], "seed": int64[]}``: the
      prior's training-size grid, decoded; the same codes as
      ``t2t_image.sampling.sample(prior, n, temperature, seed)``; without a
      seed, a random one (returned), as in ``export_saved_model``.
    - ``decode(codes: int32[n, h', w'])`` -> ``{"images"}`` for grids of any
      size of at least 1x1 (e.g. from sliding-window sampling).
    - ``encode(images: uint8[n, H, W, 3])`` -> ``{"codes"}``.
    - ``log_prob(codes: int32[n, h, w] [, labels])`` -> ``{"log_prob"
      (nats), "bits_per_code"}``.

    Args:
        prior, first_stage: the two stages (built if needed).
        export_dir: path of the SavedModel directory.
        jit_compile: bool, XLA for the sampling loop.
        verbose: bool, let Keras print the endpoints.
        max_num_samples: int, the most images (or grids) one request may ask
            for; more is refused by name. The folder is written beside
            ``export_dir`` and swapped in, as ``export_saved_model`` does.

    Returns:
        ``export_dir``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(prior)
    archive.track(first_stage)
    add_endpoints(archive, build_two_stage_endpoints(prior, first_stage, jit_compile,
                                                     max_num_samples))
    return write_folder_atomically(
        export_dir, lambda folder: archive.write_out(folder, verbose=verbose))
