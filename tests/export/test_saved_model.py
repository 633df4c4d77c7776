"""The exported SavedModel, loaded in a fresh process without t2t_image, against Python."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from t2t_image.export import export_saved_model
from t2t_image.models import Img2ImgTransformer
from t2t_image.models import ImageTransformer
from t2t_image.sampling import sample

H = W = 4

# Runs in a subprocess from an empty folder, without PYTHONPATH; t2t_image and keras
# are made unimportable even if installed, so only TensorFlow can serve the model.
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
    results = {}
    out = model.log_prob(images=tf.constant(data["images"]), **cond)
    results["log_prob"] = out["log_prob"].numpy()
    results["bits_per_dim"] = out["bits_per_dim"].numpy()
    args = dict(temperature=tf.constant(0.8), seed=tf.constant(case["seed"], tf.int64), **cond)
    results["sample"] = model.sample(num_samples=tf.constant(2), **args)["images"].numpy()
    serving = model.signatures["serving_default"]
    results["serving"] = serving(num_samples=tf.constant(2), **args)["images"].numpy()
    results["complete"] = model.complete(
        prefix=tf.constant(data["images"]), num_prefix_rows=tf.constant(1), **args
    )["images"].numpy()
    errors = {}
    bad_calls = {
        "float_images": lambda: model.log_prob(
            images=tf.constant(data["images"].astype("float32")), **cond),
        "wrong_shape": lambda: model.log_prob(images=tf.constant(data["images"][:, :3]), **cond),
        "float_seed": lambda: model.sample(
            num_samples=tf.constant(2), temperature=tf.constant(0.8),
            seed=tf.constant(1.0), **cond),
    }
    if "labels" in cond:
        bad_calls["label_range"] = lambda: model.log_prob(
            images=tf.constant(data["images"]), labels=tf.constant([0, 9], tf.int32))
        bad_calls["label_count"] = lambda: model.sample(
            num_samples=tf.constant(3), temperature=tf.constant(0.8),
            seed=tf.constant(1, tf.int64), labels=cond["labels"])
    for name, call in bad_calls.items():
        try:
            call()
            errors[name] = None
        except Exception as e:
            errors[name] = str(e)
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


@pytest.mark.parametrize("kind", ["class_conditional_cat", "img2img_dmol"])
def test_saved_model_reproduces_the_python_model_without_t2t_image(tmp_path, kind):
    if kind == "class_conditional_cat":
        model = ImageTransformer(image_height=H, image_width=W, hidden_size=16, filter_size=24,
                                 num_heads=2, num_decoder_layers=1, block_length=4,
                                 num_classes=3, dec_attention_type="local_2d",
                                 query_shape=(2, 2), memory_flange=(1, 1))
        conditioning = {"labels": np.array([2, 0], np.int32)}
    else:
        model = Img2ImgTransformer(input_height=2, input_width=2, image_height=H, image_width=W,
                                   hidden_size=16, filter_size=24, num_heads=2,
                                   num_encoder_layers=1, num_decoder_layers=1, block_length=4,
                                   likelihood="dmol", num_mixtures=2)
        conditioning = {"inputs": np.random.RandomState(3).randint(0, 256, (2, 2, 2, 3))
                        .astype(np.uint8)}
    images = np.random.RandomState(1).randint(0, 256, (2, H, W, 3)).astype(np.uint8)
    model(dict(conditioning, targets=images))
    model.output_layer.kernel.assign(model.output_layer.kernel * 5.0)
    export_dir = tmp_path / "export"
    export_saved_model(model, export_dir)

    seed = 17
    expected = {
        "log_prob": np.asarray(model.log_prob(dict(conditioning, targets=images))),
        "sample": sample(model, 2, temperature=0.8, seed=seed, **conditioning),
        "complete": sample(model, 2, temperature=0.8, seed=seed, prefix=images,
                           num_prefix_rows=1, **conditioning),
    }
    np.savez(tmp_path / "expected.npz", images=images, **conditioning)
    with open(tmp_path / "case.json", "w") as f:
        json.dump({"export_dir": str(export_dir), "seed": seed,
                   "conditioning": sorted(conditioning)}, f)
    got, errors = run_loader(tmp_path)

    np.testing.assert_allclose(got["log_prob"], expected["log_prob"], rtol=1e-5)
    np.testing.assert_allclose(got["bits_per_dim"],
                               -expected["log_prob"] / (H * W * 3 * np.log(2)), rtol=1e-5)
    assert got["sample"].dtype == np.uint8
    np.testing.assert_array_equal(got["sample"], expected["sample"])
    np.testing.assert_array_equal(got["serving"], expected["sample"])
    np.testing.assert_array_equal(got["complete"], expected["complete"])
    np.testing.assert_array_equal(got["complete"][:, :1], images[:, :1])

    assert "uint8" in errors["float_images"] and "float32" in errors["float_images"]
    assert "(None, 4, 4, 3)" in errors["wrong_shape"]
    assert errors["float_seed"] is not None and "int64" in errors["float_seed"]
    if "labels" in conditioning:
        assert "labels must be < num_classes=3" in errors["label_range"]
        assert "labels must have one entry per image" in errors["label_count"]
