"""t2t-image-sampler and t2t-image-exporter run end to end (in subprocesses)."""

import functools
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image

from t2t_image.models import ImageTransformer
from t2t_image.sampling import sample

BIN = pathlib.Path(__file__).resolve().parents[2] / "bin"


def run_tool(name, *args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(BIN / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def model_dir(tmp_path):
    model = ImageTransformer(image_height=4, image_width=4, hidden_size=16, filter_size=16,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=3)
    model({"targets": np.zeros((1, 4, 4, 3), np.int32), "labels": np.zeros(1, np.int32)})
    model.output_layer.kernel.assign(model.output_layer.kernel * 10.0)
    folder = tmp_path / "model"
    folder.mkdir()
    model.save(folder / "model.keras")
    return model, folder


def test_sampler_writes_grid_and_arrays_equal_to_the_python_sampler(tmp_path, model_dir):
    model, folder = model_dir
    image = np.random.RandomState(0).randint(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "full.png")
    proc = run_tool("t2t-image-sampler", f"--model_dir={folder}", "--num_samples=3",
                    "--temperature=0.9", "--seed=4", "--label=2", "--complete=full.png",
                    "--rows=1", "--output=out/grid.png", "--npz=out/samples.npz",
                    "--columns=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s/image" in proc.stdout and "step 48/48" in proc.stderr
    data = np.load(tmp_path / "out" / "samples.npz")
    expected = sample(model, 3, temperature=0.9, seed=4, labels=2, prefix=image,
                      num_prefix_rows=1)
    np.testing.assert_array_equal(data["samples"], expected)
    np.testing.assert_array_equal(data["labels"], [2, 2, 2])
    np.testing.assert_array_equal(data["samples"][:, :1], np.repeat(image[None, :1], 3, 0))
    # Grid: 4 tiles of 4x4 scaled up 32x (nearest neighbour, >= 128 px) with 2 pixels of
    # padding; the kept image first, then samples.
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape == (2 + 130, 2 + 4 * 130, 3)

    def big(tile):
        return np.repeat(np.repeat(tile, 32, axis=0), 32, axis=1)

    np.testing.assert_array_equal(grid[2:130, 2:130], big(image))
    for i in range(3):
        left = 2 + 130 * (i + 1)
        np.testing.assert_array_equal(grid[2:130, left:left + 128], big(expected[i]))


def test_sampler_usage_errors_and_exporter(tmp_path, model_dir):
    model, folder = model_dir
    # A label out of range is caught right after loading: usage error, no sampling.
    proc = run_tool("t2t-image-sampler", f"--model_dir={folder}", "--num_samples=2",
                    "--label=3", f"--output={tmp_path / 'g.png'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "--label=3 is out of range" in proc.stderr and "num_classes=3" in proc.stderr
    assert "Loaded ImageTransformer" in proc.stderr and "step" not in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "g.png").exists()
    proc = run_tool("t2t-image-sampler", f"--model_dir={tmp_path / 'nothing'}", cwd=tmp_path)
    assert proc.returncode == 1 and "model.keras" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_tool("t2t-image-exporter", f"--model_dir={folder}",
                    f"--export_dir={tmp_path / 'export'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    images = np.random.RandomState(1).randint(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    labels = np.array([0, 1], np.int32)
    got = loaded.log_prob(images=tf.constant(images), labels=tf.constant(labels))
    np.testing.assert_allclose(got["log_prob"].numpy(),
                               np.asarray(model.log_prob({"targets": images, "labels": labels})),
                               rtol=1e-5)
    proc = run_tool("t2t-image-exporter", f"--model_dir={folder}",
                    f"--export_dir={tmp_path / 'export'}", cwd=tmp_path)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    # --overwrite replaces the export (atomically), here with a per-request bound of 1 image.
    proc = run_tool("t2t-image-exporter", f"--model_dir={folder}", "--overwrite",
                    "--max_num_samples=1", f"--export_dir={tmp_path / 'export'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape("num_samples must be in [1, 1] images (max_num_samples=1")):
        loaded.sample(num_samples=tf.constant(2), temperature=tf.constant(1.0),
                      seed=tf.constant(0, tf.int64), labels=tf.constant(labels))
    got = loaded.log_prob(images=tf.constant(images[:1]), labels=tf.constant(labels[:1]))
    np.testing.assert_allclose(got["log_prob"].numpy(), np.asarray(
        model.log_prob({"targets": images[:1], "labels": labels[:1]})), rtol=1e-5)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]


def write_npz(path, array):
    np.savez(path, inputs=array)
    return path.name


# (flags, fragments of the message); run with a --model_dir that does not exist, so a
# check that ran after loading would report the missing model instead.
BAD_FLAGS = {
    "num_samples_zero": (["--num_samples=0"], ["--num_samples must be a positive", "got 0"]),
    "window_stride_zero": (["--window_stride=0"], ["--window_stride must be a positive", "got 0"]),
    "num_samples_negative": (["--num_samples=-2"], ["--num_samples", "got -2"]),
    "num_samples_not_int": (["--num_samples=two"], ["--num_samples=two"]),
    "label_not_int": (["--label=1.5"], ["--label=1.5"]),
    "label_negative": (["--label=-1"], ["--label must be a class id >= 0, got -1"]),
    "temperature_negative": (["--temperature=-0.5"], ["--temperature must be a finite",
                                                      "got -0.5"]),
    "temperature_nan": (["--temperature=nan"], ["--temperature", "got nan"]),
    "temperature_inf": (["--temperature=inf"], ["--temperature", "got inf"]),
    "temperature_not_float": (["--temperature=hot"], ["--temperature=hot"]),
    "rows_zero": (["--complete=full.png", "--rows=0"], ["--rows must be >= 1", "got 0"]),
    "rows_negative": (["--complete=full.png", "--rows=-3"], ["--rows", "got -3"]),
    "rows_alone": (["--rows=2"], ["--rows needs --complete"]),
    "complete_alone": (["--complete=full.png"], ["--complete needs --rows"]),
    "complete_not_image": (["--complete=junk.png", "--rows=1"],
                           ["--complete=junk.png: not a readable image"]),
    "batch_size_zero": (["--batch_size=0"], ["--batch_size", "got 0"]),
    "seed_too_large": ([f"--seed={2 ** 63}"], ["--seed must be an integer", str(2 ** 63)]),
    "inputs_above_255": (["--inputs=above.npz"], ["--inputs=above.npz", "0..255",
                                                  "[0, 300]"]),
    "inputs_negative": (["--inputs=negative.npz"], ["--inputs=negative.npz", "[-1, 0]"]),
    "inputs_fractional": (["--inputs=fraction.npz"], ["--inputs=fraction.npz",
                                                      "whole numbers", "float"]),
    "inputs_nan": (["--inputs=nan.npz"], ["--inputs=nan.npz", "whole numbers"]),
    "inputs_not_images": (["--inputs=flat.npz"], ["--inputs=flat.npz", "shape (4,)"]),
    "inputs_missing": (["--inputs=none.npz"], ["--inputs=none.npz: no such file"]),
    "stray_argument": (["3"], ["unexpected arguments", "'3'"]),
    # Issue 24: no output could hold them (a raw MemoryError before).
    "num_samples_beyond_the_grid": (["--num_samples=1000000000000"],
                                    ["--num_samples=1000000000000", "shows at most 1024",
                                     "pass --npz"]),
    # Issue 24: a 17 KB PNG of 12000x12000 pixels, refused from its header (not decoded).
    "complete_image_bomb": (["--complete=bomb.png", "--rows=1"],
                            ["--complete=bomb.png declares 12000x12000 = 144000000 pixels",
                             "refused before decoding"]),
}


@functools.lru_cache(maxsize=1)
def _bomb_bytes():
    from tests.image_bombs import png_bomb

    return png_bomb(12000, 12000)


def write_bad_files(folder):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "full.png")
    (folder / "junk.png").write_text("not a png")
    write_npz(folder / "above.npz", np.arange(2)[:, None, None] * np.full((2, 2, 3), 300))
    write_npz(folder / "negative.npz", -np.eye(2, dtype=int)[None, :, :, None].repeat(3, -1))
    write_npz(folder / "fraction.npz", np.full((1, 2, 2, 3), 0.5))
    write_npz(folder / "nan.npz", np.full((1, 2, 2, 3), np.nan))
    write_npz(folder / "flat.npz", np.zeros(4, np.uint8))
    (folder / "bomb.png").write_bytes(_bomb_bytes())


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    write_bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", sorted(BAD_FLAGS))
def test_bad_flag_is_refused_by_main_before_loading(in_folder, name):
    """Every case through the tool's main() in-process (absl parses the flags)."""
    from absl import flags

    from t2t_image.cli import sampler

    sampler.define_flags()
    argv = ["t2t-image-sampler", f"--model_dir={in_folder / 'no_model'}", *BAD_FLAGS[name][0]]
    try:
        with pytest.raises((app.UsageError, flags.Error)) as error:
            sampler.main(flags.FLAGS(argv))
    finally:
        flags.FLAGS.unparse_flags()
    for fragment in BAD_FLAGS[name][1]:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_bad_flags_exit_with_a_usage_error_and_no_traceback(in_folder):
    """A few cases end to end: exit status 1, the message, no traceback, no model loaded."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    names = ["num_samples_not_int", "temperature_nan", "label_negative", "rows_zero",
             "inputs_above_255", "complete_not_image"]
    procs = {name: subprocess.Popen(
        [sys.executable, str(BIN / "t2t-image-sampler"), f"--model_dir={in_folder / 'no_model'}",
         *BAD_FLAGS[name][0]], cwd=in_folder, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name in names}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (name, stderr[-2000:])
        assert "Traceback" not in stderr and "no_model" not in stderr, (name, stderr[-2000:])
        for fragment in BAD_FLAGS[name][1]:
            assert fragment in stderr, (name, fragment, stderr[-500:])


@pytest.mark.parametrize("args, message", [
    ([], "--export_dir is required"),
    (["--export_dir=full.png"], "--export_dir=full.png is a file"),
    (["--export_dir=out", "stray"], "unexpected arguments"),
    (["--export_dir=out", "--model_dir=no_model"], "--model_dir=no_model has no model.keras"),
    (["--export_dir=out", "--max_num_samples=0"], "--max_num_samples must be >= 1, got 0"),
])
def test_exporter_usage_errors(in_folder, args, message):
    from absl import flags

    from t2t_image.cli import exporter

    exporter.define_flags()
    if not any(a.startswith("--model_dir") for a in args):
        args = ["--model_dir=no_model"] + args
    try:
        with pytest.raises(app.UsageError, match=re.escape(message)):
            exporter.main(flags.FLAGS(["t2t-image-exporter", *args]))
    finally:
        flags.FLAGS.unparse_flags()
    assert not (in_folder / "out").exists()
