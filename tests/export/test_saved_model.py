"""The exported SavedModel, loaded in a fresh process without t2t_image, against Python."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.export import export_saved_model
from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling import sample

H = W = 4

# Runs in a subprocess from an empty folder, without PYTHONPATH; t2t_image and keras
# are made unimportable even if installed, so only TensorFlow can serve the model.
# Every bad request is sent first; the valid requests that follow in the SAME process
# must still give the Python sampler's results (a bad request does not break serving).
LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["t2t_image"] = None
    sys.modules["keras"] = None
    try:
        import t2t_image
        raise SystemExit("t2t_image is importable")
    except ImportError:
        pass
    import numpy as np
    import tensorflow as tf

    case = json.load(open("case.json"))
    data = np.load("expected.npz")
    model = tf.saved_model.load(case["export_dir"])
    cond = {k: tf.constant(data[k]) for k in case["conditioning"]}
    images = tf.constant(data["images"])
    seed = tf.constant(case["seed"], tf.int64)

    def sample(num_samples=2, temperature=0.8, **kw):
        args = dict(num_samples=tf.constant(num_samples), temperature=tf.constant(temperature),
                    seed=seed, **cond)
        args.update(kw)
        return model.sample(**args)

    def complete(prefix=images, rows=1, **kw):
        args = dict(prefix=prefix, num_prefix_rows=tf.constant(rows),
                    temperature=tf.constant(0.8), seed=seed, **cond)
        args.update(kw)
        return model.complete(**args)

    twice = {k: tf.concat([v, v], 0) for k, v in cond.items()}  # 4 entries: > max_num_samples
    bad_calls = {
        "float_images": lambda: model.log_prob(images=tf.cast(images, tf.float32), **cond),
        "wrong_shape": lambda: model.log_prob(images=images[:, :3], **cond),
        "wrong_rank": lambda: model.log_prob(images=images[0], **cond),
        "signature_wrong_shape": lambda: model.signatures["log_prob"](images=images[:, :3],
                                                                      **cond),
        "vector_num_samples": lambda: sample(num_samples=tf.constant([2])),
        "signature_vector_temperature": lambda: model.signatures["serving_default"](
            num_samples=tf.constant(2), temperature=tf.constant([0.8]), seed=seed, **cond),
        "too_many_samples": lambda: sample(num_samples=4),
        "huge_num_samples": lambda: sample(num_samples=20000),
        "too_many_log_prob": lambda: model.log_prob(images=tf.concat([images, images], 0),
                                                    **twice),
        "too_many_prefix": lambda: complete(prefix=tf.concat([images, images], 0), **twice),
        "float_seed": lambda: sample(seed=tf.constant(1.0)),
        "float64_temperature": lambda: sample(temperature=tf.constant(0.8, tf.float64)),
        "serving_float_num_samples": lambda: model.signatures["serving_default"](
            num_samples=tf.constant(2.0), temperature=tf.constant(0.8), seed=seed, **cond),
        "negative_temperature": lambda: sample(temperature=-0.5),
        "nan_temperature": lambda: sample(temperature=float("nan")),
        "inf_temperature": lambda: complete(temperature=tf.constant(float("inf"))),
        "zero_samples": lambda: sample(num_samples=0),
        "negative_samples": lambda: sample(num_samples=-3),
        "negative_rows": lambda: complete(rows=-1),
        "too_many_rows": lambda: complete(rows=5),
        "empty_prefix": lambda: complete(prefix=images[:0],
                                         **{k: v[:0] for k, v in cond.items()}),
        "int32_prefix": lambda: complete(prefix=tf.cast(images, tf.int32) + 300),
    }
    if "labels" in cond:
        labels = lambda values: tf.constant(values, tf.int32)
        bad_calls.update({
            "label_too_large": lambda: model.log_prob(images=images, labels=labels([0, 9])),
            "labels_rank": lambda: model.log_prob(images=images, labels=labels([[2, 0]])),
            "label_negative_sample": lambda: sample(labels=labels([1, -1])),
            "label_equal_num_classes_complete": lambda: complete(labels=labels([3, 0])),
            "label_count": lambda: sample(num_samples=3),
            "prefix_above_vocab": lambda: complete(prefix=images + 16),
            "images_above_vocab": lambda: model.log_prob(images=images * 0 + 200, **cond),
        })
    if "inputs" in cond:
        inputs = cond["inputs"]
        bad_calls.update({
            "inputs_wrong_size": lambda: sample(inputs=tf.zeros([2, 3, 3, 3], tf.uint8)),
            "inputs_int32": lambda: sample(inputs=tf.cast(inputs, tf.int32) - 1),
            "inputs_count": lambda: sample(num_samples=1),
        })
    errors = {}
    for name, call in bad_calls.items():
        try:
            call()
            errors[name] = None
        except Exception as e:
            errors[name] = [type(e).__name__, str(e)]

    results = {}
    out = model.log_prob(images=images, **cond)
    results["log_prob"] = out["log_prob"].numpy()
    results["bits_per_dim"] = out["bits_per_dim"].numpy()
    results["sample"] = sample()["images"].numpy()
    results["argmax"] = sample(temperature=0.0)["images"].numpy()
    serving = model.signatures["serving_default"]
    results["serving"] = serving(num_samples=tf.constant(2), temperature=tf.constant(0.8),
                                 seed=seed, **cond)["images"].numpy()
    results["complete"] = complete()["images"].numpy()
    # Defaults: temperature 1.0; no seed -> a random one, returned, that reproduces the images.
    results["default_temperature"] = model.sample(num_samples=2, seed=seed, **cond)["images"]
    first, second = model.sample(2, **cond), model.sample(num_samples=2, **cond)
    results["random_seeds"] = np.array([first["seed"].numpy(), second["seed"].numpy()])
    results["random"] = first["images"].numpy()
    results["random_again"] = model.sample(2, seed=first["seed"], **cond)["images"].numpy()
    results["complete_default"] = model.complete(prefix=images, num_prefix_rows=1, seed=seed,
                                                 **cond)["images"].numpy()
    results["returned_seed"] = sample()["seed"].numpy()
    try:
        model.sample(num_samples=2)
        errors["missing_conditioning"] = None
    except Exception as e:
        errors["missing_conditioning"] = [type(e).__name__, str(e)]
    np.savez("results.npz", **results)
    json.dump(errors, open("errors.json", "w"))
""")


def run_loader(folder):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", LOADER], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(folder, "errors.json")) as f:
        errors = json.load(f)
    return dict(np.load(os.path.join(folder, "results.npz"))), errors


def first_own_line(message):
    """The first line of an error that is not TensorFlow's header for errors in a loaded
    function ("Graph execution error:", "Detected at node ...", its stack frames)."""
    for line in message.splitlines():
        if line in ("", "Graph execution error:", "<stack traces unavailable>"):
            continue
        if line.startswith(("Detected at node ", "  ")):
            continue
        return line
    return ""


def assert_refused(errors, name, *fragments, kind="InvalidArgumentError"):
    """The bad request ``name`` raised ``kind`` with every fragment in its message; for
    in-graph checks the first fragment (input and allowed range/shape) is on the first
    line after TensorFlow's header."""
    assert errors[name] is not None, f"{name} was accepted"
    error_type, message = errors[name]
    if kind is not None:
        assert error_type == kind, (name, error_type, message)
    for fragment in fragments:
        assert fragment in message, (name, fragment, message)
    if kind == "InvalidArgumentError":
        line = first_own_line(message)
        assert line.startswith("assertion failed: [") and fragments[0] in line, (name, message)


@pytest.mark.parametrize("kind", ["class_conditional_cat", "img2img_dmol"])
def test_saved_model_reproduces_the_python_model_without_t2t_image(tmp_path, kind):
    if kind == "class_conditional_cat":
        vocab_size = 16  # below 256, so uint8 values 16..255 must be refused in the graph
        model = ImageTransformer(image_height=H, image_width=W, hidden_size=16, filter_size=24,
                                 num_heads=2, num_decoder_layers=1, block_length=4,
                                 num_classes=3, dec_attention_type="local_2d",
                                 query_shape=(2, 2), memory_flange=(1, 1), vocab_size=vocab_size)
        conditioning = {"labels": np.array([2, 0], np.int32)}
    else:
        vocab_size = 256
        model = Img2ImgTransformer(input_height=2, input_width=2, image_height=H, image_width=W,
                                   hidden_size=16, filter_size=24, num_heads=2,
                                   num_encoder_layers=1, num_decoder_layers=1, block_length=4,
                                   likelihood="dmol", num_mixtures=2)
        conditioning = {"inputs": np.random.RandomState(3).randint(0, 256, (2, 2, 2, 3))
                        .astype(np.uint8)}
    images = np.random.RandomState(1).randint(0, vocab_size, (2, H, W, 3)).astype(np.uint8)
    model(dict(conditioning, targets=images))
    model.output_layer.kernel.assign(model.output_layer.kernel * 5.0)
    export_dir = tmp_path / "export"
    export_saved_model(model, export_dir, max_num_samples=3)

    seed = 17
    expected = {
        "log_prob": np.asarray(model.log_prob(dict(conditioning, targets=images))),
        "sample": sample(model, 2, temperature=0.8, seed=seed, **conditioning),
        "argmax": sample(model, 2, temperature=0.0, seed=seed, **conditioning),
        "complete": sample(model, 2, temperature=0.8, seed=seed, prefix=images,
                           num_prefix_rows=1, **conditioning),
        "default_temperature": sample(model, 2, temperature=1.0, seed=seed, **conditioning),
        "complete_default": sample(model, 2, temperature=1.0, seed=seed, prefix=images,
                                   num_prefix_rows=1, **conditioning),
    }
    np.savez(tmp_path / "expected.npz", images=images, **conditioning)
    with open(tmp_path / "case.json", "w") as f:
        json.dump({"export_dir": str(export_dir), "seed": seed,
                   "conditioning": sorted(conditioning)}, f)
    got, errors = run_loader(tmp_path)

    # Valid requests after all the bad ones, in the same process: the right results.
    np.testing.assert_allclose(got["log_prob"], expected["log_prob"], rtol=1e-5)
    np.testing.assert_allclose(got["bits_per_dim"],
                               -expected["log_prob"] / (H * W * 3 * np.log(2)), rtol=1e-5)
    assert got["sample"].dtype == np.uint8
    np.testing.assert_array_equal(got["sample"], expected["sample"])
    np.testing.assert_array_equal(got["argmax"], expected["argmax"])  # temperature 0 is valid
    np.testing.assert_array_equal(got["serving"], expected["sample"])
    np.testing.assert_array_equal(got["complete"], expected["complete"])
    np.testing.assert_array_equal(got["complete"][:, :1], images[:, :1])
    # Defaults: temperature=1.0 and a random seed, reported and reproducible.
    np.testing.assert_array_equal(got["default_temperature"], expected["default_temperature"])
    np.testing.assert_array_equal(got["complete_default"], expected["complete_default"])
    assert got["returned_seed"] == seed
    assert got["random_seeds"][0] != got["random_seeds"][1] and got["random_seeds"].min() >= 0
    np.testing.assert_array_equal(got["random"], got["random_again"])
    assert_refused(errors, "missing_conditioning", "missing a required argument",
                   "'labels'" if "labels" in conditioning else "'inputs'", kind="TypeError")

    # Wrong dtypes: refused by TensorFlow when binding, naming the input and both dtypes on
    # the first line.
    assert_refused(errors, "float_images", "uint8", "float32", kind="TypeError")
    assert "name='images'" in errors["float_images"][1].splitlines()[0]
    assert "dtype=tf.uint8" in errors["float_images"][1].splitlines()[0]
    assert_refused(errors, "float_seed", "int64", kind=None)
    assert_refused(errors, "float64_temperature", "float64", "float32", kind=None)
    # (TF's signature wrappers name the input by position only.)
    assert_refused(errors, "serving_float_num_samples", "int32", "float", kind=None)
    assert_refused(errors, "int32_prefix", "prefix", "uint8", "int32", kind=None)
    # Wrong shapes: the same kind of error as wrong values, through the functions and the
    # signatures alike (signatures fed the model a wrong shape before: "Input to reshape").
    shape = "images must have shape [n, 4, 4, 3], got shape]"
    assert_refused(errors, "wrong_shape", shape, "[2 3 4 3]")
    assert_refused(errors, "wrong_rank", shape, "[4 4 3]")
    assert_refused(errors, "signature_wrong_shape", shape, "[2 3 4 3]")
    assert_refused(errors, "vector_num_samples",
                   "num_samples must be a scalar (shape []), got shape]", "[1]")
    assert_refused(errors, "signature_vector_temperature",
                   "temperature must be a scalar (shape []), got shape]", "[1]")
    # At most max_num_samples images per call.
    bound = "must be in [1, 3] images"
    assert_refused(errors, "too_many_samples", "num_samples " + bound,
                   "(max_num_samples=3, set at export), got] [4]")
    assert_refused(errors, "huge_num_samples", "num_samples " + bound, "[20000]")
    assert_refused(errors, "too_many_log_prob", "images must hold at most 3 images", "[4]")
    assert_refused(errors, "too_many_prefix", "prefix " + bound + " (one per sample)", "[4]")
    # Bad values: InvalidArgumentError from the in-graph checks, naming input and value.
    assert_refused(errors, "negative_temperature", "temperature must be a finite float >= 0",
                   "[-0.5]")
    assert_refused(errors, "nan_temperature", "temperature must be a finite float", "[nan]")
    assert_refused(errors, "inf_temperature", "temperature must be a finite float", "[inf]")
    assert_refused(errors, "zero_samples", "num_samples " + bound, "got] [0]")
    assert_refused(errors, "negative_samples", "num_samples " + bound, "got] [-3]")
    assert_refused(errors, "negative_rows", "num_prefix_rows must be in [0, 4]", "[-1]")
    assert_refused(errors, "too_many_rows", "num_prefix_rows must be in [0, 4]", "[5]")
    assert_refused(errors, "empty_prefix", "prefix " + bound + " (one per sample)", "got] [0]")
    if "labels" in conditioning:
        in_range = "labels must be in [0, 3) (num_classes=3), got values in [min, max] =]"
        assert_refused(errors, "label_too_large", in_range, "[0] [9]")
        assert_refused(errors, "labels_rank", "labels must have shape [n], got shape]", "[1 2]")
        assert_refused(errors, "label_negative_sample", in_range, "[-1] [1]")
        assert_refused(errors, "label_equal_num_classes_complete", in_range, "[0] [3]")
        assert_refused(errors, "label_count", "labels must have one entry per image",
                       "[2] [3]")
        vocab = "must be in [0, 16) (vocab_size=16), got values in [min, max] =]"
        assert_refused(errors, "prefix_above_vocab", "prefix " + vocab,
                       f"[16] [{images.max() + 16}]")
        assert_refused(errors, "images_above_vocab", "images " + vocab, "[200] [200]")
    else:
        assert_refused(errors, "inputs_wrong_size",
                       "inputs must have shape [n, 2, 2, 3], got shape]", "[2 3 3 3]")
        assert_refused(errors, "inputs_int32", "inputs", "uint8", kind=None)
        assert_refused(errors, "inputs_count", "inputs must have one entry per image",
                       "[2] [1]")


def test_eager_endpoints_check_values_too():
    """The endpoint functions check values when called eagerly (before export) too."""
    from t2t_image.export.saved_model import build_endpoints

    model = ImageTransformer(image_height=2, image_width=2, hidden_size=8, filter_size=8,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=2)
    endpoints = build_endpoints(model, jit_compile=False)
    sample_fn, complete_fn = endpoints["sample"][0], endpoints["complete"][0]
    seed, labels = tf.constant(0, tf.int64), tf.constant([0, 1], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels must be in \[0, 2\)"):
        sample_fn(tf.constant(2), tf.constant(1.0), seed, tf.constant([0, 2], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature"):
        sample_fn(tf.constant(2), tf.constant(-1.0), seed, labels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_prefix_rows"):
        complete_fn(tf.zeros([2, 2, 2, 3], tf.uint8), tf.constant(3), tf.constant(1.0), seed,
                    labels)


def test_shape_checks_name_the_input_and_pass_open_specs_through():
    from t2t_image.export.saved_model import with_shape_checks

    def fn(images, labels):
        assert images.shape.as_list() == [None, 2, 2, 3]  # The static shape is restored.
        return {"n": tf.shape(images)[0] + tf.shape(labels)[0]}

    checked, signature = with_shape_checks(fn, [
        tf.TensorSpec([None, 2, 2, 3], tf.uint8, "images"),
        tf.TensorSpec(None, tf.int32, "labels")])  # Already open (e.g. from another endpoint).
    assert [spec.shape.rank for spec in signature] == [None, None]
    traced = tf.function(checked, input_signature=signature)
    assert int(traced(tf.zeros([3, 2, 2, 3], tf.uint8), tf.zeros([5, 7], tf.int32))["n"]) == 8
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images must have shape \[n, 2, 2, 3\], got shape\] \[3 2 3 3\]"):
        traced(tf.zeros([3, 2, 3, 3], tf.uint8), tf.zeros([3], tf.int32))
