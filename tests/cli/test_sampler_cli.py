"""t2t-image-sampler and t2t-image-exporter run end to end (in subprocesses)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
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
    # Grid: 4 tiles of 4x4 with 2 pixels of padding; the kept image first, then samples.
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape == (2 + 6, 2 + 4 * 6, 3)
    np.testing.assert_array_equal(grid[2:6, 2:6], image)
    for i in range(3):
        np.testing.assert_array_equal(grid[2:6, 8 + 6 * i:12 + 6 * i], expected[i])


def test_sampler_usage_errors_and_exporter(tmp_path, model_dir):
    model, folder = model_dir
    proc = run_tool("t2t-image-sampler", f"--model_dir={folder}", "--num_samples=2",
                    f"--output={tmp_path / 'g.png'}", cwd=tmp_path)
    assert proc.returncode != 0 and "num_classes=3" in proc.stderr
    proc = run_tool("t2t-image-sampler", f"--model_dir={tmp_path / 'nothing'}", cwd=tmp_path)
    assert proc.returncode != 0 and "model.keras" in proc.stderr

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
