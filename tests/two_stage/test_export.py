"""The two-stage SavedModel, loaded in a fresh process without t2t_image, against Python."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from t2t_image.two_stage import export_two_stage_saved_model
from t2t_image.two_stage import sample_two_stage
from tests.two_stage.test_sampler import K
from tests.two_stage.test_sampler import first_stage
from tests.two_stage.test_sampler import prior

# Bad requests first; the valid ones after them run in the SAME serving process.
LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["t2t_image"] = None
    sys.modules["keras"] = None
    import numpy as np
    import tensorflow as tf

    case = json.load(open("case.json"))
    data = np.load("expected.npz")
    model = tf.saved_model.load(case["export_dir"])
    errors = {}
    bad = {
        "codes_too_large": lambda: model.decode(codes=tf.fill([1, 3, 3], case["K"])),
        "negative_code": lambda: model.log_prob(codes=tf.fill([1, 4, 4], -1)),
        "zero_samples": lambda: model.sample(num_samples=tf.constant(0),
            temperature=tf.constant(1.0), seed=tf.constant(1, tf.int64)),
        "float_codes": lambda: model.decode(codes=tf.zeros([1, 3, 3])),
        "no_grids": lambda: model.decode(codes=tf.zeros([0, 3, 3], tf.int32)),
        "empty_grid": lambda: model.decode(codes=tf.zeros([1, 0, 0], tf.int32)),
        "grid_without_rows": lambda: model.decode(codes=tf.zeros([2, 0, 5], tf.int32)),
        "decode_rank": lambda: model.decode(codes=tf.zeros([3, 3], tf.int32)),
        "too_many_grids": lambda: model.decode(codes=tf.zeros([4, 2, 2], tf.int32)),
        "too_many_samples": lambda: model.sample(num_samples=tf.constant(20000),
            temperature=tf.constant(1.0), seed=tf.constant(1, tf.int64)),
        "encode_wrong_size": lambda: model.encode(images=tf.zeros([1, 5, 5, 3], tf.uint8)),
        "log_prob_wrong_grid": lambda: model.log_prob(codes=tf.zeros([1, 3, 4], tf.int32)),
    }
    for name, call in bad.items():
        try:
            call()
            errors[name] = None
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
            errors[name] = str(e)
    out = model.sample(num_samples=tf.constant(3), temperature=tf.constant(0.9),
                       seed=tf.constant(case["seed"], tf.int64))
    random = model.sample(3)  # temperature 1.0, a random seed (returned)
    again = model.sample(3, 1.0, random["seed"])
    same = bool(np.array_equal(random["codes"].numpy(), again["codes"].numpy()))
    big = model.decode(codes=tf.constant(data["big_codes"]))
    enc = model.encode(images=tf.constant(data["images"]))
    lp = model.log_prob(codes=tf.constant(data["codes"]))
    np.savez("served.npz", codes=out["codes"].numpy(), images=out["images"].numpy(),
             big=big["images"].numpy(), enc=enc["codes"].numpy(),
             log_prob=lp["log_prob"].numpy(), bits=lp["bits_per_code"].numpy(),
             seed=out["seed"].numpy(), random_reproduced=same)
    json.dump(errors, open("errors.json", "w"))
""")


def test_two_stage_saved_model_serves_python_results_and_survives_bad_requests(tmp_path):
    p, fs = prior(), first_stage()
    export_dir = tmp_path / "export"
    export_two_stage_saved_model(p, fs, str(export_dir), max_num_samples=3)
    images, codes = sample_two_stage(p, fs, 3, seed=11, temperature=0.9)
    big_codes = np.random.RandomState(0).randint(0, K, size=(2, 6, 5)).astype("int32")
    work = tmp_path / "work"
    work.mkdir()
    np.savez(work / "expected.npz", codes=codes, images=images.astype("uint8"),
             big_codes=big_codes)
    (work / "case.json").write_text(json.dumps({"export_dir": str(export_dir), "seed": 11,
                                                "K": K}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-c", LOADER], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads((work / "errors.json").read_text())
    assert "codes must be in [0, 16) (codebook_size=16)" in errors["codes_too_large"]
    assert "[min, max] =] [16] [16]" in errors["codes_too_large"]
    assert "codes must be in [0, 16)" in errors["negative_code"]
    bound = "must be in [1, 3] {} (max_num_samples=3, set at export), got]"
    assert f"num_samples {bound.format('images')} [0]" in errors["zero_samples"]
    assert f"num_samples {bound.format('images')} [20000]" in errors["too_many_samples"]
    assert errors["float_codes"] is not None
    # Empty or 0x0 grids: a named error (was "Incompatible shapes" from inside the decoder).
    assert f"codes {bound.format('grids')} [0]" in errors["no_grids"]
    assert "codes must hold grids of at least 1x1 codes, got shape] [1 0 0]" in errors["empty_grid"]
    assert "at least 1x1 codes, got shape] [2 0 5]" in errors["grid_without_rows"]
    assert "codes must have shape [n, ?, ?], got shape] [3 3]" in errors["decode_rank"]
    assert f"codes {bound.format('grids')} [4]" in errors["too_many_grids"]
    h, w, size = p.image_height, p.image_width, fs.image_height
    assert (f"images must have shape [n, {size}, {size}, 3], got shape] [1 5 5 3]"
            in errors["encode_wrong_size"])
    assert f"codes must have shape [n, {h}, {w}], got shape] [1 3 4]" in errors["log_prob_wrong_grid"]
    assert "Incompatible shapes" not in json.dumps(errors)
    served = np.load(work / "served.npz")
    np.testing.assert_array_equal(served["codes"], codes)
    assert served["seed"] == 11 and served["random_reproduced"]
    np.testing.assert_array_equal(served["images"], images)
    np.testing.assert_array_equal(served["big"], np.asarray(fs.images_from_codes(big_codes)))
    np.testing.assert_array_equal(served["enc"], np.asarray(fs.encode_to_codes(images)))
    expected = np.asarray(p.log_prob({"targets": codes[..., None]}))
    np.testing.assert_allclose(served["log_prob"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(served["bits"], -expected / (16 * np.log(2.0)), rtol=1e-5)
